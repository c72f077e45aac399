"""Sweeps through Hydra's launcher and sweeper plugins, as a user runs them (a fresh `trainlab train -m` process,
the real plugins, no mocks): submitit's local launcher, a local Ray instance, an Optuna search. Each ends with a
results.csv of every job and the report. A SIGTERM to a submitit sweep, or the stop file of a Ray sweep, followed by
resume=true completes every job once; an Optuna study kept in SQLite continues in a later sweep. Each test needs its plugin's extra (hydra-submitit-launcher comes with '.[test]'; '.[ray]', '.[search]')
and is skipped without it; all are slow (a process per job)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, run_cli
from trainlab.rundir import writers

pytestmark = pytest.mark.slow

TINY = ["steps=20", "eval_every=10", "log_every=10", "model.widths=[8]", "diagnostics=off", "checkpoint.every=10"]


def results(sweep_dir) -> list[dict]:
  with open(sweep_dir / "results.csv") as f:
    return list(csv.DictReader(f))


def assert_complete(sweep_dir, jobs: int) -> list[dict]:
  """results.csv lists `jobs` jobs, every one completed; the report was written from it."""
  rows = results(sweep_dir)
  assert [row["job"] for row in rows] == [str(i) for i in range(jobs)]
  assert {row["status"] for row in rows} == {"completed"}, rows
  assert all(float(row["best_val/accuracy"]) > 0 for row in rows)
  assert (sweep_dir / "report.md").is_file()
  return rows


def logged_steps(job_dir, key: str) -> list[int]:
  """The steps of the metrics.jsonl points that hold `key` (train/loss: training windows; val/loss: evaluations)."""
  points = [json.loads(line) for line in (job_dir / writers.METRICS_FILE).read_text().splitlines()]
  return [point["step"] for point in points if key in point]


def test_a_submitit_local_sweep_runs_every_job_in_its_own_process(tmp_path):
  pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
  sweep_dir = tmp_path / "sweep"
  run_cli("train", "-m", "hydra/launcher=submitit_local", *TINY, "optimizer.lr=0.01,0.1", "seed=0,1",
          f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
  rows = assert_complete(sweep_dir, 4)
  assert [(row["optimizer.lr"], row["seed"]) for row in rows] == [("0.01", "0"), ("0.01", "1"), ("0.1", "0"),
                                                                    ("0.1", "1")]
  assert len({(sweep_dir / row["job"] / "summary.json").read_text() for row in rows}) == 4
  # submitit's own folder of each job (named by its process id locally), beside the jobs
  assert len([p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]) == 4


def stop_then_resume(tmp_path, launcher: list[str], stop) -> tuple[subprocess.CompletedProcess, list[dict]]:
  """Starts a sweep of 4 jobs on `launcher`, calls stop(process, sweep_dir) once every job trains, checks that each
  job stopped at a chunk's end (listed interrupted), resumes with resume=true and checks that every job completed
  with each logged step once. Returns the stopped sweep's process and its results.csv rows."""
  sweep_dir = tmp_path / "sweep"
  overrides = ["-m", *launcher, "steps=1500", "eval_every=100", "log_every=100", "checkpoint.every=100",
               "model.widths=[8]", "diagnostics=off", "batch_size=32", "optimizer.lr=0.01,0.1", "seed=0,1",
               f"hydra.sweep.dir={sweep_dir}"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  sweep = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *overrides], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 300
  while not all((sweep_dir / str(i) / writers.METRICS_FILE).is_file() for i in range(4)):  # every job trains
    assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[0][-3000:]
    time.sleep(0.2)
  stop(sweep, sweep_dir)
  stopped = subprocess.CompletedProcess(sweep.args, sweep.wait(timeout=300), sweep.stdout.read())
  rows = results(sweep_dir)
  assert {row["status"] for row in rows} == {"interrupted"}, (rows, stopped.stdout[-3000:])
  assert all(int(row["steps_run"]) < 1500 for row in rows)

  run_cli("train", *overrides, "resume=true", cwd=tmp_path)
  for row in assert_complete(sweep_dir, 4):
    assert row["steps_run"] == "1500"
    for key in ("train/loss", "val/loss"):
      assert logged_steps(sweep_dir / row["job"], key) == list(range(100, 1501, 100)), (row["job"], key)
  return stopped, rows


def test_a_sigterm_to_a_submitit_sweep_then_resume_completes_every_job_once(tmp_path):
  """The sweep's process gets SIGTERM while its jobs train in their own processes: it writes the stop file, each
  job checkpoints at the end of its chunk, and the sweep exits with 128 + SIGTERM."""
  pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
  stopped, _ = stop_then_resume(tmp_path, ["hydra/launcher=submitit_local"],
                                lambda sweep, sweep_dir: sweep.send_signal(signal.SIGTERM))
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-3000:]


