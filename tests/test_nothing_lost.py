"""Nothing a run has done is lost to a later command: a refused or failed attempt leaves the run directory as it
was, a corrupt checkpoint falls back to the one before and is kept aside, one process at a time holds a run
directory, and a resume must train the same config on the same data.

Most tests start from one run of the real command, stopped by a real SIGTERM (the module's `interrupted`
fixture), and work on copies of its directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli, train_in_process
from test_resume import stop_when_logged
from trainlab.rundir import checkpoint, lock, writers

RUN = ["steps=600", "eval_every=50", "log_every=25", "batch_size=16", "model.widths=[16]", "checkpoint.every=100",
       "checkpoint.keep=null", "diagnostics=off"]


def write_data(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  rng = np.random.default_rng(seed)
  np.savez(path, x_train=rng.normal(size=(400, 6)).astype(np.float32), y_train=rng.integers(0, 3, 400),
           x_test=rng.normal(size=(100, 6)).astype(np.float32), y_test=rng.integers(0, 3, 100))
  return path


def start(args: list[str], cwd: pathlib.Path) -> subprocess.Popen:
  """`python -m trainlab ARGS` in the background, its output (stdout and stderr) readable line by line."""
  return subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, text: str) -> None:
  for line in proc.stdout:
    if text in line:
      return
  raise AssertionError(f"the process ended (exit code {proc.wait()}) before printing {text!r}")


def snapshot(run: pathlib.Path) -> dict[str, bytes]:
  """Every file of a run directory but its log and lock, by path: what a refused command must leave as it was."""
  return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
          if p.is_file() and p.name not in ("train.log", lock.LOCK_FILE)}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
  """(run directory, arguments) of a run of `trainlab train` on an .npz file, stopped by SIGTERM mid-run."""
  root = tmp_path_factory.mktemp("interrupted")
  args = ["train", "data=npz", f"data.path={write_data(root / 'data.npz')}", *RUN]
  run = root / "run"
  proc = start([*args, f"hydra.run.dir={run}"], root)
  wait_for(proc, "step 250/600")
  proc.send_signal(signal.SIGTERM)
  output = proc.stdout.read()
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
  summary = writers.read_summary(run)
  assert summary["status"] == "interrupted" and 250 <= summary["steps_run"] < 600
  return run, args


def copy_of(interrupted, tmp_path: pathlib.Path) -> tuple[pathlib.Path, list[str], pathlib.Path]:
  """A copy of the interrupted run: (run directory, its arguments, its data file). The data file is the
  fixture's (another path would be another run): a test that changes it puts it back (`data_kept`)."""
  run, args = interrupted
  shutil.copytree(run, tmp_path / "run")
  return tmp_path / "run", [*args, f"hydra.run.dir={tmp_path / 'run'}"], run.parent / "data.npz"


@contextlib.contextmanager
def data_kept(data: pathlib.Path):
  """The data file's contents are put back after the block, whatever it did to the file."""
  contents = data.read_bytes()
  try:
    yield
  finally:
    data.write_bytes(contents)


# --- 1. a refused or failed attempt takes nothing away ---------------------------------------------------------
def test_a_failed_resume_leaves_the_run_and_the_next_one_continues_it(interrupted, tmp_path):
  run, args, data = copy_of(interrupted, tmp_path)
  steps_run = writers.read_summary(run)["steps_run"]
  before = snapshot(run)

  wrong = one_error_line(run_cli(*args, "batch_size=0", "resume=true", cwd=tmp_path, check=False))
  assert "batch_size=0" in wrong
  with data_kept(data):
    data.unlink()  # the data file briefly missing
    missing = one_error_line(run_cli(*args, "resume=true", cwd=tmp_path, check=False))
  assert missing == f"error: data file {data} does not exist (data.path)"
  assert snapshot(run) == before  # summary, metrics, checkpoints, events and .hydra/ as they were

  # A run whose last attempt failed (a crash) resumes from its newest checkpoint all the same.
  writers.write_summary(run, {**writers.read_summary(run), "status": "failed", "error": "RuntimeError: crash"})
  run_cli(*args, "resume=true", cwd=tmp_path)
  resumed = writers.read_summary(run)
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] == steps_run


@pytest.mark.slow
def test_a_failed_resume_of_a_sweep_leaves_its_jobs(tmp_path):
  """The issue's sweep: interrupted, resumed while its data file is missing, then resumed right: each job
  continues from its checkpoint."""
  data = write_data(tmp_path / "data.npz")
  args = ["train", "-m", "data=npz", f"data.path={data}", *RUN, "seed=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
  job = tmp_path / "sweep" / "0"
  proc = start(args, tmp_path)
  while not (job / "train.log").is_file() or "step 250/600" not in (job / "train.log").read_text():
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=120)
  steps_run = writers.read_summary(job)["steps_run"]
  before = snapshot(job)

  data.rename(tmp_path / "away.npz")
  failed = run_cli(*args, "resume=true", cwd=tmp_path, check=False)
  assert "Traceback" not in failed.stdout + failed.stderr
  assert snapshot(job) == before
  (tmp_path / "away.npz").rename(data)
  run_cli(*args, "resume=true", cwd=tmp_path)
  resumed = writers.read_summary(job)
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] == steps_run


