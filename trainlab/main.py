"""The `trainlab` command. `trainlab train [overrides]` is a Hydra app over conf/; the rest are small tools.

This file is intentionally thin: training lives in train.py, how a job records its result in rundir/job.py.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
import time
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from trainlab import config
from trainlab.rundir import checkpoint, job, jobs, lock, on_demand, writers

log = logging.getLogger("trainlab")

USAGE = """usage: trainlab COMMAND [ARGS]

commands:
  train [overrides]   train one model; -m/--multirun sweeps a grid (trainlab train --help for the groups)
  report [DIR] [report.target=X] [report.metric=NAME] [report.best_per=KEY]
                      tables and plots of a sweep (DIR, default the latest under outputs/) into DIR
  tb [DIR] [--port P] start TensorBoard on outputs/ (or DIR) at 127.0.0.1 and print its address

examples:
  trainlab train optimizer=adam init=he
  trainlab train -m optimizer=sgd,adam init=he,glorot seed=0,1,2
  trainlab report outputs/sweeps/2025-01-01/12-00-00 report.target=0.8
  trainlab tb
"""

config.register_schemas()
# conf/ sits beside the package in the repository (an editable install); an absolute path, because Hydra
# would look for a Python module named "conf" given a path relative to an imported module.
CONF_DIR = str(pathlib.Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float | None:
  """One job: train, and always leave a summary.json saying how it ended."""
  started = time.perf_counter()
  hydra_cfg = HydraConfig.get()
  workdir, record = job.job_record(hydra_cfg)
  created = job.created_by_this_job(hydra_cfg)  # before the job writes there
  multirun = hydra_cfg.mode == RunMode.MULTIRUN
  if cfg.distributed.enabled:
    return _run_distributed(cfg, hydra_cfg, workdir, record, created, multirun, started)
  try:
    with lock.holding(workdir):  # one process per run directory, until the job ends
      return _run_job(cfg, hydra_cfg, workdir, record, created, multirun, started)
  except lock.DirectoryInUse as e:  # refused before writing anything there
    return job.refuse(str(e), multirun)


def _run_distributed(cfg: DictConfig, hydra_cfg: DictConfig, workdir: pathlib.Path, record: dict, created: bool,
                     multirun: bool, started: float) -> float | None:
  """One process of a distributed run (trainlab.distributed): process 0 runs the job as a process alone would,
  and tells the others whether it trains; they train beside it, in its run directory, and write no records."""
  if multirun:
    return job.refuse("distributed.enabled=true is not allowed in a sweep (-m): a distributed run is one run "
                      "over many processes; start each run of the sweep as its own distributed run", multirun)
  from trainlab import distributed

  try:
    # A run that cannot join leaves no directory that it created (as a refused run leaves none).
    distributed.start(cfg.distributed, on_timeout=lambda: job.remove_run_dir(workdir) if created else None)
  except config.ConfigError as e:
    if created:  # nothing of a run was written there
      job.remove_run_dir(workdir)
    return job.refuse(str(e), multirun)
  shared = distributed.shared_workdir(workdir)
  if distributed.is_leader():
    with distributed.leading() as go:
      try:
        with lock.holding(workdir):
          return _run_job(cfg, hydra_cfg, workdir, record, created, multirun, started, before_training=go)
      except lock.DirectoryInUse as e:
        return job.refuse(str(e), multirun)
  distributed.quiet_follower_logs()
  if created and shared != workdir.resolve():  # Hydra's directory of this process, named after its own start
    job.remove_run_dir(workdir)
  if not distributed.wait_for_leader():  # process 0 refused or skipped the run, and said why
    return None
  from trainlab import train

  try:
    on_demand.resolve(cfg, on_demand.sources_dir(shared))  # the sources process 0 made before it trained
    summary = train.train_and_evaluate(cfg, shared, started)
  except config.ConfigError as e:  # process 0 reports it too, in the run's summary
    return job.refuse(str(e), multirun)
  if summary["status"] == "interrupted":
    raise SystemExit(128 + signal.Signals[summary["interrupted_by"]])
  return job.best_val(summary)


def _run_job(cfg: DictConfig, hydra_cfg: DictConfig, workdir: pathlib.Path, record: dict, created: bool,
             multirun: bool, started: float, before_training: Callable[[], None] = lambda: None) -> float | None:
  """The job, once it holds its directory: the refusals that leave the directory as it was, then the run
  (`before_training` called just before it starts: a distributed run's process 0 tells the others)."""
  previous, held = writers.read_summary(workdir), job.holds_run(workdir)
  if not cfg.resume and job.requeued(previous, record):
    log.info("%s: this job's own run, stopped at its time limit and requeued: resuming it", workdir)
    cfg.resume = True
  if not cfg.resume and held:
    status = f" ({previous['status']})" if previous else ""
    return job.refuse(f"{workdir} already holds a run{status}; add resume=true to continue it, or choose another "
                      "directory (hydra.run.dir=...)", multirun)
  if cfg.resume and previous and job.changed_overrides(previous, record):  # a resumed sweep is the same sweep
    return job.refuse(f"{workdir} holds a run of other values: {'; '.join(job.changed_overrides(previous, record))}"
                      "; resume it with its own overrides, or choose another directory", multirun)
  if cfg.resume and previous and previous["status"] in ("completed", "diverged"):
    differs = job.finished_run_differs(workdir, cfg, previous)  # what the overrides do not show (a config file)
    if differs:
      return job.refuse(differs, multirun)
    log.info("%s: the run has already %s; nothing to do", workdir, previous["status"])
    return job.best_val(previous)
  stop_file = pathlib.Path(hydra_cfg.sweep.dir) / writers.STOP_FILE if multirun else None
  if stop_file and stop_file.exists():  # the sweep is stopping: this job is left for resume=true
    return job.leave_pending(workdir, record, stop_file.read_text().strip(), hydra_cfg)
  from trainlab import train  # JAX is imported only when a job runs, not for --help or a skipped job

  # A failed or interrupted run resumes from its newest sound checkpoint, whatever its status: trainlab never
  # deletes a run's checkpoints.
  hydra_record = job.write_hydra_record(workdir, HydraConfig.instance().cfg, cfg)  # as given, sources unresolved
  before_training()
  try:
    # the runs this one reads, given by the overrides that train them: trained here unless already there
    record.update(on_demand.resolve(cfg, on_demand.sources_dir(hydra_cfg.sweep.dir if multirun else workdir),
                                    stop_file=stop_file))
    summary = train.train_and_evaluate(cfg, workdir, started, stop_file=stop_file)
  except checkpoint.ResumeError as e:  # the run directory stays as it was, ready for the right command
    job.restore_hydra_record(workdir, hydra_record)
    return job.refuse(str(e), multirun)
  except on_demand.SourceInterrupted as e:  # a stop the user asked for while the source trained: not a failure
    log.warning("%s", e)
    summary = {"status": "interrupted", "interrupted_by": e.signal_name, "steps_run": 0}
    job.record_result(workdir, record, summary)
    job.stop_interrupted(summary, workdir, multirun, hydra_cfg)
    return None
  except Exception as e:  # one failed job must not take the sweep down
    created = created and not (workdir / jobs.SOURCES_DIR).exists()  # nor the sources it trained there
    job.record_failure(workdir, record, e, multirun, created=created, held=held, hydra_record=hydra_record)
    return None
  result = job.record_result(workdir, record, summary)
  if summary["status"] == "interrupted":
    job.stop_interrupted(summary, workdir, multirun, hydra_cfg)
  return result


def train(argv: list[str]) -> None:
  """`trainlab train`: the Hydra app, where a misspelled group, option or key gets its close match in one line
  instead of Hydra's advice to add it as a new key."""
  sys.argv = ["trainlab train", *argv]
  on_demand.stop_with_parent()  # a source run started by a job's on-demand training ends with that job
  if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's own tracebacks
    train_app()
    return
  os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its error here instead of printing it and exiting
  logging.raiseExceptions = False  # a log file on a full disk: no "--- Logging error ---" traceback per line
  try:
    train_app()
  except Exception as e:
    if isinstance(e, OSError) and not isinstance(e, HydraException):  # Hydra's own writes: the run or sweep
      what = f"cannot write {e.filename}: {e.strerror}" if e.filename else str(e)  # directory, its .hydra/
      print(f"error: {what}; choose another output directory (hydra.run.dir=... or hydra.sweep.dir=...)",
            file=sys.stderr)
      raise SystemExit(1) from None
    refused = e.__cause__ if isinstance(e, InstantiationException) else e
    if isinstance(refused, config.ConfigError):  # a plugin's refusal of its own key (hydra.launcher.devices)
      print(f"error: {refused}", file=sys.stderr)
      raise SystemExit(2) from None
    del os.environ["HYDRA_FULL_ERROR"]
    from trainlab.config import suggest

    hint = suggest.close_match(str(e), argv, CONF_DIR) if isinstance(e, HydraException) else None
    if hint:
      print(f"error: {hint}", file=sys.stderr)
      raise SystemExit(1) from None
    # Hydra's own report of every other error; it has no public function for it.
    from hydra._internal.utils import run_and_report

    run_and_report(lambda: _raise(e))
  finally:
    os.environ.pop("HYDRA_FULL_ERROR", None)


def _raise(e: Exception):
  raise e


def tensorboard(argv: list[str]) -> int:
  """`trainlab tb [DIR] [--port P]`: TensorBoard on DIR (default outputs/), on 127.0.0.1 only."""
  import argparse

  parser = argparse.ArgumentParser(prog="trainlab tb", description=tensorboard.__doc__)
  parser.add_argument("dir", nargs="?", default="outputs")
  parser.add_argument("--port", type=int, default=6006)
  args = parser.parse_args(argv)
  if not pathlib.Path(args.dir).is_dir():
    print(f"trainlab tb: no such directory: {args.dir}", file=sys.stderr)
    return 2
  command = [sys.executable, "-m", "tensorboard.main", "--logdir", args.dir, "--host", "127.0.0.1",
             "--port", str(args.port)]
  print(f"TensorBoard on {args.dir}: http://127.0.0.1:{args.port}/  (Ctrl-C stops it)", flush=True)
  # TensorBoard takes this process's place rather than running as its child: a SIGTERM (a job system, a closed
  # terminal, `kill`) that stops `trainlab tb` stops TensorBoard, where a child would be left serving.
  os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE, end="")
    return
  command, rest = argv[0], argv[1:]
  if command == "train":
    train(rest)
    return
  if command == "report":
    from trainlab.rundir import report  # matplotlib is imported only for reports

    raise SystemExit(report.main(rest))
  if command == "tb":
    raise SystemExit(tensorboard(rest))
  print(f"trainlab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
  raise SystemExit(2)


if __name__ == "__main__":
  main()
