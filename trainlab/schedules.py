"""Learning-rate schedules, as multipliers of `optimizer.lr`: each returns an optax schedule that starts at 1.

The step k counts optimizer updates from 0. Floats are traced hyperparameters (a sweep over them reuses one
compiled program); step counts are structure. `warmup_steps` > 0 puts a linear ramp from 0 in front.
"""

from __future__ import annotations

import optax


def _with_warmup(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
  if warmup_steps == 0:
    return schedule
  ramp = optax.linear_schedule(0.0, 1.0, warmup_steps)
  return optax.join_schedules([ramp, schedule], [warmup_steps])


def constant(*, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = lr."""
  del total_steps  # Unused: a constant has no horizon.
  return _with_warmup(optax.constant_schedule(1.0), warmup_steps)


def linear(end_factor: float, *, total_steps: int, decay_steps: int | None = None,
           warmup_steps: int = 0) -> optax.Schedule:
  """lr_k = (1 - k/tau) lr + (k/tau) lr_tau for k <= tau, then lr_tau, with lr_tau = end_factor * lr.

  tau is `decay_steps`, by default every step after the warmup.
  """
  tau = decay_steps or max(total_steps - warmup_steps, 1)
  return _with_warmup(optax.linear_schedule(1.0, end_factor, tau), warmup_steps)
