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


CALIBRATION_BINS = 15  # equal-width bins of the confidence on [0, 1], as Guo et al. 2017 report the ECE


def calibration_gaps(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per example, a row of CALIBRATION_BINS: confidence - correct in its bin's column, 0 elsewhere (confidence:
  the largest softmax probability; bin m holds (m - 1) / M < confidence <= m / M). Summed over a split, each
  column is its bin's size times (mean confidence - accuracy), so that the expected calibration error
  ECE = sum over bins of |column sum| / n (Guo et al. 2017) needs only sums, as evaluation accumulates them."""
  confidence = jnp.max(jax.nn.softmax(logits), -1)
  bins = jnp.clip(jnp.ceil(confidence * CALIBRATION_BINS).astype(jnp.int32) - 1, 0, CALIBRATION_BINS - 1)
  return jax.nn.one_hot(bins, CALIBRATION_BINS) * (confidence - correct(logits, labels))[:, None]


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the outputs of (output - target)^2, per example (no factor 1/2)."""
  return jnp.mean(jnp.square(outputs - targets), axis=-1)


def objective_value(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """An analytic problem's loss, per example: the first column its model returns (models.analytic)."""
  del targets  # Unused: the problem's function is its loss.
  return outputs[:, 0]


def distance_to_minimizer(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """The distance from θ to the problem's nearest minimizer, the second column of an analytic problem's outputs."""
  del targets  # Unused.
  return outputs[:, 1]


def coordinates(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """The logged coordinates of θ (coord_0, coord_1, ...), the columns after the distance."""
  del targets  # Unused.
  return {f"coord_{i}": outputs[:, 2 + i] for i in range(outputs.shape[1] - 2)}


class Task(NamedTuple):
  """How a kind of data set is trained and judged: its per-example loss, the metric reported beside it, and
  optionally further per-example values that evaluation reports (`extras`: {name: values}) and the per-example
  rows whose column sums give the expected calibration error (`calibration`, reported as `ece`)."""
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metric_name: str
  metric: Callable[[jax.Array, jax.Array], jax.Array]
  extras: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None
  calibration: Callable[[jax.Array, jax.Array], jax.Array] | None = None


# Keyed by data.Dataset.task: the data set chooses the loss, not the user.
TASKS = {
    "classification": Task(cross_entropy, metrics.TASK_METRIC["classification"], correct,
                           calibration=calibration_gaps),
    "regression": Task(squared_error, metrics.TASK_METRIC["regression"], squared_error),
    "objective": Task(objective_value, metrics.TASK_METRIC["objective"], distance_to_minimizer, coordinates),
}
