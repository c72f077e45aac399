"""Signals and kills around checkpoints, with real processes: what a run leaves on disk must be whole.

SIGKILL right after a checkpoint: every file holds the points up to it (TensorBoard's events included). A second
signal during the stop of the first: one line, and the run still ends `interrupted` after its checkpoint; the
next start clears what a cut-off save leaves.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from trainlab import signals
from trainlab.rundir import job, sweep, writers


def read_tensorboard(run_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar as TensorBoard's own reader sees it."""
  events = EventAccumulator(str(writers.events_dir(run_dir)), size_guidance={"scalars": 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run_python(code: str, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})


KILL_AFTER_CHECKPOINT = """
import os, signal, sys, time
from tensorboardX import event_file_writer
from trainlab import main
from trainlab.rundir import checkpoint
write_event = event_file_writer.EventsWriter.write_event
def slow_write_event(self, event):  # a slow disk: the event writer's thread falls behind the training loop
  time.sleep(0.005)
  write_event(self, event)
event_file_writer.EventsWriter.write_event = slow_write_event
save, kill_at = checkpoint.Checkpointer.save, int(sys.argv[2])
def save_then_die(self, step, *args, **kwargs):
  save(self, step, *args, **kwargs)
  if step == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.Checkpointer.save = save_then_die
main.main(["train", "hydra.run.dir=" + sys.argv[1], *sys.argv[3:]])
"""


def test_sigkill_right_after_a_checkpoint_leaves_tensorboard_complete_up_to_it(write_npz, tmp_path):
  """Every point of metrics.jsonl up to the checkpoint is in TensorBoard's events too, on a disk slow enough that
  tensorboardX's writing thread lags behind: its queue is written out before the checkpoint is taken (its own
  flush() does not wait for the events still queued)."""
  run, at = tmp_path / "run", 60
  proc = run_python(KILL_AFTER_CHECKPOINT, str(run), str(at), "data=npz", f"data.path={write_npz()}", "steps=200",
                    "eval_every=20", "log_every=1", "batch_size=16", "model.widths=[16]", "checkpoint.every=60",
                    "diagnostics=off", cwd=tmp_path)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  points = [p for p in writers.read_metrics(run) if p["step"] <= at]
  assert points[-1]["step"] == at
  expected = {}
  for point in points:
    for name, x in point.items():
      if name != "step":
        expected.setdefault(writers.tensorboard_tag(name), []).append((point["step"], x))
  seen = read_tensorboard(run)
  assert {tag: [s for s, _ in values if s <= at][-1] for tag, values in seen.items()} == dict.fromkeys(seen, at)
  for tag, values in expected.items():
    assert [(s, float(f"{x:.6g}")) for s, x in seen.get(tag, []) if s <= at] == [
        (s, float(f"{x:.6g}")) for s, x in values], tag


@pytest.mark.parametrize("second", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_second_signal_is_one_line_and_the_run_still_ends_interrupted(second, write_npz, tmp_path):
  """SIGTERM, then SIGTERM or SIGINT 50 ms later, while the first one's stop is under way: one line says so, no
  traceback; the run checkpoints, exits 143 with summary.json `interrupted` and no temporary folder; resume=true
  clears the one orbax leaves when a save is cut off (a third signal, a kill) and completes the run."""
  run = tmp_path / "run"
  args = ["train", "data=npz", f"data.path={write_npz()}", "steps=200", "eval_every=10", "log_every=10",
          "batch_size=16", "model.widths=[256]", "checkpoint.every=null", "diagnostics=off",
          f"hydra.run.dir={run}"]
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  for line in proc.stdout:
    if "step 100/200" in line:
      proc.send_signal(signal.SIGTERM)
      time.sleep(0.05)
      proc.send_signal(getattr(signal, second))
      break
  output = proc.stdout.read()
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
  assert "Traceback" not in output
  assert [line.split(" - ", 1)[1] for line in output.splitlines() if " again: " in line] == [
      f"{second} again: already stopping at the end of this chunk, after a checkpoint; one more signal ends the "
      "process at once, without it"], output
  summary = writers.read_summary(run)
  assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM", output
  assert 100 <= summary["steps_run"] < 200
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [str(summary["steps_run"])]

  # What a save cut off in the middle leaves behind.
  (run / "checkpoints" / "990.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  proc = subprocess.run([sys.executable, "-m", "trainlab", *args, "resume=true"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert writers.read_summary(run)["status"] == "completed"
  assert [p.name for p in (run / "checkpoints").iterdir() if "tmp" in p.name] == []


def test_sigterm_to_a_sweep_on_the_default_launcher_lists_the_jobs_not_started_and_resume_runs_them(write_npz,
                                                                                                   tmp_path):
  """The grid sweeper and Hydra's basic launcher, SIGTERM during the first of three jobs: it checkpoints and is
  `interrupted`, results.csv lists the other two with their overrides as `pending`, the sweep exits 143; the
  same command with resume=true completes all three."""
  sweep_dir = tmp_path / "sweep"
  args = ["train", "-m", f"hydra.sweep.dir={sweep_dir}", "data=npz", f"data.path={write_npz()}", "seed=0,1,2",
          "steps=200", "eval_every=20", "log_every=20", "batch_size=16", "model.widths=[16]", "diagnostics=off"]
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  for line in proc.stdout:
    if "step 60/200" in line:
      proc.send_signal(signal.SIGTERM)
      break
  output = proc.stdout.read()
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
  assert "Traceback" not in output
  with open(sweep_dir / sweep.RESULTS_FILE, newline="") as f:
    rows = [(row["job"], row["seed"], row["status"]) for row in csv.DictReader(f)]
  assert rows == [("0", "0", "interrupted"), ("1", "1", "pending"), ("2", "2", "pending")], output

  proc = subprocess.run([sys.executable, "-m", "trainlab", *args, "resume=true"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(sweep_dir / sweep.RESULTS_FILE, newline="") as f:
    rows = [(row["job"], row["seed"], row["status"], row["steps_run"]) for row in csv.DictReader(f)]
  assert rows == [(str(i), str(i), "completed", "200") for i in range(3)]
  assert writers.read_summary(sweep_dir / "0")["resumed_from_step"] >= 60


def test_sigusr2_stops_a_run_and_is_then_handed_to_the_handler_that_was_there_before():
  """SIGUSR2 (a time limit) requests a stop as SIGTERM does, without calling the handler installed before the run
  (submitit's, which would requeue and exit at once); after the run, hand_over_time_limit calls it; a handler that
  raises (submitit declining to requeue) is logged, not raised."""
  calls = []
  previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
  try:
    with signals.StopRequest() as stop:
      os.kill(os.getpid(), signal.SIGUSR2)
      time.sleep(0.1)
      assert stop.poll() == "SIGUSR2" and calls == []
    signals.hand_over_time_limit()
    assert calls == [signal.SIGUSR2]

    def decline(signum, frame):
      raise RuntimeError("Job not requeued because: timed-out too many times.")

    signal.signal(signal.SIGUSR2, decline)
    signals.hand_over_time_limit()
  finally:
    signal.signal(signal.SIGUSR2, previous)


def test_a_job_resumes_by_itself_only_its_own_run_stopped_at_its_time_limit():
  """The run in the directory is this job's (same launcher job id) and stopped on SIGUSR2: a requeued job."""
  own = {"status": "interrupted", "interrupted_by": "SIGUSR2", "job_id": "8704"}
  assert job.requeued(own, {"job_id": "8704"})
  assert not job.requeued(own, {"job_id": "8705"})  # another job (a new command)
  assert not job.requeued(own, {})  # a single run: Hydra gives it no job id
  assert not job.requeued({**own, "interrupted_by": "SIGTERM"}, {"job_id": "8704"})  # stopped by the user
  assert not job.requeued({**own, "status": "completed"}, {"job_id": "8704"})
  assert not job.requeued(None, {"job_id": "8704"})
