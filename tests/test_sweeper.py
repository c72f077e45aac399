"""The `grid` sweeper (the default of `trainlab train -m`): Hydra's basic grid, each job's config composed once."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from conftest import ROOT

FAST = ["steps=20", "eval_every=10", "log_every=10", "model.widths=[16]", "diagnostics=off"]

# Runs `trainlab train ARGS` in this process with Hydra's ConfigLoaderImpl.load_sweep_config counted.
COUNTING = """
import atexit, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
calls = []
compose = ConfigLoaderImpl.load_sweep_config
def counted(self, master_config, sweep_overrides):
  calls.append(list(sweep_overrides))
  return compose(self, master_config, sweep_overrides)
ConfigLoaderImpl.load_sweep_config = counted
atexit.register(lambda: print("compositions", len(calls)))
from trainlab import main
main.main(["train", *sys.argv[1:]])
"""


def run_counting(*args: str, cwd) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-c", COUNTING, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def test_each_job_is_composed_once_and_runs(tmp_path):
  sweep = tmp_path / "sweep"
  proc = run_counting("-m", "optimizer.lr=0.01,0.1", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "compositions 4" in proc.stdout  # Hydra's basic sweeper composes 8: each job before the batch and again
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert [(r["optimizer.lr"], r["seed"], r["status"]) for r in rows] == [
      ("0.01", "0", "completed"), ("0.01", "1", "completed"), ("0.1", "0", "completed"), ("0.1", "1", "completed")]
  assert rows[0]["test/accuracy"] != rows[2]["test/accuracy"]  # each job ran with its own config


def test_a_bad_override_fails_the_sweep_before_any_job(tmp_path):
  sweep = tmp_path / "sweep"
  proc = run_counting("-m", "optimizer.lr=0.01,fast", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  assert proc.returncode == 1
  assert "Error merging override optimizer.lr=fast" in proc.stderr.splitlines()
  assert not (sweep / "0").exists()  # the first job, whose config is fine, never started


def test_batches_compose_once_too(tmp_path):
  sweep = tmp_path / "sweep"
  proc = run_counting("-m", "seed=0,1,2", "hydra.sweeper.max_batch_size=2", *FAST, f"hydra.sweep.dir={sweep}",
                      cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "compositions 3" in proc.stdout
  assert len(list(csv.DictReader((sweep / "results.csv").open()))) == 3
