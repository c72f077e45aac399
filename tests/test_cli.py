"""The command line as a user types it: help, sweeps, and one clear line for each kind of bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICK, run_cli, train_in_process
from trainlab import data
from trainlab.rundir import writers

FAST = ["steps=40", "eval_every=20", "log_every=10", "model.widths=[16]"]


def test_top_level_help_lists_the_subcommands(tmp_path):
  out = run_cli("--help", cwd=tmp_path).stdout
  assert "train" in out and "usage: trainlab" in out


def test_the_command_starts_without_jax():
  """`trainlab` and Hydra's plugin scan import no JAX: --help, --cfg and a sweep's own process start at once."""
  code = ("import sys; import trainlab.main; from hydra.core.plugins import Plugins; Plugins.instance(); "
          "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'torch') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


def test_train_help_lists_groups_and_options(tmp_path):
  out = run_cli("train", "--help", cwd=tmp_path).stdout
  groups = {}
  for line in out.splitlines():  # the group list comes first; the composed config after it repeats the names
    if ": " in line and line.split(":")[0] in ("data", "model", "init", "optimizer", "schedule", "regularizer"):
      groups.setdefault(*line.split(": ", 1))
  assert {"adam", "sgd", "momentum"} <= set(groups["optimizer"].split(", "))
  assert {"he", "glorot", "lecun", "zeros"} <= set(groups["init"].split(", "))
  assert {"l2", "dropout"} <= set(groups["regularizer"].split(", "))
  assert {"mnist1d", "npz"} <= set(groups["data"].split(", ")) and "mlp" in groups["model"]


def test_cfg_job_prints_the_composed_config(tmp_path):
  out = run_cli("train", "optimizer=momentum", "--cfg", "job", cwd=tmp_path).stdout
  assert "momentum: 0.9" in out and "_target_: optax.sgd" in out


def test_single_run_writes_its_directory(tmp_path):
  run_dir = tmp_path / "run"
  proc = run_cli("train", *FAST, f"hydra.run.dir={run_dir}", cwd=tmp_path)
  assert "test/accuracy" in proc.stdout + proc.stderr
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["overrides"][:2] == FAST[:2]
  assert (run_dir / ".hydra" / "config.yaml").is_file()
  assert list(writers.events_dir(run_dir).glob("events.out.tfevents.*"))


def test_default_dirs_are_under_outputs(tmp_path):
  run_cli("train", "steps=2", "eval_every=2", cwd=tmp_path)
  assert len(list((tmp_path / "outputs" / "runs").glob("*/*/summary.json"))) == 1
  assert not (tmp_path / "multirun").exists()


def test_multirun_writes_results_csv(tmp_path):
  sweep = tmp_path / "sweep"
  run_cli("train", "-m", "optimizer=sgd,adam", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert [(r["job"], r["optimizer"], r["seed"]) for r in rows] == [
      ("0", "sgd", "0"), ("1", "sgd", "1"), ("2", "adam", "0"), ("3", "adam", "1")]
  for row in rows:
    summary = json.loads((sweep / row["job"] / "summary.json").read_text())
    assert row["status"] == "completed"
    assert float(row["test/accuracy"]) == pytest.approx(summary["test/accuracy"])
  assert {"steps", "eval_every"} <= set(rows[0])


@pytest.mark.parametrize("args,expected", [
    (["optimizer=adamx"], "error: optimizer has no option adamx: did you mean adam? (options: adagrad, adam, "
                          "adam_then_sgd, adamw, momentum, nesterov, rmsprop, sgd)"),
    (["optimizer=qqq"], "Could not find 'optimizer/qqq'"),
    (["optimizer.lr=fast"], "optimizer.lr"),
    (["optimizer.betas=1"], "betas"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed: it must be > 0"),
    (["regularizer=[dropout]", "regularizer.dropout.rate=1"], "regularizer.dropout.rate=1.0 is not allowed"),
    (["batch_size=100000"], "batch_size=100000 is not allowed: it must be <= 3600"),
    (["data=npz", "data.path=nowhere.npz"], "nowhere.npz does not exist"),
    (["data=npz"], "error: data.path is mandatory and not set: add it to the command, for example "
                   "data.path=my_data.npz"),
])
def test_bad_input_gets_one_clear_error(args, expected, tmp_path):
  proc = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert proc.returncode != 0
  assert expected in proc.stderr + proc.stdout
  assert "Traceback" not in proc.stderr + proc.stdout


def test_npz_round_trip(write_npz, tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)  # learnable: the sign of the first feature
  path = write_npz(x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
  dataset = data.npz(str(path), val_fraction=0.25, split_seed=0)
  assert (len(dataset.y_train), len(dataset.y_val), len(dataset.y_test), dataset.num_classes) == (150, 50, 100, 2)
  np.testing.assert_allclose(dataset.x_train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(dataset.x_train.std(0), 1, atol=1e-4)
  summary = train_in_process(QUICK + ["data=npz", f"data.path={path}", "batch_size=50"], tmp_path / "run")
  assert summary["test/accuracy"] > 0.9


def test_npz_with_its_own_validation_split(write_npz):
  path = write_npz(x_val=np.zeros((7, 6), np.float32), y_val=np.ones(7, np.int64))
  dataset = data.npz(str(path), val_fraction=0.5, split_seed=0)
  assert (len(dataset.y_train), len(dataset.y_val)) == (200, 7)


@pytest.mark.parametrize("replace,expected", [
    ({"y_test": None}, "lacks the array(s) y_test"),
    ({"y_train": np.zeros(10, np.int64)}, "must hold one row per label"),
    ({"y_train": np.full(200, 0.5)}, "labels must be integer classes"),
    ({"x_val": np.zeros((3, 6))}, "lacks the array(s) y_val"),
    ({"y_train": np.full(200, -1)}, "has the label -1"),
])
def test_npz_problems_name_the_file(replace, expected, write_npz):
  path = write_npz(**replace)
  with pytest.raises(data.DataError, match=None) as info:
    data.npz(str(path), val_fraction=0.1, split_seed=0)
  assert expected in str(info.value) and str(path) in str(info.value)
