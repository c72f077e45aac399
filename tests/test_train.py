"""The core loop: it learns, compiles once, is deterministic, and writes the run directory's files."""

from __future__ import annotations

import json

import jax
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import QUICK, train_in_process
from trainlab import train
from trainlab.values import merge as merge_values, split as split_values
from trainlab import fast
from trainlab.fast import compilation
from trainlab.rundir import writers


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  return workdir, train_in_process(QUICK + ["steps=600", "optimizer.lr=0.003"], workdir)


def test_default_model_learns_mnist1d(quick_run):
  _, summary = quick_run
  assert summary["status"] == "completed"
  assert summary["steps_run"] == 600
  assert summary["test/accuracy"] > 0.4  # chance is 0.1
  assert summary["best_val/accuracy"] >= summary["test/accuracy"] - 0.15


def test_metrics_jsonl_has_every_logged_point(quick_run):
  workdir, summary = quick_run
  points = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [p["step"] for p in points if "train/loss" in p]
  val_steps = [p["step"] for p in points if "val/loss" in p]
  assert train_steps == list(range(25, 601, 25))
  assert val_steps == [100, 200, 300, 400, 500, 600]
  first = next(p for p in points if "train/loss" in p)
  assert {"train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm"} <= set(first)
  assert first["train/learning_rate"] == pytest.approx(0.003)
  assert next(p for p in points if "test/accuracy" in p)["test/accuracy"] == pytest.approx(summary["test/accuracy"])


def test_event_files_hold_the_scalars(quick_run):
  workdir, summary = quick_run
  events = event_accumulator.EventAccumulator(str(writers.events_dir(workdir)))
  events.Reload()
  tags = set(events.Tags()["scalars"])
  assert {writers.tensorboard_tag(name) for name in ("train/loss", "train/accuracy", "train/learning_rate",
          "train/grad_norm", "val/loss", "val/accuracy", "test/loss", "test/accuracy")} <= tags
  assert [e.step for e in events.Scalars("Val/accuracy")] == [100, 200, 300, 400, 500, 600]
  assert events.Scalars("test/accuracy")[0].value == pytest.approx(summary["test/accuracy"])


def test_same_seed_same_metrics_bit_for_bit(tmp_path):
  first = train_in_process(QUICK + ["seed=3", "regularizer=[dropout]"], tmp_path / "a")
  second = train_in_process(QUICK + ["seed=3", "regularizer=[dropout]"], tmp_path / "b")
  assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
  assert first["test/loss"] == second["test/loss"]
  other_seed = train_in_process(QUICK + ["seed=4", "regularizer=[dropout]"], tmp_path / "c")
  assert other_seed["test/loss"] != first["test/loss"]


def test_compiling_ahead_leaves_the_run_unchanged(tmp_path, monkeypatch):
  """With diagnostics due at step 0, the first chunk and the evaluation compile ahead (trainlab.fast) while the
  diagnostics run; the run is the one that compiling them when called gives, bit for bit."""
  run = [*QUICK, "model.widths=[20]", "diagnostics=default", "diagnostics.every=100"]
  asked = []
  compile_ahead = fast.compile_ahead
  monkeypatch.setattr(fast, "compile_ahead", lambda calls: asked.append(len(calls)) or compile_ahead(calls))
  ahead = train_in_process(run, tmp_path / "ahead")
  assert asked == [2]  # the first chunk and the evaluation

  train.compile_program.cache_clear()
  jax.clear_caches()
  monkeypatch.setattr(fast, "compile_ahead", lambda calls: asked.append(len(calls)) or (lambda: None))
  when_called = train_in_process(run, tmp_path / "when_called")
  assert asked == [2, 2]
  assert (tmp_path / "ahead" / "metrics.jsonl").read_text() == (tmp_path / "when_called" / "metrics.jsonl").read_text()
  assert ahead["test/loss"] == when_called["test/loss"]


