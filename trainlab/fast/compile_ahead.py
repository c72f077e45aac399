"""Compiling the next programs in a background thread while the host does other work (the step-0 diagnostics).

XLA compiles without holding the GIL, so a compile overlaps the host's own Python work. The programs are traced
and lowered in the caller's thread first: tracing is Python and holds the GIL, so tracing beside other tracing
would only take turns with it (docs/speed.md, "Compile-ahead"). Compiling ahead only saves time: a program that
fails to lower or compile here is compiled again, and reports its error, when it is called.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from trainlab import fast

log = logging.getLogger(__name__)


def _nothing() -> None:
  """What there is to wait for when nothing was compiled ahead."""


def compile_ahead(calls: Sequence[tuple[Callable, tuple[Any, ...]]]) -> Callable[[], None]:
  """Lowers each (jitted_fn, args) of `calls` now, in this thread, and compiles them in a background thread;
  returns a function that waits for that thread. Wait before a call donates the arguments lowered here. With
  the speed switch off (fast.ENABLED), does nothing."""
  if not fast.ENABLED:
    return _nothing
  try:
    lowered = [fn.lower(*args) for fn, args in calls]
  except Exception as e:  # noqa: BLE001 - the call that follows raises it
    log.debug("lowering ahead failed (%s); the programs compile when called", e)
    return _nothing

  def compile_all() -> None:
    try:
      for program in lowered:
        program.compile()
    except Exception as e:  # noqa: BLE001 - the call that follows raises it, in the caller's own thread
      log.debug("compiling ahead failed (%s); the programs compile when called", e)

  thread = threading.Thread(target=compile_all, name="trainlab-compile", daemon=True)
  thread.start()
  return thread.join
