"""The presets of the optimizers at their best learning rates and of batch norm in the deep linear chain
(conf/experiment/): each composes, each runs shortened, the first ends with the report's best-per-optimizer table;
and the generalization gap every run writes into its summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import CONF, QUICK, run_cli, train_in_process
from test_presets import grid
from trainlab.rundir import writers

PRESETS = ("optimizers", "batchnorm_linear_chain")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_c_starts_with_its_command_and_sources(name):
  text = (CONF / "experiment" / f"{name}.yaml").read_text()
  assert text.startswith("# @package _global_\n")
  comment = text.split("\ndefaults:")[0]
  assert f"`trainlab train -m experiment={name}`" in comment
  assert "[00" in comment and "Look at" in comment and "Measured" in comment


@pytest.mark.parametrize("name", PRESETS)
def test_preset_c_composes_with_cfg_job(name, tmp_path):
  printed = run_cli("train", f"experiment={name}", "--cfg", "job", cwd=tmp_path).stdout
  assert printed.startswith("seed: 0\n") and "\nmodel:\n  _target_: trainlab.models." in printed
  assert len(grid(name)) >= 16


@pytest.mark.slow
def test_optimizers_preset_sweeps_every_optimizer_at_every_rate_and_reports_the_best_per_optimizer(tmp_path):
  """The preset's sweep, shortened to two optimizers, two rates and one seed: best.csv keeps, for each optimizer,
  the rate whose best validation accuracy results.csv shows highest."""
  jobs = grid("optimizers")
  assert len(jobs) == 7 * 4 * 2 and {j[0] for j in jobs} == {f"optimizer={o}" for o in (
      "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")}
  sweep = tmp_path / "sweep"
  run_cli("train", "-m", "experiment=optimizers", "optimizer=sgd,adam", "optimizer.lr=0.01,1.0", "seed=0",
          "steps=40", "eval_every=20", "log_every=20", "model.widths=[32]", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  results = list(csv.DictReader((sweep / "results.csv").open()))
  assert len(results) == 4 and all(r["status"] in ("completed", "diverged") for r in results)
  expected = {}
  for optimizer in ("sgd", "adam"):
    mine = [r for r in results if r["optimizer"] == optimizer and r["best_val/accuracy"]]
    expected[optimizer] = max(mine, key=lambda r: float(r["best_val/accuracy"]))["optimizer.lr"]
  best = list(csv.DictReader((sweep / "best.csv").open()))
  assert {r["optimizer"]: r["optimizer.lr"] for r in best} == expected
  assert "## Best per optimizer" in (sweep / "report.md").read_text()
  for row in results:  # the gap column, as each run's summary has it
    summary = json.loads((sweep / row["job"] / writers.SUMMARY_FILE).read_text())
    if summary["status"] == "completed":
      assert float(row["gap/accuracy"]) == pytest.approx(summary["gap/accuracy"], abs=1e-6)
    else:
      assert row["gap/accuracy"] == "" and "gap/accuracy" not in summary


def test_the_gap_is_the_last_train_accuracy_minus_the_last_val_accuracy(tmp_path):
  summary = train_in_process([*QUICK, "steps=120", "eval_every=40", "log_every=30", "regularizer=[dropout]"],
                             tmp_path)
  points = writers.read_metrics(tmp_path)
  train = [p for p in points if "train/accuracy" in p][-1]
  val = [p for p in points if "val/accuracy" in p][-1]
  assert train["step"] == val["step"] == 120
  assert summary["gap/accuracy"] == pytest.approx(train["train/accuracy"] - val["val/accuracy"], abs=1e-9)
  assert summary["gap/accuracy"] != 0.0


def test_batchnorm_linear_chain_preset_runs_shortened(tmp_path):
  summary = train_in_process(["experiment=batchnorm_linear_chain", *grid("batchnorm_linear_chain")[0], "steps=20",
                              "eval_every=10", "log_every=10", "checkpoint.every=null"], tmp_path)
  assert summary["status"] == "completed" and summary["steps_run"] == 20


def test_batch_norm_lets_the_linear_chain_train_at_a_rate_where_the_plain_chain_diverges(tmp_path):
  """lr 1.0 from He's init: the plain chain's output, a product of ten layers that each double the variance,
  diverges within a few steps (a diverged run has no gap); with batch norm the chain learns, well above chance."""
  runs = {norm: train_in_process(["experiment=batchnorm_linear_chain", f"model.norm={norm}", "optimizer.lr=1.0",
                                  "steps=200", "eval_every=100", "checkpoint.every=null"], tmp_path / norm)
          for norm in ("none", "batch")}
  assert runs["none"]["status"] == "diverged" and runs["none"]["diverged_at_step"] <= 20, runs["none"]
  assert "gap/accuracy" not in runs["none"]
  assert runs["batch"]["status"] == "completed" and runs["batch"]["best_val/accuracy"] > 0.2, runs["batch"]
  assert np.isfinite(runs["batch"]["gap/accuracy"])
