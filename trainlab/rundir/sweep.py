"""The sweep table: when a multirun ends, one row per job in `results.csv` in the sweep directory.

After the table, the callback writes the HParams dashboard's column list and the report (report.py); a failure
in either is logged and leaves results.csv as written.
"""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import signal
import sys
import time

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from trainlab import metrics, signals
from trainlab.rundir import atomic, jobs, report, writers

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
JOBS_FILE = ".jobs.json"  # the grid sweeper's list of the sweep's jobs (their overrides, in job order)
# Launchers that run every job in the sweep's own process, in turn: a signal reaches the job that is running.
IN_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                        "hydra_plugins.trainlab_launcher.vectorized_launcher.VectorizedLauncher")
METRIC_COLUMNS = ("status", "test/accuracy", "test/mse", "test/distance", "test/loss", "test/ece",
                  "best_val/accuracy", "best_val/mse", "best_val/distance", "best_val/loss", "best_val/step",
                  "gap/accuracy", "gap/mse", "gap/distance",
                  "steps_run", "diverged_at_step", "wall_time_s", "compile_time_s", "steps_per_second", "error")
# The task's metric (accuracy for classification, mse for regression, distance for an analytic problem: its test,
# best validation and train - validation gap values) and a classification's calibration error: a column only
# where some job has it.
TASK_COLUMNS = (*(f"{split}/{name}" for split in ("test", "best_val", "gap") for name in metrics.TASK_METRIC.values()),
                "test/ece")


def collect(sweep_dir: pathlib.Path) -> list[dict]:
  """One row per job directory holding a summary.json: the job's overrides as columns, then its results; and one
  row, `pending`, per job of the sweep's list (write_jobs) that has none yet (a sweep stopped before it started)."""
  rows = [{"job": job_dir.name, **jobs.parse_overrides(summary.get("overrides", [])),
           **{k: summary.get(k) for k in METRIC_COLUMNS}} for job_dir, summary in writers.job_summaries(sweep_dir)]
  listed = pathlib.Path(sweep_dir) / JOBS_FILE
  if listed.is_file():
    done = {tuple(summary.get("overrides", [])) for _, summary in writers.job_summaries(sweep_dir)}
    taken = {row["job"] for row in rows}
    for number, overrides in enumerate(json.loads(listed.read_text())):
      if tuple(jobs.run_overrides(overrides)) not in done and str(number) not in taken:
        rows.append({"job": str(number), **jobs.parse_overrides(jobs.run_overrides(overrides)), "status": "pending"})
  return sorted(rows, key=lambda row: (0, int(row["job"]), "") if row["job"].isdigit() else (1, 0, row["job"]))


def write_jobs(sweep_dir: pathlib.Path, overrides: list[list[str]]) -> None:
  """Lists the sweep's jobs (each one's overrides, in job order), so that results.csv can list those a signal
  left unstarted."""
  pathlib.Path(sweep_dir).mkdir(parents=True, exist_ok=True)  # as Hydra would next, with its error for a bad path
  atomic.write_text(pathlib.Path(sweep_dir) / JOBS_FILE, json.dumps([list(o) for o in overrides]) + "\n")


def is_search(hydra_cfg: DictConfig) -> bool:
  """Whether the sweep is a search (hydra/sweeper=search, Optuna's), whose trials resume=true cannot replay."""
  return "optuna" in str(hydra_cfg.get("sweeper", {}).get("_target_", "")).lower()


def resume_command(hydra_cfg: DictConfig) -> str:
  """The command that continues this sweep: its own overrides (Hydra's and the jobs'), resume=true and its
  directory, quoted for a shell."""
  import shlex

  skip = ("hydra.mode", "hydra.sweep.dir", "resume")  # -m says the first; the last two are added at the end
  overrides = [o for o in (*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task) if jobs.parse_override(o)[0]
               not in skip]
  words = ["trainlab", "train", "-m", *overrides, "resume=true", f"hydra.sweep.dir={hydra_cfg.sweep.dir}"]
  return shlex.join(words)


