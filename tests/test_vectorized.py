"""hydra/launcher=vectorized: jobs that share a program train as one vmapped program, and every job's files
equal (to float tolerance) what the basic launcher writes for it, divergence and early stopping per member."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from trainlab.rundir import writers

# 3 learning rates (one diverges at once) x 2 seeds x 3 batch sizes (4000 > the 3600 training examples: those
# jobs fail at setup) = 18 jobs: two groups of 6 trained as one vmapped program each, and 6 failed jobs.
# Early stopping with patience 1 stops members at different evaluations; diagnostics take each member's state.
SWEEP = ["optimizer.lr=0.003,0.05,1e30", "seed=0,1", "batch_size=16,32,4000", "steps=60", "eval_every=10",
         "log_every=5", "model.widths=[16]", "regularizer=[early_stopping]", "regularizer.early_stopping.patience=1",
         "checkpoint.every=null", "diagnostics=default", "diagnostics.every=20", "diagnostics.histogram_every=0"]


def case(summary: dict) -> tuple:
  o = dict(x.split("=", 1) for x in summary["overrides"])
  return float(o["optimizer.lr"]), int(o["seed"]), int(o["batch_size"])


def points(job: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (job / writers.METRICS_FILE).read_text().splitlines()]


def summaries(sweep_dir: pathlib.Path) -> dict[tuple, tuple[pathlib.Path, dict]]:
  found = {}
  for job in sweep_dir.iterdir():
    if job.is_dir():
      summary = writers.read_summary(job)
      found[case(summary)] = job, summary
  return found


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
  """The same sweep under the vectorized and the basic launcher (each exits 1: some jobs failed)."""
  tmp = tmp_path_factory.mktemp("sweeps")
  out = {}
  for launcher in ("vectorized", "basic"):
    proc = run_cli("train", "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp / launcher}", *SWEEP,
                   cwd=tmp, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out[launcher] = tmp / launcher, proc.stdout + proc.stderr
  return out


def test_jobs_group_by_structure(sweeps):
  sweep_dir, output = sweeps["vectorized"]
  found = summaries(sweep_dir)
  assert len(found) == 18
  for (lr, seed, batch), (job, summary) in found.items():
    if batch == 4000:
      assert summary["status"] == "failed" and "batch_size=4000 is not allowed" in summary["error"]
      assert "vectorized_members" not in summary
    else:
      assert summary["vectorized_members"] == 6  # one program per batch size, not one for all 12
  assert output.count("as one vmapped program") == 2
  for job, _ in found.values():  # each job keeps Hydra's files and its own log
    assert (job / ".hydra" / "overrides.yaml").is_file() and (job / "train.log").is_file()


def test_every_job_equals_the_basic_launchers(sweeps):
  vectorized, basic = summaries(sweeps["vectorized"][0]), summaries(sweeps["basic"][0])
  assert vectorized.keys() == basic.keys()
  for key, (job, summary) in vectorized.items():
    alone_job, alone = basic[key]
    for field in ("status", "steps_run", "diverged_at_step", "best_val/step", "early_stopping/restored_step"):
      assert summary.get(field) == alone.get(field), (key, field)
    for field in ("test/accuracy", "test/loss", "best_val/loss", "best_val/accuracy"):
      assert (summary.get(field) is None) == (alone.get(field) is None), (key, field)
      if alone.get(field) is not None:
        np.testing.assert_allclose(summary[field], alone[field], rtol=1e-4, atol=1e-5, err_msg=str((key, field)))
    if summary["status"] == "failed":
      assert summary["error"] == alone["error"]
      continue
    ours, theirs = points(job), points(alone_job)
    assert [sorted(p) for p in ours] == [sorted(p) for p in theirs]  # the same points, steps and metrics
    for p, q in zip(ours, theirs):
      for name in p:
        if p[name] is None or q[name] is None:  # not finite (an overflowing member's last window)
          assert p[name] is q[name] is None, (key, p["step"], name)
          continue
        np.testing.assert_allclose(p[name], q[name], rtol=1e-4, atol=1e-5, err_msg=f"{key} {p['step']} {name}")
    assert list(writers.events_dir(job).glob("events.out.tfevents.*.hparams")), "no HParams session"
    assert "diag/Dense_0/grad_norm" in ours[0] and ours[0]["step"] == 0  # diagnostics of the member's own state


def test_divergence_and_early_stopping_are_per_member(sweeps):
  found = summaries(sweeps["vectorized"][0])
  steps_run = set()
  for (lr, seed, batch), (job, summary) in found.items():
    if batch == 4000:
      continue
    if lr == 1e30:  # Adam's first step moves each weight by ~lr: the loss overflows at step 2 at the latest
      assert summary["status"] == "diverged" and 1 <= summary["diverged_at_step"] <= 2
      assert summary["steps_run"] == summary["diverged_at_step"] - 1
      assert "test/accuracy" not in summary and all("val/loss" not in p for p in points(job))
    else:
      assert summary["status"] == "completed" and summary["diverged_at_step"] is None
      vals = [p for p in points(job) if "val/loss" in p]
      assert [p["step"] for p in vals] == list(range(10, summary["steps_run"] + 1, 10))
      assert summary["early_stopping/restored_step"] == summary["best_val/step"]
      steps_run.add(summary["steps_run"])
  # The members of one program stopped at different steps: stopping one did not stop the others.
  assert len(steps_run) > 1 and min(steps_run) < 60


def test_results_table_has_one_row_per_job(sweeps):
  sweep_dir, _ = sweeps["vectorized"]
  with open(sweep_dir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(int(r["job"]) for r in rows) == list(range(18))
  found = summaries(sweep_dir)
  for row in rows:
    _, summary = found[(float(row["optimizer.lr"]), int(row["seed"]), int(row["batch_size"]))]
    assert row["status"] == summary["status"]
    if summary.get("test/accuracy") is not None:
      assert float(row["test/accuracy"]) == pytest.approx(summary["test/accuracy"])


def test_resumed_sweep_skips_finished_jobs(sweeps):
  """resume=true under the vectorized launcher: finished jobs are left as they are (the normal path skips
  them); the failed ones run again (and fail again, being the same jobs)."""
  sweep_dir, _ = sweeps["vectorized"]
  before = {key: (job / writers.SUMMARY_FILE).read_bytes() for key, (job, _) in summaries(sweep_dir).items()}
  proc = run_cli("train", "-m", "hydra/launcher=vectorized", f"hydra.sweep.dir={sweep_dir}", *SWEEP, "resume=true",
                 cwd=sweep_dir.parent, check=False)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  after = summaries(sweep_dir)
  for key, (job, summary) in after.items():
    if key[2] != 4000:
      assert (job / writers.SUMMARY_FILE).read_bytes() == before[key]
    else:
      assert summary["status"] == "failed"
  assert "as one vmapped program" not in proc.stdout + proc.stderr


def test_an_interrupted_vectorized_sweep_resumes_to_the_uninterrupted_results(tmp_path):
  """SIGTERM to a vectorized sweep mid-group: every member checkpoints and is `interrupted`; resume=true finishes
  each through the single-run path, ending where the uninterrupted sweep ends (to float tolerance: before the
  signal the members ran vmapped, after it alone)."""
  grid = ["hydra/launcher=vectorized", "optimizer.lr=0.003,0.01", "seed=0", "batch_size=32", "steps=400",
          "eval_every=50", "log_every=50", "model.widths=[16]", "checkpoint.every=100", "diagnostics=off"]
  run_cli("train", "-m", *grid, f"hydra.sweep.dir={tmp_path / 'reference'}", cwd=tmp_path)
  sweep_dir = tmp_path / "sweep"
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", "-m", *grid, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if "step 50/400" in line:
      proc.send_signal(signal.SIGTERM)
      break
  output = proc.stdout.read()
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
  interrupted = summaries(sweep_dir)
  assert {s["status"] for _, s in interrupted.values()} == {"interrupted"}
  assert all(50 <= s["steps_run"] < 400 for _, s in interrupted.values())

  run_cli("train", "-m", *grid, f"hydra.sweep.dir={sweep_dir}", "resume=true", cwd=tmp_path)
  reference = summaries(tmp_path / "reference")
  for key, (job, summary) in summaries(sweep_dir).items():
    assert summary["status"] == "completed" and summary["resumed_from_step"] == interrupted[key][1]["steps_run"]
    want = reference[key][1]
    assert summary["steps_run"] == want["steps_run"] == 400
    for name in ("test/loss", "test/accuracy", "best_val/loss"):
      assert summary[name] == pytest.approx(want[name], rel=1e-3, abs=1e-3), name
    assert [p["step"] for p in points(job)] == [p["step"] for p in points(reference[key][0])]  # each point once
