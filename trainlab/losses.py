"""Per-example losses and metrics, pure jnp functions of (outputs, targets), and the task that picks them."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainlab import metrics


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label], per example."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the arg-max class is the label, per example."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the outputs of (output - target)^2, per example (no factor 1/2)."""
  return jnp.mean(jnp.square(outputs - targets), axis=-1)


class Task(NamedTuple):
  """How a kind of data set is trained and judged: its per-example loss, and the metric reported beside it."""
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metric_name: str
  metric: Callable[[jax.Array, jax.Array], jax.Array]


# Keyed by data.Dataset.task: the data set chooses the loss, not the user.
TASKS = {
    "classification": Task(cross_entropy, metrics.TASK_METRIC["classification"], correct),
    "regression": Task(squared_error, metrics.TASK_METRIC["regression"], squared_error),
}
