"""The schemas of the regularizer group: each regularizer lives under regularizer.<name>, and its schema is
registered here as regularizer_<name>_schema."""

from __future__ import annotations

from dataclasses import field
from typing import List, Optional

from trainlab.config.schema import FRACTION, MISSING, POSITIVE, choice, schema, value


@schema("regularizer_l2_schema")
class L2Config:
  weight: float = value(0.0)


@schema("regularizer_l1_schema")
class L1Config:
  weight: float = value(0.0)
  proximal: bool = MISSING  # soft-threshold the weights after each step instead of adding the penalty's gradient


@schema("regularizer_weight_decay_schema")
class WeightDecayConfig:
  weight: float = value(0.0)


@schema("regularizer_max_norm_schema")
class MaxNormConfig:
  r: float = value(**POSITIVE)


@schema("regularizer_dropout_schema")
class DropoutConfig:
  rate: float = value(**FRACTION)


@schema("regularizer_early_stopping_schema")
class EarlyStoppingConfig:
  patience: int = value(1)
  metric: str = choice("accuracy", "loss", "mse", "distance")


@schema("regularizer_label_smoothing_schema")
class LabelSmoothingConfig:
  eps: float = value(**FRACTION)


@schema("regularizer_confidence_penalty_schema")
class ConfidencePenaltyConfig:
  beta: float = value(0.0)


@schema("regularizer_augment_schema")
class AugmentConfig:
  noise: float = value(0.0)  # std of additive Gaussian noise
  shift: int = value(0)  # vectors and sequences: circular shift by up to this many positions
  crop: int = value(0)  # images: pad by this many pixels, then crop back at a random offset
  flip: bool = MISSING  # images: random horizontal flips



@schema("regularizer_distill_schema")
class DistillConfig:
  teacher: str = field(default=MISSING, metadata={"example": "outputs/runs/DATE/TIME"})  # a run directory
  teacher_overrides: Optional[List[str]] = None  # or the overrides that train it (trainlab.rundir.on_demand)
  checkpoint: str = MISSING  # last, best or a step number of the teacher's run
  temperature: float = value(**POSITIVE)
  alpha: float = value(0.0, 1.0)
