"""Failures inside a sweep, sweeps resumed into their own directory, and writes that never leave half a file."""

from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, run_cli
from trainlab.rundir import atomic, checkpoint, sweep, writers

SMALL = ["steps=40", "eval_every=10", "log_every=5", "batch_size=16", "model.widths=[16]", "checkpoint.every=10",
         "checkpoint.keep=null"]
NO_SUCH_INIT = "trainlab.no_such_initializer"


def jobs(sweep_dir: pathlib.Path) -> dict[str, dict]:
  """Each job's summary, keyed by its overrides (minus those common to all jobs)."""
  found = {}
  for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
    summary = writers.read_summary(job)
    assert summary is not None, f"{job} has no summary.json"
    found[job.name] = summary
  return found


def read_results(sweep_dir: pathlib.Path) -> list[dict]:
  with open(sweep_dir / sweep.RESULTS_FILE, newline="") as f:
    return list(csv.DictReader(f))


def assert_complete_files(job: pathlib.Path, summary: dict) -> None:
  """A finished job's files parse completely: every metrics line, the summary, TensorBoard's events."""
  assert not list(job.glob(".*.tmp")), "a temporary file was left behind"
  if summary["status"] == "failed":
    return
  points = [json.loads(line) for line in (job / writers.METRICS_FILE).read_text().splitlines()]
  steps = [p["step"] for p in points if "val/loss" in p]
  if summary["status"] == "diverged":
    assert steps == [] and all(p["step"] < summary["diverged_at_step"] for p in points)
  if summary["status"] == "completed":
    assert steps == list(range(10, 41, 10)) and "test/accuracy" in points[-1]
    events = EventAccumulator(str(writers.events_dir(job)))
    events.Reload()
    assert [e.step for e in events.Scalars("Val/loss")] == steps
    assert [e.value for e in events.Scalars("test/accuracy")] == [pytest.approx(summary["test/accuracy"])]


def test_sweep_records_failed_and_diverged_jobs_and_resumes(write_npz, tmp_path):
  """Jobs: one completes, one diverges (lr 1e30), two fail (missing data file). The sweep finishes them all,
  exits non-zero, and lists them; resumed with resume=true once the file exists, it skips the completed and
  the diverged job, resumes an interrupted one exactly, reruns the failed ones, and rebuilds results.csv."""
  good, missing = write_npz(), tmp_path / "later.npz"
  sweep_dir = tmp_path / "sweep"
  args = ["train", "-m", f"hydra.sweep.dir={sweep_dir}", "data=npz", f"data.path={good},{missing}",
          "optimizer.lr=0.01,1e30", *SMALL]
  proc = run_cli(*args, cwd=tmp_path, check=False)
  assert proc.returncode == 1, proc.stderr

  summaries = jobs(sweep_dir)
  cases = {name: dict(o.split("=", 1) for o in s["overrides"]) for name, s in summaries.items()}
  by_case = {(case["data.path"], float(case["optimizer.lr"])): name for name, case in cases.items()}
  ok, diverged = by_case[(str(good), 0.01)], by_case[(str(good), 1e30)]
  failed = [by_case[(str(missing), lr)] for lr in (0.01, 1e30)]
  assert summaries[ok]["status"] == "completed" and summaries[ok]["steps_run"] == 40
  assert summaries[diverged]["status"] == "diverged" and summaries[diverged]["diverged_at_step"] >= 1
  for name in failed:
    assert summaries[name]["status"] == "failed"
    assert summaries[name]["error"] == f"data file {missing} does not exist (data.path)"
  rows = {row["job"]: row for row in read_results(sweep_dir)}
  assert sorted(rows) == sorted(summaries)
  assert {name: rows[name]["status"] for name in rows} == {name: s["status"] for name, s in summaries.items()}
  assert rows[failed[0]]["error"] == summaries[failed[0]]["error"]
  assert_complete_files(sweep_dir / ok, summaries[ok])

  # Make the completed job look interrupted at step 20: its later checkpoints gone, its status `interrupted`.
  reference = (sweep_dir / ok / writers.METRICS_FILE).read_text()
  for step in (30, 40):
    checkpoint.clear_step(sweep_dir / ok, step)
  writers.write_summary(sweep_dir / ok, {**summaries[ok], "status": "interrupted", "interrupted_by": "SIGTERM"})
  diverged_before = (sweep_dir / diverged / writers.SUMMARY_FILE).read_bytes()
  write_npz(missing.name)

  refused = run_cli(*args, cwd=tmp_path, check=False)  # without resume=true: refused, nothing touched
  assert refused.returncode == 2 and (f"error: the sweep directory {sweep_dir} already holds runs (0, 1, 2, 3); add "
                                     "resume=true to continue the sweep, or choose another directory "
                                     "(hydra.sweep.dir=...)") in refused.stderr.splitlines()

  run_cli(*args, "resume=true", cwd=tmp_path)  # exit code 0: nothing failed
  summaries = jobs(sweep_dir)
  assert summaries[ok]["status"] == "completed" and summaries[ok]["resumed_from_step"] == 20
  assert (sweep_dir / ok / writers.METRICS_FILE).read_text() == reference
  assert (sweep_dir / diverged / writers.SUMMARY_FILE).read_bytes() == diverged_before  # skipped
  for name, status in zip(failed, ("completed", "diverged")):  # the lr 0.01 job completes, the lr 1e30 one diverges
    assert summaries[name]["status"] == status and summaries[name]["resumed_from_step"] is None
  rows = read_results(sweep_dir)
  assert len(rows) == 4 and "failed" not in {row["status"] for row in rows}
  assert "resume" not in rows[0]  # how a job was run is not a column of what it is


