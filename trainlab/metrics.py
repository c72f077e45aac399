"""Which way is better for a metric: the one rule that early stopping, the best validation point, the sweep
table, the report and the HParams dashboard all use. Plain Python: the CLI's tools read it without JAX."""

from __future__ import annotations

# The metric each kind of task reports beside its loss (data.Dataset.task -> name).
# objective: an analytic problem (data=analytic), judged by θ's distance to the nearest minimizer.
TASK_METRIC = {"classification": "accuracy", "regression": "mse", "objective": "distance"}
HIGHER_IS_BETTER = ("accuracy",)  # every other metric (loss, mse, distance) is better lower


def higher_is_better(metric: str) -> bool:
  """Whether larger values of `metric` are better; `metric` may carry a split (`val/accuracy`, `test/loss`)."""
  return metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER


def is_better(new: float, old: float | None, metric: str) -> bool:
  """Whether `new` improves on `old` (None: nothing yet) for `metric`; ties are not improvements."""
  return old is None or (new > old if higher_is_better(metric) else new < old)
