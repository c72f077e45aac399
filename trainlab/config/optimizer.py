"""The schemas of the optimizer group (keys follow optax's argument names, except the base learning rate `lr`)
and of the schedule group (a multiplier of optimizer.lr over the steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from trainlab.config.schema import FRACTION, MISSING, POSITIVE, TargetConfig, schema, value


@dataclass
class OptimizerConfig(TargetConfig):
  """The keys every optimizer takes (conf/optimizer_common.yaml), and its learning rate."""
  lr: float = value(**POSITIVE)
  staleness: int = value(0)  # apply the gradient computed this many steps ago (asynchronous SGD); 0: off
  workers: int = value(1)  # synchronous SGD: each batch is split into this many worker shards (trainlab.backup_workers)
  backup_workers: int = value(0)  # of which this many, drawn each step, straggle and are dropped; 0: none
  clip_value: Optional[float] = value(**POSITIVE)  # clip each gradient component to [-c, c]; null: off
  clip_norm: Optional[float] = value(**POSITIVE)  # g <- g min(1, c / ||g||), the global norm; null: off
  noise_eta: Optional[float] = value(0.0)  # gradient noise N(0, eta / (1 + t)^gamma); null: off
  noise_gamma: float = value(0.0)
  then: Optional[Any] = None  # a second optimizer's config, used from switch_step on
  switch_step: Optional[int] = value(0)


@schema("optimizer_sgd_schema")
class SGDConfig(OptimizerConfig):
  momentum: Optional[float] = value(**FRACTION)
  nesterov: bool = MISSING


@schema("optimizer_adagrad_schema")
class AdagradConfig(OptimizerConfig):
  initial_accumulator_value: float = value(0.0)
  eps: float = value(**POSITIVE)


@schema("optimizer_rmsprop_schema")
class RMSPropConfig(OptimizerConfig):
  decay: float = value(**FRACTION)
  eps: float = value(**POSITIVE)
  momentum: Optional[float] = value(**FRACTION)
  centered: bool = MISSING
  nesterov: bool = MISSING


@schema("optimizer_adam_schema")
class AdamConfig(OptimizerConfig):
  b1: float = value(**FRACTION)
  b2: float = value(**FRACTION)
  eps: float = value(**POSITIVE)


@schema("optimizer_adamw_schema")
class AdamWConfig(AdamConfig):
  weight_decay: float = value(0.0)


@schema("schedule_constant_schema")
class ScheduleConfig(TargetConfig):
  warmup_steps: int = value(0)


@schema("schedule_linear_schema")
class LinearScheduleConfig(ScheduleConfig):
  end_factor: float = value(0.0)
  decay_steps: Optional[int] = value(1)


@schema("schedule_step_schema")
class StepScheduleConfig(ScheduleConfig):
  gamma: float = value(**POSITIVE)
  step_size: int = value(1)


@schema("schedule_exponential_schema")
class ExponentialScheduleConfig(ScheduleConfig):
  decay_rate: float = value(**POSITIVE)
  decay_steps: Optional[int] = value(1)
  staircase: bool = MISSING


@schema("schedule_inverse_time_schema")
class InverseTimeScheduleConfig(ScheduleConfig):
  decay_rate: float = value(0.0)
  decay_steps: int = value(1)


@schema("schedule_cosine_schema")
class CosineScheduleConfig(ScheduleConfig):
  end_factor: float = value(0.0, 1.0)
  decay_steps: Optional[int] = value(1)

