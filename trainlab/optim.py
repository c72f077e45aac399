"""The one place where optax chains are composed from the `optimizer` and `schedule` groups.

The chain is `optimizer` (an optax alias such as optax.adam, called with learning_rate=optimizer.lr) followed
by the schedule's multiplier. Both stages are wrapped in `optax.inject_hyperparams`, so every float of the two
groups lives in the optimizer state as an array: a sweep over them reuses one compiled program, and a
vectorized sweep can vmap over them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import optax
from hydra.utils import get_method


def _structural_args(kwargs: dict) -> tuple[str, ...]:
  """Names of the arguments that are structure (ints, bools, strings, None), not traced values."""
  return tuple(name for name, v in kwargs.items() if not isinstance(v, (float, jax.Array)))


def _scale_by(schedule_factory: Callable[..., optax.Schedule]) -> Callable[..., optax.GradientTransformation]:
  """Turns a schedule factory into a transform factory with the same signature (for inject_hyperparams)."""

  @functools.wraps(schedule_factory)
  def factory(*args, **kwargs):
    return optax.scale_by_schedule(schedule_factory(*args, **kwargs))

  return factory


def build_optimizer(optimizer: dict, schedule: dict, total_steps: int):
  """Returns (tx, learning_rate_fn): the optax transform and a function of its state giving the current lr.

  Args:
    optimizer: the `optimizer` group as a dict: `_target_` (an optax alias), `lr`, and the alias's own args.
    schedule: the `schedule` group as a dict: `_target_` (a function of trainlab.schedules) and its args.
    total_steps: the run's number of optimizer steps, the horizon of decaying schedules.
  """
  opt_kwargs = {k: v for k, v in optimizer.items() if k not in ("_target_", "lr")}
  alias = get_method(optimizer["_target_"])
  direction = optax.inject_hyperparams(alias, static_args=_structural_args(opt_kwargs))(
      learning_rate=optimizer["lr"], **opt_kwargs)

  sched_kwargs = {k: v for k, v in schedule.items() if k != "_target_"}
  sched_kwargs["total_steps"] = total_steps
  schedule_factory = get_method(schedule["_target_"])
  static = _structural_args(sched_kwargs)
  multiplier = optax.inject_hyperparams(_scale_by(schedule_factory), static_args=static)(**sched_kwargs)

  def learning_rate_fn(opt_state: Any) -> jax.Array:
    """The learning rate that the next update applies: optimizer.lr times the schedule at this step."""
    direction_state, multiplier_state = opt_state
    values = {k: sched_kwargs[k] for k in static} | dict(multiplier_state.hyperparams)
    return direction_state.hyperparams["learning_rate"] * schedule_factory(**values)(multiplier_state.count)

  return optax.chain(direction, multiplier), learning_rate_fn
