"""Source runs made on demand: the run another run reads (the pretrained net of init.from_run, the teacher of
regularizer.distill.teacher), described by the overrides that train it (init.source_overrides,
regularizer.distill.teacher_overrides) instead of by its directory, so that a preset needing one is one command.

A source is trained once, by `trainlab train OVERRIDES` in a child process, into a directory named after its
overrides: sources/<hash> in the sweep directory (in the run directory, for a single run), where the sweep's
tools do not take it for a job (rundir/jobs.py). The first job that needs it trains it while holding the
directory's `.source.lock`; jobs that need it meanwhile (a parallel launcher) wait on that lock, then find it
finished (summary.json, completed) and read it as they would a directory given by hand. A source that failed is
not trained again: every job that needs it fails with the same line, naming its directory and its log.

A stop asked of the job while its source trains (SIGTERM or SIGINT to its process, the sweep's stop file) is
passed on to the child, which runs in a process group of its own so that each signal reaches it once: the job
waits for the source to checkpoint and raises SourceInterrupted, and resume=true continues the source from its
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from omegaconf import DictConfig, OmegaConf

from trainlab import signals
from trainlab.config import ConfigError
from trainlab.rundir import jobs, lock, writers

log = logging.getLogger("trainlab")

# key of the overrides -> key of the directory it stands for
KEYS = {"init.source_overrides": "init.from_run", "regularizer.distill.teacher_overrides": "regularizer.distill.teacher"}
LOCK_FILE = ".source.lock"  # beside the run's own .lock, which the child process holds while it trains
LOG_FILE = "source.log"  # the child's output: Hydra's errors never reach the run's own train.log
NESTED = "TRAINLAB_SOURCE_RUN"  # set in the child: a source made on demand does not make sources itself
REFUSED = ("hydra.", "resume", "init.source_overrides", "regularizer.distill.teacher_overrides")
POLL_S = 0.2  # how often the job looks for the sweep's stop file while its source trains


class SourceInterrupted(Exception):
  """The source stopped on a signal (passed on by the job, or its own) after its checkpoint, or was not started
  because the sweep is stopping: the job that needs it is `interrupted`, not failed, and resume=true continues
  the source."""

  def __init__(self, key: str, run_dir: pathlib.Path, signal_name: str):
    super().__init__(f"{key}: the source run in {run_dir} stopped on {signal_name} before it finished; "
                     "resume=true continues it")
    self.signal_name = signal_name


def sources_dir(base: pathlib.Path) -> pathlib.Path:
  """Where the sources of the sweep (or single run) in `base` go."""
  return pathlib.Path(base).resolve() / jobs.SOURCES_DIR


def source_dir(sources: pathlib.Path, overrides: list[str]) -> pathlib.Path:
  """The source's directory: named after its overrides in order (a later override of a key wins, as in Hydra)."""
  return pathlib.Path(sources) / hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:12]


def check_overrides(key: str, overrides) -> list[str]:
  """The overrides as a list of strings; ConfigError naming `key` for one that cannot describe a source run."""
  if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
    raise ConfigError(f"{key} must be a list of overrides of `trainlab train` (key=value), e.g. "
                      f"{key}=[data.classes=[0,1,2,3,4],steps=2000]; got {overrides}")
  for o in overrides:
    name = jobs.parse_override(o)[0]
    if "=" not in o or not name or o.startswith("-"):
      raise ConfigError(f"{key}: {o!r} is not an override: each is key=value (or group=option), as on the "
                        "command line of `trainlab train`")
    if name.startswith(REFUSED[0]) or name in REFUSED[1:]:
      raise ConfigError(f"{key}: {o} is not allowed: trainlab chooses the source's directory and resumes it "
                        "itself, and a source does not name a source of its own")
  return list(overrides)


def ensure(overrides: list[str], sources: pathlib.Path, key: str = "init.source_overrides",
           stop_file: pathlib.Path | None = None) -> tuple[pathlib.Path, bool]:
  """(the directory of the finished source run that `overrides` describe, whether this call trained it).

  stop_file: the sweep's stop file; once it appears, the source is stopped as by a signal.

  Raises:
    ConfigError: an override that describes no source, a source that does not start or fails, in one line.
    SourceInterrupted: the source stopped on a signal after its checkpoint, or the sweep is stopping.
  """
  overrides = check_overrides(key, overrides)
  run_dir = source_dir(sources, overrides)
  with lock.holding(run_dir, LOCK_FILE, wait=True):  # one process trains it; the others wait, then read it
    summary = writers.read_summary(run_dir) or {}
    if summary.get("status") == "completed":
      log.info("%s: the source run in %s is finished; reusing it", key, run_dir)
      return run_dir, False
    if summary.get("status") in ("failed", "diverged"):
      raise ConfigError(_failed(key, run_dir, summary, "") + "; remove the directory to train it again")
    if stop_file is not None and stop_file.exists():  # stopped while this job waited on the lock
      raise SourceInterrupted(key, run_dir, stop_file.read_text().strip() or "SIGTERM")
    _train(overrides, run_dir, key, stop_file)
    summary = writers.read_summary(run_dir) or {}
    if summary.get("status") == "interrupted":
      raise SourceInterrupted(key, run_dir, summary.get("interrupted_by") or "SIGTERM")
    if summary.get("status") != "completed":
      raise ConfigError(_failed(key, run_dir, summary, _last_error(run_dir / LOG_FILE)))
  return run_dir, True


