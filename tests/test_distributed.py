"""Multi-host runs (`distributed.enabled=true`): two processes on this machine, joined by a local coordinator,
train the run of one process on the same global batch; only process 0 writes the run's records.

Each process is a `trainlab train` with 2 simulated CPU devices (4 in all), its collectives over gloo; every
wait on them has a timeout, so that a test that goes wrong fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, run_cli, train_in_process
from trainlab.rundir import checkpoint, writers

# The MLP with batch norm and dropout (its statistics and masks are those of the global batch) on spirals.
RUN = ["data=spirals", "data.n_train=512", "model.widths=[32,32]", "model.norm=batch", "regularizer=[dropout]",
       "optimizer=momentum", "optimizer.lr=0.05", "batch_size=64", "steps=40", "eval_every=20", "log_every=10",
       "diagnostics=off", "checkpoint.every=20"]
TIMEOUT_S = 300  # a process still running after this has hung: it is killed and the test fails


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(overrides_of: list[list[str]], cwds: list) -> list[subprocess.CompletedProcess]:
  """`trainlab train` in one process per list of overrides, all at once, each with 2 CPU devices; kills them
  all when one has not ended within TIMEOUT_S."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
  env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-m", "trainlab", "train", *overrides], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
           for overrides, cwd in zip(overrides_of, cwds)]
  done = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=TIMEOUT_S)
      done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  return done


def final_trees(workdir, like=None) -> tuple[list[np.ndarray], dict]:
  """(the parameters and batch statistics of the run's last checkpoint, the whole restored state). `like`: a
  state to restore into, on this process's device (a run saved across processes names devices it lacks)."""
  saved = checkpoint.Checkpointer(workdir, read_only=True)
  target = like and jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.
                                                                SingleDeviceSharding(jax.devices()[0])), like)
  state = saved.restore(target, saved.latest_step())
  saved.close()
  return [np.asarray(a) for a in jax.tree.leaves((state["params"], state["model_state"]))], state


