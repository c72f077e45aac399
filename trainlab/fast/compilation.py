"""What XLA compiles, how, and how long it takes: the compile options of programs that run only a few times and
of the training chunk, the persistent compilation cache, and the compile-time accounting of a run's summary."""

from __future__ import annotations

import threading

import jax

from trainlab import data

# A program that runs once or a few times per run (the init, the diagnostics) costs its compile time far more
# than its run time: XLA's cheapest backend settings, and the CPU's classic loop emitters instead of its MLIR
# fusion emitters, compile it much faster (docs/speed.md, "Compile settings for programs run once"). Other
# backends ignore the CPU option; the per-step programs keep XLA's defaults.
RUN_RARELY = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
              "xla_cpu_use_fusion_emitters": False}

# The training chunk keeps its optimization barriers through fusion, where they mark buffers that XLA must
# write out rather than recompute inside their consumers (conv._materialized); XLA's CPU pipeline otherwise
# expands every barrier early, in its "cse_barrier_expander" pass (docs/speed.md, "Optimization barriers in the
# chunk"). Programs without barriers are unaffected, and other backends keep barriers anyway.
KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}

_COMPILE = {"seconds": 0.0, "count": 0}
_LOCK = threading.Lock()  # programs also compile in a background thread (compile_ahead)


def _on_event(event: str, seconds: float, **kwargs) -> None:
  with _LOCK:
    if event.startswith("/jax/core/compile/"):
      _COMPILE["seconds"] += seconds
    if event == "/jax/core/compile/backend_compile_duration":
      _COMPILE["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling programs."""
  return _COMPILE["seconds"]


def count() -> int:
  """How many XLA compilations this process has run (tests use it to prove that nothing recompiles)."""
  return _COMPILE["count"]


def enable_persistent_cache() -> None:
  """Keeps compiled programs on disk, so that jobs in fresh processes (joblib, a cluster) skip compilation.

  JAX's default thresholds skip programs that compile in under a second, which is every small CPU program
  trainlab makes; a user's own JAX_COMPILATION_CACHE_DIR wins over our default folder.
  """
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", str(data.resolve_cache_dir() / "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