def _train(overrides: list[str], run_dir: pathlib.Path, key: str, stop_file: pathlib.Path | None = None) -> None:
  """`trainlab train OVERRIDES` into run_dir, continuing what an earlier, interrupted attempt left there; returns
  when the child has ended, a stop passed on to it included (PassOn)."""
  command = [sys.executable, "-m", "trainlab", "train", *overrides, "resume=true", f"hydra.run.dir={run_dir}"]
  log.info("%s: training the source run in %s: trainlab train %s (its log: %s)", key, run_dir,
           " ".join(overrides), run_dir / LOG_FILE)
  # A job's own process may already hold most of an accelerator's memory (JAX preallocates it): the child takes
  # what it needs as it goes, unless the user said otherwise.
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **os.environ, NESTED: str(os.getpid())}  # see stop_with_parent
  with open(run_dir / LOG_FILE, "a") as out:
    with PassOn() as passing:
      # Its own process group: a signal to the job's group (Ctrl-C) reaches the child once, through PassOn.
      child = passing.start(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True))
      while child.poll() is None:
        if stop_file is not None and not passing.sent and stop_file.exists():  # a worker the signal missed
          passing.send(signal.Signals[stop_file.read_text().strip() or "SIGTERM"])
        time.sleep(POLL_S)


def stop_with_parent() -> None:
  """In a source run's own process, first thing (Linux): a SIGTERM to it when the job's process that started it
  dies, so that a job killed outright (SIGKILL, or a hangup to its group, which the source's own group does not
  get) leaves no source training on: it checkpoints and stops, and resume=true continues it. Set here rather than
  between fork and exec, which is unsafe in a process with threads (JAX's). Elsewhere nothing is done."""
  parent = os.environ.get(NESTED, "")
  if not parent.isdigit() or not sys.platform.startswith("linux"):
    return
  import ctypes

  PR_SET_PDEATHSIG = 1  # linux/prctl.h
  ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
  if os.getppid() != int(parent):  # it died before the line above: nothing to train for
    os.kill(os.getpid(), signal.SIGTERM)


class PassOn:
  """While open, SIGTERM and SIGINT to this process are sent on to the child (each one, so that its second and
  third mean what they mean to a run; one that came before it started, once it has), then given to the handler
  that was there if it is a Python function (a sweep's SweepStop writes its stop file); the default actions, which
  would end this process and leave the child running, are not taken."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.child, self.sent, self._early, self._previous = None, 0, [], {}

  def start(self, child: subprocess.Popen) -> subprocess.Popen:
    self.child = child
    for signum in self._early:
      self.send(signum)
    return child

  def __enter__(self):
    self._previous = signals.install(self.SIGNALS, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    signals.restore(self._previous, only_from=self._handle)  # a sweep's third signal may have set SIG_DFL since
    self._previous = {}

  def send(self, signum: int) -> None:
    if self.child is None:
      self._early.append(signum)
    elif self.child.poll() is None:
      log.warning("%s: passing it on to the source run (pid %d), which stops after a checkpoint",
                  signal.Signals(signum).name, self.child.pid)
      self.child.send_signal(signum)
      self.sent += 1

  def _handle(self, signum, frame) -> None:
    self.send(signum)
    previous = self._previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
      previous(signum, frame)


def _failed(key: str, run_dir: pathlib.Path, summary: dict, reason: str) -> str:
  status = summary.get("status")
  why = summary.get("error") or reason or (f"it ended {status}" if status else "it wrote no summary.json")
  return f"{key}: the source run in {run_dir} failed: {why}; its log: {run_dir / LOG_FILE}"


def _last_error(path: pathlib.Path) -> str:
  """The child's last `error:` line (trainlab's one-line refusals), else its last line."""
  lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] \
      if path.is_file() else []
  errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
  return errors[-1] if errors else (lines[-1][:300] if lines else "")


# --- a run's config ----------------------------------------------------------------------------------------------
def _given(cfg: DictConfig, key: str):
  """The value at `key`, or None where it is unset, missing (???) or its group is not chosen."""
  parent, _, leaf = key.rpartition(".")
  node = OmegaConf.select(cfg, parent)
  if node is None or leaf not in node or OmegaConf.is_missing(node, leaf):
    return None
  return node[leaf]


def resolve(cfg: DictConfig, sources: pathlib.Path, stop_file: pathlib.Path | None = None) -> dict:
  """Sets init.from_run and regularizer.distill.teacher to the sources their overrides describe, trained into
  `sources` where not yet there (stopped when the sweep's `stop_file` appears); returns what summary.json records
  of them ({} when the run needs none).

  Raises:
    ConfigError: both a directory and overrides given, a source made on demand that needs one itself, or
      ensure's errors; SourceInterrupted.
  """
  record = {}
  for key, path_key in KEYS.items():
    overrides = _given(cfg, key)
    if overrides is None:
      continue
    if _given(cfg, path_key) is not None:
      raise ConfigError(f"{key} and {path_key} are both set: a source run is given by its directory or by the "
                        "overrides that train it, not both")
    if os.environ.get(NESTED):
      raise ConfigError(f"{key} is not allowed in a source run made on demand: give its own source by "
                        f"{path_key}=DIR")
    run_dir, made = ensure(list(overrides), sources, key, stop_file)
    OmegaConf.update(cfg, path_key, str(run_dir), merge=False)
    record[key] = {"overrides": list(overrides), "run": str(run_dir), "made_on_demand": made}
  return {"sources": record} if record else {}


def check_resolved(cfg: DictConfig) -> None:
  """Raises ConfigError where a source is given by overrides that nobody has turned into a directory yet."""
  for key, path_key in KEYS.items():
    if _given(cfg, key) is not None and _given(cfg, path_key) is None:
      raise ConfigError(f"{key} is read by `trainlab train`, which trains the source before the run (this run was "
                        f"started another way): give {path_key}=DIR instead, or call on_demand.resolve first")
