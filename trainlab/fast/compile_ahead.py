"""Compiling the next programs in a background thread while the host does other work (the step-0 diagnostics).

XLA compiles without holding the GIL; tracing and lowering are Python and hold it, so they run first, in the
caller's thread (docs/speed.md, "Compile-ahead"). This only ever saves time: a program that fails to lower or
compile here compiles again, and raises its error, when it is called.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from trainlab import fast

log = logging.getLogger(__name__)


def compile_ahead(calls: Sequence[tuple[Callable, tuple[Any, ...]]]) -> Callable[[], None]:
  """Lowers each (jitted_fn, args) now and compiles them in a background thread; returns a function that waits
  for it (call it before a program donates the arguments lowered here). Switched off (fast.ENABLED): nothing."""
  if not fast.ENABLED:
    return lambda: None
  try:
    lowered = [fn.lower(*args) for fn, args in calls]
  except Exception as e:  # noqa: BLE001 - the call that follows raises it
    log.debug("lowering ahead failed (%s); the programs compile when called", e)
    return lambda: None

  def compile_all() -> None:
    try:
      for program in lowered:
        program.compile()
    except Exception as e:  # noqa: BLE001 - the call that follows raises it, in the caller's own thread
      log.debug("compiling ahead failed (%s); the programs compile when called", e)

  thread = threading.Thread(target=compile_all, name="trainlab-compile", daemon=True)
  thread.start()
  return thread.join
