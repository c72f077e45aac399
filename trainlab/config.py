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
FRACTION = dict(lo=0.0, hi=1.0, hi_open=True)  # [0, 1): momentum, betas, dropout rates
HELD_OUT = dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # (0, 1): a validation split must not be empty


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
  diagnostics: Any = MISSING
  report: Any = MISSING


# --- data ------------------------------------------------------------------------------------------------
@dataclass
class Mnist1dConfig:
  _target_: str = MISSING
  val_fraction: float = value(**HELD_OUT)
  split_seed: int = value(0)
  cache_dir: Optional[str] = None


@dataclass
class NpzConfig:
  _target_: str = MISSING
  path: str = MISSING
  val_fraction: float = value(**HELD_OUT)
  split_seed: int = value(0)
  layout: Optional[str] = choice("vector", "sequence", "image", default=None)


@dataclass
class ImageDataConfig:
  """mnist, fashion_mnist, cifar10: files in <root>/<name>/, downloaded there when missing."""
  _target_: str = MISSING
  root: Optional[str] = None
  download: bool = MISSING
  url: Optional[str] = None
  val_fraction: float = value(**FRACTION)
  split_seed: int = value(0)


@dataclass
class DigitsConfig:
  _target_: str = MISSING
  val_fraction: float = value(**FRACTION)
  test_fraction: float = value(0.0, 1.0, lo_open=True, hi_open=True)
  split_seed: int = value(0)


@dataclass
class SequentialConfig:
  _target_: str = MISSING
  source: str = choice("digits", "mnist", "fashion_mnist", "cifar10")
  order: str = choice("pixel", "row")
  permute: bool = MISSING
  root: Optional[str] = None
  download: bool = MISSING
  val_fraction: float = value(**FRACTION)
  test_fraction: float = value(0.0, 1.0, lo_open=True, hi_open=True)
  split_seed: int = value(0)


@dataclass
class SpiralsConfig:
  _target_: str = MISSING
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  num_classes: int = value(2)
  turns: float = value(0.0)
  noise: float = value(0.0)
  seed: int = value(0)


@dataclass
class TeacherConfig:
  _target_: str = MISSING
  task: str = choice("classification", "regression")
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  input_dim: int = value(1)
  widths: List[int] = MISSING
  outputs: int = value(1)
  noise: float = value(0.0)
  seed: int = value(0)


@dataclass
class AddingConfig:
  _target_: str = MISSING
  length: int = value(2)
  n_train: int = value(1)
  n_val: int = value(1)
  n_test: int = value(1)
  seed: int = value(0)


# --- model -----------------------------------------------------------------------------------------------
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "rrelu", "elu", "gelu", "silu")
NORMS = ("none", "batch", "layer")


@dataclass
class ActivationConfig:
  """The activation of a model's hidden layers and its floats (models.activations.Activation)."""
  _target_: str = MISSING
  activation: str = choice(*ACTIVATIONS)
  alpha: float = value(0.0)  # leaky_relu's negative slope
  rrelu_lower: float = value(0.0, 1.0)
  rrelu_upper: float = value(0.0, 1.0)


@dataclass
class MLPConfig(ActivationConfig):
  widths: List[int] = MISSING
  norm: str = choice(*NORMS)
  batch_momentum: float = value(**FRACTION)


@dataclass
class CNNConfig(ActivationConfig):
  features: List[int] = MISSING
  kernel_size: int = value(1)
  widths: List[int] = MISSING
  conv_impl: str = choice("auto", "xla", "im2col")  # conv.IMPLS


@dataclass
class ResNetConfig(ActivationConfig):
  features: List[int] = MISSING
  blocks: int = value(1)
  kernel_size: int = value(1)
  norm: str = choice("batch", "layer", "none")
  conv_impl: str = choice("auto", "xla", "im2col")  # conv.IMPLS


@dataclass
class RNNConfig:
  _target_: str = MISSING
  hidden: int = value(1)
  layers: int = value(1)
  activation: str = choice("tanh", "relu")


@dataclass
class LSTMConfig:
  _target_: str = MISSING
  hidden: int = value(1)
  layers: int = value(1)
  forget_bias: float = value()  # any real number


@dataclass
class GRUConfig:
  _target_: str = MISSING
  hidden: int = value(1)
  layers: int = value(1)


