"""What XLA compiles, how, and how long it takes: the compile options of programs that run only a few times and
of the training chunk, the persistent compilation cache, and the compile-time accounting of a run's summary."""

from __future__ import annotations

import threading
import time

import jax

from trainlab import data

# Programs run once or a few times per run (the init, the diagnostics) cost their compile time more than their
# run time: XLA's cheapest settings, and the CPU's classic loop emitters rather than its MLIR fusion emitters,
# compile them faster (docs/speed.md, "Compile settings for programs run once"). Per-step programs keep defaults.
RUN_RARELY = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
              "xla_cpu_use_fusion_emitters": False}

# The training chunk keeps its optimization barriers through fusion, where they mark buffers to write out rather
# than recompute in each consumer (conv._materialized); XLA's CPU pipeline otherwise drops them early, in its
# "cse_barrier_expander" pass (docs/speed.md, "Optimization barriers in the chunk"). Other backends keep them.
KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}

_COMPILE = {"seconds": 0.0, "count": 0}
_SPANS: list[tuple[float, float]] = []  # disjoint, sorted (start, end) of the wall-clock time spent compiling
_LOCK = threading.Lock()  # programs also compile in a background thread (compile_ahead)


def add_span(start: float, end: float) -> None:
  """Counts [start, end] as time spent compiling, once however many threads compiled in it."""
  merged = []
  for s, e in _SPANS:
    if e < start or s > end:
      merged.append((s, e))
    else:
      start, end = min(s, start), max(e, end)
  _SPANS[:] = sorted([*merged, (start, end)])
  _COMPILE["seconds"] = sum(e - s for s, e in _SPANS)


def _on_event(event: str, seconds: float, **kwargs) -> None:
  with _LOCK:
    if event.startswith("/jax/core/compile/"):
      now = time.perf_counter()
      add_span(now - seconds, now)
    if event == "/jax/core/compile/backend_compile_duration":
      _COMPILE["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def seconds() -> float:
  """Wall-clock seconds during which this process traced, lowered or compiled a program (in any thread)."""
  return _COMPILE["seconds"]


def count() -> int:
  """How many XLA compilations this process has run (tests use it to prove that nothing recompiles)."""
  return _COMPILE["count"]


def enable_persistent_cache() -> None:
  """Keeps compiled programs on disk, so that jobs in fresh processes (joblib, a cluster) skip compilation: all
  of them, where JAX's default skips those that compile in under a second (every small CPU program). A user's own
  JAX_COMPILATION_CACHE_DIR wins over our default folder."""
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", str(data.resolve_cache_dir() / "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
