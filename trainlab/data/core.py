"""Data sets as arrays: train, validation and test splits, standardized with training statistics.

Every loader returns a `Dataset` of NumPy arrays; the training loop puts them on the device once. Loaders
never download into the working directory and never unpickle anything a user hands in.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from typing import NamedTuple

import numpy as np

from trainlab.rundir import atomic


class DataError(ValueError):
  """A data file that is missing or malformed; the message names the file and the problem."""


LAYOUTS = ("vector", "sequence", "image")  # unordered features (N, D); (N, T) or (N, T, F); (N, H, W, C)
TASKS = ("classification", "regression", "objective")  # objective: an analytic problem's f (data=analytic)
NPZ_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
MAX_CLASSES = 1 << 20  # a label beyond this is a corrupt file, not a classification problem (it sizes the model)


class Dataset(NamedTuple):
  """Arrays of the three splits. Classification: integer labels y (N,), `num_classes` classes. Regression:
  float targets y (N, num_classes), so `num_classes` is the number of outputs either way."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  task: str = "classification"  # chooses the loss and the metric (losses.TASKS), not the user
  layout: str = "vector"  # what an example's axes mean; decides which models can read it


def labels_missing_from_training(dataset: Dataset) -> dict[str, list[int]]:
  """{split: its labels that never occur in the training split} for the validation and test splits of a
  classification data set (those whose labels all occur are left out): the model is never trained to predict
  them, so every example with one counts as an error."""
  if dataset.task != "classification":
    return {}
  seen = set(np.unique(dataset.y_train).tolist())
  found = {split: sorted(set(np.unique(y).tolist()) - seen) for split, y in (("val", dataset.y_val),
                                                                              ("test", dataset.y_test))}
  return {split: labels for split, labels in found.items() if labels}


def resolve_cache_dir(configured: str | None = None) -> pathlib.Path:
  """Where generated data sets are kept: the configured folder, $TRAINLAB_CACHE, or ~/.cache/trainlab."""
  path = configured or os.environ.get("TRAINLAB_CACHE") or pathlib.Path.home() / ".cache" / "trainlab"
  return pathlib.Path(path).expanduser()


def mnist1d(val_fraction: float, split_seed: int, cache_dir: str | None = None) -> Dataset:
  """MNIST-1D (Greydanus 2020) from the `mnist1d` package's generator with its default arguments.

  The 4,000/1,000 train/test split is the generator's own; the first run writes it to the cache, so later
  runs load a small .npz instead of generating it again.
  """
  path = resolve_cache_dir(cache_dir) / "mnist1d.npz"
  if not path.exists():
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib, scipy): only once

    made = make_dataset(get_dataset_args())
    _save_npz_atomically(path, x_train=made["x"], y_train=made["y"], x_test=made["x_test"], y_test=made["y_test"])
  return npz(str(path), val_fraction, split_seed, layout="sequence")
mnist1d.layout = "sequence"  # its examples' layout (LAYOUTS): models.check_input lists the data options by it


def npz(path: str, val_fraction: float, split_seed: int, layout: str | None = None) -> Dataset:
  """A user's arrays from one .npz: x_train, y_train, x_test, y_test, and optionally x_val, y_val.

  `layout` None infers it from the rank of x: (N, D) vectors, (N, T, F) sequences, (N, H, W, C) images.
  """
  file = pathlib.Path(path).expanduser()
  arrays = _read_npz(file)
  splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])
  _check_splits(file, arrays, splits)
  x_train, y_train = arrays["x_train"], arrays["y_train"]
  if "x_val" in arrays:
    x_val, y_val = arrays["x_val"], arrays["y_val"]
  else:
    x_train, y_train, x_val, y_val = hold_out(x_train, y_train, val_fraction, split_seed)
    if not len(y_val) or not len(y_train):
      empty = "validation" if not len(y_val) else "training"
      raise DataError(f"data file {file}: holding out data.val_fraction={val_fraction} of its "
                      f"{len(y_train) + len(y_val)} training examples leaves the {empty} split empty")
  x_train, x_val, x_test = standardize(x_train, x_val, arrays["x_test"])
  if not all(np.isfinite(x).all() for x in (x_train, x_val, x_test)):
    raise DataError(f"data file {file}: its inputs are too large for float32 arithmetic (standardizing overflows)")
  num_classes = int(max(y.max(initial=0) for y in (y_train, y_val, arrays["y_test"]))) + 1
  as_labels = lambda y: y.astype(np.int32)
  layout = layout or {2: "vector", 3: "sequence"}.get(x_train.ndim, "image")
  return Dataset(x_train, as_labels(y_train), x_val, as_labels(y_val), x_test, as_labels(arrays["y_test"]),
                 num_classes, layout=layout)
