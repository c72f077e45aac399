"""Source runs made on demand (trainlab.rundir.on_demand): two callers asking at once train the source once, a
finished source is reused without training, a failed one and bad overrides give one line naming what to look at,
and in a sweep a job whose source fails fails alone, the sources folder never taken for a job."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, run_cli
from trainlab.config import ConfigError
from trainlab.rundir import jobs, on_demand, writers

TINY = ["steps=6", "eval_every=3", "log_every=3", "batch_size=32", "diagnostics=off", "model.widths=[8]",
        "regularizer=[]"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """Two threads ask for the same source at once, each through its own open of the real lock file."""
  sources = tmp_path_factory.mktemp("sweep") / jobs.SOURCES_DIR
  results, errors = [], []

  def ask():
    try:
      results.append(on_demand.ensure(TINY, sources))
    except Exception as e:  # noqa: BLE001 - reported by the test
      errors.append(e)

  threads = [threading.Thread(target=ask) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=300)
  assert not errors, errors
  return sources, results


def test_two_callers_at_once_train_the_source_once(made):
  sources, results = made
  (run_dir, _), (other, _) = results
  assert run_dir == other == on_demand.source_dir(sources, TINY)
  assert sorted(was_made for _, was_made in results) == [False, True]  # one trained it, the other waited
  summary = writers.read_summary(run_dir)
  assert summary["status"] == "completed" and summary["steps_run"] == 6
  assert summary["overrides"] == TINY  # resume=true and hydra.run.dir are how it ran, not what it is
  assert (run_dir / on_demand.LOG_FILE).read_text().count("final metrics") == 1


def test_a_finished_source_is_reused_without_training(made, monkeypatch):
  sources, _ = made
  monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a finished source was trained again"))
  assert on_demand.ensure(TINY, sources) == (on_demand.source_dir(sources, TINY), False)


def test_other_overrides_are_another_source():
  assert on_demand.source_dir("s", TINY) != on_demand.source_dir("s", [*TINY, "seed=1"])
  assert on_demand.source_dir("s", TINY) != on_demand.source_dir("s", TINY[::-1])  # a later override wins


def test_a_source_that_fails_gives_one_line_naming_its_directory_and_log(tmp_path):
  overrides = ["data=npz", f"data.path={tmp_path / 'none.npz'}"]
  run_dir = on_demand.source_dir(tmp_path, overrides)
  with pytest.raises(ConfigError) as info:
    on_demand.ensure(overrides, tmp_path)
  assert str(info.value) == (f"init.source_overrides: the source run in {run_dir} failed: data file "
                             f"{tmp_path / 'none.npz'} does not exist (data.path); its log: {run_dir / 'source.log'}")
  assert "does not exist" in (run_dir / "source.log").read_text()


def test_a_misspelled_override_is_named_with_its_close_match(tmp_path):
  with pytest.raises(ConfigError) as info:
    on_demand.ensure(["optimzer.lr=0.1"], tmp_path, "regularizer.distill.teacher_overrides")
  message = str(info.value)
  assert message.startswith("regularizer.distill.teacher_overrides: the source run in ") and "\n" not in message
  assert "the config has no key optimzer.lr: did you mean optimizer.lr=0.1?; its log: " in message


def test_a_failed_source_is_not_trained_again(tmp_path, monkeypatch):
  run_dir = on_demand.source_dir(tmp_path, TINY)
  run_dir.mkdir(parents=True)
  writers.write_summary(run_dir, {"status": "failed", "error": "FloatingPointError: boom"})
  monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a failed source was trained again"))
  with pytest.raises(ConfigError, match=r"failed: FloatingPointError: boom; its log: .*source.log; remove the "
                                        r"directory to train it again$"):
    on_demand.ensure(TINY, tmp_path)


@pytest.mark.parametrize("overrides,message", [
    (["steps"], "init.source_overrides: 'steps' is not an override: each is key=value"),
    (["-m", "seed=0,1"], "init.source_overrides: '-m' is not an override"),
    (["hydra.run.dir=/tmp/x"], "init.source_overrides: hydra.run.dir=/tmp/x is not allowed: trainlab chooses"),
    (["resume=true"], "init.source_overrides: resume=true is not allowed"),
    (["+init.source_overrides=[steps=1]"], "is not allowed: trainlab chooses the source's directory"),
    ("steps=6", "init.source_overrides must be a list of overrides"),
])
def test_overrides_that_describe_no_source_are_refused_before_anything_runs(overrides, message, tmp_path):
  with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace("[", r"\[")):
    on_demand.ensure(overrides, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_job_dirs_leave_out_the_sources_folder(tmp_path):
  for name in ("0", "1", "10", jobs.SOURCES_DIR):
    (tmp_path / name).mkdir()
  assert [p.name for p in jobs.job_dirs(tmp_path)] == ["0", "1", "10"]


def test_in_a_sweep_a_job_whose_source_fails_fails_alone(tmp_path):
  """Job 0 needs a source that cannot load its data; job 1 needs none. results.csv lists the two jobs (not the
  sources folder), job 0 failed with the one line, job 1 completed."""
  sweep = tmp_path / "sweep"
  proc = run_cli("train", "-m", *TINY, 'init.source_overrides=["data=npz","data.path=none.npz"],null',
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
  assert proc.returncode != 0  # a sweep with a failed job says so
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]
  run_dir = on_demand.source_dir(sweep.resolve() / jobs.SOURCES_DIR, ["data=npz", "data.path=none.npz"])
  assert rows[0]["error"] == (f"init.source_overrides: the source run in {run_dir} failed: data file none.npz does "
                              f"not exist (data.path); its log: {run_dir / 'source.log'}")
  assert json.loads((sweep / "1" / "summary.json").read_text()).get("sources") is None


def test_both_a_directory_and_overrides_are_refused_in_one_line(tmp_path):
  proc = run_cli("train", *TINY, "init.from_run=somewhere", 'init.source_overrides=["steps=1"]',
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[-1] == ("error: init.source_overrides and init.from_run are both set: a source run "
                                          "is given by its directory or by the overrides that train it, not both")
  assert not (tmp_path / "run").exists()  # refused before anything was made there


@pytest.mark.slow
def test_parallel_jobs_of_a_sweep_train_their_source_once(tmp_path):
  """hydra/launcher=joblib: two jobs in two processes need the same source at once; one trains it, the other
  waits on the lock and reuses it."""
  sweep = tmp_path / "sweep"
  quoted = ",".join(f'"{o}"' for o in TINY)
  run_cli("train", "-m", "hydra/launcher=joblib", *TINY, f"init.source_overrides=[{quoted}]", "seed=0,1",
          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  made = [json.loads((sweep / j / "summary.json").read_text())["sources"]["init.source_overrides"] for j in "01"]
  assert sorted(m["made_on_demand"] for m in made) == [False, True]
  run_dir = on_demand.source_dir(sweep.resolve() / jobs.SOURCES_DIR, TINY)
  assert {m["run"] for m in made} == {str(run_dir)}
  assert (run_dir / on_demand.LOG_FILE).read_text().count("final metrics") == 1
  assert [r["job"] for r in csv.DictReader((sweep / "results.csv").open())] == ["0", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,waiting", [([], "pending"), (["hydra/launcher=joblib"], "interrupted")])
def test_a_sweep_stopped_while_its_source_trains_loses_nothing(tmp_path, launcher, waiting):
  """SIGTERM to the sweep's own process alone while a job trains the source both jobs need: the job passes it on
  to the source's child process (its own process group; in a joblib worker, which the signal misses, on the sweep's
  stop file), waits for its checkpoint, and is `interrupted`, not failed; the other job is `pending` (basic
  launcher: not started) or `interrupted` (joblib: it waited on the source's lock); no child is left running.
  resume=true continues the source from its checkpoint (each of its steps logged once across both attempts) and
  completes both jobs; results.csv lists the jobs only."""
  sweep = tmp_path / "sweep"
  source = ["steps=4000", "eval_every=20", "log_every=20", "checkpoint.every=20", "batch_size=32",
            "diagnostics=off", "model.widths=[8]", "regularizer=[]"]
  quoted = ",".join(f'"{o}"' for o in source)
  args = ["train", "-m", *launcher, *TINY, f"init.source_overrides=[{quoted}]", "seed=0,1",
          f"hydra.sweep.dir={sweep}"]
  run_dir = on_demand.source_dir(sweep.resolve() / jobs.SOURCES_DIR, source)
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  deadline = time.monotonic() + 300
  while not (run_dir / writers.METRICS_FILE).is_file() or not (run_dir / writers.METRICS_FILE).read_text():
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 128 + signal.SIGTERM, output
  first = writers.read_summary(run_dir)
  assert first["status"] == "interrupted" and first["interrupted_by"] == "SIGTERM", output
  assert 0 < first["steps_run"] < 4000
  logs = output + "".join(p.read_text() for p in sweep.glob("*/*.log"))  # a joblib worker's log is its job's
  pid = int(re.search(r"passing it on to the source run \(pid (\d+)\)", logs).group(1))
  with pytest.raises(ProcessLookupError):  # the child ended (and was waited for) before the sweep did
    os.kill(pid, 0)
  statuses = {r["job"]: r["status"] for r in csv.DictReader((sweep / "results.csv").open())}
  [trained] = [p.parent.name for p in sweep.glob("*/train.log") if "training the source run" in p.read_text()]
  assert statuses == {trained: "interrupted", str(1 - int(trained)): waiting}, logs
  assert writers.read_summary(sweep / trained)["interrupted_by"] == "SIGTERM"

  run_cli(*args, "resume=true", cwd=tmp_path)
  summary = writers.read_summary(run_dir)
  assert summary["status"] == "completed" and summary["steps_run"] == 4000
  assert summary["resumed_from_step"] == first["steps_run"]  # continued from its checkpoint, not restarted
  steps = [json.loads(line)["step"] for line in (run_dir / writers.METRICS_FILE).read_text().splitlines()
           if "train/loss" in json.loads(line)]
  assert steps == list(range(20, 4001, 20))  # each logged once, across both attempts
  assert [(r["job"], r["status"]) for r in csv.DictReader((sweep / "results.csv").open())] == [
      ("0", "completed"), ("1", "completed")]
  made = [writers.read_summary(sweep / j)["sources"]["init.source_overrides"]["made_on_demand"] for j in "01"]
  assert sorted(made) == [False, True]


@pytest.mark.slow
def test_a_job_killed_outright_leaves_no_source_training(tmp_path):
  """SIGKILL to a single run's process while its source trains (no handler runs): the source's child, in its own
  process group, gets SIGTERM as its parent dies, checkpoints and ends `interrupted`, for resume=true."""
  source = ["steps=4000", "eval_every=20", "log_every=20", "checkpoint.every=20", "batch_size=32",
            "diagnostics=off", "model.widths=[8]", "regularizer=[]"]
  quoted = ",".join(f'"{o}"' for o in source)
  run = tmp_path / "run"
  run_dir = on_demand.source_dir(run.resolve() / jobs.SOURCES_DIR, source)
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *TINY, f"init.source_overrides=[{quoted}]",
                           f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  deadline = time.monotonic() + 300
  while not (run_dir / writers.METRICS_FILE).is_file() or not (run_dir / writers.METRICS_FILE).read_text():
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
    time.sleep(0.05)
  proc.kill()
  proc.communicate(timeout=60)
  deadline = time.monotonic() + 120
  while (writers.read_summary(run_dir) or {}).get("status") is None:
    assert time.monotonic() < deadline, (run_dir / on_demand.LOG_FILE).read_text()[-2000:]
    time.sleep(0.1)
  summary = writers.read_summary(run_dir)
  assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
  assert 0 < summary["steps_run"] < 4000
