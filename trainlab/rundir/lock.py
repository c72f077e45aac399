"""One process per run directory: an OS lock on `<run dir>/.lock`, held while a job runs there.

The same lock, waited for instead of refused (`wait=True`), lets parallel jobs that need one source run made on
demand (rundir/on_demand.py) take turns: the first trains it, the others find it finished.

The lock is the kernel's (flock), not the file's existence: it goes with its holder, however the holder ends
(SIGKILL included), so no stale lock is ever left to remove. The file itself stays, holding the PID of its
last holder, which a refused process names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
from typing import Iterator

LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


class DirectoryInUse(Exception):
  """Another process holds the run directory; the message names it."""


@contextlib.contextmanager
def holding(workdir: pathlib.Path, name: str = LOCK_FILE, wait: bool = False) -> Iterator[None]:
  """Holds `workdir`'s lock (the file `name` in it) for the block; when another process holds it, raises
  DirectoryInUse having written nothing, or with `wait`, logs whom it waits for and blocks until it is free."""
  path = pathlib.Path(workdir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.read(fd, 32).decode(errors="replace").strip()
    who = f"process {holder}" if holder.isdigit() else "another process"
    if wait and e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
      log.info("%s is in use by %s; waiting for it", workdir, who)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX)
      except BaseException:  # a signal ends the wait
        os.close(fd)
        raise
    else:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise
      raise DirectoryInUse(f"{workdir} is in use by {who}, which is running a job there; wait for it to end, or "
                           "choose another directory") from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock
