"""Cutting a classification data set down for transfer experiments: a subset of its classes, renumbered, and a
smaller training split drawn with the data seed (`data.classes=[5,6,7,8,9] data.n_train=500`).

The cut is made after loading, on whatever data set the `data` group names, so every loader gets it without
code of its own. The inputs keep the standardization of the whole training split: runs on different subsets of
one data set (pretraining on some classes, transferring to others) then see the same input scale, which a
network loaded from another run needs.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np
from hydra.utils import get_method

from trainlab.data.core import DataError, Dataset

SUBSET_KEYS = ("classes", "n_train")


def split_config(data_cfg: dict) -> tuple[dict, dict]:
  """(the loader's own config, the cut's options): `classes` and `n_train` go to the cut, except `n_train` for a
  loader that takes it itself (a generated data set, which then generates that many training examples)."""
  loader_cfg = dict(data_cfg)
  takes = inspect.signature(get_method(loader_cfg["_target_"])).parameters
  cut = {key: loader_cfg.pop(key) for key in SUBSET_KEYS if key in loader_cfg and key not in takes}
  seed = data_cfg.get("split_seed", data_cfg.get("seed", 0))
  return loader_cfg, {"classes": cut.get("classes"), "n_train": cut.get("n_train"), "seed": seed}


def cut(dataset: Dataset, classes: Sequence[int] | None = None, n_train: int | None = None,
        seed: int = 0) -> Dataset:
  """The examples of `classes` only, labelled by their position in `classes` (classes=[5, 7]: 5 -> 0, 7 -> 1),
  in every split; then `n_train` training examples drawn at random (with `seed`) from what is left. Validation
  and test splits keep all their examples of those classes."""
  if classes is None and n_train is None:
    return dataset
  if classes is not None:
    dataset = _keep_classes(dataset, list(classes))
  if n_train is not None:
    have = len(dataset.y_train)
    if n_train > have:
      raise DataError(f"data.n_train={n_train} is not allowed: the training split has {have} examples"
                      f"{' of data.classes' if classes is not None else ''}; it must be <= {have}")
    keep = np.sort(np.random.default_rng(seed).permutation(have)[:n_train])
    dataset = dataset._replace(x_train=dataset.x_train[keep], y_train=dataset.y_train[keep])
  return dataset


def _keep_classes(dataset: Dataset, classes: list[int]) -> Dataset:
  if dataset.task != "classification":
    raise DataError(f"data.classes={classes} is not allowed: this data set is a {dataset.task} task; classes "
                    "apply to classification data only")
  bad = [c for c in classes if not 0 <= c < dataset.num_classes]
  if not classes or bad or len(set(classes)) != len(classes):
    problem = ("it is empty" if not classes else f"{bad[0]} is not a class" if bad else "a class is repeated")
    raise DataError(f"data.classes={classes} is not allowed: {problem}; it must list distinct classes among "
                    f"0..{dataset.num_classes - 1}")
  relabel = np.full(dataset.num_classes, -1, np.int32)
  relabel[classes] = np.arange(len(classes), dtype=np.int32)
  splits: dict[str, Any] = {}
  for split in ("train", "val", "test"):
    x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
    keep = relabel[y] >= 0
    if not keep.any():
      raise DataError(f"data.classes={classes}: the {split} split holds no example of these classes")
    splits[f"x_{split}"], splits[f"y_{split}"] = x[keep], relabel[y[keep]]
  return dataset._replace(**splits, num_classes=len(classes))
