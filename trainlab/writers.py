"""What a run writes into its directory: TensorBoard events, metrics.jsonl and summary.json.

The names are a contract that reports, resume and the sweep table read: metric names are `split/name`
(`train/loss`, `val/accuracy`, ...), the same in TensorBoard and in metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class WriteError(OSError):
  """A file that could not be written (full disk, unwritable folder); its previous contents are intact."""


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  """Writes beside the target, then renames: a reader sees the old file or the new one, never half of one.

  Raises:
    WriteError: naming the file and the reason, when the folder or the disk refuses; the old file stays.
  """
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  except OSError as e:
    raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
  try:
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone who may read the folder
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    pathlib.Path(tmp).unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise WriteError(f"cannot write {path}: {e.strerror or e}; its previous contents are unchanged") from e
    raise


def _finite_or_none(x):
  return x if not isinstance(x, float) or math.isfinite(x) else None


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  clean = {k: _finite_or_none(v) for k, v in summary.items()}  # JSON has no NaN
  write_text_atomically(pathlib.Path(workdir) / SUMMARY_FILE, json.dumps(clean, indent=2) + "\n")


def read_summary(workdir: pathlib.Path) -> dict | None:
  path = pathlib.Path(workdir) / SUMMARY_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def _truncate_jsonl(path: pathlib.Path, purge_step: int) -> None:
  """Keeps the lines of `path` whose step is < purge_step (and drops a last line cut short by a kill)."""
  if not path.is_file():
    return
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      point = json.loads(line)
    except json.JSONDecodeError:
      continue
    if point.get("step", 0) < purge_step and not any(k.startswith("test/") for k in point):
      kept.append(line if line.endswith("\n") else line + "\n")
  write_text_atomically(path, "".join(kept))


class RunWriter:
  """Scalars to TensorBoard (tensorboardX: no TensorFlow needed) and to metrics.jsonl, one line per point."""

  def __init__(self, workdir: pathlib.Path, purge_step: int | None = None):
    """With `purge_step` (a resumed run), the points of steps >= purge_step already logged are dropped."""
    from tensorboardX import SummaryWriter  # imported here: only runs that write need it

    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    if purge_step is not None:
      _truncate_jsonl(self.workdir / METRICS_FILE, purge_step)
    # TensorBoard hides the events of steps >= purge_step written before this file; the suffix orders this
    # file after the earlier ones of the run even when both were opened within the same second.
    suffix = "" if purge_step is None else f".resumed{purge_step:010d}.{os.getpid()}"
    self._tb = SummaryWriter(logdir=str(self.workdir), flush_secs=10, purge_step=purge_step, filename_suffix=suffix)
    self._jsonl = open(self.workdir / METRICS_FILE, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    for name, x in metrics.items():
      self._tb.add_scalar(name, x, global_step=step)
    self._jsonl.write(json.dumps({"step": step, **{k: _finite_or_none(v) for k, v in metrics.items()}}) + "\n")

  def flush(self) -> None:
    self._tb.flush()
    self._jsonl.flush()

  def close(self) -> None:
    self._tb.close()
    self._jsonl.close()
