"""Learning-rate schedules, as multipliers of `optimizer.lr`: each returns an optax schedule that starts at 1.

The step k counts optimizer updates from 0 (after the warmup, when there is one). Floats are traced
hyperparameters (a sweep over them reuses one compiled program), so the closed forms are written in jnp where
optax's own schedules branch on their floats in Python; step counts are structure. `warmup_steps` = W > 0 puts a
linear ramp in front: the multiplier is k/W for k < W, and the schedule at k - W from then on.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _with_warmup(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
  if warmup_steps == 0:
    return schedule
  ramp = optax.linear_schedule(0.0, 1.0, warmup_steps)
  return optax.join_schedules([ramp, schedule], [warmup_steps])


def _horizon(decay_steps: int | None, total_steps: int, warmup_steps: int) -> int:
  """tau: `decay_steps`, by default every step after the warmup."""
  return decay_steps or max(total_steps - warmup_steps, 1)


def constant(*, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr."""
  del total_steps  # Unused: a constant has no horizon.
  return _with_warmup(optax.constant_schedule(1.0), warmup_steps)


def linear(end_factor: float, *, total_steps: int, decay_steps: int | None = None,
           warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = (1 - k/tau) lr + (k/tau) lr_tau for k <= tau, then lr_tau, with lr_tau = end_factor * lr.

  tau is `decay_steps`, by default every step after the warmup.
  """
  tau = _horizon(decay_steps, total_steps, warmup_steps)
  return _with_warmup(optax.linear_schedule(1.0, end_factor, tau), warmup_steps)


def step(gamma: float, *, step_size: int, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr * gamma^floor(k / step_size): multiplied by gamma every `step_size` steps."""
  del total_steps  # Unused: the steps repeat for ever.
  return _with_warmup(lambda k: gamma ** jnp.floor_divide(k, step_size).astype(jnp.float32), warmup_steps)


def exponential(decay_rate: float, *, total_steps: int, decay_steps: int | None = None, staircase: bool = False,
                warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr * decay_rate^(k / tau) (floor(k / tau) with `staircase`); it keeps decaying after tau.

  optax.exponential_decay tests `decay_rate == 0` in Python, which a traced rate cannot answer.
  """
  tau = _horizon(decay_steps, total_steps, warmup_steps)

  def schedule(k):
    power = jnp.asarray(k, jnp.float32) / tau
    return decay_rate ** (jnp.floor(power) if staircase else power)

  return _with_warmup(schedule, warmup_steps)


def inverse_time(decay_rate: float, *, decay_steps: int, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr / (1 + decay_rate * k / tau), tau = `decay_steps` (Keras' InverseTimeDecay; rate 1: lr / (1 + k/tau))."""
  del total_steps  # Unused: 1/t decay has no end.
  return _with_warmup(lambda k: 1.0 / (1.0 + decay_rate * jnp.asarray(k, jnp.float32) / decay_steps), warmup_steps)


def cosine(end_factor: float, *, total_steps: int, decay_steps: int | None = None,
           warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr_tau + (lr - lr_tau) (1 + cos(pi min(k, tau) / tau)) / 2, lr_tau = end_factor * lr (Loshchilov & Hutter)."""
  tau = _horizon(decay_steps, total_steps, warmup_steps)
  return _with_warmup(optax.cosine_decay_schedule(1.0, tau, alpha=end_factor), warmup_steps)