# --- 2. a corrupt checkpoint: the one before, and the corrupt one kept aside -----------------------------------
def _corrupt(step_dir: pathlib.Path, way: str) -> None:
  data = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = data.read_bytes()
  if way == "truncated data file":
    data.write_bytes(raw[:len(raw) // 2])
  elif way == "emptied data file":
    data.write_bytes(b"")
  elif way == "flipped bytes":
    data.write_bytes(raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0x10]) + raw[len(raw) // 2 + 1:])
  elif way == "truncated metadata":
    metadata = step_dir / "state" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[:metadata.stat().st_size // 2])
  elif way == "garbled metadata":
    host = step_dir / "host" / "metadata"
    host.write_bytes(host.read_bytes()[:10] + b"#" * 20 + host.read_bytes()[30:])


SMALL = ["steps=60", "eval_every=10", "log_every=10", "batch_size=16", "model.widths=[16]", "checkpoint.every=20",
         "checkpoint.keep=null", "diagnostics=off"]


@pytest.mark.parametrize("way", ["truncated data file", "truncated metadata", "garbled metadata",
                                 "emptied data file", "flipped bytes"])
def test_a_corrupt_checkpoint_is_set_aside_for_the_one_before(way, write_npz, tmp_path, monkeypatch, caplog):
  overrides = ["data=npz", f"data.path={write_npz()}", *SMALL]
  run = tmp_path / "run"
  stop_when_logged(monkeypatch, 50, lambda: signal.raise_signal(signal.SIGTERM))
  assert train_in_process(overrides, run)["status"] == "interrupted"
  monkeypatch.undo()
  newest = run / checkpoint.CHECKPOINT_DIR / "50"
  _corrupt(newest, way)
  kept = {str(p.relative_to(newest)): p.read_bytes() for p in newest.rglob("*") if p.is_file()}
  with caplog.at_level("WARNING"):
    resumed = train_in_process([*overrides, "resume=true"], run)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "corrupt" in r.getMessage()]
  assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
  assert warnings[0].startswith(f"the checkpoint at step 50 in {run} is corrupt (")
  assert "set aside as checkpoints/50.corrupt" in warnings[0] and "TensorStore details" not in warnings[0]
  assert resumed["resumed_from_step"] == 40 and resumed["status"] == "completed"
  aside = run / checkpoint.CHECKPOINT_DIR / "50.corrupt"
  assert {str(p.relative_to(aside)): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == kept


def test_with_no_checkpoint_that_restores_a_resume_is_one_line(interrupted, tmp_path):
  run, args, _ = copy_of(interrupted, tmp_path)
  steps = sorted(int(p.name) for p in (run / checkpoint.CHECKPOINT_DIR).iterdir())
  for step in steps:
    _corrupt(run / checkpoint.CHECKPOINT_DIR / str(step), "emptied data file")
  metrics, summary = (run / writers.METRICS_FILE).read_bytes(), writers.read_summary(run)
  proc = run_cli(*args, "resume=true", cwd=tmp_path, check=False)
  aside = ", ".join(sorted(f"{step}.corrupt" for step in steps))
  assert one_error_line(proc) == (
      f"error: cannot resume the run in {run}: none of its checkpoints restores (set aside in "
      f"{run / checkpoint.CHECKPOINT_DIR}: {aside}); the same command with resume=false and another hydra.run.dir "
      "trains the run again from step 0 in a fresh directory")
  assert proc.stdout.count("is corrupt") == len(steps)
  assert (run / writers.METRICS_FILE).read_bytes() == metrics and writers.read_summary(run) == summary
  assert one_error_line(run_cli(*args, "resume=true", cwd=tmp_path, check=False)) == one_error_line(proc)


# --- 3. a refused command leaves the .hydra/ record of the run it refused ---------------------------------------
def test_a_refused_command_leaves_the_runs_record(interrupted, tmp_path):
  run, args, _ = copy_of(interrupted, tmp_path)
  record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
  assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
  before = snapshot(run)
  fresh = one_error_line(run_cli(*args, "seed=3", cwd=tmp_path, check=False))  # a fresh run into it
  assert fresh.startswith(f"error: {run} already holds a run (interrupted)")
  other = one_error_line(run_cli(*args, "optimizer.lr=0.5", "resume=true", cwd=tmp_path, check=False))
  assert "optimizer.lr=0.5" in other
  assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record
  assert snapshot(run) == before


# --- 4. one process per run directory ---------------------------------------------------------------------------
def test_a_second_process_in_a_run_directory_is_refused_and_sigkill_leaves_no_lock(write_npz, tmp_path):
  run = tmp_path / "run"
  args = ["train", "data=npz", f"data.path={write_npz()}", *RUN, "steps=1000000", f"hydra.run.dir={run}"]
  first = start(args, tmp_path)
  try:
    wait_for(first, "step 50/1000000")  # training, its files open
    record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    second = run_cli(*args, "seed=1", cwd=tmp_path, check=False)
    assert one_error_line(second) == (f"error: {run} is in use by process {first.pid}, which is running a job there; "
                                      "wait for it to end, or choose another directory")
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record
    assert "seed" not in (run / "train.log").read_text()
    steps = [p["step"] for p in writers.read_metrics(run) if "train/loss" in p]
    assert steps == sorted(set(steps))  # one run's points, each once
  finally:
    first.kill()  # SIGKILL: the kernel releases its lock
    first.wait()
  # The next process has the directory at once (and refuses a fresh run there, for its own reason).
  third = run_cli(*args, cwd=tmp_path, check=False)
  assert one_error_line(third).startswith(f"error: {run} already holds a run; add resume=true")


def test_the_lock_is_the_kernels(tmp_path):
  """Held, the directory is refused to another holder (another open file, as another process has); released
  (the holder's descriptor closed, as by its death), it is free, though the file stays."""
  with lock.holding(tmp_path):
    assert (tmp_path / lock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(lock.DirectoryInUse, match=f"in use by process {os.getpid()}"):
      with lock.holding(tmp_path):
        pass
  with lock.holding(tmp_path):
    pass


# --- 5. the data a run trains on --------------------------------------------------------------------------------
def test_a_resume_on_other_data_is_refused_naming_the_file(interrupted, tmp_path):
  run, args, data = copy_of(interrupted, tmp_path)
  assert writers.read_summary(run)["data_fingerprint"]["files"] == {
      str(data): {"bytes": data.stat().st_size, "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}}
  before = snapshot(run)
  with data_kept(data):
    write_data(data, seed=1)  # other arrays of the same shapes, in the run's file
    refused = one_error_line(run_cli(*args, "resume=true", cwd=tmp_path, check=False))
  assert refused == (f"error: cannot resume the run in {run}: its data file {data} is not the file the run trained on "
                     "(its SHA-256 differs); put the run's file back, or start a new run in another directory")
  assert snapshot(run) == before


def test_a_generated_data_set_is_identified_by_its_config():
  spirals = {"_target_": "trainlab.data.spirals", "n_train": 100, "seed": 0}
  assert checkpoint.data_fingerprint(spirals) == {"config": spirals, "files": {}}


# --- 6. a finished run resumed with another config ------------------------------------------------------------
def test_a_finished_run_resumed_with_another_config_is_refused(tmp_path):
  """A change that no override shows (an edited experiment file) is refused as for an interrupted run."""
  experiment = tmp_path / "conf" / "experiment" / "mine.yaml"
  experiment.parent.mkdir(parents=True)
  experiment.write_text("# @package _global_\noptimizer:\n  lr: 0.01\n")
  run = tmp_path / "run"
  args = ["train", "-cd", str(tmp_path / "conf"), "experiment=mine", "steps=20", "eval_every=10", "model.widths=[8]",
          "diagnostics=off", f"hydra.run.dir={run}"]
  run_cli(*args, cwd=tmp_path)
  summary = writers.read_summary(run)
  assert summary["status"] == "completed"
  assert "nothing to do" in run_cli(*args, "resume=true", cwd=tmp_path).stdout
  experiment.write_text("# @package _global_\noptimizer:\n  lr: 0.05\n")
  refused = one_error_line(run_cli(*args, "resume=true", cwd=tmp_path, check=False))
  assert refused == (f"error: cannot resume the run in {run}: its config differs: optimizer.lr=0.05 (the run has "
                     "0.01). Resume with the run's own overrides, or start a new run in another directory")
  assert writers.read_summary(run) == summary


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_sweep_job_whose_directory_is_held_is_not_run(launcher, tmp_path):
  """A job directory held by another process: that job is not run (one line in the sweep's log), the others are."""
  sweep = tmp_path / "sweep"
  (sweep / "1").mkdir(parents=True)
  with lock.holding(sweep / "1"):
    proc = run_cli("train", "-m", f"hydra/launcher={launcher}", "steps=20", "eval_every=10", "model.widths=[8]",
                   "diagnostics=off", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
  assert f"{sweep / '1'} is in use by process {os.getpid()}" in proc.stdout + proc.stderr
  assert "Traceback" not in proc.stdout + proc.stderr
  assert writers.read_summary(sweep / "0")["status"] == "completed"
  assert sorted(p.name for p in (sweep / "1").iterdir()) in ([lock.LOCK_FILE], [lock.LOCK_FILE, "train.log"])
