"""Per-example losses and metrics, pure jnp functions of (outputs, targets)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label], per example."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, eps: jax.Array) -> jax.Array:
  """Cross-entropy against the target (1 - eps) y + eps / K (Szegedy et al. 2016), per example."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), eps)
  return optax.softmax_cross_entropy(logits, targets)


def entropy(logits: jax.Array) -> jax.Array:
  """H(p) = -sum_k p_k log p_k of p = softmax(logits), per example."""
  log_p = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def objective(logits: jax.Array, labels: jax.Array, regularizer: dict) -> jax.Array:
  """The per-example training loss: cross-entropy, label-smoothed when selected, minus beta H(p) when selected."""
  if "label_smoothing" in regularizer:
    loss = smoothed_cross_entropy(logits, labels, regularizer["label_smoothing"]["eps"])
  else:
    loss = cross_entropy(logits, labels)
  if "confidence_penalty" in regularizer:
    loss = loss - regularizer["confidence_penalty"]["beta"] * entropy(logits)
  return loss


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
  higher_is_better: bool


# Keyed by data.Dataset.task: the data set chooses the loss, not the user.
TASKS = {
    "classification": Task(cross_entropy, "accuracy", correct, higher_is_better=True),
    "regression": Task(squared_error, "mse", squared_error, higher_is_better=False),
}
