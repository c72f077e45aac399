"""The schemas of the model group (with the activations and normalizations a model may name) and of the init
group (the weight initializer's own keys, and those of the biases and recurrent kernels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from trainlab.config.schema import FRACTION, MISSING, POSITIVE, TargetConfig, choice, schema, value

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "rrelu", "elu", "gelu", "silu")
NORMS = ("none", "batch", "layer")


@dataclass
class ActivationConfig(TargetConfig):
  """The activation of a model's hidden layers and its floats (models.activations.Activation)."""
  activation: str = choice(*ACTIVATIONS)
  alpha: float = value(0.0)  # leaky_relu's negative slope
  rrelu_lower: float = value(0.0, 1.0)
  rrelu_upper: float = value(0.0, 1.0)


@schema("model_mlp_schema")
class MLPConfig(ActivationConfig):
  widths: List[int] = value(1)  # each layer at least one unit
  norm: str = choice(*NORMS)
  batch_momentum: float = value(**FRACTION)


@schema("model_cnn_schema")
class CNNConfig(ActivationConfig):
  features: List[int] = value(1)  # each layer at least one unit
  kernel_size: int = value(1)
  widths: List[int] = value(1)  # each layer at least one unit
  conv_impl: str = choice("auto", "xla", "im2col")  # conv.IMPLS


@schema("model_resnet_schema")
class ResNetConfig(ActivationConfig):
  features: List[int] = value(1)  # each layer at least one unit
  blocks: int = value(1)
  kernel_size: int = value(1)
  norm: str = choice("batch", "layer", "none")
  conv_impl: str = choice("auto", "xla", "im2col")  # conv.IMPLS


@schema("model_rnn_schema")
class RNNConfig(TargetConfig):
  hidden: int = value(1)
  layers: int = value(1)
  activation: str = choice("tanh", "relu")


@schema("model_lstm_schema")
class LSTMConfig(TargetConfig):
  hidden: int = value(1)
  layers: int = value(1)
  forget_bias: float = value()  # any real number


@schema("model_gru_schema")
class GRUConfig(TargetConfig):
  hidden: int = value(1)
  layers: int = value(1)


@schema("model_linear_chain_schema")
class LinearChainConfig(TargetConfig):
  depth: int = value(1)
  width: int = value(1)
  norm: str = choice(*NORMS)
  batch_momentum: float = value(**FRACTION)


@dataclass
class InitConfig(TargetConfig):
  """The keys every initializer takes (conf/init_common.yaml)."""
  bias: float = value()  # any real number; every bias of a dense or convolutional layer starts at this constant
  output_bias: Optional[str] = choice("marginal", default=None)  # marginal: log class frequencies
  recurrent: str = choice("same", "identity", "orthogonal")  # the recurrent kernels of rnn, lstm, gru
  recurrent_gain: float = value(**POSITIVE)
  # Starting from another run (trainlab.transfer): its directory, which checkpoint (best, last or a step), and
  # which layers (paths or patterns; null: every layer with the same path and shape); the loaded layers' updates
  # are multiplied by from_lr_scale (a value: swept without compiling again).
  from_run: Optional[str] = None
  source_overrides: Optional[List[str]] = None  # or the overrides that train the source (trainlab.rundir.on_demand)
  from_checkpoint: str = MISSING
  from_layers: Optional[List[str]] = None
  from_lr_scale: float = value(0.0)


@schema("init_variance_scaling_schema")
class VarianceScalingConfig(InitConfig):
  scale: float = value(**POSITIVE)
  mode: str = choice("fan_in", "fan_out", "fan_avg")
  distribution: str = choice("truncated_normal", "normal", "uniform")


@schema("init_constant_schema")
class ConstantInitConfig(InitConfig):
  value: float = value()  # any real number (NaN is not); `value()` is the module function here


@schema("init_normal_schema")
class NormalInitConfig(InitConfig):
  stddev: float = value(**POSITIVE)


@schema("init_uniform_schema")
class UniformInitConfig(InitConfig):
  scale: float = value(**POSITIVE)


@schema("init_orthogonal_schema")
class OrthogonalInitConfig(InitConfig):
  gain: float = value(**POSITIVE)  # W^T W = gain^2 I


@schema("init_sparse_schema")
class SparseInitConfig(InitConfig):
  k: int = value(1)
  scale: float = value(**POSITIVE)


@schema("init_identity_schema")
class IdentityInitConfig(InitConfig):
  gain: float = value(**POSITIVE)
  non_square: str = choice("error", "eye", "orthogonal")



# The analytic test problems (models.analytic): every float is a traced value, dim and seeds are structure.
@dataclass
class ProblemConfig(TargetConfig):
  noise: float = value(0.0)  # the scale of the gradient noise; 0: exact gradients


@schema("model_quadratic_schema")
class QuadraticConfig(ProblemConfig):
  dim: int = value(2)
  kappa: float = value(1.0)  # the condition number: eigenvalues log-spaced from 1 to kappa
  start: float = value()
  rotation_seed: int = value(0)


@schema("model_rosenbrock_schema")
class RosenbrockConfig(ProblemConfig):
  dim: int = value(2)
  b: float = value(**POSITIVE)
  start_x: float = value()
  start_y: float = value()


@schema("model_plane_schema")
class PlaneProblemConfig(ProblemConfig):
  """A problem in the plane (beale): where it starts."""
  start_x: float = value()
  start_y: float = value()


@schema("model_saddle_schema")
class SaddleConfig(ProblemConfig):
  dim: int = value(2)
  negative: int = value(1)  # 1 to dim - 1 (checked by the model)
  radius: float = value(**POSITIVE)
  start_x: float = value()
  start_y: float = value()


@schema("model_cliff_schema")
class CliffConfig(PlaneProblemConfig):
  slope: float = value(**POSITIVE)
  wall: float = value(**POSITIVE)  # must exceed slope, or the valley has no minimum
  width: float = value(**POSITIVE)
