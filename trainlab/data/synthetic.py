"""Generated data sets, small and seeded, that run anywhere: two spirals, a random teacher network, and
Hochreiter & Schmidhuber's adding problem. The same seed gives the same arrays."""

from __future__ import annotations

import numpy as np

from trainlab.data.core import Dataset, check_fits_in_memory


def _sizes(n_train: int, n_val: int, n_test: int) -> np.ndarray:
  return np.cumsum([n_train, n_val])


def spirals(n_train: int, n_val: int, n_test: int, num_classes: int, turns: float, noise: float, seed: int) -> Dataset:
  """Interleaved spirals in the plane: class k's points are r (cos a, sin a) with r ~ U(0, 1),
  a = 2 pi (turns r + k / num_classes), plus N(0, noise^2) on each coordinate."""
  rng = np.random.default_rng(seed)
  n = n_train + n_val + n_test
  y = rng.integers(0, num_classes, n)
  r = rng.uniform(0.0, 1.0, n)
  angle = 2 * np.pi * (turns * r + y / num_classes)
  x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) + noise * rng.normal(size=(n, 2))
  x_train, x_val, x_test = np.split(x.astype(np.float32), _sizes(n_train, n_val, n_test))
  y_train, y_val, y_test = np.split(y.astype(np.int32), _sizes(n_train, n_val, n_test))
  return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, layout="vector")
spirals.layout = "vector"  # its examples' layout (LAYOUTS): models.check_input lists the data options by it


def teacher(task: str, n_train: int, n_val: int, n_test: int, input_dim: int, widths: list[int], outputs: int,
            noise: float, seed: int) -> Dataset:
  """Targets from a fixed random tanh network (the teacher) of x ~ N(0, I).

  The teacher's layers have N(0, 1/fan_in) weights; its outputs are scaled to unit variance. Regression: the
  targets are those outputs plus N(0, noise^2), so predicting 0 costs an MSE of about 1 + noise^2. Classification:
  the label is the arg-max of the outputs plus that noise (`outputs` classes). Deeper, wider teachers are harder.
  """
  rng = np.random.default_rng(seed)
  n = n_train + n_val + n_test
  check_fits_in_memory(4 * n * input_dim, "data set teacher")
  x = rng.normal(size=(n, input_dim))
  h = x
  for i, width in enumerate([*widths, outputs]):
    h = h @ (rng.normal(size=(h.shape[1], width)) / np.sqrt(h.shape[1]))
    if i < len(widths):
      h = np.tanh(h)
  h = h / h[:n_train].std(axis=0)
  target = h + noise * rng.normal(size=h.shape)
  xs = np.split(x.astype(np.float32), _sizes(n_train, n_val, n_test))
  if task == "regression":
    ys = np.split(target.astype(np.float32), _sizes(n_train, n_val, n_test))
  else:
    ys = np.split(target.argmax(axis=1).astype(np.int32), _sizes(n_train, n_val, n_test))
  return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], outputs, task=task, layout="vector")
teacher.layout = "vector"


def adding(length: int, n_train: int, n_val: int, n_test: int, seed: int) -> Dataset:
  """The adding problem (Hochreiter & Schmidhuber 1997; in the form of Le et al. 2015): each step carries a value
  ~ U(0, 1) and a marker; one marker sits in the first half, one in the second, and the target is the sum of
  the two marked values. Predicting 1 always costs Var(U1 + U2) = 2/12 ~ 0.167 MSE."""
  rng = np.random.default_rng(seed)
  n = n_train + n_val + n_test
  check_fits_in_memory(4 * n * length * 2, "data set adding")
  values = rng.uniform(0.0, 1.0, (n, length))
  half = length // 2
  first = rng.integers(0, half, n)
  second = rng.integers(half, length, n)
  markers = np.zeros((n, length))
  markers[np.arange(n), first] = 1.0
  markers[np.arange(n), second] = 1.0
  x = np.stack([values, markers], axis=-1).astype(np.float32)
  y = (values[np.arange(n), first] + values[np.arange(n), second])[:, None].astype(np.float32)
  xs = np.split(x, _sizes(n_train, n_val, n_test))
  ys = np.split(y, _sizes(n_train, n_val, n_test))
  return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], 1, task="regression", layout="sequence")
adding.layout = "sequence"
