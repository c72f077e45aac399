"""Speed only: how trainlab makes its programs fast on this hardware. Nothing here changes what is computed.

TRAINLAB_FAST=0 (on by default) turns it all off, to tell whether a problem lies here: programs are plain
`jax.jit` (no program store, no compile options, no persistent cache), nothing compiles ahead, and
`model.conv_impl=auto` takes XLA's own convolution on every backend.
"""

from __future__ import annotations

import os
from typing import Callable

import jax

from trainlab.fast import compilation, program_store
from trainlab.fast.compilation import KEEP_BARRIERS, RUN_RARELY, count, seconds
from trainlab.fast.compile_ahead import compile_ahead
from trainlab.fast.program_store import trusted

__all__ = ["ENABLED", "KEEP_BARRIERS", "RUN_RARELY", "compile_ahead", "count", "enable_persistent_cache", "jit",
           "seconds", "trusted"]

# The switch. conv.resolve and compile_ahead read it from this module when called, so a test may set it here.
ENABLED: bool = os.environ.get("TRAINLAB_FAST", "1").strip().lower() not in ("0", "false", "off", "no")


def jit(fun: Callable, name: str, key: str | None, *, donate_argnums=(), run_rarely: bool = False,
        keep_barriers: bool = False, record: list | None = None):
  """`fun` compiled through the program store (its trace kept on disk under `key`; None: not kept), with the
  compile options of a program run once or a few times (RUN_RARELY) or of the chunk (KEEP_BARRIERS); `record`:
  a list that `fun` fills while traced, kept with its trace. Switched off: jax.jit(fun, donate_argnums=...).
  Either way it has a jitted function's `.lower(*args)`, and `__wrapped__` is `fun` (for vmap)."""
  if not ENABLED:
    return jax.jit(fun, donate_argnums=donate_argnums)
  options = {**(RUN_RARELY if run_rarely else {}), **(KEEP_BARRIERS if keep_barriers else {})}
  return program_store.Stored(fun, name, key, donate_argnums=donate_argnums, compiler_options=options,
                              record=record)


def enable_persistent_cache() -> None:
  """compilation.enable_persistent_cache, where the program store lives too; switched off, nothing."""
  if ENABLED:
    compilation.enable_persistent_cache()
