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