npz.layout = None  # any: from the rank of its arrays, or data.layout


def _read_npz(file: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays of NPZ_ARRAYS that `file` holds, each a real .npy array, with the required ones present."""
  if not file.is_file():
    raise DataError(f"data file {file} does not exist (data.path)")
  try:
    with zipfile.ZipFile(file) as archive:  # the sizes before loading: a file larger than memory stops here
      check_fits_in_memory(sum(info.file_size for info in archive.infolist()), f"data file {file}")
  except zipfile.BadZipFile as e:
    raise DataError(f"data file {file} is not a readable .npz archive: {e}") from None
  try:
    with np.load(file, allow_pickle=False) as archive:
      # Only our arrays are read; a member that is not an .npy array comes back as bytes and is refused below.
      arrays = {name: archive[name] for name in archive.files if name in NPZ_ARRAYS}
  except Exception as e:  # zipfile, format, pickle and memory errors all mean the same thing to the user
    raise DataError(f"data file {file} is not a readable .npz archive: {type(e).__name__}: {e}") from None
  for name, array in arrays.items():
    if not isinstance(array, np.ndarray):
      raise DataError(f"data file {file}: {name} is not a .npy array")
  required = ["x_train", "y_train", "x_test", "y_test"]
  missing = [name for name in required if name not in arrays]
  if ("x_val" in arrays) != ("y_val" in arrays):
    missing.append("y_val" if "x_val" in arrays else "x_val")
  if missing:
    raise DataError(f"data file {file} lacks the array(s) {', '.join(missing)}; it has {', '.join(arrays) or 'none'}")
  return arrays


def _check_splits(file: pathlib.Path, arrays: dict, splits: list[str]) -> None:
  """Raises DataError unless every split holds finite real inputs, integer labels and one shape of example."""
  for split in splits:
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
      raise DataError(
          f"data file {file}: x_{split} {x.shape} and y_{split} {y.shape} must hold one row per label "
          "(x at least 2-D, y 1-D, the same length)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
            or np.issubdtype(x.dtype, np.bool_)):
      raise DataError(f"data file {file}: x_{split} has dtype {x.dtype}; it must be real numbers")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
      raise DataError(f"data file {file}: y_{split} has dtype {y.dtype}; labels must be integer classes")
    if len(y) == 0:
      raise DataError(f"data file {file}: x_{split} is empty")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
      bad = y.min() if y.min() < 0 else y.max()
      raise DataError(f"data file {file}: y_{split} has the label {bad}; classes are 0, 1, ..., at most "
                      f"{MAX_CLASSES - 1}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
      raise DataError(f"data file {file}: x_{split} holds NaN or infinite values")
  shapes = {arrays[f"x_{split}"].shape[1:] for split in splits}
  if len(shapes) > 1:
    raise DataError(f"data file {file}: the splits' examples have different shapes {sorted(shapes)}")


def hold_out(x, y, fraction: float, seed: int):
  """Splits a random `fraction` of (x, y) off as a validation set."""
  order = np.random.default_rng(seed).permutation(len(y))
  n_val = int(round(fraction * len(y)))
  val, train = order[:n_val], order[n_val:]
  return x[train], y[train], x[val], y[val]


def standardize(x_train, *others):
  """Zero mean, unit variance per feature (per channel for images), with statistics of x_train only."""
  axes = tuple(range(x_train.ndim - 1))
  x_train = x_train.astype(np.float32)
  mean = x_train.mean(axis=axes, keepdims=True)
  std = x_train.std(axis=axes, keepdims=True)
  std = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of becoming NaN
  return tuple(((x.astype(np.float32) - mean) / std).astype(np.float32) for x in (x_train, *others))


def _save_npz_atomically(path: pathlib.Path, **arrays) -> None:
  """Writes the cache whole or not at all, so that a reader never sees half a file."""
  with atomic.replacing(path) as f:
    np.savez(f, **arrays)


def available_memory() -> int:
  """Bytes of memory available to this process now (MemAvailable on Linux)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits_in_memory(nbytes: int, what: str) -> None:
  """Stops before loading `nbytes` of data when they exceed half the available memory.

  Half, because loading makes a float32 copy beside the raw arrays, and the device needs its own.
  """
  limit = available_memory() // 2
  if nbytes > limit:
    gib = lambda n: f"{n:,} bytes ({n / 2**30:.2f} GiB)"
    raise DataError(f"{what} needs {gib(nbytes)} in memory, more than the limit of {gib(limit)} (half the "
                    "memory available now); use a smaller data set or a machine with more memory")
