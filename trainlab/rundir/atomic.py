"""Atomic writes: every file trainlab writes for others to read is replaced whole or not at all.

The new contents go to a temporary file beside the target, are flushed to the disk, and are renamed over the
target; a reader, a second writer or a crash meanwhile sees the old file or the new one, never half of one.
Results, the sweep table, the reports, the data caches and the program store all write through this module.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import IO, Iterator


class WriteError(OSError):
  """A file that could not be written (full disk, unwritable folder); its previous contents are intact."""


def _error(path: pathlib.Path, e: OSError, kept: bool) -> WriteError:
  unchanged = "; its previous contents are unchanged" if kept else ""
  return WriteError(f"cannot write {path}: {e.strerror or e}{unchanged}")


@contextlib.contextmanager
def replacing(path: pathlib.Path, mode: str = "wb") -> Iterator[IO]:
  """A temporary file beside `path` to write into, renamed over `path` when the block ends without an error.

  For writers that stream (np.savez, a download): an exception of the block leaves `path` as it was, removes
  the temporary file and passes through unchanged (it may be the caller's own, such as a network error).

  Raises:
    WriteError: when the folder cannot be made, or the flush, the sync or the rename fails.
  """
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  except OSError as e:
    raise _error(path, e, kept=False) from e
  try:
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone who may read the folder
    with os.fdopen(fd, mode) as f:
      yield f
      try:
        f.flush()
        os.fsync(f.fileno())
      except OSError as e:
        raise _error(path, e, kept=True) from e
    try:
      os.replace(tmp, path)
    except OSError as e:
      raise _error(path, e, kept=True) from e
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_text(path: pathlib.Path, text: str) -> None:
  """Replaces `path` with `text` in UTF-8.

  Raises:
    WriteError: naming the file and the reason, when the folder or the disk refuses; the old file stays.
  """
  try:
    with replacing(path) as f:
      f.write(text.encode())
  except WriteError:
    raise
  except OSError as e:  # the disk refused the write itself
    raise _error(pathlib.Path(path), e, kept=True) from e
