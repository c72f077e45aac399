"""Each schedule's multiplier at chosen steps equals its closed form, with the floats traced, warmup included."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from trainlab import schedules

TOTAL = 100


def values(factory, steps, floats: dict, **static):
  """The schedule at `steps`, with every float passed as a traced argument of a jitted function."""

  @jax.jit
  def at(floats):
    sched = factory(**floats, total_steps=TOTAL, **static)
    return [sched(k) for k in steps]

  return np.array(jax.device_get(at({k: np.float32(v) for k, v in floats.items()})))


STEPS = [0, 1, 9, 10, 11, 37, 60, 99, 150]


def linear(k, tau, end):
  return (1 - k / tau) + (k / tau) * end if k <= tau else end


CLOSED_FORMS = {
    "constant": (schedules.constant, {}, {}, lambda k: 1.0),
    "linear": (schedules.linear, {"end_factor": 0.01}, {"decay_steps": 40}, lambda k: linear(k, 40, 0.01)),
    "linear_default_tau": (schedules.linear, {"end_factor": 0.01}, {}, lambda k: linear(k, TOTAL, 0.01)),
    "step": (schedules.step, {"gamma": 0.5}, {"step_size": 10}, lambda k: 0.5 ** (k // 10)),
    "exponential": (schedules.exponential, {"decay_rate": 0.1}, {"decay_steps": 50}, lambda k: 0.1 ** (k / 50)),
    "exponential_staircase": (schedules.exponential, {"decay_rate": 0.1}, {"decay_steps": 50, "staircase": True},
                              lambda k: 0.1 ** (k // 50)),
    "inverse_time": (schedules.inverse_time, {"decay_rate": 1.0}, {"decay_steps": 20}, lambda k: 1 / (1 + k / 20)),
    "inverse_time_rate": (schedules.inverse_time, {"decay_rate": 3.0}, {"decay_steps": 20},
                          lambda k: 1 / (1 + 3 * k / 20)),
    "cosine": (schedules.cosine, {"end_factor": 0.1}, {"decay_steps": 60},
               lambda k: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, 60) / 60))),
}


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_schedule_closed_form(name, warmup):
  factory, floats, static, form = CLOSED_FORMS[name]
  if name == "linear_default_tau" and warmup:
    form = lambda k, f=form: linear(k, TOTAL - warmup, 0.01)  # the default tau is the steps after the warmup
  got = values(factory, STEPS, floats, warmup_steps=warmup, **static)
  want = [k / warmup if k < warmup else form(k - warmup) for k in STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_end_of_warmup_is_the_full_rate_and_ramp_starts_at_zero():
  got = values(schedules.cosine, [0, 5, 10], {"end_factor": 0.0}, warmup_steps=10, decay_steps=30)
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0], atol=1e-7)


def test_after_tau_linear_and_cosine_stay_at_the_end_value():
  got = values(schedules.linear, [40, 41, 500], {"end_factor": 0.25}, decay_steps=40)
  np.testing.assert_allclose(got, [0.25] * 3, rtol=1e-6)
  got = values(schedules.cosine, [60, 61, 500], {"end_factor": 0.25}, decay_steps=60)
  np.testing.assert_allclose(got, [0.25] * 3, rtol=1e-6)


def test_a_traced_rate_is_used_not_a_constant():
  """Two rates through one compiled function give two different schedules (no Python branch on the float)."""

  @jax.jit
  def at(rate):
    return schedules.exponential(rate, total_steps=TOTAL, decay_steps=10)(20)

  np.testing.assert_allclose([at(np.float32(0.5)), at(np.float32(0.1)), at(np.float32(0.0))], [0.25, 0.01, 0.0],
                             rtol=1e-6)
