"""The `trainlab` command. `trainlab train [overrides]` is a Hydra app over conf/; the rest are small tools.

This file is intentionally thin: training lives in train.py, the sweep table in sweep.py.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trainlab import config, data, metrics
from trainlab.rundir import atomic, checkpoint, jobs, writers

log = logging.getLogger("trainlab")

USAGE = """usage: trainlab COMMAND [ARGS]

commands:
  train [overrides]   train one model; -m/--multirun sweeps a grid (trainlab train --help for the groups)
  report [DIR] [report.target=X] [report.metric=NAME]
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
  workdir, record = job_record(hydra_cfg)
  multirun = hydra_cfg.mode == RunMode.MULTIRUN
  previous = writers.read_summary(workdir)
  if not cfg.resume and holds_run(workdir):
    status = f" ({previous['status']})" if previous else ""
    return _refuse(f"{workdir} already holds a run{status}; add resume=true to continue it, or choose another "
                   "directory (hydra.run.dir=...)", multirun)
  if cfg.resume and previous and previous["status"] in ("completed", "diverged"):
    log.info("%s: the run has already %s; nothing to do", workdir, previous["status"])
    return best_val(previous)
  if cfg.resume and previous and previous["status"] == "failed":
    checkpoint.clear(workdir)  # a failed run is run again from the start
  stop_file = pathlib.Path(hydra_cfg.sweep.dir) / writers.STOP_FILE if multirun else None
  if stop_file and stop_file.exists():  # the sweep is stopping: this job is left for resume=true
    log.warning("the sweep is stopping: job not started")
    _write_summary(workdir, {"status": "interrupted", "interrupted_by": stop_file.read_text().strip(),
                             "steps_run": 0, **record})
    return None
  from trainlab import train  # JAX is imported only when a job runs, not for --help or a skipped job

  try:
    summary = train.train_and_evaluate(cfg, workdir, started, stop_file=stop_file)
  except checkpoint.ResumeError as e:  # the run directory stays as it was, ready for the right command
    return _refuse(str(e), multirun)
  except Exception as e:  # one failed job must not take the sweep down
    record_failure(workdir, record, e, multirun)
    return None
  result = record_result(workdir, record, summary)
  if summary["status"] == "interrupted":
    stop_interrupted(summary, workdir, multirun, hydra_cfg)
  return result


def job_record(hydra_cfg: DictConfig) -> tuple[pathlib.Path, dict]:
  """A job's run directory, and what its summary.json records about how it was asked for."""
  workdir = pathlib.Path(hydra_cfg.runtime.output_dir)
  # `resume` says how to run the job, not what it is: it stays out of the overrides that results.csv lists.
  overrides = [o for o in hydra_cfg.overrides.task if jobs.parse_override(o)[0] != "resume"]
  return workdir, {"overrides": overrides, "run_dir": str(workdir)}


def holds_run(workdir: pathlib.Path) -> bool:
  """Whether a run has written into `workdir` (a fresh run there would overwrite it)."""
  return bool(writers.read_summary(workdir) or checkpoint.has_checkpoint(workdir)
              or (workdir / writers.METRICS_FILE).exists())


def record_failure(workdir: pathlib.Path, record: dict, e: Exception, multirun: bool,
                   logger: logging.Logger = log) -> None:
  """A job that raised: `failed` in its summary.json and the dashboard; alone, an error exit."""
  if isinstance(e, (config.ConfigError, data.DataError)):  # our own errors say all in one line
    _write_summary(workdir, {"status": "failed", "error": str(e), **record})
    _write_hparams(workdir, record, {"status": "failed"})
    if not multirun:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(2)
    logger.error("job failed: %s", e)
    return
  _write_summary(workdir, {"status": "failed", "error": f"{type(e).__name__}: {e}", **record})
  _write_hparams(workdir, record, {"status": "failed"})
  logger.error("job failed: %s: %s", type(e).__name__, e, exc_info=e)
  if not multirun:
    raise SystemExit(1)


def record_result(workdir: pathlib.Path, record: dict, summary: dict, logger: logging.Logger = log) -> float | None:
  """A job that ran: its summary.json, its row in the dashboard, its final metrics in the log."""
  _write_summary(workdir, {**summary, **record})
  if summary["status"] != "interrupted":  # the dashboard shows results; an interrupted run has none yet
    _write_hparams(workdir, record, summary)
    _print_table(summary, logger)
  return best_val(summary)


def best_val(summary: dict) -> float | None:
  """The job's return value (what a Hydra sweeper optimizes): its best validation accuracy, or mse."""
  names = [f"best_val/{name}" for name in metrics.TASK_METRIC.values() if f"best_val/{name}" in summary]
  return summary[names[0]] if names else None


def stop_interrupted(summary: dict, workdir: pathlib.Path, multirun: bool, hydra_cfg: DictConfig) -> None:
  """After a signal: says how to continue, lists a sweep's jobs run so far, exits with 128 + the signal."""
  log.warning("interrupted at step %d; continue with the same command and resume=true%s", summary["steps_run"],
              f" hydra.run.dir={workdir}" if not multirun else f" hydra.sweep.dir={hydra_cfg.sweep.dir}")
  if multirun:  # the sweep stops here: list the jobs run so far
    from trainlab.rundir import sweep
    sweep.write_results(pathlib.Path(hydra_cfg.sweep.dir), sweep.collect(pathlib.Path(hydra_cfg.sweep.dir)))
  raise SystemExit(128 + signal.Signals[summary["interrupted_by"]])


def _write_hparams(workdir: pathlib.Path, record: dict, summary: dict) -> None:
  """The run's row in TensorBoard's HParams dashboard; its overrides are its hyperparameters."""
  try:
    writers.write_hparams_session(workdir, writers.hparam_values(record["overrides"]), summary)
  except Exception as e:  # the dashboard is a view; it must not fail a run that trained
    log.warning("could not write the HParams session: %s: %s", type(e).__name__, e)


def _write_summary(workdir: pathlib.Path, summary: dict) -> None:
  """summary.json, or one clear error and exit when it cannot be written (a full disk stops a sweep too)."""
  try:
    writers.write_summary(workdir, summary)
  except atomic.WriteError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None


def _refuse(message: str, multirun: bool) -> None:
  """Declines to run a job without touching its directory: an error exit, or an error line in a sweep."""
  if not multirun:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
  log.error("job not run: %s", message)
  return None


def _print_table(summary: dict, logger: logging.Logger = log) -> None:
  rows = [(k, summary.get(k)) for k in ("status", "test/accuracy", "test/mse", "test/loss", "best_val/accuracy",
                                    "best_val/mse", "best_val/step", "steps_run", "steps_per_second",
                                    "compile_time_s", "wall_time_s") if k in summary or k == "status"]
  width = max(len(k) for k, _ in rows)
  lines = [f"  {k:<{width}}  {v:.4g}" if isinstance(v, float) else f"  {k:<{width}}  {v}" for k, v in rows]
  logger.info("final metrics:\n%s", "\n".join(lines))


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
    sys.argv = ["trainlab train", *rest]
    train_app()
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
