"""Catching SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C) for an orderly stop.

`Stopping` is the mechanism both a run (train.StopRequest) and a sweep (sweep.SweepStop) use: while the
context is open, the first signal calls `on_signal` and a second one aborts at once (KeyboardInterrupt); on
exit the previous handlers come back. No JAX here: a sweep's own process may never import it.
"""

from __future__ import annotations

import signal
import threading


class Stopping:
  """A context in which SIGTERM and SIGINT request a stop; `signal_name` says which came first (None: none)."""

  def __init__(self):
    self.signal_name, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signal_name is not None:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    self.on_signal(signum)

  def on_signal(self, signum: int) -> None:
    """What the first signal does, beyond recording its name."""
