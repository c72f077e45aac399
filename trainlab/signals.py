"""Catching SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C), and a run's SIGUSR2 (a time limit), for an
orderly stop.

`Stopping` is the mechanism both a run (StopRequest, below) and a sweep (sweep.SweepStop) use: while the
context is open, the first signal calls `on_signal`; a second one says in one line that the stop is under way
and lets it finish (its checkpoint and summary.json), and a third ends the process at once, as the signal does
by default. On exit the previous handlers come back. No JAX here: a sweep's own process may never import it.

SIGUSR2 is SLURM's warning before a job's time limit as submitit asks for it (`--signal=USR2@signal_delay_s`);
submitit's own handler for it requeues the job. A run stops on it as on SIGTERM, and once its checkpoint and
summary.json are written, `hand_over_time_limit` calls the handler that was there before the run (submitit's), so
that the job is requeued with what it needs to resume.

A second signal raises nothing: an exception raised by a signal handler lands wherever Python happens to be,
inside orbax's save (leaving its temporary folder) or a garbage-collection callback (which swallows it).
"""

from __future__ import annotations

import logging
import pathlib
import signal
import threading

log = logging.getLogger(__name__)


TIME_LIMIT = "SIGUSR2"  # the signal a run takes for its time limit (submitit's default, SUBMITIT_PREEMPT_SIGNAL)


def install(signums, handler) -> dict:
  """`handler` for each of the signals; returns the handlers it replaced, for `restore`. Nothing off the main
  thread, where Python delivers no signal and cannot set a handler."""
  if threading.current_thread() is not threading.main_thread():
    return {}
  return {signum: signal.signal(signum, handler) for signum in signums}


def restore(previous: dict, only_from=None) -> None:
  """The handlers `install` replaced; with `only_from`, only where that handler is still the one in place (not
  where another has since put its own choice)."""
  for signum, handler in previous.items():
    if only_from is None or signal.getsignal(signum) == only_from:
      signal.signal(signum, handler)


class Stopping:
  """A context in which SIGTERM and SIGINT request a stop; `signal_name` says which came first (None: none)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name, self._previous = None, {}

  def __enter__(self):
    self._previous = install(self.SIGNALS, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    restore(self._previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signal_name is not None:
      for previous in self._previous:  # a third signal ends the process at once, whatever it is doing then
        signal.signal(previous, signal.SIG_DFL)
      log.warning("%s again: %s; one more signal ends the process at once, without it", signal.Signals(signum).name,
                  self.STOPPING)
      return
    self.signal_name = signal.Signals(signum).name
    self.on_signal(signum)

  STOPPING = "already stopping"  # what a second signal is told is under way

  def on_signal(self, signum: int) -> None:
    """What the first signal does, beyond recording its name."""


class StopRequest(Stopping):
  """SIGTERM, SIGINT or SIGUSR2 (a time limit) during a run: finish the chunk, checkpoint and stop.

  A job of a sweep also stops when its sweep's stop file appears (`stop_file`, holding the signal's name): the
  sweep's own process writes it on a signal, for the jobs that run in worker processes (the joblib launcher).
  """

  STOPPING = "already stopping at the end of this chunk, after a checkpoint"
  # Not the sweep's own process (SweepStop): a time limit is a job's, and the scheduler signals the job.
  SIGNALS = (*Stopping.SIGNALS, getattr(signal, TIME_LIMIT))

  def __init__(self, stop_file: pathlib.Path | None = None):
    super().__init__()
    self.stop_file = stop_file

  def on_signal(self, signum: int) -> None:
    why = " (the job's time limit is near)" if self.signal_name == TIME_LIMIT else ""
    log.warning("%s%s: stopping at the end of this chunk, after a checkpoint", self.signal_name, why)

  def poll(self) -> str | None:
    """The signal's name once a stop is requested, by a signal or by the sweep's stop file."""
    if self.signal_name is None and self.stop_file is not None and self.stop_file.exists():
      self.signal_name = self.stop_file.read_text().strip() or "SIGTERM"
      log.warning("%s to the sweep: stopping at the end of this chunk, after a checkpoint", self.signal_name)
    return self.signal_name


def hand_over_time_limit() -> None:
  """After a run stopped on its time limit wrote its checkpoint and summary.json: calls the SIGUSR2 handler that was
  in place before the run (StopRequest has put it back), submitit's, which requeues the job and exits. Returns
  where there was none (the run was not started by submitit), or where submitit declined to requeue (it raises,
  to end the job, after `max_num_timeout` requeues): the job then ends `interrupted`, as after SIGTERM."""
  handler = signal.getsignal(getattr(signal, TIME_LIMIT))
  if not callable(handler):
    return
  log.warning("%s: handing the job to the handler that was there before the run, to be requeued", TIME_LIMIT)
  try:
    handler(getattr(signal, TIME_LIMIT), None)  # submitit's: requeues, then exits the process
  except Exception as e:  # submitit's way of saying "not requeued"; the run is already recorded `interrupted`
    log.warning("the job was not requeued: %s", e)
