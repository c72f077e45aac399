"""The schemas of the data group: one per kind of data set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from trainlab.config.schema import FRACTION, HELD_OUT, MISSING, TargetConfig, choice, schema, value


@dataclass
class ClassSubsetConfig(TargetConfig):
  """The cut every classification data set takes (trainlab.data.subsets): a subset of its classes, renumbered
  in the order listed, and a smaller training split drawn with the data seed. null: all of them."""
  classes: Optional[List[int]] = None
  n_train: Optional[int] = value(1, default=None)


@schema("data_mnist1d_schema")
class Mnist1dConfig(ClassSubsetConfig):
  val_fraction: float = value(**HELD_OUT)
  split_seed: int = value(0)
  cache_dir: Optional[str] = None


@schema("data_npz_schema")
class NpzConfig(ClassSubsetConfig):
  path: str = field(default=MISSING, metadata={"example": "my_data.npz"})  # the one `???` of conf/
  val_fraction: float = value(**HELD_OUT)
  split_seed: int = value(0)
  layout: Optional[str] = choice("vector", "sequence", "image", default=None)


@schema("data_image_schema")
class ImageDataConfig(ClassSubsetConfig):
  """mnist, fashion_mnist, cifar10: files in <root>/<name>/, downloaded there when missing."""
  root: Optional[str] = None
  download: bool = MISSING
  url: Optional[str] = None
  val_fraction: float = value(**FRACTION)
  split_seed: int = value(0)


@schema("data_digits_schema")
class DigitsConfig(ClassSubsetConfig):
  val_fraction: float = value(**FRACTION)
  test_fraction: float = value(0.0, 1.0, lo_open=True, hi_open=True)
  split_seed: int = value(0)


@schema("data_sequential_schema")
class SequentialConfig(ClassSubsetConfig):
  source: str = choice("digits", "mnist", "fashion_mnist", "cifar10")
  order: str = choice("pixel", "row")
  permute: bool = MISSING
  root: Optional[str] = None
  download: bool = MISSING
  val_fraction: float = value(**FRACTION)
  test_fraction: float = value(0.0, 1.0, lo_open=True, hi_open=True)
  split_seed: int = value(0)


@schema("data_spirals_schema")
class SpiralsConfig(TargetConfig):
  classes: Optional[List[int]] = None  # generated sets make n_train examples themselves; classes cut them after
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  num_classes: int = value(2)
  turns: float = value(0.0)
  noise: float = value(0.0)
  seed: int = value(0)


@schema("data_teacher_schema")
class TeacherConfig(TargetConfig):
  task: str = choice("classification", "regression")
  classes: Optional[List[int]] = None  # classification only
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  input_dim: int = value(1)
  widths: List[int] = value(1)  # each layer at least one unit
  outputs: int = value(1)
  noise: float = value(0.0)
  seed: int = value(0)


@schema("data_adding_schema")
class AddingConfig(TargetConfig):
  length: int = value(2)
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  seed: int = value(0)



@schema("data_analytic_schema")
class AnalyticConfig(TargetConfig):
  dim: int = value(1)  # the problem's dimension: model.dim, or 2 for the problems in the plane
  n_train: int = value(1)
  seed: int = value(0)
