"""How one job of `trainlab train` records its result in its run directory: summary.json, the HParams row,
the final metrics in the log, and the exit code or sweep line of a job that failed, was refused or stopped.
Used by the Hydra app (trainlab.main) and the vectorized launcher alike."""

from __future__ import annotations

import logging
import pathlib
import shutil
import signal
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from trainlab import config, data, metrics, signals
from trainlab.rundir import atomic, checkpoint, jobs, lock, writers

log = logging.getLogger("trainlab")


def job_record(hydra_cfg: DictConfig) -> tuple[pathlib.Path, dict]:
  """A job's run directory, and what its summary.json records about how it was asked for: its overrides, its
  directory and, in a sweep, the launcher's id of the job (a SLURM job keeps its id when it is requeued)."""
  workdir = pathlib.Path(hydra_cfg.runtime.output_dir)
  record = {"overrides": jobs.run_overrides(list(hydra_cfg.overrides.task)), "run_dir": str(workdir)}
  job_id = OmegaConf.select(hydra_cfg, "job.id")  # Hydra leaves it unset (???) for a single run
  return workdir, {**record, "job_id": str(job_id)} if job_id is not None else record


def requeued(previous: dict | None, record: dict) -> bool:
  """Whether the run in this job's directory is this job's own, stopped at its time limit: it is `interrupted` by
  SIGUSR2 and recorded the same job id. Submitit requeues such a job with the same arguments (same directory, same
  id), and it resumes without resume=true. A new command is a new job with a new id (and a sweep into a directory
  that holds runs is refused before its jobs start)."""
  return bool(previous and previous.get("status") == "interrupted"
              and previous.get("interrupted_by") == signals.TIME_LIMIT
              and "job_id" in record and previous.get("job_id") == record["job_id"])