def test_joblib_sweep_files_are_complete(write_npz, tmp_path):
  """Two jobs at a time under the joblib launcher: each job's files and results.csv are complete; a job that
  raises is `failed` with its traceback in its log, a diverging one is `diverged`; the sweep exits non-zero."""
  sweep_dir = tmp_path / "sweep"
  proc = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
                 "data=npz", f"data.path={write_npz()}", "optimizer.lr=0.01,1e30", "seed=0,1",
                 f"init._target_=jax.nn.initializers.variance_scaling,{NO_SUCH_INIT}", *SMALL, cwd=tmp_path,
                 check=False)
  assert proc.returncode == 1, proc.stderr
  summaries = jobs(sweep_dir)
  assert len(summaries) == 8
  statuses = {}
  for name, summary in summaries.items():
    case = dict(o.split("=", 1) for o in summary["overrides"])
    expected = ("failed" if case["init._target_"] == NO_SUCH_INIT else
                "diverged" if float(case["optimizer.lr"]) == 1e30 else "completed")
    assert summary["status"] == expected, (name, summary)
    statuses[name] = expected
    assert_complete_files(sweep_dir / name, summary)
    if expected == "failed":
      assert NO_SUCH_INIT in summary["error"]
      assert "Traceback" in (sweep_dir / name / "train.log").read_text()
  completed = [s for s in summaries.values() if s["status"] == "completed"]
  assert completed[0]["test/accuracy"] != completed[1]["test/accuracy"]  # two seeds, two runs
  rows = read_results(sweep_dir)
  assert {row["job"]: row["status"] for row in rows} == statuses
  assert all(row["seed"] in ("0", "1") and float(row["optimizer.lr"]) in (0.01, 1e30) for row in rows)


# --- atomic writes ---------------------------------------------------------------------------------------------
def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
  writers.write_summary(tmp_path, {"status": "completed", "test/accuracy": 0.5})
  before = (tmp_path / writers.SUMMARY_FILE).read_text()

  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills up after part of the new file was written
  with pytest.raises(atomic.WriteError) as caught:
    writers.write_summary(tmp_path, {"status": "failed", "error": "x" * 100_000})
  assert str(caught.value) == (f"cannot write {tmp_path / writers.SUMMARY_FILE}: No space left on device; "
                               "its previous contents are unchanged")
  assert (tmp_path / writers.SUMMARY_FILE).read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [writers.SUMMARY_FILE]  # no temporary file left


