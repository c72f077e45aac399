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


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  """Writes beside the target, then renames: a reader sees the old file or the new one, never half of one."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone who may read the folder
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _finite_or_none(x):
  return x if not isinstance(x, float) or math.isfinite(x) else None


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  clean = {k: _finite_or_none(v) for k, v in summary.items()}  # JSON has no NaN
  write_text_atomically(pathlib.Path(workdir) / SUMMARY_FILE, json.dumps(clean, indent=2) + "\n")


def read_summary(workdir: pathlib.Path) -> dict | None:
  path = pathlib.Path(workdir) / SUMMARY_FILE
  return json.loads(path.read_text()) if path.is_file() else None


class RunWriter:
  """Scalars to TensorBoard (tensorboardX: no TensorFlow needed) and to metrics.jsonl, one line per point."""

  def __init__(self, workdir: pathlib.Path):
    from tensorboardX import SummaryWriter  # imported here: only runs that write need it

    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._tb = SummaryWriter(logdir=str(self.workdir), flush_secs=10)
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
