"""Atomic writes: a temporary file beside the target, synced to the disk and renamed over it, so that a reader,
a second writer or a crash sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import tempfile
from typing import BinaryIO, Iterator


class WriteError(OSError):
  """A file that could not be written (full disk, unwritable folder); its previous contents are intact."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(e: BaseException | None) -> str | None:
  """The reason, when an error (or one it was raised from) says that the disk is full: an OSError ENOSPC or
  EDQUOT, or a library's error that carries one in its message (orbax's TensorStore: RESOURCE_EXHAUSTED ...
  No space left on device); else None."""
  seen = set()
  while e is not None and id(e) not in seen:  # a chain may loop: an error re-raised from its own handler
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in DISK_FULL:
      return e.strerror or os.strerror(e.errno)
    for code in DISK_FULL:
      if os.strerror(code) in str(e):
        return os.strerror(code)
    e = e.__cause__ or e.__context__
  return None


def _error(path: pathlib.Path, e: OSError, unchanged: bool = True) -> WriteError:
  return WriteError(f"cannot write {path}: {e.strerror or e}" + ("; its previous contents are unchanged" * unchanged))


@contextlib.contextmanager
def replacing(path: pathlib.Path) -> Iterator[BinaryIO]:
  """A binary file to write `path`'s new contents into, for writers that stream (np.savez, a download).

  An exception of the block leaves `path` as it was and passes through unchanged (it may be the caller's own,
  a network error say); WriteError says that the folder, the sync or the rename failed.
  """
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  except OSError as e:
    raise _error(path, e, unchanged=False) from e
  written = False  # past the block: an OSError now is the disk's or the folder's
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      written = True
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone who may read the folder
    os.replace(tmp, path)
  except BaseException as e:
    pathlib.Path(tmp).unlink(missing_ok=True)
    if written and isinstance(e, OSError):
      raise _error(path, e) from e
    raise


def write_text(path: pathlib.Path, text: str) -> None:
  """Replaces `path` with `text` in UTF-8; raises WriteError, naming the file and the reason, where it fails."""
  try:
    with replacing(path) as f:
      f.write(text.encode())
  except WriteError:
    raise
  except OSError as e:  # the disk refused the write itself
    raise _error(pathlib.Path(path), e) from e