@pytest.mark.slow  # two processes that compile on 2 cores: about a minute
def test_two_processes_end_with_the_parameters_of_one_and_only_process_0_writes(tmp_path):
  port = free_port()
  joined = RUN + ["devices=all", "distributed.enabled=true", f"distributed.coordinator=127.0.0.1:{port}",
                  "distributed.num_processes=2", "distributed.timeout_s=120"]
  workdir, follower_cwd = tmp_path / "two", tmp_path / "follower"
  follower_cwd.mkdir()
  # Process 1 is given no run directory: it takes process 0's, and leaves nothing where Hydra would have put its own.
  leader, follower = run_processes([joined + ["distributed.process_id=0", f"hydra.run.dir={workdir}"],
                                    joined + ["distributed.process_id=1"]], [tmp_path, follower_cwd])
  assert leader.returncode == 0, leader.stderr[-3000:]
  assert follower.returncode == 0, follower.stderr[-3000:]
  assert "process 0 of 2, 2 of 4 devices here" in leader.stdout
  assert "process 1 of 2, 2 of 4 devices here" in follower.stdout
  assert not any(follower_cwd.iterdir())

  one = train_in_process(RUN + ["devices=1"], tmp_path / "one")
  two = writers.read_summary(workdir)
  assert two["status"] == "completed" and two["steps_run"] == 40
  # The sums of the gradient's shares over 4 devices are added in another order than one device adds its batch.
  trees_one, state_one = final_trees(tmp_path / "one")
  for a, b in zip(trees_one, final_trees(workdir, like=state_one)[0], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(one["test/accuracy"], two["test/accuracy"], atol=1e-3)
  # One writer: the curves of one run, not two processes' copies of them.
  points_one, points_two = writers.read_metrics(tmp_path / "one"), writers.read_metrics(workdir)
  assert [sorted(p) for p in points_one] == [sorted(p) for p in points_two]
  for p, q in zip(points_one, points_two):
    np.testing.assert_allclose([v for _, v in sorted(p.items())], [v for _, v in sorted(q.items())], rtol=1e-4)
  log_text = (workdir / "train.log").read_text()
  assert "process 0 of 2" in log_text and "process 1 of 2" not in log_text
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [20, 40]

  # Resumed by two processes: process 0 finds the run finished and says so; neither trains it again.
  leader, follower = run_processes([joined + ["distributed.process_id=0", f"hydra.run.dir={workdir}", "resume=true"],
                                    joined + ["distributed.process_id=1", "resume=true"]], [tmp_path, follower_cwd])
  assert leader.returncode == 0 and follower.returncode == 0, leader.stderr[-2000:] + follower.stderr[-2000:]
  assert "has already completed; nothing to do" in leader.stdout
  assert writers.read_metrics(workdir) == points_two


def test_a_distributed_run_without_a_coordinator_is_refused_in_one_line(tmp_path):
  # Neither distributed.* nor a cluster's environment names the coordinator: JAX's reason, in one line.
  env_keys = [k for k in os.environ if k.startswith("SLURM_")]
  assert not env_keys, "this test needs an environment outside SLURM"
  proc = run_cli("train", "steps=5", "distributed.enabled=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                 check=False)
  assert proc.returncode == 2
  error = proc.stderr.strip().splitlines()
  assert len(error) == 1 and error[0].startswith("error: distributed.enabled=true: jax.distributed.initialize "
                                                 "failed: coordinator_address should be defined")
  assert not (tmp_path / "run").exists()


def test_a_distributed_run_is_refused_in_a_sweep(tmp_path):
  proc = run_cli("train", "-m", "steps=5", "seed=0,1", "distributed.enabled=true",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, check=False)
  assert "distributed.enabled=true is not allowed in a sweep (-m)" in proc.stdout + proc.stderr
  assert json.dumps(proc.returncode) in ("0", "1")


def test_an_unreachable_coordinator_is_one_line_and_exit_2_within_seconds(tmp_path):
  """Process 1 with nothing listening at distributed.coordinator: the port check gives up after
  distributed.connect_timeout_s, naming the key, instead of JAX waiting distributed.timeout_s (300 s) to abort."""
  address = f"127.0.0.1:{free_port()}"
  started = time.monotonic()
  proc = run_cli("train", "steps=5", "distributed.enabled=true", f"distributed.coordinator={address}",
                 "distributed.num_processes=2", "distributed.process_id=1", "distributed.connect_timeout_s=2",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert time.monotonic() - started < 60  # the process's start (imports) and 2 s, not distributed.timeout_s
  error = proc.stderr.strip().splitlines()
  assert len(error) == 1 and error[0].startswith(f"error: distributed.coordinator={address}: nothing answered "
                                                 "there within distributed.connect_timeout_s=2 s"), proc.stderr
  assert not (tmp_path / "run").exists()


def test_a_process_still_waiting_to_join_after_timeout_s_is_ended_in_one_line(tmp_path):
  """Process 0 of 2 whose process 1 never starts: jax.distributed.initialize waits for it; the watchdog ends the
  process at distributed.timeout_s with one line and exit 2 (JAX's own timeout would abort it with a stack trace)."""
  started = time.monotonic()
  proc = run_cli("train", "steps=5", "distributed.enabled=true", f"distributed.coordinator=127.0.0.1:{free_port()}",
                 "distributed.num_processes=2", "distributed.process_id=0", "distributed.timeout_s=3",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert time.monotonic() - started < 60
  error = proc.stderr.strip().splitlines()
  assert len(error) == 1 and error[0].startswith("error: distributed.enabled=true: process 0 did not join the run "
                                                 "within distributed.timeout_s=3 s"), proc.stderr
  assert "distributed.coordinator=127.0.0.1:" in error[0]
  assert not (tmp_path / "run").exists()
