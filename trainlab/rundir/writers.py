"""What a run writes into its directory: TensorBoard events, metrics.jsonl and summary.json.

The names are a contract that reports, resume and the sweep table read: metric names are `split/name`
(`train/loss`, `val/accuracy`, ...) in metrics.jsonl and summary.json; TensorBoard shows them under the tags
of `tensorboard_tag`, in a folder of the run directory named after the run (`run_name`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
import pathlib
import time
import zlib

from trainlab import metrics
from trainlab.rundir.tensorboard_import import import_tensorboardx
from trainlab.rundir import atomic, jobs

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
STOP_FILE = ".stop-requested"  # in a sweep directory: the sweep got a signal, so every job stops (sweep.py)
HISTOGRAM_BUCKETS = 30  # as TensorBoard's own summary API


def recorded_overrides(workdir: pathlib.Path) -> list[str]:
  """The run's overrides as Hydra recorded them in its directory, `resume` left out; [] where none are."""
  from omegaconf import OmegaConf

  recorded = pathlib.Path(workdir) / ".hydra" / "overrides.yaml"
  return jobs.run_overrides(list(OmegaConf.load(recorded))) if recorded.is_file() else []


def run_name(workdir: pathlib.Path) -> str:
  """The run's name in TensorBoard: its overrides (`optimizer=adam,init=he,seed=0`), so that a resumed run keeps
  its name; `defaults` for a run without overrides."""
  name = ",".join(recorded_overrides(workdir)).replace("/", "_") or "defaults"  # one folder, not a path
  if len(name) > 200:  # a folder's name has at most 255 bytes: the start, and a checksum of the rest
    name = f"{name[:190]}...{zlib.crc32(name.encode()):08x}"
  return name


def events_dir(workdir: pathlib.Path) -> pathlib.Path:
  """The folder of the run's TensorBoard event files: TensorBoard names a run by its folder."""
  return pathlib.Path(workdir) / run_name(workdir)


def tensorboard_tag(name: str) -> str:
  """A metric's tag in TensorBoard. TensorBoard sorts tag groups by name, capitals first, and opens the first
  two: the training and validation curves are `Train/` and `Val/`, so they open first and the diagnostics
  follow; the best validation point so far is a curve beside them (`best_val/loss` -> `Val/best_loss`)."""
  split, _, rest = name.partition("/")
  if split == "best_val":
    return f"Val/best_{rest}"
  return f"{split.capitalize()}/{rest}" if split in ("train", "val") else name


def _finite_or_none(x):
  return x if not isinstance(x, float) or math.isfinite(x) else None


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  clean = {k: _finite_or_none(v) for k, v in summary.items()}  # JSON has no NaN
  atomic.write_text(pathlib.Path(workdir) / SUMMARY_FILE, json.dumps(clean, indent=2) + "\n")


