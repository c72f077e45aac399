"""Flax linen models. Their parameters are plain pytrees, so vmap, scan, orbax and optax compose with them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab import activations

Initializer = Callable[..., jax.Array]


def dropout(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Inverted dropout with a traced rate: keep each unit with probability 1 - rate, scale by 1/(1 - rate).

  flax's nn.Dropout branches on its rate in Python, which a rate that is a traced hyperparameter cannot do.
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, x.shape)
  return jnp.where(mask, x / keep, 0.0)


class MLP(nn.Module):
  """Dense layers, each followed by norm, activation and dropout in that order; `widths=()` is softmax regression."""

  widths: Sequence[int]
  activation: str
  num_outputs: int
  norm: str = "none"  # none, batch, layer (activations.NORMS)
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3
  batch_momentum: Any = 0.99
  dropout_rate: Any = None  # a traced scalar, or None for no dropout layers
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.widths:
      x = nn.Dense(width, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
      x = activations.norm(self.norm, x, train=train, momentum=self.batch_momentum)
      x = activations.Activation(self.activation, self.alpha, self.rrelu_lower, self.rrelu_upper)(x, train=train)
      if self.dropout_rate is not None and train:
        x = dropout(x, self.dropout_rate, self.make_rng("dropout"))
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
