"""Activations and normalization layers of the `model` group by name (config.ACTIVATIONS, config.NORMS), for use
inside a flax compact method. Their floats (leaky_relu's slope, RReLU's bounds, batch norm's momentum) are traced
model hyperparameters."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def rrelu(x: jax.Array, lower: Any, upper: Any, *, train: bool, rng: jax.Array | None = None) -> jax.Array:
  """Randomized leaky ReLU (Xu et al. 2015): slope a ~ U(lower, upper) per element in training, (lower+upper)/2 at
  evaluation, on the negative side."""
  if train:
    slope = jax.random.uniform(rng, x.shape, x.dtype, 0.0, 1.0) * (upper - lower) + lower
  else:
    slope = (lower + upper) / 2
  return jnp.where(x >= 0, x, slope * x)


class Activation(nn.Module):
  """The activation `name`; prelu owns a learned slope (a scalar per layer, initial 0.25 as He et al. 2015)."""

  kind: str
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.kind == "leaky_relu":
      return jnp.where(x >= 0, x, self.alpha * x)
    if self.kind == "prelu":
      return nn.PReLU(negative_slope_init=0.25)(x)
    if self.kind == "rrelu":
      return rrelu(x, self.rrelu_lower, self.rrelu_upper, train=train, rng=self.make_rng("dropout") if train else None)
    if self.kind == "gelu":
      return jax.nn.gelu(x, approximate=False)
    return getattr(jax.nn, self.kind)(x)


def norm(kind: str, x: jax.Array, *, train: bool, momentum: Any = 0.99, layer_epsilon: float = 1e-5,
         frozen: Sequence[str] = ()) -> jax.Array:
  """Batch norm (batch statistics in training, running averages at evaluation: running <- momentum running +
  (1 - momentum) batch, flax's and Keras' convention), layer norm (over one example's features), or none.
  A batch-norm layer whose path is in `frozen` (a frozen part of a loaded model) uses its running averages in
  training too, and so never updates them."""
  if kind == "batch":
    layer = nn.BatchNorm(momentum=momentum, epsilon=1e-5)
    return layer(x, use_running_average=not train or "/".join(layer.scope.path) in frozen)
  if kind == "layer":
    return nn.LayerNorm(epsilon=layer_epsilon)(x)
  return x
