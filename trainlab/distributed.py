"""One run over the devices of several processes, on one or many hosts (`distributed.enabled=true`).

Every process runs `trainlab train` with the same config. `start` joins them through JAX's own multi-process
runtime (jax.distributed.initialize): the coordinator's address, the number of processes and this one's index
come from `distributed.*`, or, left null, from the cluster's environment as JAX reads it (SLURM's under srun).
A process that cannot join fails in one line and exit code 2, never hangs: one other than process 0 first checks
that the coordinator's port answers (`distributed.connect_timeout_s`), and a watchdog ends any process still waiting
after `distributed.timeout_s` (JAX would abort it then with a C++ stack trace). From then on jax.devices() lists the devices of every process, and the run is the data-parallel run of
trainlab.sharding over all of them (`devices=all`): one program, the batch split over the global mesh, the
compiler's collectives summing the gradients. Every process holds the whole (small, resident) data set, so each
device gathers its own share of each batch from its local copy: no process reads another's examples.

Process 0 leads: it alone takes the run directory's lock, makes the decisions that read the directory (refuse,
resume, skip a finished run), and writes the logs, events, metrics.jsonl, summary.json and .hydra/. It tells the
others whether to train (`tell_followers`); they train in step with it and write nothing of their own except
their share of each checkpoint, which orbax's CheckpointManager coordinates (every process calls save; the
primary writes the metadata). The run directory must be one folder that every process sees: process 0's, which
the others take from it (`shared_workdir`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import socket
import sys
import threading
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from omegaconf import DictConfig

from trainlab.config import ConfigError

log = logging.getLogger("trainlab")

PATH_BYTES = 4096  # the longest run directory path that process 0 can hand to the others
WATCHDOG_HEAD_START_S = 10  # JAX's own timeout is this much later than the watchdog's


def start(cfg: DictConfig, on_timeout: Callable[[], None] = lambda: None) -> None:
  """Joins this process to the run's others (blocks until all have joined, or fails after the timeout).

  Args:
    cfg: the `distributed` group.
    on_timeout: called just before the watchdog ends the process (the caller's cleanup).

  Raises:
    ConfigError: the coordinator cannot be found (neither set nor in the environment) or not be reached.
  """
  if jax.distributed.is_initialized():  # a second run in the same process (tests) reuses the runtime
    return
  if cfg.coordinator and cfg.process_id:  # not process 0, which serves the coordinator: it must answer first
    reach_coordinator(cfg.coordinator, cfg.connect_timeout_s)
  where = f"distributed.coordinator={cfg.coordinator}" if cfg.coordinator else "the cluster's environment"
  message = (f"distributed.enabled=true: process {cfg.process_id if cfg.process_id is not None else '?'} did not "
             f"join the run within distributed.timeout_s={cfg.timeout_s} s: the coordinator ({where}) did not "
             "answer, or not every process of distributed.num_processes started")
  try:
    # JAX's own timeout ends the process with a fatal error and a C++ stack trace (SIGABRT), not an exception:
    # the watchdog ends it first, in one line.
    with watchdog(cfg.timeout_s, message, on_timeout):
      jax.distributed.initialize(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                                 process_id=cfg.process_id,
                                 initialization_timeout=int(cfg.timeout_s) + WATCHDOG_HEAD_START_S)
  except (ValueError, RuntimeError) as e:  # JAX's own words on what it could not find or reach
    first_line = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
    raise ConfigError(f"distributed.enabled=true: jax.distributed.initialize failed: {first_line}. Set "
                      "distributed.coordinator (host:port of process 0), distributed.num_processes and "
                      "distributed.process_id, or run under srun (SLURM)") from None
  log.info("distributed run: process %d of %d, %d of %d devices here", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def reach_coordinator(address: str, seconds: float) -> None:
  """Waits up to `seconds` for a TCP connection to the coordinator's `host:port` (process 0 may start a little
  after the others). JAX would wait its whole distributed.timeout_s for it, then abort.

  Raises:
    ConfigError: the address is not host:port, or nothing answered there in time.
  """
  host, _, port = address.rpartition(":")
  host = host.strip("[]")  # [::1]:1234
  if not host or not port.isdigit():
    raise ConfigError(f"distributed.coordinator={address} is not allowed: it must be host:port (process 0's)")
  deadline = time.monotonic() + seconds
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConfigError(f"distributed.coordinator={address}: nothing answered there within "
                          f"distributed.connect_timeout_s={seconds} s ({e.strerror or e}); start process 0 first, or "
                          "set distributed.coordinator to process 0's host:port") from None
      time.sleep(0.25)


@contextlib.contextmanager
def watchdog(seconds: float, message: str, on_timeout: Callable[[], None]) -> Iterator[None]:
  """Ends the process with `error: message` and exit code 2 if the block is still running after `seconds`. The
  block may be blocked in C++: jax.distributed.initialize releases the GIL while it waits, so the timer runs."""
  def give_up() -> None:
    on_timeout()
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)  # the main thread is inside JAX's wait; nothing of this process's own is left to save

  timer = threading.Timer(seconds, give_up)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def is_leader() -> bool:
  """Whether this process writes the run's records: process 0, or the only process."""
  return jax.process_index() == 0


def shared_workdir(workdir: pathlib.Path) -> pathlib.Path:
  """Process 0's run directory, on every process (Hydra's default one is named after the time each started)."""
  encoded = np.zeros(PATH_BYTES, np.uint8)
  text = str(pathlib.Path(workdir).resolve()).encode()
  if len(text) > PATH_BYTES:
    raise ConfigError(f"hydra.run.dir is not allowed: a distributed run's directory path must be at most "
                      f"{PATH_BYTES} bytes")
  encoded[:len(text)] = np.frombuffer(text, np.uint8)
  shared = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
  return pathlib.Path(bytes(shared[shared != 0]).decode())


def tell_followers(train: bool) -> None:
  """Process 0: tells the others whether the run trains (once per run). The others: `wait_for_leader`."""
  multihost_utils.broadcast_one_to_all(np.int32(train))


def wait_for_leader() -> bool:
  """The others: whether process 0 decided to train (True) or declined (a refusal, a finished run)."""
  return bool(multihost_utils.broadcast_one_to_all(np.int32(0)))


@contextlib.contextmanager
def leading() -> Iterator[callable]:
  """Process 0's job: yields `go`, called where training starts; a job that ends without calling it (it
  refused, skipped or failed before its first step) tells the others not to train, so that none waits forever."""
  told = []

  def go() -> None:
    if not told:
      told.append(True)
      tell_followers(True)

  try:
    yield go
  finally:
    if not told:
      tell_followers(False)


def agree_on_stop(signal_name: str | None) -> str | None:
  """Between chunks: a signal that reached any process stops all of them at the same step (SLURM signals each
  process on its own); the name of the first process's signal that got one, or None. One process: as given."""
  if jax.process_count() == 1:
    return signal_name
  got = np.asarray(multihost_utils.process_allgather(np.int32(signal_name is not None)))
  return signal_name or ("SIGTERM" if got.any() else None)


def quiet_follower_logs() -> None:
  """On the other processes: no lines in the run's log file, which is process 0's (their console stays)."""
  root = logging.getLogger()
  for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
    root.removeHandler(handler)
    handler.close()
