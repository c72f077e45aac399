"""Weight and bias initializers of the `init` group.

Most weight initializers are jax.nn.initializers (variance_scaling covers LeCun, Glorot and He, with the
truncated normal's variance corrected; orthogonal; normal; constant). Here are the ones it lacks: a symmetric
uniform U(-a, a), Martens' sparse init, the identity, and the bias rules (a constant for every bias; the output
layer's bias set to the log class frequencies, "the marginal statistics of the targets").

For a kernel of shape (..., n), fan_in m is the product of all axes but the last (a convolution's channels times
kernel area), n the number of units.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hydra.utils import instantiate

from trainlab.config import ConfigError

# Keys of the init group that are not arguments of the weight initializer.
OWN_KEYS = ("bias", "output_bias", "recurrent", "recurrent_gain",
            "from_run", "from_checkpoint", "from_layers", "from_lr_scale", "source_overrides")  # from_*: trainlab.transfer


def uniform(scale: float = 0.1):
  """U(-scale, scale). (jax.nn.initializers.uniform draws from [0, scale).)"""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * jnp.asarray(scale, dtype)

  return init


def sparse(k: int = 15, scale: float = 1.0):
  """Exactly k non-zero incoming weights per unit, drawn from N(0, scale^2), the rest 0 (Martens 2010)."""

  def init(key, shape, dtype=jnp.float32):
    fan_in, units = math.prod(shape[:-1]), shape[-1]
    if k > fan_in:
      raise ConfigError(f"init.k={k} is not allowed: it must be <= fan_in={fan_in} of a weight of shape "
                        f"{tuple(shape)}")
    k_which, k_value = jax.random.split(key)
    # The k smallest of fan_in uniform draws per unit pick a uniformly random k-subset of its inputs.
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_which, (fan_in, units)), axis=0), axis=0)
    values = jax.random.normal(k_value, (fan_in, units), dtype) * jnp.asarray(scale, dtype)
    return jnp.where(ranks < k, values, 0.0).reshape(shape)

  return init


def identity(gain: float = 1.0, non_square: str = "error"):
  """gain * I for square weight matrices (the IRNN of Le et al. 2015).

  Args:
    gain: the multiplier of the identity.
    non_square: what a non-square kernel gets: `error` (a ConfigError), `eye` (gain * the rectangular identity,
      as Keras' Identity and PyTorch's eye_), or `orthogonal` (gain times a random semi-orthogonal matrix).
  """

  def init(key, shape, dtype=jnp.float32):
    m, n = math.prod(shape[:-1]), shape[-1]
    if m != n and non_square == "error":
      raise ConfigError(f"init=identity is not allowed on a weight of shape {tuple(shape)}: it needs square matrices "
                        f"(set init.non_square=eye or orthogonal for the other layers)")
    if m != n and non_square == "orthogonal":
      return jax.nn.initializers.orthogonal(scale=gain)(key, shape, dtype)
    return (jnp.eye(m, n, dtype=dtype) * jnp.asarray(gain, dtype)).reshape(shape)

  return init


class Inits(NamedTuple):
  kernel: Callable  # every weight kernel: dense, convolution, a recurrent layer's input
  bias: Any  # the constant every bias starts at
  output_bias: str | None  # None, or `marginal`: the output bias is set after init
  recurrent: Callable | None  # the recurrent kernels; None: `kernel`


def build(init: dict) -> Inits:
  """The initializers that the `init` group describes (its floats may be traced values)."""
  kernel_cfg = {k: v for k, v in init.items() if k not in OWN_KEYS}
  return Inits(instantiate(kernel_cfg), init.get("bias", 0.0), init.get("output_bias"),
               recurrent(init.get("recurrent", "same"), init.get("recurrent_gain", 1.0)))


def recurrent(kind: str, gain: Any) -> Callable | None:
  """The recurrent kernels' own init: `identity` (with relu, the IRNN of Le et al. 2015), `orthogonal` (Saxe et
  al. 2014), or `same` (None: the kernel init). The kernels are square, H x H per gate."""
  if kind == "same":
    return None
  return identity(gain) if kind == "identity" else orthogonal(gain)


def log_class_frequency(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """log(count_c / n) per class; a class absent from the labels counts as half an example (finite)."""
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  return np.log(np.maximum(counts, 0.5) / len(labels)).astype(np.float32)


def _dense_layers(tree: Any, found: list) -> None:
  """Appends every dict holding a kernel and a bias, in creation order (dict order, not sorted pytree order)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    if "kernel" in tree and "bias" in tree:
      found.append(tree)
    for child in tree.values():
      _dense_layers(child, found)


def set_output_bias(params, output_bias: jax.Array):
  """Sets the bias of the last-created dense or convolutional layer (the output layer) to `output_bias`."""
  params = _to_dicts(params)  # a fresh copy that keeps the creation order (jax.tree.map would sort the keys)
  layers: list = []
  _dense_layers(params, layers)
  layers[-1]["bias"] = jnp.asarray(output_bias, layers[-1]["bias"].dtype).reshape(layers[-1]["bias"].shape)
  return params


def _to_dicts(tree):
  if hasattr(tree, "items"):
    return {k: _to_dicts(v) for k, v in tree.items()}
  return tree


def orthogonal(gain: float = 1.0):
  """gain times a random (semi-)orthogonal matrix (Saxe et al. 2014): W^T W = gain^2 I when fan_in >= units."""
  return jax.nn.initializers.orthogonal(scale=gain)