def changed_overrides(previous: dict, record: dict) -> list[str]:
  """How this job's overrides differ from those of the run its directory holds (values compared as Hydra reads
  them, so 0.01 and 1e-2 agree): `key=new (the run has old)`, one per difference."""
  def parsed(overrides):
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(overrides))}

  old, new = parsed(previous.get("overrides", [])), parsed(record["overrides"])
  return [f"{k}={new.get(k, '(unset)')} (the run has {old.get(k, '(unset)')})"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def holds_run(workdir: pathlib.Path) -> bool:
  """Whether a run has written into `workdir` (a fresh run there would overwrite it)."""
  return bool(writers.read_summary(workdir) or checkpoint.has_checkpoint(workdir)
              or (workdir / writers.METRICS_FILE).exists())


def created_by_this_job(hydra_cfg: DictConfig) -> bool:
  """Whether the job's directory holds only what Hydra or this job wrote there (an empty log, the lock, the
  .hydra/ record), so that a refused run may remove it without touching anything that was there before."""
  workdir, log_name = pathlib.Path(hydra_cfg.runtime.output_dir), f"{hydra_cfg.job.name}.log"
  held = {p.name for p in workdir.iterdir()} if workdir.is_dir() else set()
  empty_log = not (workdir / log_name).exists() or (workdir / log_name).stat().st_size == 0
  return held <= {HYDRA_RECORD, lock.LOCK_FILE, log_name} and empty_log


# --- the .hydra/ record --------------------------------------------------------------------------------------
# Hydra would write .hydra/ before the job function runs, so that a command refused there (a fresh run into a
# finished run's directory, a resume with other values, a second process) rewrote the record of the run it
# refused to touch. trainlab sets hydra.output_subdir to null and writes the same three files itself, once the
# job has the directory; a job that then fails before its first step puts the previous record back.
HYDRA_RECORD = ".hydra"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def write_hydra_record(workdir: pathlib.Path, hydra_cfg: DictConfig, task_cfg: DictConfig) -> dict[str, str | None]:
  """Writes `.hydra/` as Hydra's run_job would (the job's config, Hydra's config and the command-line overrides);
  returns the previous record's texts (None: a file that was not there), for `restore_hydra_record`.

  Args:
    hydra_cfg: Hydra's whole config, `HydraConfig.instance().cfg` (its root holds `hydra`).
    task_cfg: the job's config, without `hydra`.
  """
  folder = pathlib.Path(workdir) / HYDRA_RECORD
  previous = {name: (folder / name).read_text() if (folder / name).is_file() else None for name in HYDRA_FILES}
  texts = (OmegaConf.to_yaml(task_cfg), OmegaConf.to_yaml(hydra_cfg), OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
  for name, text in zip(HYDRA_FILES, texts):
    atomic.write_text(folder / name, text)
  return previous


def restore_hydra_record(workdir: pathlib.Path, previous: dict[str, str | None] | None) -> None:
  """Puts back the record that `write_hydra_record` replaced."""
  folder = pathlib.Path(workdir) / HYDRA_RECORD
  for name, text in (previous or {}).items():
    if text is None:
      (folder / name).unlink(missing_ok=True)
    else:
      atomic.write_text(folder / name, text)
  if previous and all(text is None for text in previous.values()) and folder.is_dir() and not any(folder.iterdir()):
    folder.rmdir()


def finished_run_differs(workdir: pathlib.Path, task_cfg: DictConfig, summary: dict) -> str | None:
  """Why a resume of the finished run in `workdir` with `task_cfg` is not a resume of that run (its recorded
  config or its data differ), or None."""
  recorded = pathlib.Path(workdir) / HYDRA_RECORD / "config.yaml"
  if recorded.is_file():
    saved = checkpoint.run_config(OmegaConf.to_container(OmegaConf.load(recorded)))
    differences, _ = checkpoint.config_differences(saved, checkpoint.run_config(OmegaConf.to_container(task_cfg)))
    if differences:
      return (f"cannot resume the run in {workdir}: its config differs: {'; '.join(differences[:3])}. Resume with "
              "the run's own overrides, or start a new run in another directory")
  try:
    fingerprint = checkpoint.data_fingerprint(OmegaConf.to_container(task_cfg.data, resolve=True))
    checkpoint.check_same_data(summary.get("data_fingerprint"), fingerprint, workdir)
  except checkpoint.ResumeError as e:
    return str(e)
  return None


def record_failure(workdir: pathlib.Path, record: dict, e: Exception, multirun: bool,
                   logger: logging.Logger = log, created: bool = False, held: bool = False,
                   hydra_record: dict[str, str | None] | None = None) -> None:
  """A job that raised: `failed` in its summary.json and the dashboard; alone, an error exit.

  A run refused for a bad value (ConfigError, DataError: raised before its first step) shows in no dashboard,
  and in a directory that `held` a run before this attempt it leaves that run as it was (its summary, logs and
  checkpoints; its .hydra/ record, the `hydra_record` that write_hydra_record replaced, put back): a failed
  attempt at a resume takes nothing away. Alone, it leaves no directory if this job `created` it; in a sweep, a
  job's first attempt leaves its summary.json, so that results.csv lists it with its error and resume=true runs
  it again.
  """
  if isinstance(e, atomic.WriteError):  # a full disk: one line; in a sweep, the next job would meet it too
    write_summary(workdir, {"status": "failed", "error": str(e), **record})
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1)
  if isinstance(e, (config.ConfigError, data.DataError)):  # our own errors say all in one line
    if held:
      restore_hydra_record(workdir, hydra_record)
    if not multirun:
      if created:
        remove_run_dir(workdir)
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(2)
    if held:
      logger.error("job not run: %s (its directory is as it was)", e)
      return
    write_summary(workdir, {"status": "failed", "error": str(e), **record})
    logger.error("job failed: %s", e)
    return
  write_summary(workdir, {"status": "failed", "error": f"{type(e).__name__}: {e}", **record})
  _write_hparams(workdir, record, {"status": "failed"})
  logger.error("job failed: %s: %s", type(e).__name__, e, exc_info=e)
  if not multirun:
    raise SystemExit(1)


def record_result(workdir: pathlib.Path, record: dict, summary: dict, logger: logging.Logger = log) -> float | None:
  """A job that ran: its summary.json, its row in the dashboard, its final metrics in the log."""
  write_summary(workdir, {**summary, **record})
  if summary["status"] != "interrupted":  # the dashboard shows results; an interrupted run has none yet
    _write_hparams(workdir, record, summary)
    _print_table(summary, logger)
  logger.info("the run's files are in %s (summary.json, metrics.jsonl, TensorBoard: trainlab tb %s)", workdir,
              workdir)
  return best_val(summary)


def best_val(summary: dict) -> float | None:
  """The job's return value (what a Hydra sweeper optimizes): its best validation accuracy, mse or distance."""
  names = [f"best_val/{name}" for name in metrics.TASK_METRIC.values() if f"best_val/{name}" in summary]
  return summary[names[0]] if names else None


def stop_interrupted(summary: dict, workdir: pathlib.Path, multirun: bool, hydra_cfg: DictConfig) -> None:
  """After a signal: says how to continue, lists a sweep's jobs run so far, exits with 128 + the signal. A job in
  a launcher's worker process (joblib, submitit, Ray) returns instead: the sweep's own process lists it
  `interrupted` when the sweep ends, and exits 1 with the command that resumes it."""
  from trainlab.rundir import sweep

  worker = multirun and not sweep.SweepStop.in_this_process()
  if not worker:  # one more signal now ends the exit at once, without a traceback
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, signal.SIG_DFL)
  if summary["interrupted_by"] == signals.TIME_LIMIT:  # submitit requeues the job here (and exits), if it may
    signals.hand_over_time_limit()
  if worker:
    log.warning("interrupted at step %d; the sweep lists it, and says how to resume it when it ends",
                summary["steps_run"])
    return
  if multirun:  # the sweep stops here: list the jobs run so far
    sweep_dir = pathlib.Path(hydra_cfg.sweep.dir)
    sweep.write_results(sweep_dir, sweep.collect(sweep_dir))
    # (A job's Hydra config holds its own overrides, not the sweep's grid: the command is the user's, as typed.)
    log.warning("interrupted at step %d; continue with the same command and resume=true hydra.sweep.dir=%s",
                summary["steps_run"], sweep_dir)
  else:
    log.warning("interrupted at step %d; continue with the same command and resume=true hydra.run.dir=%s",
                summary["steps_run"], workdir)
  raise SystemExit(128 + signal.Signals[summary["interrupted_by"]])


