"""The examples of an analytic test problem (trainlab.models.analytic): draws of its gradient noise.

An analytic problem's loss is f(θ) plus noise · (S ξ)ᵀ θ for an example ξ, so its "data set" is a set of draws
ξ ~ N(0, I): a batch's mean gradient is ∇f(θ) plus noise that shrinks with the batch size, and an epoch walks
through the draws as through any training split. Validation and test hold the one example ξ = 0, where the
loss is f(θ) itself.
"""

from __future__ import annotations

import numpy as np

from trainlab.data.core import Dataset, check_fits_in_memory


def analytic(dim: int, n_train: int, seed: int) -> Dataset:
  """`n_train` draws ξ ~ N(0, I_dim), centred so that an epoch's noise averages exactly 0 (the mean gradient of an
  epoch is then ∇f, as the noisy quadratic model has it), and ξ = 0 for validation and test.

  Drawn without replacement within an epoch, a batch of B of the N draws has noise covariance (N - B) / (N - 1)
  times that of B independent draws: within 1.6% for the defaults (N = 8192, B <= 128).
  """
  check_fits_in_memory(4 * n_train * dim, "data set analytic")
  draws = np.random.default_rng(seed).standard_normal((n_train, dim))
  x_train = (draws - draws.mean(axis=0)).astype(np.float32)
  zero = np.zeros((1, dim), np.float32)
  targets = lambda n: np.zeros((n, 1), np.float32)  # unread: the problem's loss has no target
  return Dataset(x_train, targets(n_train), zero, targets(1), zero, targets(1), 1, task="objective", layout="noise")
analytic.layout = "noise"  # its examples' layout: only the analytic problems (models.analytic) read it
