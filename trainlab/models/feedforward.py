"""The base every model shares (what it takes from the program and declares for the start-of-run checks, its
dropout, activation and dense head), and the dense models: the MLP and the deep linear chain."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab.data import LAYOUTS
from trainlab.models import activations

Initializer = Callable[..., jax.Array]


class Model(nn.Module, kw_only=True):
  """A model of the `model` group. The program gives it num_outputs, dropout_rate (a traced scalar, or None for
  no dropout) and the `init` group's initializers, used by every conv, dense and recurrent kernel. Each model
  declares `inputs`, the data layouts (data.LAYOUTS) it reads, and `option`, the name of its conf/model file."""

  num_outputs: int
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  frozen_norms: Sequence[str] = ()  # paths of batch-norm layers that keep their statistics (trainlab.transfer)
  inputs: ClassVar[tuple[str, ...]]
  option: ClassVar[str]


class ActivatedModel(Model, kw_only=True):
  """A model whose hidden layers use the `activation` named by the config, with its floats as traced values."""

  activation: str
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3


def dropout(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Inverted dropout: keep each unit with probability 1 - rate, scale by 1/(1 - rate). Written here because
  flax's nn.Dropout branches on its rate in Python, which a rate that is a traced hyperparameter cannot do."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, x.shape)
  return jnp.where(mask, x / keep, 0.0)


def maybe_dropout(model: Model, x: jax.Array, train: bool) -> jax.Array:
  """The model's dropout in training when it has a rate; the identity otherwise."""
  if model.dropout_rate is not None and train:
    return dropout(x, model.dropout_rate, model.make_rng("dropout"))
  return x


def activate(model: ActivatedModel, x: jax.Array, train: bool) -> jax.Array:
  """The model's activation with its own floats (leaky_relu's slope, rrelu's bounds); prelu learns a slope."""
  return activations.Activation(model.activation, model.alpha, model.rrelu_lower, model.rrelu_upper)(x, train=train)


def dense_head(model: ActivatedModel, x: jax.Array, widths: Sequence[int], train: bool, norm: str = "none",
               momentum: Any = 0.99) -> jax.Array:
  """Dense hidden layers, each followed by norm, the model's activation and dropout, then the output layer."""
  for width in widths:
    x = nn.Dense(width, kernel_init=model.kernel_init, bias_init=model.bias_init)(x)
    x = activations.norm(norm, x, train=train, momentum=momentum, frozen=model.frozen_norms)
    x = maybe_dropout(model, activate(model, x, train), train)
  return nn.Dense(model.num_outputs, kernel_init=model.kernel_init, bias_init=model.bias_init)(x)


def with_channels(x: jax.Array) -> jax.Array:
  """(N, T) sequences get one channel, (N, T, 1); (N, T, F) and (N, H, W, C) are already channels-last."""
  return x[..., None] if x.ndim == 2 else x


class MLP(ActivatedModel, kw_only=True):
  """Dense layers, each followed by norm, activation and dropout in that order; `widths=()` is softmax regression."""

  widths: Sequence[int]
  norm: str = "none"  # none, batch, layer (config.NORMS)
  batch_momentum: Any = 0.99
  inputs: ClassVar[tuple[str, ...]] = LAYOUTS
  option: ClassVar[str] = "mlp"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return dense_head(self, x.reshape((x.shape[0], -1)), self.widths, train, self.norm, self.batch_momentum)


class LinearChain(Model, kw_only=True):
  """The deep linear chain y = x W_1 W_2 ... W_l of the course notes: `depth` dense layers without biases or
  activations, `width` units each (width 1 on a scalar input is the scalar chain x w_1 ... w_l). The function
  is linear, but the loss is not convex in the weights, and a step on one w_i rescales every later one.
  With `norm`, each hidden layer's output h_i is normalized as the MLP's (batch: (h_i - mean) / std over the
  batch, then γ h + β), so that a step on the lower layers no longer changes the statistics the next one sees."""

  depth: int
  width: int
  norm: str = "none"  # none, batch, layer (config.NORMS)
  batch_momentum: Any = 0.99
  inputs: ClassVar[tuple[str, ...]] = LAYOUTS
  option: ClassVar[str] = "linear_chain"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth - 1):
      x = nn.Dense(self.width, use_bias=False, kernel_init=self.kernel_init)(x)
      x = activations.norm(self.norm, x, train=train, momentum=self.batch_momentum, frozen=self.frozen_norms)
    return nn.Dense(self.num_outputs, use_bias=False, kernel_init=self.kernel_init)(x)