def leave_pending(workdir: pathlib.Path, record: dict, signal_name: str, hydra_cfg: DictConfig) -> None:
  """A job of a sweep that a signal stopped before it started: `pending` (resume=true runs it). In the sweep's
  own process (the basic launcher), the sweep stops here, listing every job; a worker process goes on to its
  next job, which leaves at once too."""
  log.warning("the sweep is stopping: job not started")
  write_summary(workdir, {"status": "pending", "interrupted_by": signal_name, "steps_run": 0, **record})
  from trainlab.rundir import sweep

  if sweep.SweepStop.in_this_process():
    stop_interrupted({"steps_run": 0, "interrupted_by": signal_name}, workdir, True, hydra_cfg)


def remove_run_dir(workdir: pathlib.Path) -> None:
  """Removes a refused run's directory, and the parents inside the working directory that it leaves empty
  (Hydra's dated outputs/runs/DAY/ of a first run)."""
  shutil.rmtree(workdir, ignore_errors=True)
  here = pathlib.Path.cwd().resolve()
  for parent in workdir.resolve().parents:
    if here not in parent.parents or any(parent.iterdir()):
      break
    parent.rmdir()


def _write_hparams(workdir: pathlib.Path, record: dict, summary: dict) -> None:
  """The run's row in TensorBoard's HParams dashboard; its overrides are its hyperparameters."""
  try:
    writers.write_hparams_session(workdir, writers.hparam_values(record["overrides"]), summary)
  except Exception as e:  # the dashboard is a view; it must not fail a run that trained
    log.warning("could not write the HParams session: %s: %s", type(e).__name__, e)


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  """summary.json, or one clear error and exit when it cannot be written (a full disk stops a sweep too)."""
  try:
    writers.write_summary(workdir, summary)
  except atomic.WriteError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None


def refuse(message: str, multirun: bool) -> None:
  """Declines to run a job without touching its directory: an error exit, or an error line in a sweep."""
  if not multirun:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
  log.error("job not run: %s", message)
  return None


def _print_table(summary: dict, logger: logging.Logger = log) -> None:
  rows = [(k, summary.get(k)) for k in ("status", "test/accuracy", "test/mse", "test/distance", "test/loss",
                                    "best_val/accuracy", "best_val/mse", "best_val/distance", "best_val/step",
                                    "steps_run", "steps_per_second", "compile_time_s", "wall_time_s")
          if k in summary or k == "status"]
  width = max(len(k) for k, _ in rows)
  lines = [f"  {k:<{width}}  {v:.4g}" if isinstance(v, float) else f"  {k:<{width}}  {v}" for k, v in rows]
  logger.info("final metrics:\n%s", "\n".join(lines))