@dataclass
class LinearChainConfig:
  _target_: str = MISSING
  depth: int = value(1)
  width: int = value(1)


# --- init: the weight initializer's own keys, and `bias`, `output_bias` for the biases -------------------
@dataclass
class InitConfig:
  _target_: str = MISSING
  bias: float = value()  # any real number; every bias of a dense or convolutional layer starts at this constant
  output_bias: Optional[str] = choice("marginal", default=None)  # marginal: log class frequencies
  recurrent: str = choice("same", "identity", "orthogonal")  # the recurrent kernels of rnn, lstm, gru
  recurrent_gain: float = value(**POSITIVE)


@dataclass
class VarianceScalingConfig(InitConfig):
  scale: float = value(**POSITIVE)
  mode: str = choice("fan_in", "fan_out", "fan_avg")
  distribution: str = choice("truncated_normal", "normal", "uniform")


@dataclass
class ConstantInitConfig(InitConfig):
  value: float = value()  # any real number (NaN is not); `value()` is the module function here


@dataclass
class NormalInitConfig(InitConfig):
  stddev: float = value(**POSITIVE)


@dataclass
class UniformInitConfig(InitConfig):
  scale: float = value(**POSITIVE)


@dataclass
class OrthogonalInitConfig(InitConfig):
  gain: float = value(**POSITIVE)  # W^T W = gain^2 I


@dataclass
class SparseInitConfig(InitConfig):
  k: int = value(1)
  scale: float = value(**POSITIVE)


@dataclass
class IdentityInitConfig(InitConfig):
  gain: float = value(**POSITIVE)
  non_square: str = choice("error", "eye", "orthogonal")


# --- optimizer: keys follow optax's argument names, except the base learning rate `lr` ---------------------
@dataclass
class OptimizerConfig:
  _target_: str = MISSING
  lr: float = value(**POSITIVE)
  staleness: int = value(0)  # apply the gradient computed this many steps ago (asynchronous SGD); 0: off
  clip_value: Optional[float] = value(**POSITIVE)  # clip each gradient component to [-c, c]; null: off
  clip_norm: Optional[float] = value(**POSITIVE)  # g <- g min(1, c / ||g||), the global norm; null: off
  noise_eta: Optional[float] = value(0.0)  # gradient noise N(0, eta / (1 + t)^gamma); null: off
  noise_gamma: float = value(0.0)
  then: Optional[Any] = None  # a second optimizer's config, used from switch_step on
  switch_step: Optional[int] = value(0)


@dataclass
class SGDConfig(OptimizerConfig):
  momentum: Optional[float] = value(**FRACTION)
  nesterov: bool = MISSING


@dataclass
class AdagradConfig(OptimizerConfig):
  initial_accumulator_value: float = value(0.0)
  eps: float = value(**POSITIVE)


@dataclass
class RMSPropConfig(OptimizerConfig):
  decay: float = value(**FRACTION)
  eps: float = value(**POSITIVE)
  momentum: Optional[float] = value(**FRACTION)
  centered: bool = MISSING
  nesterov: bool = MISSING


@dataclass
class AdamConfig(OptimizerConfig):
  b1: float = value(**FRACTION)
  b2: float = value(**FRACTION)
  eps: float = value(**POSITIVE)


@dataclass
class AdamWConfig(AdamConfig):
  weight_decay: float = value(0.0)


# --- schedule: a multiplier of optimizer.lr over the steps ---------------------------------------------------
@dataclass
class ScheduleConfig:
  _target_: str = MISSING
  warmup_steps: int = value(0)


@dataclass
class LinearScheduleConfig(ScheduleConfig):
  end_factor: float = value(0.0)
  decay_steps: Optional[int] = value(1)


@dataclass
class StepScheduleConfig(ScheduleConfig):
  gamma: float = value(**POSITIVE)
  step_size: int = value(1)


@dataclass
class ExponentialScheduleConfig(ScheduleConfig):
  decay_rate: float = value(**POSITIVE)
  decay_steps: Optional[int] = value(1)
  staircase: bool = MISSING


@dataclass
class InverseTimeScheduleConfig(ScheduleConfig):
  decay_rate: float = value(0.0)
  decay_steps: int = value(1)