def test_a_submitit_job_at_its_time_limit_checkpoints_is_requeued_and_resumes_its_own_run(tmp_path):
  """submitit's local executor sends SIGUSR2 30 s before a job's time limit (1 minute here) and requeues the job
  when its handler says so, as SLURM does with --signal=USR2@signal_delay_s. The job stops at the end of its chunk,
  checkpoints, is recorded `interrupted` by SIGUSR2, and hands over to submitit's handler, which requeues it; the
  requeued job (same arguments, same job id) resumes its own run without resume=true. After max_num_timeout=1
  requeue, submitit declines the second: the job returns `interrupted` and the sweep exits 1 with the command
  that resumes it. A run too long for two attempts, so that each attempt meets the time limit."""
  pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
  sweep_dir = tmp_path / "sweep"
  proc = run_cli("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1",
                 "+hydra.launcher.max_num_timeout=1", "steps=100000000", "log_every=1000", "eval_every=5000",
                 "checkpoint.every=null", "model.widths=[8]", "diagnostics=off", f"hydra.sweep.dir={sweep_dir}",
                 cwd=tmp_path, check=False)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 1, output[-3000:]
  summary = writers.read_summary(sweep_dir / "0")
  assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGUSR2", summary
  assert 0 < summary["resumed_from_step"] < summary["steps_run"]  # the second attempt went on from the first's
  logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
  assert logs.count("this job's own run, stopped at its time limit and requeued: resuming it") == 1, logs[-3000:]
  assert "Requeued job" in logs and "timed-out too many times" in logs
  steps = logged_steps(sweep_dir / "0", "train/loss")
  assert steps == list(range(1000, summary["steps_run"] + 1, 1000))  # each step once, across both attempts
  assert results(sweep_dir)[0]["status"] == "interrupted"
  assert "continue them with: trainlab train -m hydra/launcher=submitit_local" in output, output[-3000:]


def test_a_ray_sweep_on_a_local_instance(tmp_path):
  pytest.importorskip("hydra_plugins.hydra_ray_launcher")
  sweep_dir = tmp_path / "sweep"
  run_cli("train", "-m", "hydra/launcher=ray_cluster", "hydra.launcher.ray.init.num_cpus=2", *TINY,
          "optimizer.lr=0.01,0.1", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
  assert_complete(sweep_dir, 4)


def test_the_stop_file_stops_a_ray_sweep_and_resume_completes_every_job_once(tmp_path):
  """Ray takes the driver's SIGTERM for its own (it ends the driver and a local instance's workers at once), so a
  Ray sweep is stopped in order by writing its stop file, which every job reads at the end of its chunks."""
  pytest.importorskip("hydra_plugins.hydra_ray_launcher")
  stop_then_resume(tmp_path, ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.num_cpus=4"],  # 4 at once
                   lambda sweep, sweep_dir: (sweep_dir / writers.STOP_FILE).write_text("SIGTERM"))


def test_an_optuna_search_of_6_trials_ranks_them_by_the_jobs_return(tmp_path):
  """The shipped search space (hydra/sweeper=search): 6 TPE trials; the best trial Optuna reports is the job with
  the highest best validation accuracy in results.csv, and the report ranks the trials by it."""
  pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
  sweep_dir = tmp_path / "sweep"
  proc = run_cli("train", "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=6", *TINY,
                 f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
  rows = assert_complete(sweep_dir, 6)
  best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
  top = max(rows, key=lambda row: float(row["best_val/accuracy"]))
  assert best["best_value"] == pytest.approx(float(top["best_val/accuracy"]), rel=1e-6)
  assert best["best_params"]["batch_size"] == int(top["batch_size"])
  assert best["best_params"]["optimizer.lr"] == pytest.approx(float(top["optimizer.lr"]))
  for row in rows:  # the space: lr log-uniform in [0.001, 0.3], momentum, weight decay, dropout, batch size
    assert 0.001 <= float(row["optimizer.lr"]) <= 0.3 and 0.5 <= float(row["optimizer.momentum"]) <= 0.99
    assert row["optimizer"] == "momentum" and int(row["batch_size"]) in (32, 64, 128, 256)
    assert 1e-6 <= float(row["regularizer.weight_decay.weight"]) <= 1e-2
    assert 0 <= float(row["regularizer.dropout.rate"]) <= 0.6
  assert "Best parameters:" in proc.stdout + proc.stderr


def test_an_optuna_study_in_sqlite_continues_in_a_later_sweep(tmp_path):
  """Persistent storage (RDB, hence SQLAlchemy < 2 with optuna 2): a second command with the same study and
  another sweep directory adds its trials to the stored study."""
  optuna = pytest.importorskip("optuna")
  pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
  storage = f"sqlite:///{tmp_path / 'study.db'}"
  for name in ("first", "second"):
    run_cli("train", "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}",
            *TINY, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path)
    assert_complete(tmp_path / name, 2)
  study = optuna.load_study(study_name="trainlab", storage=storage)
  assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
  values = [float(row["best_val/accuracy"]) for name in ("first", "second") for row in results(tmp_path / name)]
  assert [t.value for t in study.trials] == pytest.approx(values, rel=1e-6)