def test_failed_results_table_leaves_the_old_table(tmp_path, monkeypatch):
  job = tmp_path / "0"
  writers.write_summary(job, {"status": "completed", "overrides": ["seed=0"]})
  sweep.write_results(tmp_path, sweep.collect(tmp_path))
  before = (tmp_path / sweep.RESULTS_FILE).read_text()
  writers.write_summary(job, {"status": "completed", "overrides": ["seed=1"]})
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
  with pytest.raises(atomic.WriteError, match="results.csv: Input/output error"):
    sweep.write_results(tmp_path, sweep.collect(tmp_path))
  assert (tmp_path / sweep.RESULTS_FILE).read_text() == before
  assert [row["seed"] for row in read_results(tmp_path)] == ["0"]


def test_unwritable_run_directory_is_one_clear_error(tmp_path):
  blocker = tmp_path / "not_a_folder"
  blocker.write_text("a file where the run directory should be")
  with pytest.raises(atomic.WriteError) as caught:
    writers.write_summary(blocker / "run", {"status": "completed"})
  assert str(caught.value) == f"cannot write {blocker / 'run' / writers.SUMMARY_FILE}: Not a directory"
  assert blocker.read_text() == "a file where the run directory should be"


def test_a_streamed_write_that_raises_leaves_the_old_file_and_its_own_error(tmp_path):
  """A download cut off mid-stream: the error is the caller's, unchanged, and the old file stays whole."""
  path = tmp_path / "data.bin"
  atomic.write_text(path, "old")
  with pytest.raises(ConnectionResetError, match="^cut off$"):
    with atomic.replacing(path) as f:
      f.write(b"half of the new file")
      raise ConnectionResetError("cut off")
  assert path.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no temporary file left
  with atomic.replacing(path) as f:
    f.write(b"new")
  assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o644


def test_sigterm_to_a_joblib_sweep_stops_every_job_and_resume_finishes_them(write_npz, tmp_path):
  """SIGTERM to the sweep's own process only (workers run the jobs): the running jobs checkpoint and are
  `interrupted`, a job not yet started is `pending`, left for resume, results.csv lists them, the sweep exits 143; the
  same command with resume=true completes every job, the interrupted ones from their checkpoints."""
  sweep_dir = tmp_path / "sweep"
  args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
          "data=npz", f"data.path={write_npz()}", "seed=0,1,2", "steps=400", "eval_every=2", "log_every=2",
          "batch_size=16", "model.widths=[16]", "diagnostics=off", "checkpoint.every=null"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 300
  while not all((sweep_dir / j / writers.METRICS_FILE).exists() for j in ("0", "1")):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 128 + signal.SIGTERM, output
  summaries = jobs(sweep_dir)
  statuses = {name: s["status"] for name, s in summaries.items()}
  assert statuses == {"0": "interrupted", "1": "interrupted", "2": "pending"}, output
  started = [name for name, s in summaries.items() if s["steps_run"] > 0]
  assert sorted(started) == ["0", "1"] and 0 < summaries["0"]["steps_run"] < 400
  assert {row["job"]: row["status"] for row in read_results(sweep_dir)} == statuses

  run_cli(*args, "resume=true", cwd=tmp_path)
  summaries = jobs(sweep_dir)
  assert {name: s["status"] for name, s in summaries.items()} == dict.fromkeys(["0", "1", "2"], "completed")
  for name in started:
    assert summaries[name]["resumed_from_step"] > 0 and summaries[name]["steps_run"] == 400
  assert not (sweep_dir / writers.STOP_FILE).exists()


