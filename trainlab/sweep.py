"""The sweep table: when a multirun ends, one row per job in `results.csv` in the sweep directory.

After the table, the callback writes the HParams dashboard's column list and the report (report.py); a failure
in either is logged and leaves results.csv as written.
"""

from __future__ import annotations

import csv
import io
import logging
import pathlib
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainlab import writers

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
METRIC_COLUMNS = ("status", "test/accuracy", "test/mse", "test/loss", "best_val/accuracy", "best_val/mse",
                  "best_val/loss", "best_val/step", "steps_run", "diverged_at_step", "wall_time_s", "compile_time_s",
                  "steps_per_second", "error")
# The task's metric (accuracy for classification, mse for regression): a column only where some job has it.
TASK_COLUMNS = ("test/accuracy", "test/mse", "best_val/accuracy", "best_val/mse")


def _job_order(path: pathlib.Path):
  return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def collect(sweep_dir: pathlib.Path) -> list[dict]:
  """One row per job directory holding a summary.json: the job's overrides as columns, then its results."""
  rows = []
  for job_dir in sorted((p for p in pathlib.Path(sweep_dir).iterdir() if p.is_dir()), key=_job_order):
    summary = writers.read_summary(job_dir)
    if summary is None:
      continue
    row = {"job": job_dir.name}
    for override in summary.get("overrides", []):
      key, _, value = override.partition("=")
      row[key.lstrip("+~")] = value
    row.update({k: summary.get(k) for k in METRIC_COLUMNS})
    rows.append(row)
  return rows


def write_results(sweep_dir: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  columns = ["job"]
  for row in rows:
    columns += [k for k in row if k not in columns and k not in METRIC_COLUMNS]
  columns += [k for k in METRIC_COLUMNS if k not in TASK_COLUMNS or any(row.get(k) is not None for row in rows)]
  text = io.StringIO()
  table = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
  table.writeheader()
  table.writerows(rows)
  path = pathlib.Path(sweep_dir) / RESULTS_FILE
  writers.write_text_atomically(path, text.getvalue())
  return path


class ResultsTable(Callback):
  """Hydra callback: writes results.csv when a multirun ends, and fails the sweep if a job failed.

  It also refuses, before any job starts, to run a sweep without resume=true into a sweep directory that
  already holds runs, so that a repeated command never overwrites finished results.
  """

  def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
    sweep_dir = pathlib.Path(config.hydra.sweep.dir)
    if config.get("resume") or not sweep_dir.is_dir():
      return
    held = [p.name for p in sorted(sweep_dir.iterdir(), key=_job_order)
            if p.is_dir() and ((p / writers.SUMMARY_FILE).exists() or (p / writers.METRICS_FILE).exists())]
    if held:
      print(f"error: the sweep directory {sweep_dir} already holds runs ({', '.join(held[:5])}"
            f"{', ...' if len(held) > 5 else ''}); add resume=true to continue the sweep, or choose another "
            "directory (hydra.sweep.dir=...)", file=sys.stderr)
      raise SystemExit(2)

  def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
    sweep_dir = pathlib.Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir():
      return
    rows = collect(sweep_dir)
    try:
      path = write_results(sweep_dir, rows)
    except writers.WriteError as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(1) from None
    counts = {}
    for row in rows:
      counts[row["status"]] = counts.get(row["status"], 0) + 1
    log.info("%d jobs (%s); results in %s", len(rows), ", ".join(f"{n} {s}" for s, n in counts.items()), path)
    _write_views(sweep_dir, config)
    if counts.get("failed"):
      log.error("%d of %d jobs failed: see the error column of %s", counts["failed"], len(rows), path)
      raise SystemExit(1)


def _write_views(sweep_dir: pathlib.Path, config: DictConfig) -> None:
  """The HParams experiment summary and the report; they are views of results.csv, so they may fail alone."""
  try:
    job_dirs = [p for p in sweep_dir.iterdir() if p.is_dir()]
    summaries = [s for s in map(writers.read_summary, job_dirs) if s is not None]
    writers.write_hparams_experiment(sweep_dir, [writers.hparam_values(s.get("overrides", [])) for s in summaries],
                                     writers.task_metric(summaries))
  except Exception as e:
    log.warning("could not write the HParams columns: %s: %s", type(e).__name__, e)
  try:
    from trainlab import report  # matplotlib is imported only here

    report.write_report(sweep_dir, metric=config.report.metric, target=config.report.target)
  except Exception as e:
    log.warning("could not write the report: %s: %s", type(e).__name__, e, exc_info=True)
