"""The typed schema of every config group, and the range check that runs before training.

Each option file in `conf/<group>/` starts from one schema here (`defaults: [/<group>_<kind>_schema@_here_]`),
so Hydra rejects unknown keys and values of the wrong type while composing. Values out of their domain are
caught by `check_ranges`, which reads the `allowed` metadata of each field, so a key's domain is written once,
next to its type. Defaults live in the YAML files, not here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
  """A config value outside its domain; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Interval:
  lo: float = -math.inf
  hi: float = math.inf
  lo_open: bool = False
  hi_open: bool = False

  def __contains__(self, x: float) -> bool:
    above = x > self.lo if self.lo_open else x >= self.lo
    below = x < self.hi if self.hi_open else x <= self.hi
    return above and below

  def __str__(self) -> str:
    if self.hi == math.inf:
      return f"{'>' if self.lo_open else '>='} {self.lo:g}"
    if self.lo == -math.inf:
      return f"{'<' if self.hi_open else '<='} {self.hi:g}"
    return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def value(lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False, default=MISSING):
  """A numeric field whose allowed values are the interval from lo to hi."""
  return field(default=default, metadata={"allowed": Interval(lo, hi, lo_open, hi_open)})


def choice(*options: str, default=MISSING):
  """A string field that takes one of `options`."""
  return field(default=default, metadata={"allowed": options})


POSITIVE = dict(lo=0.0, lo_open=True)
FRACTION = dict(lo=0.0, hi=1.0, hi_open=True)  # [0, 1): momentum, betas, dropout and split fractions


# --- run level -------------------------------------------------------------------------------------------
@dataclass
class CheckpointConfig:
  every: Optional[int] = value(1)  # null: only at the end (and on SIGTERM/SIGINT)
  keep: Optional[int] = value(1)  # null: keep every checkpoint


@dataclass
class TrainConfig:
  seed: int = value(0)
  steps: int = value(1)
  epochs: Optional[int] = value(1)
  batch_size: int = value(1)
  eval_every: int = value(1)
  log_every: int = value(1)
  resume: bool = MISSING
  checkpoint: CheckpointConfig = MISSING
  data: Any = MISSING
  model: Any = MISSING
  init: Any = MISSING
  optimizer: Any = MISSING
  schedule: Any = MISSING
  regularizer: Dict[str, Any] = field(default_factory=dict)


# --- data ------------------------------------------------------------------------------------------------
@dataclass
class Mnist1dConfig:
  _target_: str = MISSING
  val_fraction: float = value(**FRACTION)
  split_seed: int = value(0)
  cache_dir: Optional[str] = None


@dataclass
class NpzConfig:
  _target_: str = MISSING
  path: str = MISSING
  val_fraction: float = value(**FRACTION)
  split_seed: int = value(0)


# --- model -----------------------------------------------------------------------------------------------
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu")


@dataclass
class MLPConfig:
  _target_: str = MISSING
  widths: List[int] = MISSING
  activation: str = choice(*ACTIVATIONS)


# --- init ------------------------------------------------------------------------------------------------
@dataclass
class VarianceScalingConfig:
  _target_: str = MISSING
  scale: float = value(**POSITIVE)
  mode: str = choice("fan_in", "fan_out", "fan_avg")
  distribution: str = choice("truncated_normal", "normal", "uniform")


@dataclass
class ConstantInitConfig:
  _target_: str = MISSING
  value: float = value()  # any real number (NaN is not); `value()` is the module function here


# --- optimizer: keys follow optax's argument names, except the base learning rate `lr` ---------------------
@dataclass
class OptimizerConfig:
  _target_: str = MISSING
  lr: float = value(**POSITIVE)


@dataclass
class SGDConfig(OptimizerConfig):
  momentum: Optional[float] = value(**FRACTION)
  nesterov: bool = MISSING


@dataclass
class AdamConfig(OptimizerConfig):
  b1: float = value(**FRACTION)
  b2: float = value(**FRACTION)
  eps: float = value(**POSITIVE)


# --- schedule: a multiplier of optimizer.lr over the steps ---------------------------------------------------
@dataclass
class ScheduleConfig:
  _target_: str = MISSING
  warmup_steps: int = value(0)


@dataclass
class LinearScheduleConfig(ScheduleConfig):
  end_factor: float = value(0.0)
  decay_steps: Optional[int] = value(1)


# --- regularizers: each lives under regularizer.<name> ----------------------------------------------------
@dataclass
class L2Config:
  weight: float = value(0.0)


@dataclass
class DropoutConfig:
  rate: float = value(**FRACTION)


SCHEMAS = {
    "train_schema": TrainConfig,
    "data_mnist1d_schema": Mnist1dConfig,
    "data_npz_schema": NpzConfig,
    "model_mlp_schema": MLPConfig,
    "init_variance_scaling_schema": VarianceScalingConfig,
    "init_constant_schema": ConstantInitConfig,
    "optimizer_sgd_schema": SGDConfig,
    "optimizer_adam_schema": AdamConfig,
    "schedule_constant_schema": ScheduleConfig,
    "schedule_linear_schema": LinearScheduleConfig,
    "regularizer_l2_schema": L2Config,
    "regularizer_dropout_schema": DropoutConfig,
}


def register_schemas() -> None:
  """Stores the schemas at the root of Hydra's config store, where the group files extend them."""
  store = ConfigStore.instance()
  for name, node in SCHEMAS.items():
    store.store(name=name, node=node, provider="trainlab")


def check_ranges(cfg: DictConfig, prefix: str = "") -> None:
  """Raises ConfigError for the first value outside the `allowed` domain of its schema field."""
  schema = OmegaConf.get_type(cfg)
  if dataclasses.is_dataclass(schema):
    for f in dataclasses.fields(schema):
      allowed = f.metadata.get("allowed")
      x = cfg.get(f.name)
      if allowed is None or x is None or OmegaConf.is_missing(cfg, f.name):
        continue
      if (isinstance(allowed, Interval) and x not in allowed) or (isinstance(allowed, tuple) and x not in allowed):
        what = str(allowed) if isinstance(allowed, Interval) else "one of " + ", ".join(allowed)
        raise ConfigError(f"{prefix}{f.name}={x} is not allowed: it must be {what}")
  for key in cfg:
    child = cfg.get(key)
    if isinstance(child, DictConfig):
      check_ranges(child, f"{prefix}{key}.")