def read_summary(workdir: pathlib.Path) -> dict | None:
  path = pathlib.Path(workdir) / SUMMARY_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def job_summaries(sweep_dir: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
  """(job directory, summary) of each job of a sweep that has written its summary.json, in job order."""
  found = ((job_dir, read_summary(job_dir)) for job_dir in jobs.job_dirs(sweep_dir))
  return [(job_dir, summary) for job_dir, summary in found if summary is not None]


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The points of a run's metrics.jsonl, in order."""
  path = pathlib.Path(workdir) / METRICS_FILE
  points = []
  for line in path.read_text().splitlines() if path.is_file() else []:
    try:
      points.append(json.loads(line))
    except json.JSONDecodeError:  # an empty line, or the last one cut short by a kill
      pass
  return points


def _truncate_metrics(workdir: pathlib.Path, purge_step: int) -> None:
  """Keeps the points of steps < purge_step, but not the test metrics: a resumed run writes them anew."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if path.is_file():
    kept = [p for p in read_metrics(workdir)
            if p.get("step", 0) < purge_step and not any(k.startswith("test/") for k in p)]
    atomic.write_text(path, "".join(json.dumps(p) + "\n" for p in kept))


def remove_unfinished(workdir: pathlib.Path) -> None:
  """Removes what a run cut off while writing leaves half-written: orbax's temporary checkpoint folders, and a
  last line of metrics.jsonl without its end."""
  import shutil

  for unfinished in pathlib.Path(workdir).glob("checkpoints/*.orbax-checkpoint-tmp*"):
    shutil.rmtree(unfinished, ignore_errors=True)
  path = pathlib.Path(workdir) / METRICS_FILE
  if path.is_file():
    text = path.read_bytes()
    if text and not text.endswith(b"\n"):
      with open(path, "r+b") as f:  # in place: shorter, so it needs no space on a full disk
        f.truncate(text.rfind(b"\n") + 1)


class RunWriter:
  """Scalars to TensorBoard (tensorboardX: no TensorFlow needed) and to metrics.jsonl, one line per point; the
  events go to `events_dir(workdir)`."""

  def __init__(self, workdir: pathlib.Path, purge_step: int | None = None, silent: bool = False):
    """With `purge_step` (a resumed run), the points of steps >= purge_step already logged are dropped. A
    `silent` writer writes nothing: a distributed run's other processes, whose process 0 writes the records."""
    self.workdir, self.silent = pathlib.Path(workdir), silent
    self.fields = {}  # written into every metrics.jsonl point after its step (a staged run's `stage`)
    if silent:
      return
    import_tensorboardx()
    from tensorboardX import SummaryWriter  # imported here: only runs that write need it

    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    if purge_step is not None:
      _truncate_metrics(self.workdir, purge_step)
    # TensorBoard hides the events of steps >= purge_step written before this file; the suffix orders this
    # file after the earlier ones of the run even when both were opened within the same second.
    suffix = "" if purge_step is None else f".resumed{purge_step:010d}.{os.getpid()}"
    self._tb = SummaryWriter(logdir=str(events_dir(self.workdir)), flush_secs=10, purge_step=purge_step,
                             filename_suffix=suffix)
    self._jsonl = open(self.workdir / METRICS_FILE, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """The points to TensorBoard and metrics.jsonl."""
    self.plot(step, metrics)
    self.write_jsonl(step, metrics)

  def write_jsonl(self, step: int, metrics: dict[str, float]) -> None:
    """The points to metrics.jsonl only (data for the report that TensorBoard would show badly)."""
    if self.silent:
      return
    point = {"step": step, **self.fields, **{k: _finite_or_none(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(point) + "\n")

  def plot(self, step: int, metrics: dict[str, float]) -> None:
    """The points to TensorBoard only (a view, such as the best validation point so far)."""
    if self.silent:
      return
    for name, x in metrics.items():
      _check_events_thread(self._tb)  # before each event: the thread may stop between two of them
      self._tb.add_scalar(tensorboard_tag(name), x, global_step=step)

  def config(self, yaml_text: str) -> None:
    """The config in TensorBoard's Text tab: the run's overrides (what sets it apart) first, then the whole
    config as YAML in a code block (markdown, which keeps its indentation)."""
    if self.silent:
      return
    overrides = ", ".join(recorded_overrides(self.workdir)) or "(none)"
    _check_events_thread(self._tb)
    self._tb.add_text("config", f"**overrides:** {overrides}\n\n```\n{yaml_text}\n```", global_step=0)

  def histogram(self, step: int, name: str, values) -> None:
    if self.silent:
      return
    # TensorBoard's own summary API buckets histograms 30 ways; tensorboardX's default, about 1,500 buckets,
    # costs far more to compute and to write for no visible difference in the Histograms tab.
    _check_events_thread(self._tb)
    self._tb.add_histogram(name, values, global_step=step, bins=HISTOGRAM_BUCKETS)

  def flush(self) -> None:
    """Everything written so far onto the disk, TensorBoard's events included (before a checkpoint: a kill
    after it must find every file holding the points up to it)."""
    if self.silent:
      return
    _check_events_thread(self._tb)
    _write_queued_events(self._tb)
    self._tb.flush()
    self._jsonl.flush()
    os.fsync(self._jsonl.fileno())

  def close(self) -> None:
    if self.silent:
      return
    try:
      _check_events_thread(self._tb)
      self._tb.close()
    except OSError:  # the writing thread has stopped (its error is the run's): close the file it wrote
      for file_writer in (self._tb.all_writers or {}).values():
        file_writer.event_writer._closed = True  # so that tensorboardX's own exit hook leaves it too
        try:
          file_writer.event_writer._ev_writer.close()
        except OSError:  # its last buffered bytes do not fit either; TensorBoard reads the events before them
          pass
    finally:
      self._jsonl.close()


_EVENTS_THREAD_ERRORS: dict = {}  # tensorboardX writing thread -> the error that stopped it


def _keep_events_thread_errors(args) -> None:
  """threading.excepthook: the error that stops a tensorboardX writing thread (a full disk) is kept, for the run
  to raise in its own thread (_check_events_thread), instead of printed as a traceback; others go on as before."""
  from tensorboardX.event_file_writer import _EventLoggerThread

  if isinstance(args.thread, _EventLoggerThread):
    _EVENTS_THREAD_ERRORS[args.thread] = args.exc_value
  else:
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook
threading.excepthook = _keep_events_thread_errors


def _check_events_thread(tb) -> None:
  """Raises the error that stopped tensorboardX's writing thread, if it has stopped, and otherwise returns once
  its queue has room for one more event: an event queued to a full queue whose thread then stops (a full disk)
  would wait forever. The run's thread is the queue's only producer, so room seen here is still there at the put.
  """
  for file_writer in (tb.all_writers or {}).values():
    events = file_writer.event_writer
    if events._closed:
      continue
    while True:
      if not events._worker.is_alive():
        error = _EVENTS_THREAD_ERRORS.get(events._worker) or OSError(errno.EIO, "TensorBoard's event writer stopped")
        raise error
      if not events._event_queue.full():
        break
      time.sleep(0.001)


def _write_queued_events(tb) -> None:
  """Writes the events tensorboardX still holds in its queue into the event file.

  tensorboardX writes events from a thread that takes them off a queue (up to 10) and its flush() syncs only what
  that thread has written: the events still queued reached the file later, unsynced, and a kill lost them. The
  thread's stop signal queues behind them, so stopping it writes them all; a new thread then serves the same file
  and queue. (tensorboardX has no public call for this; its version is pinned in pyproject.toml.)
  """
  from tensorboardX.event_file_writer import _EventLoggerThread

  for file_writer in (tb.all_writers or {}).values():
    events = file_writer.event_writer
    if events._closed:
      continue
    events._worker.stop()
    events._worker = _EventLoggerThread(events._event_queue, events._ev_writer, events._flush_secs)
    events._worker.start()


# --- the HParams dashboard ----------------------------------------------------------------------------------
# TensorBoard's hparams plugin reads, per run, a session start (its hyperparameter values) and end (its status)
# (tensorboard/plugins/hparams/summary_v2.py). Its columns come from an experiment summary when the logdir holds
# one, but it takes the first it finds (backend_context.py): one sweep's columns would hide every other run's
# overrides and metric in outputs/. So none is written, and the plugin computes the columns from every session in
# the logdir: every hyperparameter any run set, and every scalar tag of those runs as a metric (the task's
# accuracy or mse among them; a metric's value is the run's last point of its tag).


def task_metric(summaries: list[dict]) -> str:
  """The metric beside the loss in these runs' summaries: accuracy where any run classifies, else the one they
  have (mse for regressions, distance for analytic problems), else accuracy."""
  accuracy = metrics.TASK_METRIC["classification"]
  found = [m for m in metrics.TASK_METRIC.values() if any(f"best_val/{m}" in s or f"test/{m}" in s for s in summaries)]
  return accuracy if accuracy in found or not found else found[0]


ZERO_FRACTION = "weights/zero_fraction"  # summary.json: the final weights' fraction of exact zeros


def final_metrics(metric: str = "accuracy") -> tuple[str, ...]:
  """A run's final test and best validation metrics in its summary, for the task metric `metric`."""
  return (f"test/{metric}", "test/loss", f"best_val/{metric}", "best_val/loss")


def hparam_values(overrides: list[str]) -> dict[str, int | float | str | bool]:
  """The hyperparameters of a run for the dashboard: its command-line overrides, numbers parsed as numbers."""
  values = {}
  for key, text in jobs.parse_overrides(overrides).items():
    if text.lower() in ("true", "false"):
      values[key] = text.lower() == "true"
      continue
    for parse in (int, float, str):
      try:
        values[key] = parse(text)
        break
      except ValueError:
        pass
  return values


def session_group_name(workdir: pathlib.Path) -> str:
  """The run's row name: the plugin lists rows by it, so a sweep's job number is zero-padded (job 2 before 10);
  the absolute path keeps it apart from every other run of a logdir."""
  workdir = pathlib.Path(workdir).resolve()
  return str(workdir.with_name(f"{int(workdir.name):06d}")) if workdir.name.isdigit() else str(workdir)


def _hparams_summary(**fields):
  from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
  from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

  (kind, _), = fields.items()
  tag = f"_hparams_/{kind}"  # the plugin's tag of each summary (metadata.py)
  content = HParamsPluginData(version=0, **fields).SerializeToString()
  metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
  return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def write_hparams_session(workdir: pathlib.Path, hparams: dict, summary: dict) -> None:
  """One run's row of the HParams dashboard: its hyperparameters and status, in the run's events folder."""
  import_tensorboardx()
  from tensorboardX import SummaryWriter
  from tensorboardX.proto.api_pb2 import Status
  from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo, SessionStartInfo

  start = SessionStartInfo(start_time_secs=time.time(), group_name=session_group_name(workdir))
  for key, x in hparams.items():
    if isinstance(x, bool):
      start.hparams[key].bool_value = x
    elif isinstance(x, float):
      start.hparams[key].number_value = x
    else:  # TensorBoard prints every number to five digits (seed 0 as 0.0000): an integer is shown as its text
      start.hparams[key].string_value = str(x)
  status = "STATUS_SUCCESS" if summary.get("status") == "completed" else "STATUS_FAILURE"
  # At the run's last step: TensorBoard reads a step that goes back as a restart and drops the later points.
  step = summary.get("steps_run") or 0
  # The suffix: tensorboardX names files by the second, and a second writer in that second would overwrite. It
  # also orders this file after the run's own files of that second (".session" > ".resumed..."): TensorBoard
  # reads files by name, and a resumed run's file, read later, would purge the points written here.
  with SummaryWriter(logdir=str(events_dir(workdir)), filename_suffix=".session.hparams") as tb:
    tb.file_writer.add_summary(_hparams_summary(session_start_info=start), global_step=step)
    tb.file_writer.add_summary(_hparams_summary(session_end_info=SessionEndInfo(status=Status.Value(status))),
                               global_step=step)
