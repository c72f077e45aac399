"""The presets of learning rates, schedules, batch sizes, regularization, Adam then SGD, staleness, distributed SGD
and the MNIST-1D baselines (conf/experiment/): each composes, each runs shortened, and where the claim holds with
a margin at small scale it is asserted. Also the expected calibration error a classification reports."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CONF, QUICK, run_cli, train_in_process
from test_presets import grid
from trainlab import losses

PRESETS = ("learning_rates", "schedules", "batch_size", "regularization", "adam_then_sgd", "staleness",
           "distributed_sgd", "mnist1d_baselines")


def numpy_ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
  """Guo et al. 2017: sum over equal-width confidence bins ((m-1)/M, m/M] of |B_m| / n · |acc(B_m) - conf(B_m)|."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  confidence, correct = probs.max(-1), probs.argmax(-1) == labels
  ece = 0.0
  for m in range(bins):
    inside = (confidence > m / bins) & (confidence <= (m + 1) / bins)
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  return ece


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_calibration_column_sums_give_the_expected_calibration_error(scale):
  rng = np.random.default_rng(0)
  logits = (scale * rng.normal(size=(500, 10))).astype(np.float32)
  labels = rng.integers(0, 10, 500)
  labels[:200] = logits[:200].argmax(-1)  # some confident and right, some wrong
  gaps = np.asarray(losses.calibration_gaps(logits, labels))
  assert gaps.shape == (500, losses.CALIBRATION_BINS)
  assert np.count_nonzero(gaps, axis=1).max() <= 1  # one bin per example
  ece = np.abs(gaps.sum(0)).sum() / len(labels)
  np.testing.assert_allclose(ece, numpy_ece(logits, labels), rtol=1e-5, atol=1e-6)
  assert ece > 0.01


def test_the_runs_test_ece_is_numpys_on_its_final_logits(tmp_path):
  """Logistic regression (an MLP without hidden layers), so that the test logits are x W + b of the saved
  parameters: the summary's test/ece equals NumPy's ECE of them."""
  from conftest import compose_config
  from trainlab import train, transfer

  overrides = [*QUICK, "model.widths=[]"]
  summary = train_in_process(overrides, tmp_path)
  params, _, _ = transfer.read_source(str(tmp_path), "last")
  dataset = train.load_data(compose_config(overrides).data)
  layer = params["Dense_0"]
  logits = dataset.x_test.reshape(len(dataset.x_test), -1) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
  assert abs((logits.argmax(-1) == dataset.y_test).mean() - summary["test/accuracy"]) < 1e-6
  assert summary["test/ece"] > 0.001
  np.testing.assert_allclose(summary["test/ece"], numpy_ece(logits, dataset.y_test), rtol=1e-4, atol=1e-6)


def test_preset_b_starts_with_its_command_and_sources():
  for name in PRESETS:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), name
    comment = text.split("\ndefaults:")[0]
    assert f"`trainlab train -m experiment={name}`" in comment and "[00" in comment and "Look at" in comment, name


@pytest.mark.parametrize("name", PRESETS)
def test_preset_b_composes_with_cfg_job(name, tmp_path):
  printed = run_cli("train", f"experiment={name}", "--cfg", "job", cwd=tmp_path).stdout
  assert printed.startswith("seed: 0\n") and "\nmodel:\n  _target_: trainlab.models." in printed
  assert len(grid(name)) >= 3


