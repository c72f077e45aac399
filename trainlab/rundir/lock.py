"""One process per run directory: an OS lock on `<run dir>/.lock`, held while a job runs there.

The lock is the kernel's (flock), not the file's existence: it goes with its holder, however the holder ends
(SIGKILL included), so no stale lock is ever left to remove. The file itself stays, holding the PID of its
last holder, which a refused process names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
from typing import Iterator

LOCK_FILE = ".lock"


class DirectoryInUse(Exception):
  """Another process holds the run directory; the message names it."""


@contextlib.contextmanager
def holding(workdir: pathlib.Path) -> Iterator[None]:
  """Holds `workdir`'s lock for the block; raises DirectoryInUse, having written nothing, when another process
  holds it."""
  path = pathlib.Path(workdir) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.read(fd, 32).decode(errors="replace").strip()
    os.close(fd)
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
      raise
    who = f"process {holder}" if holder.isdigit() else "another process"
    raise DirectoryInUse(f"{workdir} is in use by {who}, which is running a job there; wait for it to end, or "
                         "choose another directory") from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock
