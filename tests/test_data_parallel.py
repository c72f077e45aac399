"""Synchronous data-parallel SGD (`devices=`): a run split over 8 devices is the run of one device on the same
global batch, resumes onto its mesh, runs hundreds of steps, and refuses what it cannot run in one line.

The test processes have one CPU device; the 8-device runs happen in a fresh process that asks XLA for 8 host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, read when JAX starts), running its runs there and
printing what it found as JSON.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import ROOT, compose_config, run_cli
from trainlab import config, train

# Small runs of the two model families the issue names: the MLP with batch norm (and dropout: its masks must be
# those of one device) on spirals, and the CNN on the 8x8 digits. Batches of 64: 8 examples per device.
MLP = ["data=spirals", "data.n_train=512", "model.widths=[32,32]", "model.norm=batch", "regularizer=[dropout]",
       "optimizer=momentum", "optimizer.lr=0.05"]
CNN = ["data=digits", "model=cnn", "model.features=[4,8]", "model.widths=[16]", "regularizer=[]", "optimizer=adam",
       "optimizer.lr=0.003"]
RUN = ["batch_size=64", "steps=40", "eval_every=20", "log_every=10", "diagnostics=off", "checkpoint.every=20"]

# Runs in the 8-device process: argv[1] is a JSON list of [name, overrides, what to do(, resume overrides)] jobs;
# prints a JSON {name: result}. "params" ends with the final checkpoint's trees, "resume" deletes the last
# checkpoint of a finished run and resumes it from the one before (with the resume overrides added), "refused"
# expects a ConfigError and returns its message.
EIGHT_DEVICE_JOBS = r"""
import json, pathlib, sys, tempfile
import jax, numpy as np
from conftest import compose_job_config as job_config  # tests/ is on the child's PYTHONPATH
from trainlab import config, sharding, train
from trainlab.rundir import checkpoint

root = pathlib.Path(tempfile.mkdtemp())

def run(overrides, workdir):
  return train.train_and_evaluate(job_config(overrides), workdir)

def collectives(overrides):
  # the collectives in the compiled chunk of the run's program (none on one device), and the state's layout
  run = train.setup(job_config(overrides))
  state = sharding.put_state(run.spec.devices, run.spec.shard_params, run.program.init(np.int32(0), run.values))
  split = jax.device_put(run.dataset[:2], sharding.replicated(run.spec.devices))
  hlo = run.program.train_chunk.lower(state, *split, np.int32(1)).compile().as_text()
  split_params = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))
  return {"all_reduces": hlo.count("all-reduce("), "all_gathers": hlo.count("all-gather("),
          "split_params": split_params}

def final_trees(workdir):
  saved = checkpoint.Checkpointer(workdir)
  state = saved.restore(None, saved.latest_step())
  saved.close()
  return {k: [np.asarray(a).tolist() for a in jax.tree.leaves(state[k])] for k in ("params", "model_state")}

results = {"device_count": jax.device_count()}
for name, overrides, what, *resume_overrides in json.loads(sys.argv[1]):
  workdir = root / name
  if what == "refused":
    try:
      run(overrides, workdir)
      results[name] = None
    except config.ConfigError as e:
      results[name] = str(e)
    continue
  summary = run(overrides, workdir)
  if what == "resume":
    checkpoint.clear_step(workdir, summary["steps"])
    summary = run(overrides + ["resume=true", *(resume_overrides[0] if resume_overrides else [])], workdir)
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  results[name] = {"summary": summary, "trees": final_trees(workdir), "metrics": metrics,
                   **collectives(overrides)}
print("RESULTS" + json.dumps(results))
"""


def eight_devices() -> dict:
  """The environment of a process with 8 simulated CPU devices."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  return {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def run_script_on_eight_devices(script: str, argument) -> dict:
  """Runs the script in a fresh process with 8 simulated CPU devices, its argument as JSON in argv[1]; returns the
  JSON it printed after RESULTS (which holds the process's device_count, checked here)."""
  proc = subprocess.run([sys.executable, "-c", script, json.dumps(argument)], env=eight_devices(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.split("RESULTS", 1)[1])
  assert results.pop("device_count") == 8
  return results


def run_on_eight_devices(jobs: list[tuple[str, list[str], str]]) -> dict:
  """Runs the jobs in a fresh process with 8 simulated CPU devices; returns their results by name."""
  return run_script_on_eight_devices(EIGHT_DEVICE_JOBS, jobs)


def assert_same_trees(a: dict, b: dict, rtol: float, atol: float) -> None:
  for part in ("params", "model_state"):
    assert len(a[part]) == len(b[part])
    for x, y in zip(a[part], b[part]):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=part)


@pytest.mark.parametrize("model", ["mlp_batch_norm", "cnn"])
def test_eight_devices_end_with_the_parameters_of_one_on_the_same_global_batch(model):
  # The MLP also runs the diagnostics between chunks, on the state replicated over the mesh, and resumes.
  if model == "mlp_batch_norm":
    overrides = MLP + ["diagnostics=default", "diagnostics.every=20"] + RUN
    resumed = [("eight_by_halves", overrides + ["devices=8"], "resume")]
  else:
    overrides, resumed = CNN + RUN, []
  results = run_on_eight_devices([("one", overrides + ["devices=1"], "params"),
                                  ("eight", overrides + ["devices=8"], "params"), *resumed])
  one, eight = results["one"], results["eight"]
  # The batch was split: the compiler summed the shares of the gradient (and of the batch-norm statistics).
  assert one["all_reduces"] == 0 and eight["all_reduces"] > 0 and eight["split_params"] == 0
  # The sums of the gradient's shares are added in another order than one device adds its batch: float rounding.
  assert_same_trees(one["trees"], eight["trees"], rtol=1e-4, atol=1e-5)
  # Batch-norm statistics of the global batch, and the same model: the same training and validation curves.
  assert [sorted(p) for p in one["metrics"]] == [sorted(p) for p in eight["metrics"]]
  for p, q in zip(one["metrics"], eight["metrics"]):
    np.testing.assert_allclose([v for _, v in sorted(p.items())], [v for _, v in sorted(q.items())], rtol=1e-4)
  np.testing.assert_allclose(one["summary"]["test/accuracy"], eight["summary"]["test/accuracy"], atol=1e-3)
  if resumed:  # restored onto the mesh at step 20 and run on: bit for bit the run that was not interrupted
    assert results["eight_by_halves"]["summary"]["resumed_from_step"] == 20
    assert_same_trees(eight["trees"], results["eight_by_halves"]["trees"], rtol=0, atol=0)


def test_a_sharded_state_and_a_run_moved_onto_more_devices_end_as_on_one():
  """parallel.shard_params=true splits parameters and optimizer state over the devices (the compiler gathers them
  where the step needs them whole); a run checkpointed on one device resumes on 8, its state restored onto them."""
  overrides = MLP + RUN
  results = run_on_eight_devices([("one", overrides + ["devices=1"], "params"),
                                  ("sharded", overrides + ["devices=8", "parallel.shard_params=true"], "params"),
                                  ("moved", overrides + ["devices=1"], "resume",
                                   ["devices=8", "parallel.shard_params=true"])])
  one, sharded, moved = results["one"], results["sharded"], results["moved"]
  assert one["split_params"] == 0 and sharded["split_params"] >= 8  # every kernel, and the biases of 32 units
  assert sharded["all_gathers"] > 0 and sharded["all_reduces"] > 0
  assert_same_trees(one["trees"], sharded["trees"], rtol=1e-4, atol=1e-5)
  assert moved["summary"]["resumed_from_step"] == 20
  assert_same_trees(one["trees"], moved["trees"], rtol=1e-4, atol=1e-5)


LONG = MLP + ["data.turns=0.5", "batch_size=64", "steps=240", "log_every=10", "diagnostics=off",
              "checkpoint.every=null", "devices=8"]


def check_long_runs(results: dict, chunks: dict[str, int]) -> None:
  for name, count in chunks.items():
    summary, metrics = results[name]["summary"], results[name]["metrics"]
    assert summary["status"] == "completed" and summary["steps_run"] == 240
    assert len([p for p in metrics if "val/loss" in p]) == count
    assert summary["test/accuracy"] > 0.9  # it learns (0.97): chance is 0.5
  # The chunk length is not part of what is computed.
  first, *others = chunks
  for name in others:
    assert_same_trees(results[first]["trees"], results[name]["trees"], rtol=1e-5, atol=1e-6)


def test_hundreds_of_steps_on_eight_devices_in_one_chunk_and_in_a_chunk_per_step():
  """XLA's CPU runtime must survive many collective steps: 240 steps in one chunk, and in 240 chunks of one step.
  Dispatched without waiting, a hundred programs with collectives abort it (docs/speed.md); the loop waits for
  each chunk's metrics before the next."""
  results = run_on_eight_devices([("one_chunk", LONG + ["eval_every=240"], "params"),
                                  ("chunk_per_step", LONG + ["eval_every=1"], "params")])
  check_long_runs(results, {"one_chunk": 1, "chunk_per_step": 240})


@pytest.mark.slow  # two sweeps in fresh processes: 14 s on an idle 2-core machine, 20-40 s on a busy one
def test_a_vectorized_sweep_on_eight_devices_equals_its_jobs_on_one(tmp_path):
  """hydra/launcher=vectorized: each member's batches split over the mesh, as in its own run."""
  args = ["train", "-m", *MLP, *RUN, "seed=0,1"]
  for launcher, devices in (("vectorized", 8), ("basic", 1)):
    proc = subprocess.run([sys.executable, "-m", "trainlab", *args, f"hydra/launcher={launcher}", f"devices={devices}",
                           f"hydra.sweep.dir={tmp_path / launcher}"], cwd=tmp_path, env=eight_devices(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {launcher: list(csv.DictReader((tmp_path / launcher / "results.csv").open())) for launcher in
          ("vectorized", "basic")}
  assert [r["status"] for r in rows["vectorized"]] == ["completed"] * 2
  for key in ("test/loss", "best_val/loss", "test/accuracy"):
    np.testing.assert_allclose([float(r[key]) for r in rows["vectorized"]], [float(r[key]) for r in rows["basic"]],
                               rtol=1e-4, err_msg=key)


def test_a_batch_the_devices_cannot_share_equally_is_refused_in_one_line():
  results = run_on_eight_devices([("uneven", MLP + RUN + ["devices=8", "batch_size=60"], "refused"),
                                  ("all", MLP + RUN + ["devices=all", "batch_size=60"], "refused"),
                                  ("too_many", MLP + RUN + ["devices=9"], "refused")])
  assert results["uneven"] == ("batch_size=60 is not allowed with devices=8: it must be a multiple of 8, so that "
                               "every device takes an equal share of each batch")
  assert results["all"].startswith("batch_size=60 is not allowed with devices=all: it must be a multiple of 8")
  assert results["too_many"] == ("devices=9 is not allowed: this machine has 8 cpu devices, so it must be at most 8 "
                                 "(or all)")


def job_config(overrides: list[str]):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


@pytest.mark.parametrize("devices, message", [
    ("2", "devices=2 is not allowed: this machine has 1 cpu device, so it must be at most 1 (or all)"),
    ("0", "devices=0 is not allowed: it must be a positive number of devices or all"),
    ("some", "devices=some is not allowed: it must be a positive number of devices or all"),
])
def test_devices_this_machine_lacks_are_refused(devices, message):
  with pytest.raises(config.ConfigError) as info:
    train.setup(job_config(MLP + RUN + [f"devices={devices}"]))
  assert str(info.value) == message


def test_the_command_refuses_too_many_devices_in_one_line(tmp_path):
  proc = run_cli("train", "devices=4", "steps=2", cwd=tmp_path, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
  assert proc.stderr.splitlines()[-1] == ("error: devices=4 is not allowed: this machine has 1 cpu device, so it "
                                          "must be at most 1 (or all)")


def test_one_device_is_the_default_and_its_program_carries_no_sharding():
  """devices=1 adds nothing to the program: the single-device loop as it was, bit for bit."""
  run = train.setup(job_config(MLP + RUN))
  assert run.spec.devices == 1
  state = run.program.init(np.int32(0), run.values)
  chunk = run.program.train_chunk.lower(state, *jax.device_put(run.dataset[:2]), np.int32(1)).as_text()
  assert "sharding_constraint" not in chunk and "all_reduce" not in chunk
  all_devices = train.setup(job_config(MLP + RUN + ["devices=all"]))
  assert all_devices.spec.devices == 1 and all_devices.program is run.program
