"""Per-example losses and metrics, pure jnp functions of (outputs, targets)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label], per example."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the arg-max class is the label, per example."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