@dataclass
class CosineScheduleConfig(ScheduleConfig):
  end_factor: float = value(0.0, 1.0)
  decay_steps: Optional[int] = value(1)


# --- regularizers: each lives under regularizer.<name> ----------------------------------------------------
@dataclass
class L2Config:
  weight: float = value(0.0)


@dataclass
class L1Config:
  weight: float = value(0.0)


@dataclass
class WeightDecayConfig:
  weight: float = value(0.0)


@dataclass
class MaxNormConfig:
  r: float = value(**POSITIVE)


@dataclass
class DropoutConfig:
  rate: float = value(**FRACTION)


@dataclass
class EarlyStoppingConfig:
  patience: int = value(1)
  metric: str = choice("accuracy", "loss", "mse")


@dataclass
class LabelSmoothingConfig:
  eps: float = value(**FRACTION)


@dataclass
class ConfidencePenaltyConfig:
  beta: float = value(0.0)


@dataclass
class AugmentConfig:
  noise: float = value(0.0)  # std of additive Gaussian noise
  shift: int = value(0)  # vectors and sequences: circular shift by up to this many positions
  crop: int = value(0)  # images: pad by this many pixels, then crop back at a random offset
  flip: bool = MISSING  # images: random horizontal flips


# --- diagnostics and reports: what a run measures besides its loss, and how a sweep is summarized -----------
@dataclass
class DiagnosticsConfig:
  every: int = value(0)  # 0 turns the per-layer diagnostics off
  probe_size: int = value(1)
  histogram_every: int = value(0)
  hessian_every: int = value(0)
  hessian_iters: int = value(1)


@dataclass
class ReportConfig:
  metric: Optional[str] = None  # null: the task's validation metric
  target: Optional[float] = value(default=None)


SCHEMAS = {
    "train_schema": TrainConfig,
    "data_mnist1d_schema": Mnist1dConfig,
    "data_npz_schema": NpzConfig,
    "data_image_schema": ImageDataConfig,
    "data_digits_schema": DigitsConfig,
    "data_sequential_schema": SequentialConfig,
    "data_spirals_schema": SpiralsConfig,
    "data_teacher_schema": TeacherConfig,
    "data_adding_schema": AddingConfig,
    "model_mlp_schema": MLPConfig,
    "model_cnn_schema": CNNConfig,
    "model_resnet_schema": ResNetConfig,
    "model_rnn_schema": RNNConfig,
    "model_lstm_schema": LSTMConfig,
    "model_gru_schema": GRUConfig,
    "model_linear_chain_schema": LinearChainConfig,
    "init_variance_scaling_schema": VarianceScalingConfig,
    "init_constant_schema": ConstantInitConfig,
    "init_normal_schema": NormalInitConfig,
    "init_uniform_schema": UniformInitConfig,
    "init_orthogonal_schema": OrthogonalInitConfig,
    "init_sparse_schema": SparseInitConfig,
    "init_identity_schema": IdentityInitConfig,
    "optimizer_sgd_schema": SGDConfig,
    "optimizer_adagrad_schema": AdagradConfig,
    "optimizer_rmsprop_schema": RMSPropConfig,
    "optimizer_adam_schema": AdamConfig,
    "optimizer_adamw_schema": AdamWConfig,
    "schedule_constant_schema": ScheduleConfig,
    "schedule_linear_schema": LinearScheduleConfig,
    "schedule_step_schema": StepScheduleConfig,
    "schedule_exponential_schema": ExponentialScheduleConfig,
    "schedule_inverse_time_schema": InverseTimeScheduleConfig,
    "schedule_cosine_schema": CosineScheduleConfig,
    "regularizer_l2_schema": L2Config,
    "regularizer_l1_schema": L1Config,
    "regularizer_weight_decay_schema": WeightDecayConfig,
    "regularizer_max_norm_schema": MaxNormConfig,
    "regularizer_dropout_schema": DropoutConfig,
    "regularizer_early_stopping_schema": EarlyStoppingConfig,
    "regularizer_label_smoothing_schema": LabelSmoothingConfig,
    "regularizer_confidence_penalty_schema": ConfidencePenaltyConfig,
    "regularizer_augment_schema": AugmentConfig,
    "diagnostics_schema": DiagnosticsConfig,
    "report_schema": ReportConfig,
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