def test_jobs_stopped_in_worker_processes_fail_the_sweep_with_the_command_that_resumes_it(write_npz, tmp_path):
  """The sweep's stop file written by hand while joblib's workers run the jobs (the sweep's own process gets no
  signal): the running jobs return `interrupted` (no traceback from a worker), the next is left `pending`, and the
  sweep ends on its own with exit 1 and one line holding the command that resumes it; that command completes it."""
  sweep_dir = tmp_path / "sweep"
  args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
          "data=npz", f"data.path={write_npz()}", "seed=0,1,2", "steps=400", "eval_every=2", "log_every=2",
          "batch_size=16", "model.widths=[16]", "diagnostics=off", "checkpoint.every=null"]
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  deadline = time.monotonic() + 300
  while not all((sweep_dir / j / writers.METRICS_FILE).exists() for j in ("0", "1")):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
    time.sleep(0.1)
  (sweep_dir / writers.STOP_FILE).write_text("SIGTERM")
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 1, output
  assert "Traceback" not in output
  assert {name: s["status"] for name, s in jobs(sweep_dir).items()} == {"0": "interrupted", "1": "interrupted",
                                                                         "2": "pending"}, output
  lines = [line for line in output.splitlines() if "continue them with: " in line]
  assert len(lines) == 1 and "3 of 3 jobs did not finish" in lines[0], output
  command = shlex.split(lines[0].split("continue them with: ", 1)[1])
  assert command[:3] == ["trainlab", "train", "-m"] and command[-2:] == ["resume=true", f"hydra.sweep.dir={sweep_dir}"]

  run_cli(*command[1:], cwd=tmp_path)
  assert {name: s["status"] for name, s in jobs(sweep_dir).items()} == dict.fromkeys(["0", "1", "2"], "completed")


def test_an_error_while_programs_compile_ahead_is_a_failed_run_not_an_abort(tmp_path):
  """Out of memory in the step-0 diagnostics, while the first chunk compiles in a background thread: the process
  waits for that thread and ends as a failed run (exit 1, its error in summary.json), not with SIGABRT (134)."""
  code = ("import sys\n"
          "from trainlab import diagnostics, main\n"
          "def out_of_memory(self, step, state):\n"
          "  raise MemoryError('RESOURCE_EXHAUSTED: out of memory in the diagnostics')\n"
          "diagnostics.Monitor.__call__ = out_of_memory\n"
          "main.main(['train', 'steps=20', 'eval_every=10', 'model.widths=[256,256]', 'hydra.run.dir=' + sys.argv[1]])\n")
  run = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-c", code, str(run)], cwd=tmp_path, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  summary = writers.read_summary(run)
  assert summary["status"] == "failed"
  assert summary["error"] == "MemoryError: RESOURCE_EXHAUSTED: out of memory in the diagnostics"


def test_a_search_with_unfinished_trials_says_how_its_study_continues_not_resume(tmp_path, caplog):
  """resume=true would draw a search's trials anew: its end names the study storage instead of a resume command."""
  from omegaconf import OmegaConf

  writers.write_summary(tmp_path / "0", {"status": "completed", "best_val/accuracy": 0.5, "test/accuracy": 0.5,
                                         "overrides": ["optimizer.lr=0.1"]})
  writers.write_summary(tmp_path / "1", {"status": "interrupted", "overrides": ["optimizer.lr=0.01"]})
  cfg = OmegaConf.create({"report": {"metric": None, "target": None}, "hydra": {
      "sweep": {"dir": str(tmp_path)}, "overrides": {"hydra": [], "task": []},
      "sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}}})
  with pytest.raises(SystemExit) as stop:
    sweep.ResultsTable().on_multirun_end(cfg)
  assert stop.value.code == 1
  assert "1 of 2 trials did not finish" in caplog.text and "same study_name" in caplog.text
  assert "resume=true hydra.sweep.dir" not in caplog.text
  cfg.hydra.sweeper._target_ = "trainlab_sweeper.GridSweeper"  # a grid: the command that continues it
  with pytest.raises(SystemExit):
    sweep.ResultsTable().on_multirun_end(cfg)
  assert f"resume=true hydra.sweep.dir={tmp_path}" in caplog.text