def write_results(sweep_dir: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  columns = ["job"]
  for row in rows:
    columns += [k for k in row if k not in columns and k not in METRIC_COLUMNS]
  columns += [k for k in METRIC_COLUMNS if k not in TASK_COLUMNS or any(row.get(k) is not None for row in rows)]
  path = pathlib.Path(sweep_dir) / RESULTS_FILE
  atomic.write_text(path, report.to_csv(rows, columns))
  return path


class ResultsTable(Callback):
  """Hydra callback: writes results.csv when a multirun ends, and fails the sweep if a job failed.

  It also refuses, before any job starts, to run a sweep without resume=true into a sweep directory that
  already holds runs, so that a repeated command never overwrites finished results; and while the sweep runs,
  it turns SIGTERM and SIGINT into an orderly stop of every job (SweepStop).
  """

  def __init__(self):
    self.stop = None

  def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
    sweep_dir = pathlib.Path(config.hydra.sweep.dir)
    (sweep_dir / writers.STOP_FILE).unlink(missing_ok=True)  # a stop of an earlier session is over
    if not config.get("resume") and sweep_dir.is_dir():
      self._refuse_finished_runs(sweep_dir)
    if config.get("resume") and (sweep_dir / "multirun.yaml").is_file():
      self._refuse_another_sweep(sweep_dir, config)
    in_process = config.hydra.launcher._target_ in IN_PROCESS_LAUNCHERS
    self.stop = SweepStop(sweep_dir, in_process=in_process).__enter__()

  def _refuse_finished_runs(self, sweep_dir: pathlib.Path) -> None:
    held = [p.name for p in jobs.job_dirs(sweep_dir)
            if (p / writers.SUMMARY_FILE).exists() or (p / writers.METRICS_FILE).exists()]
    if held:
      print(f"error: the sweep directory {sweep_dir} already holds runs ({', '.join(held[:5])}"
            f"{', ...' if len(held) > 5 else ''}); add resume=true to continue the sweep, or choose another "
            "directory (hydra.sweep.dir=...)", file=sys.stderr)
      raise SystemExit(2)

  def _refuse_another_sweep(self, sweep_dir: pathlib.Path, config: DictConfig) -> None:
    """resume=true continues the same sweep: the grid of the sweep directory's own command (its multirun.yaml,
    not yet rewritten by this one), or nothing."""
    def grid(overrides) -> dict[str, str]:
      return {k: v for k, v in jobs.parse_overrides(list(overrides)).items() if k != "resume"}

    before = grid(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task)
    now = grid(config.hydra.overrides.task)
    differ = [f"{k}={now.get(k, '(unset)')} (the sweep has {before.get(k, '(unset)')})"
              for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
      print(f"error: the sweep directory {sweep_dir} holds another sweep: {'; '.join(differ)}; resume it with its "
            "own overrides, or choose another directory (hydra.sweep.dir=...)", file=sys.stderr)
      raise SystemExit(2)

  def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
    signal_name = self.stop and self.stop.signal_name  # a signal after the last job, in-process
    if self.stop is not None:
      self.stop.__exit__()
    sweep_dir = pathlib.Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir():
      return
    rows = collect(sweep_dir)
    try:
      path = write_results(sweep_dir, rows)
    except atomic.WriteError as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(1) from None
    counts = collections.Counter(row["status"] for row in rows)
    log.info("%d jobs (%s); results in %s", len(rows), ", ".join(f"{n} {s}" for s, n in counts.items()), path)
    _write_views(sweep_dir, config)
    if signal_name:
      raise SystemExit(128 + signal.Signals[signal_name])
    if counts.get("failed"):
      log.error("%d of %d jobs failed: see the error column of %s", counts["failed"], len(rows), path)
    # Jobs stopped in worker processes (a signal to a worker, the stop file, a time limit that was not requeued)
    # while the sweep itself ran on: the sweep is not done, and says how to finish it.
    stopped = counts.get("interrupted", 0) + counts.get("pending", 0)
    if stopped and is_search(config.hydra):
      log.error("%d of %d trials did not finish (interrupted or pending); a search is not resumed by resume=true: "
                "with hydra.sweeper.storage=sqlite:///FILE.db, a new command with the same study_name continues "
                "its study", stopped, len(rows))
    elif stopped:
      log.error("%d of %d jobs did not finish (interrupted or pending); continue them with: %s", stopped,
                len(rows), resume_command(config.hydra))
    if counts.get("failed") or stopped:
      raise SystemExit(1)


class SweepStop(signals.Stopping):
  """SIGTERM or SIGINT to a sweep's own process: every running job checkpoints and stops, then the sweep exits.

  Jobs that run in this process (the basic and vectorized launchers) catch the signal themselves while they
  train. Jobs in worker processes (joblib) may not get it: a scheduler or `kill` may signal this process alone.
  So the handler writes the sweep's stop file, which every job polls at its chunk boundaries (and a job about to
  start reads: it is left for resume=true); waits up to `grace_s` for the jobs that are running to write their
  summary.json; writes results.csv; and exits with 128 + the signal.
  """

  SETTLE_S = 2.0
  STOPPING = "already stopping every job after its checkpoint"

  def __init__(self, sweep_dir: pathlib.Path, grace_s: float = 300.0, in_process: bool = False):
    """in_process: the launcher runs the jobs in this process, in turn (basic, vectorized): the handler then only
    writes the stop file (a job that is starting here would wait for its own handler to return)."""
    super().__init__()
    self.sweep_dir, self.grace_s, self.in_process = pathlib.Path(sweep_dir), grace_s, in_process

  _active = None  # the SweepStop open in this process: none in a launcher's worker process

  def __enter__(self):
    SweepStop._active = self
    return super().__enter__()

  def __exit__(self, *exc) -> None:
    SweepStop._active = None
    super().__exit__(*exc)

  @classmethod
  def in_this_process(cls) -> bool:
    """Whether this process is a sweep's own, running its jobs in turn (an in-process launcher)."""
    return cls._active is not None and cls._active.in_process

  def on_signal(self, signum: int) -> None:
    log.warning("%s: every running job stops at the end of its chunk, after a checkpoint", self.signal_name)
    atomic.write_text(self.sweep_dir / writers.STOP_FILE, self.signal_name)
    if self.in_process:  # the job starting or running now reads the stop file, and ends the sweep
      return
    deadline, quiet_since = time.monotonic() + self.grace_s, None
    # Done when no job has run for SETTLE_S: workers may take up a queued job (which then leaves at once)
    # just after the others stop.
    while time.monotonic() < deadline:
      if self.running_jobs():
        quiet_since = None
      elif quiet_since is None:
        quiet_since = time.monotonic()
      elif time.monotonic() - quiet_since > self.SETTLE_S:
        break
      time.sleep(0.1)
    if self.running_jobs():
      log.error("jobs still running after %.0f s: %s", self.grace_s, ", ".join(self.running_jobs()))
    path = write_results(self.sweep_dir, collect(self.sweep_dir))
    log.warning("sweep stopped by %s; results so far in %s; continue with the same command and resume=true "
                "hydra.sweep.dir=%s", self.signal_name, path, self.sweep_dir)
    self.__exit__()
    raise SystemExit(128 + signum)

  def running_jobs(self) -> list[str]:
    """Jobs that have started (Hydra wrote their .hydra/) and not yet written their summary.json."""
    return [p.name for p in jobs.job_dirs(self.sweep_dir)
            if (p / ".hydra").is_dir() and not (p / writers.SUMMARY_FILE).exists()]


def _write_views(sweep_dir: pathlib.Path, config: DictConfig) -> None:
  """The report: a view of results.csv, so it may fail alone. (The HParams columns need nothing of the sweep:
  TensorBoard computes them from the runs' sessions, writers.py says why.)"""
  try:
    written = report.write_report(sweep_dir, metric=config.report.metric, target=config.report.target,
                                  best_per=config.report.get("best_per"))
    log.info("report in %s, plots %s; TensorBoard: trainlab tb %s", written["report.md"],
             ", ".join(name for name in written if name.endswith(".png")) or "none", sweep_dir)
  except Exception as e:
    log.warning("could not write the report: %s: %s", type(e).__name__, e, exc_info=True)