@pytest.mark.parametrize("name", PRESETS)
def test_preset_b_runs_shortened(name, tmp_path):
  """The preset's first job, a few steps long (epochs=1 where the preset counts in epochs)."""
  first = grid(name)[0]
  length, steps = (["epochs=1"], 3600 // 16) if name == "batch_size" else (["steps=20"], 20)  # batch_size=16 first
  summary = train_in_process([f"experiment={name}", *first, *length, "eval_every=10", "log_every=10",
                              "checkpoint.every=null"], tmp_path)
  assert summary["status"] == "completed" and summary["steps_run"] == steps


@pytest.mark.parametrize("model", ["cnn", "gru"])
def test_mnist1d_baseline_models_compose(model, tmp_path):
  printed = run_cli("train", "experiment=mnist1d_baselines", f"+experiment/mnist1d_baseline={model}", "--cfg", "job",
                    cwd=tmp_path).stdout
  assert f"_target_: trainlab.models.{model.upper()}" in printed and "lr: 0.01" in printed


def test_batch_size_preset_gives_every_batch_size_the_same_examples(tmp_path):
  """epochs= sets steps = epochs * (n_train // batch_size): the steps scale inversely with the batch size."""
  for batch in (128, 1024):
    summary = train_in_process(["experiment=batch_size", f"batch_size={batch}", "epochs=2", "eval_every=10",
                                "checkpoint.every=null"], tmp_path / str(batch))
    assert summary["steps_run"] == 2 * (3600 // batch)


def test_a_too_large_learning_rate_diverges_as_data_and_a_good_one_beats_a_too_small_one(tmp_path):
  runs = {lr: train_in_process(["experiment=learning_rates", f"optimizer.lr={lr}", "steps=300", "eval_every=100",
                                "checkpoint.every=null"], tmp_path / str(lr)) for lr in (0.001, 0.1, 10.0)}
  assert runs[10.0]["status"] == "diverged" and runs[10.0]["diverged_at_step"] is not None
  assert runs[0.1]["status"] == runs[0.001]["status"] == "completed"
  assert runs[0.1]["test/accuracy"] > runs[0.001]["test/accuracy"] + 0.1, runs


def _accuracy(preset: str, overrides: list[str], workdir) -> float:
  summary = train_in_process([f"experiment={preset}", *overrides, "eval_every=100", "checkpoint.every=null"], workdir)
  assert summary["status"] == "completed", summary
  return summary["test/accuracy"]


@pytest.mark.slow
def test_gradients_16_steps_stale_do_not_learn_at_a_rate_fresh_ones_do(tmp_path):
  """lr 0.3: fresh gradients reach about 0.6 in 800 steps; applied 16 steps late they oscillate near chance."""
  fresh, stale = (_accuracy("staleness", [f"optimizer.staleness={k}", "optimizer.lr=0.3", "steps=800"],
                            tmp_path / str(k)) for k in (0, 16))
  assert fresh > stale + 0.2, (fresh, stale)


@pytest.mark.slow
def test_backup_workers_cost_little_and_stale_gradients_cost_more(tmp_path):
  """8 workers: dropping 2 stragglers a step stays within a few points of synchronous SGD; staleness 7 falls behind."""
  runs = {name: _accuracy("distributed_sgd", [*job, "steps=1000"], tmp_path / name) for name, job in
          {"sync": [], "backup": ["optimizer.backup_workers=2"], "stale": ["optimizer.staleness=7"]}.items()}
  assert abs(runs["backup"] - runs["sync"]) < 0.04, runs
  assert runs["stale"] < runs["sync"] - 0.02, runs


@pytest.mark.slow
def test_the_linear_scaling_rule_with_warmup_beats_the_small_batchs_rate_at_batch_1024(tmp_path):
  """30 epochs at batch 1024 (90 steps): lr 0.64 = 0.01 * 1024 / 16 with 15 warmup steps learns more than lr 0.01
  (measured 0.46 against 0.29)."""
  scaled, unscaled = (_accuracy("batch_size", ["batch_size=1024", *job], tmp_path / str(i)) for i, job in
                      enumerate([["optimizer.lr=0.64", "schedule.warmup_steps=15"], ["optimizer.lr=0.01"]]))
  assert scaled > unscaled + 0.08, (scaled, unscaled)


@pytest.mark.slow
def test_on_400_examples_augmentation_shrinks_the_gap_and_label_smoothing_the_calibration_error(tmp_path):
  """The MLP memorizes 400 examples (train accuracy 1); measured at 2000 steps: test accuracy 0.29 alone, 0.44 with
  augmentation; ECE 0.50 alone, 0.11 with label smoothing."""
  runs = {name: train_in_process(["experiment=regularization", f"regularizer=[{name}]", "steps=1000",
                                  "checkpoint.every=null"], tmp_path / (name or "none"))
          for name in ("", "augment", "label_smoothing")}
  assert runs["augment"]["test/accuracy"] > runs[""]["test/accuracy"] + 0.06, runs
  assert runs["label_smoothing"]["test/ece"] < 0.5 * runs[""]["test/ece"], runs
