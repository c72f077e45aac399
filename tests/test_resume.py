"""Checkpoints and resume: an interrupted run, resumed, ends bit for bit as the same run uninterrupted.

Every comparison here is exact (bytes of the parameters, equality of the logged floats): the data order and
the dropout masks depend only on the checkpointed key and step, and the host loop's partial window of training
metrics and its best validation point travel in the checkpoint, so nothing may differ at all.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, run_cli, train_in_process
from trainlab.rundir import checkpoint, writers

# 60 steps in chunks of 10; checkpoints every 20; log windows of 7 steps straddle every chunk boundary;
# diagnostics every 20 and histograms every 40 go on after a resume as they would have.
SMALL = ["steps=60", "eval_every=10", "log_every=7", "batch_size=16", "model.widths=[16]", "checkpoint.every=20",
         "checkpoint.keep=null", "diagnostics.every=20", "diagnostics.histogram_every=40"]
OPTIMIZERS = {  # two optimizers whose state matters; the second also draws dropout masks from the key
    "adam": ["optimizer=adam", "optimizer.lr=0.01"],
    "momentum": ["optimizer=momentum", "schedule=linear", "regularizer=[dropout,l2]"],
}


def read_jsonl(run_dir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (run_dir / writers.METRICS_FILE).read_text().splitlines()]


def read_tensorboard(run_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar as TensorBoard's own reader sees it, after it applies the purge of a resumed run."""
  events = EventAccumulator(str(writers.events_dir(run_dir)), size_guidance={"scalars": 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
  saved = checkpoint.Checkpointer(run_dir)
  steps = saved.all_steps()
  saved.close()
  return steps


def final_leaves(run_dir: pathlib.Path) -> list[np.ndarray]:
  saved = checkpoint.Checkpointer(run_dir)
  state = saved.restore(None, saved.latest_step())
  saved.close()
  as_data = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  return [np.asarray(as_data(x)) for x in jax.tree.leaves(state)]


def assert_same_run(resumed: pathlib.Path, reference: pathlib.Path) -> None:
  assert read_jsonl(resumed) == read_jsonl(reference)  # no duplicated, missing or different point
  assert read_tensorboard(resumed) == read_tensorboard(reference)
  a, b = final_leaves(resumed), final_leaves(reference)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def stop_when_logged(monkeypatch, step: int, action) -> None:
  """Calls `action()` right after the validation point of `step` is logged, inside the training loop."""
  write = writers.RunWriter.write

  def write_then_act(self, at_step, metrics):
    write(self, at_step, metrics)
    if at_step == step and "val/loss" in metrics:
      action()

  monkeypatch.setattr(writers.RunWriter, "write", write_then_act)


@pytest.fixture
def npz_overrides(write_npz):
  return ["data=npz", f"data.path={write_npz()}"]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_sigterm_then_resume_equals_uninterrupted(optimizer, npz_overrides, tmp_path, monkeypatch):
  overrides = npz_overrides + SMALL + OPTIMIZERS[optimizer]
  reference = train_in_process(overrides, tmp_path / "reference")

  run = tmp_path / "run"
  # SIGTERM at step 30, between two periodic checkpoints: the run checkpoints at 30 and stops.
  stop_when_logged(monkeypatch, 30, lambda: signal.raise_signal(signal.SIGTERM))
  interrupted = train_in_process(overrides, run)
  monkeypatch.undo()
  assert interrupted["status"] == "interrupted" and interrupted["interrupted_by"] == "SIGTERM"
  assert interrupted["steps_run"] == 30 and "test/accuracy" not in interrupted
  assert checkpoint_steps(run) == [20, 30]
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is the run's only

  resumed = train_in_process(overrides + ["resume=true"], run)
  assert resumed["resumed_from_step"] == 30 and resumed["status"] == "completed"
  assert resumed["wall_time_s"] > interrupted["wall_time_s"]  # both sessions count
  for key in ("test/accuracy", "test/loss", "best_val/accuracy", "best_val/loss", "best_val/step", "steps_run",
              "gap/accuracy"):
    assert resumed[key] == reference[key], key
  assert_same_run(run, tmp_path / "reference")


# Every option that keeps state across steps: early stopping (its best score, step, patience count and best
# parameters), the Adam -> SGD switch, the staleness buffer, gradient noise, a warmup schedule, batch norm's
# statistics, and dropout, augmentation and RReLU drawing from the run's key.
EVERY_STATEFUL_OPTION = [
    "optimizer=adam_then_sgd", "optimizer.switch_step=25", "optimizer.staleness=2", "optimizer.noise_eta=0.01",
    "schedule=cosine", "schedule.warmup_steps=10", "model.norm=batch", "model.activation=rrelu",
    "regularizer=[dropout,augment,early_stopping]", "regularizer.augment.shift=1",
    "regularizer.early_stopping.patience=3", "regularizer.early_stopping.metric=loss"]


def test_every_stateful_option_resumes_bit_for_bit(npz_overrides, tmp_path, monkeypatch):
  """SIGTERM after early stopping has seen its best point; the resumed run stops where the uninterrupted one
  stops, restores the same best parameters and logs the same points."""
  overrides = npz_overrides + SMALL + EVERY_STATEFUL_OPTION + ["steps=120", "optimizer.lr=0.03"]
  reference = train_in_process(overrides, tmp_path / "reference")
  assert reference["steps_run"] < 120  # early stopping stopped it
  interrupt_at = reference["early_stopping/restored_step"] + 10
  assert interrupt_at < reference["steps_run"]  # the interruption falls between the best point and the stop

  run = tmp_path / "run"
  stop_when_logged(monkeypatch, interrupt_at, lambda: signal.raise_signal(signal.SIGTERM))
  assert train_in_process(overrides, run)["status"] == "interrupted"
  monkeypatch.undo()
  resumed = train_in_process(overrides + ["resume=true"], run)
  for key in ("status", "steps_run", "early_stopping/restored_step", "best_val/step", "best_val/loss", "test/loss",
              "test/accuracy", "gap/accuracy"):
    assert resumed[key] == reference[key], key
  assert_same_run(run, tmp_path / "reference")


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(npz_overrides, tmp_path, monkeypatch, caplog):
  """One flipped bit in the latest checkpoint's data: its checksum fails, a warning names it, and the run resumes
  from the checkpoint before, ending as the uninterrupted run does."""
  overrides = npz_overrides + SMALL + OPTIMIZERS["adam"]
  train_in_process(overrides, tmp_path / "reference")
  run = tmp_path / "run"
  stop_when_logged(monkeypatch, 50, lambda: signal.raise_signal(signal.SIGTERM))
  train_in_process(overrides, run)
  monkeypatch.undo()
  assert checkpoint_steps(run) == [20, 40, 50]
  data = max((p for p in (run / "checkpoints" / "50" / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)  # the largest file: the arrays' bytes
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x10
  data.write_bytes(bytes(raw))
  with caplog.at_level("WARNING"):
    resumed = train_in_process(overrides + ["resume=true"], run)
  assert "the checkpoint at step 50" in caplog.text and "corrupt" in caplog.text
  assert resumed["resumed_from_step"] == 40 and resumed["status"] == "completed"
  assert_same_run(run, tmp_path / "reference")


def test_a_run_killed_before_its_first_checkpoint_logs_each_point_once(npz_overrides, tmp_path, monkeypatch):
  """checkpoint.every=null and a crash before the end: resume=true starts over, and the step-0 points of the first
  attempt (diagnostics, the config) are not kept beside the new ones."""
  overrides = npz_overrides + SMALL + OPTIMIZERS["adam"] + ["checkpoint.every=null"]
  train_in_process(overrides, tmp_path / "reference")
  run = tmp_path / "run"

  def crash():
    raise RuntimeError("killed")

  stop_when_logged(monkeypatch, 30, crash)
  with pytest.raises(RuntimeError):
    train_in_process(overrides, run)
  monkeypatch.undo()
  assert any(p["step"] == 0 for p in read_jsonl(run)) and checkpoint_steps(run) == []
  resumed = train_in_process(overrides + ["resume=true"], run)
  assert resumed["resumed_from_step"] is None
  assert_same_run(run, tmp_path / "reference")


def test_crash_after_checkpoint_resumes_from_it_and_drops_later_logs(npz_overrides, tmp_path, monkeypatch):
  """A run killed at step 50 has logged 41..50 past its checkpoint at 40; the resumed run logs them once."""
  overrides = npz_overrides + SMALL + OPTIMIZERS["adam"]
  train_in_process(overrides, tmp_path / "reference")

  run = tmp_path / "run"

  def crash():
    raise RuntimeError("killed")

  stop_when_logged(monkeypatch, 50, crash)
  with pytest.raises(RuntimeError):
    train_in_process(overrides, run)
  monkeypatch.undo()
  assert max(p["step"] for p in read_jsonl(run)) == 50
  assert checkpoint_steps(run)[-1] == 40

  resumed = train_in_process(overrides + ["resume=true"], run)
  assert resumed["resumed_from_step"] == 40
  assert_same_run(run, tmp_path / "reference")


def test_resume_with_a_different_config_is_refused(npz_overrides, tmp_path, monkeypatch):
  overrides = npz_overrides + SMALL + OPTIMIZERS["adam"]
  run = tmp_path / "run"
  stop_when_logged(monkeypatch, 20, lambda: signal.raise_signal(signal.SIGINT))
  train_in_process(overrides, run)
  monkeypatch.undo()
  before = (run / writers.METRICS_FILE).read_text()
  with pytest.raises(checkpoint.ResumeError, match=r"optimizer\.lr=0\.02 \(the checkpoint has 0\.01\)"):
    train_in_process(overrides + ["optimizer.lr=0.02", "resume=true"], run)
  with pytest.raises(checkpoint.ResumeError, match=r"model\.widths=\[8\] \(the checkpoint has \[16\]\)"):
    train_in_process(overrides + ["model.widths=[8]", "resume=true"], run)  # other shapes: refused, not crashed
  assert (run / writers.METRICS_FILE).read_text() == before


def test_resume_without_checkpoint_starts_over(npz_overrides, tmp_path):
  """resume=true in a fresh directory (or one whose run died before its first checkpoint) runs from step 0."""
  overrides = npz_overrides + SMALL + OPTIMIZERS["adam"]
  reference = train_in_process(overrides, tmp_path / "reference")
  run = tmp_path / "run"
  run.mkdir()
  (run / writers.METRICS_FILE).write_text('{"step": 7, "train/loss": 9.0}\n{"step": 1')  # a kill mid-line
  resumed = train_in_process(overrides + ["resume=true"], run)
  assert resumed["resumed_from_step"] is None and resumed["test/loss"] == reference["test/loss"]
  assert read_jsonl(run) == read_jsonl(tmp_path / "reference")


# --- the real command ----------------------------------------------------------------------------------------
def test_sigterm_to_trainlab_train_then_resume(write_npz, tmp_path):
  """A real `python -m trainlab train` sent SIGTERM mid-run: `interrupted`, non-zero exit; resume=true finishes
  it with the same final metrics as an uninterrupted run; a fresh run in its directory is refused."""
  args = ["train", "data=npz", f"data.path={write_npz()}", "steps=3000", "eval_every=100", "log_every=50",
          "batch_size=16", "model.widths=[16]", "checkpoint.every=1000"]
  run = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args, f"hydra.run.dir={run}"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:  # the first evaluation's line: training is under way
    if "step 100/3000" in line:
      proc.send_signal(signal.SIGTERM)
      break
  output = proc.stdout.read()
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
  summary = writers.read_summary(run)
  assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
  assert 100 <= summary["steps_run"] < 3000
  assert checkpoint_steps(run)[-1] == summary["steps_run"]
  assert read_jsonl(run)[-1]["step"] == summary["steps_run"]  # the logs were flushed up to the checkpoint
  assert read_tensorboard(run)[writers.tensorboard_tag("val/loss")][-1][0] == summary["steps_run"]

  run_cli(*args, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
  run_cli(*args, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
  resumed, reference = writers.read_summary(run), writers.read_summary(tmp_path / "reference")
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] == summary["steps_run"]
  for key in ("test/accuracy", "test/loss", "best_val/accuracy", "best_val/step", "steps_run"):
    assert resumed[key] == reference[key], key
  assert resumed["overrides"] == reference["overrides"]  # resume=true is not part of what the run is
  assert read_jsonl(run) == read_jsonl(tmp_path / "reference")
  assert read_tensorboard(run) == read_tensorboard(tmp_path / "reference")

  refused = run_cli(*args, f"hydra.run.dir={run}", cwd=tmp_path, check=False)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      f"error: {run} already holds a run (completed); add resume=true to continue it, or choose another "
      "directory (hydra.run.dir=...)"]
  assert writers.read_summary(run) == resumed


def test_a_resumed_sweep_must_be_the_same_sweep(tmp_path):
  """The same sweep directory resumed with other values is refused before any job runs, naming what differs, and
  its results stay as they were; a finished single run resumed with other values is refused too."""
  sweep_dir, fast = tmp_path / "sweep", ["steps=20", "eval_every=10", "model.widths=[8]", "diagnostics=off"]
  run_cli("train", "-m", *fast, "optimizer.lr=0.001,0.003", "seed=0", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
  results = (sweep_dir / "results.csv").read_text()
  other = run_cli("train", "-m", *fast, "optimizer.lr=0.01,0.03", "seed=0", f"hydra.sweep.dir={sweep_dir}",
                  "resume=true", cwd=tmp_path, check=False)
  assert other.returncode == 2
  assert other.stderr.strip().splitlines()[-1] == (
      f"error: the sweep directory {sweep_dir} holds another sweep: optimizer.lr=0.01,0.03 (the sweep has "
      "0.001,0.003); resume it with its own overrides, or choose another directory (hydra.sweep.dir=...)")
  assert (sweep_dir / "results.csv").read_text() == results
  same = run_cli("train", "-m", *fast, "optimizer.lr=0.001,0.003", "seed=0", f"hydra.sweep.dir={sweep_dir}",
                 "resume=true", cwd=tmp_path)
  assert same.returncode == 0 and (sweep_dir / "results.csv").read_text() == results

  run = tmp_path / "run"
  run_cli("train", *fast, "optimizer.lr=0.001", f"hydra.run.dir={run}", cwd=tmp_path)
  summary = writers.read_summary(run)
  refused = run_cli("train", *fast, "optimizer.lr=1e-3", "seed=1", f"hydra.run.dir={run}", "resume=true",
                    cwd=tmp_path, check=False)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      f"error: {run} holds a run of other values: seed=1 (the run has (unset)); resume it with its own overrides, "
      "or choose another directory"]
  assert writers.read_summary(run) == summary
  assert run_cli("train", *fast, "optimizer.lr=1e-3", f"hydra.run.dir={run}", "resume=true",
                 cwd=tmp_path).returncode == 0  # the same value written otherwise is the same run


def test_a_seed_beyond_int32_is_one_line(tmp_path):
  out = run_cli("train", "seed=99999999999", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == ["error: seed=99999999999 is not allowed: it must be in [0, 2147483647]"]


def test_a_checkpoint_from_before_a_new_config_key_resumes(tmp_path, caplog):
  """A key that a newer trainlab added (absent from the checkpoint's config) is not a difference; a changed or
  removed key still is."""
  saved = {"model": {"widths": [16]}, "optimizer": {"lr": 0.01}}
  current = {"model": {"widths": [16], "conv_impl": "auto"}, "optimizer": {"lr": 0.01}}
  with caplog.at_level("WARNING"):
    checkpoint.check_same_config(saved, current, tmp_path)
  assert "model.conv_impl" in caplog.text
  with pytest.raises(checkpoint.ResumeError, match=r"optimizer\.lr=0\.02 \(the checkpoint has 0\.01\)"):
    checkpoint.check_same_config(saved, {**current, "optimizer": {"lr": 0.02}}, tmp_path)
  with pytest.raises(checkpoint.ResumeError, match=r"model\.widths=None \(the checkpoint has \[16\]\)"):
    checkpoint.check_same_config(saved, {"model": {}, "optimizer": {"lr": 0.01}}, tmp_path)