def test_values_change_results_without_recompiling(tmp_path):
  """A job that differs only in float values (and seed) reuses the compiled program, and the values count."""
  base = QUICK + ["regularizer=[l2,dropout]", "schedule=linear"]
  first = train_in_process(base, tmp_path / "a")
  compiles = compilation.count()
  changed = ["optimizer.lr=0.01", "optimizer.b1=0.8", "regularizer.l2.weight=0.01", "regularizer.dropout.rate=0.2",
             "schedule.end_factor=0.5", "init.scale=1.0", "seed=1"]
  second = train_in_process(base + changed, tmp_path / "b")
  assert compilation.count() == compiles, "a change of values recompiled the program"
  assert second["compile_time_s"] == 0.0
  assert first["compile_time_s"] > 0.0
  assert second["test/loss"] != first["test/loss"]
  lr = [json.loads(l)["train/learning_rate"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if "train/learning_rate" in l]
  # linear decay from 0.01 to 0.005 over 300 steps, logged as the mean over each window of 25 steps
  assert lr[0] == pytest.approx(0.01 * (1 - 0.5 * 12 / 300), rel=1e-4)
  assert lr[-1] == pytest.approx(0.01 * (1 - 0.5 * 287 / 300), rel=1e-4)


def test_a_leaked_constant_would_be_caught():
  """The program is built with every float set to 0, so a value baked into it as a constant would be 0."""
  structure, values = split_values({"optimizer": {"_target_": "optax.adam", "lr": 0.1, "b1": 0.9},
                                          "model": {"widths": [3], "activation": "relu"}})
  assert structure == {"optimizer": {"_target_": "optax.adam", "lr": 0.0, "b1": 0.0},
                       "model": {"widths": [3], "activation": "relu"}}
  assert values == {"optimizer": {"lr": 0.1, "b1": 0.9}, "model": {}}
  assert merge_values(structure, values)["optimizer"]["b1"] == 0.9


def test_divergence_is_recorded_not_raised(tmp_path):
  summary = train_in_process(QUICK + ["optimizer=sgd", "optimizer.lr=1e6"], tmp_path)
  assert summary["status"] == "diverged"
  assert 1 <= summary["diverged_at_step"] <= 300
  assert summary["steps_run"] == summary["diverged_at_step"] - 1
  assert "test/accuracy" not in summary


def test_the_training_curve_runs_up_to_the_step_before_divergence(tmp_path):
  """SGD at lr 30 on MNIST-1D diverges after some finite steps; the last, partial log window is written."""
  summary = train_in_process(QUICK + ["optimizer=sgd", "optimizer.lr=30", "log_every=1000"], tmp_path)
  assert summary["status"] == "diverged" and summary["diverged_at_step"] > 1
  points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [p["step"] for p in points if "train/loss" in p] == [summary["diverged_at_step"] - 1]


def test_epochs_set_the_number_of_steps(tmp_path):
  summary = train_in_process(QUICK + ["epochs=2", "batch_size=360"], tmp_path)
  assert summary["steps_run"] == 2 * (3600 // 360)


def test_the_batches_depend_on_the_step_alone_whatever_the_chunks(tmp_path):
  """9 steps an epoch: chunks of 7 start at every offset in an epoch and most reach into two more epochs, whose
  last order is drawn only then; one chunk of 36 covers the 4 epochs. Every step trains on the same batch."""
  losses = {}
  for chunk in (7, 36):
    workdir = tmp_path / str(chunk)
    train_in_process(QUICK + ["steps=36", f"eval_every={chunk}", "log_every=1", "batch_size=400",
                              "model.widths=[16]"], workdir)
    points = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[chunk] = [p["train/loss"] for p in points if "train/loss" in p]
  assert len(losses[7]) == 36
  assert losses[7] == pytest.approx(losses[36], rel=1e-5)


def test_chunks_cover_every_step_when_steps_is_not_a_multiple(tmp_path):
  summary = train_in_process(QUICK + ["steps=130", "eval_every=50", "log_every=20"], tmp_path)
  points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert summary["steps_run"] == 130
  assert [p["step"] for p in points if "train/loss" in p] == [20, 40, 60, 80, 100, 120, 130]
  assert [p["step"] for p in points if "val/loss" in p] == [50, 100, 130]
