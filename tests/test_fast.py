"""The speed switch and trainlab.fast's surface: fast.jit and compile_ahead compute what plain jax.jit computes,
and TRAINLAB_FAST=0 turns every piece of speed machinery off."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab import fast
from trainlab.fast import conv


def step(state, x):
  """A small program with a nested output tree and an optimization barrier, like the chunk's."""
  h = jax.lax.optimization_barrier(jnp.tanh(state["w"] @ x))
  return {"w": state["w"] - 0.1 * jnp.outer(h, x)}, {"loss": jnp.sum(h ** 2), "h": h}


def arguments(seed: int = 0):
  w, x = jax.random.normal(jax.random.PRNGKey(seed), (2, 4, 4))
  return {"w": w}, x[0]


@pytest.fixture
def switched_off(monkeypatch):
  monkeypatch.setattr(fast, "ENABLED", False)


def test_the_switch_is_read_from_the_environment():
  """On by default; TRAINLAB_FAST=0 turns it off, and with it the CPU convolution lowering of conv_impl=auto."""
  script = "from trainlab import fast; from trainlab.fast import conv; print(fast.ENABLED, conv.resolve('auto'))"
  for value, expected in ((None, "True im2col"), ("1", "True im2col"), ("0", "False xla")):
    env = {k: v for k, v in os.environ.items() if k != "TRAINLAB_FAST"}
    if value is not None:
      env["TRAINLAB_FAST"] = value
    proc = subprocess.run([sys.executable, "-c", script], env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True, timeout=300, check=True)
    assert proc.stdout.strip() == expected, (value, proc.stderr)


def test_switched_off_jit_is_plain_jax_jit(switched_off):
  jitted = fast.jit(step, "step", "a key", donate_argnums=(0,), run_rarely=True, keep_barriers=True)
  assert type(jitted) is type(jax.jit(step))
  assert jitted.__wrapped__ is step
  # No compile options: XLA's CPU pipeline expands the barrier, as it does for any plain jit.
  assert "opt-barrier" not in jitted.lower(*arguments()).compile().as_text()
  assert conv.resolve("auto") == "xla" and conv.resolve("im2col") == "im2col"
  assert conv.Conv(4, (3,)).conv_general_dilated is None  # flax's own lax.conv_general_dilated


def test_switched_off_compile_ahead_does_nothing(switched_off):
  lowered = []
  spy = type("Spy", (), {"lower": lambda self, *args: lowered.append(args)})()
  wait = fast.compile_ahead([(spy, arguments())])
  assert wait() is None and lowered == []


def test_switched_off_the_persistent_cache_is_left_as_jax_has_it(switched_off):
  before = dict(jax.config.values)
  fast.enable_persistent_cache()
  assert dict(jax.config.values) == before


@pytest.mark.parametrize("options", [{}, {"keep_barriers": True}, {"run_rarely": True}])
def test_jit_computes_what_plain_jit_computes_on_and_off(monkeypatch, options):
  expected = jax.jit(step)(*arguments())
  on = fast.jit(step, "step", None, **options)
  monkeypatch.setattr(fast, "ENABLED", False)
  off = fast.jit(step, "step", None, **options)
  for program in (on, off):
    assert program.__wrapped__ is step
    jax.tree.map(np.testing.assert_array_equal, program(*arguments()), expected)
    batched = jax.vmap(program.__wrapped__)(*jax.tree.map(lambda *a: jnp.stack(a), arguments(0), arguments(1)))
    jax.tree.map(np.testing.assert_allclose, jax.tree.map(lambda a: a[1], batched), jax.jit(step)(*arguments(1)))


def test_keep_barriers_keeps_the_barrier_in_the_compiled_program():
  program = fast.jit(step, "step", None, keep_barriers=True)
  assert "opt-barrier" in program.lower(*arguments()).compile().as_text()


def test_compile_ahead_leaves_results_unchanged_and_the_later_calls_compile_nothing():
  """Two programs compiled ahead, one donating its state: the calls that follow give what calling them alone gives,
  without compiling again."""
  state, x = arguments(2)
  fresh = lambda: (fast.jit(step, "step", None, donate_argnums=(0,), keep_barriers=True),
                   fast.jit(lambda s, x: step(s, x)[1]["loss"], "evaluate", None))
  train, evaluate = fresh()
  expected = train(jax.tree.map(jnp.copy, state), x), evaluate(state, x)

  jax.clear_caches()
  train, evaluate = fresh()
  wait = fast.compile_ahead([(train, (state, x)), (evaluate, (state, x))])
  wait()
  donated = jax.tree.map(jnp.copy, state)
  compiles = fast.count()
  got = evaluate(state, x), train(donated, x)
  assert fast.count() == compiles, "a program compiled ahead was compiled again when called"
  jax.tree.map(np.testing.assert_array_equal, (got[1], got[0]), expected)


def test_compile_ahead_swallows_failures_for_the_call_to_raise():
  program = fast.jit(step, "step", None)
  wait = fast.compile_ahead([(program, ({"w": np.ones((4, 4))}, np.ones(3)))])  # shapes that do not multiply
  wait()
  with pytest.raises(TypeError):
    program({"w": np.ones((4, 4))}, np.ones(3))
