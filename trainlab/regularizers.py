"""Loss penalties on the weights. Each regularizer is read by the part of the program that implements it:
penalties here, dropout by the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def is_weight(path: tuple, leaf: jax.Array) -> bool:
  """Weights are the kernels of dense and convolutional layers; biases and norm scales are not penalized."""
  del leaf  # Unused: the name decides.
  return getattr(path[-1], "key", None) == "kernel"


def weights(params) -> list[jax.Array]:
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if is_weight(path, leaf)]


def l2_penalty(params, weight: jax.Array) -> jax.Array:
  """weight * sum(w^2) over all weights (no factor 1/2)."""
  return weight * sum(jnp.sum(jnp.square(w)) for w in weights(params))


def penalty(params, regularizer: dict) -> jax.Array:
  """The sum of the selected loss penalties; `regularizer` holds the traced values of the regularizer group."""
  total = jnp.zeros((), jnp.float32)
  if "l2" in regularizer:
    total += l2_penalty(params, regularizer["l2"]["weight"])
  return total
