"""hydra.launcher.devices: a vectorized group's members split over a mesh axis `members`, each device training its
share of them whole. A sweep on 4 of 8 simulated devices ends, job for job, where the same sweep on one device ends;
the group compiles once, its chunk holds no collectives, and bad values are refused in one line.

The test process has one CPU device; the sweeps on several devices run in a fresh process with 8 simulated ones
(tests/test_data_parallel.py's `eight_devices`), which runs them through `trainlab train -m` in-process and prints
what it found as JSON.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from hydra_plugins.trainlab_launcher.vectorized_launcher import VectorizedLauncher
from test_data_parallel import assert_same_trees, run_script_on_eight_devices
from trainlab.config import ConfigError

# 3 learning rates (1e30 diverges at once: a member masked on its device) x 2 seeds = 6 jobs, one group. On 4
# devices the group is padded to 8 members: two placeholders, which must leave no trace.
SWEEP = ["hydra/launcher=vectorized", "optimizer.lr=0.003,0.05,1e30", "seed=0,1", "steps=40", "eval_every=20",
         "log_every=10", "model.widths=[16]", "checkpoint.every=null", "diagnostics=off"]

# Runs in the 8-device process: argv[1] is a JSON {name: overrides} of sweeps; prints a JSON {name: result}, each
# with its results.csv rows, each job's summary and final parameters, and, for a sweep of one group split over
# devices, how often its chunk compiled and the collectives and layout of that compiled chunk.
MESH_SWEEPS = r"""
import csv, json, pathlib, sys, tempfile
import jax, numpy as np
from conftest import compose_job_config as job_config  # tests/ is on the child's PYTHONPATH
from trainlab import main, sharding, train
from trainlab.rundir import checkpoint, writers
from hydra_plugins.trainlab_launcher import _vectorized_loop as vectorized

root = pathlib.Path(tempfile.mkdtemp())
COLLECTIVES = ("all-reduce(", "all-gather(", "collective-permute(", "all-to-all(", "reduce-scatter(")

def final_params(workdir):
  saved = checkpoint.Checkpointer(workdir)
  state = saved.restore(None, saved.latest_step())
  saved.close()
  return {"params": [np.asarray(a).tolist() for a in jax.tree.leaves(state["params"])], "model_state": []}

def chunk_on_mesh(overrides, devices):
  # the group's program as the sweep compiled it (cached): its compilations, and its chunk compiled for 8 members
  run = train.setup(job_config(overrides))
  program = vectorized.compile_vectorized(run.spec, devices)
  compiled = program.train_chunk.jitted._cache_size()
  split = sharding.split_members(devices)
  members = jax.device_put((np.arange(8, dtype=np.int32), jax.tree.map(lambda *v: np.stack(v), *[run.values] * 8)),
                           split)
  states = program.init(*members)
  data = jax.device_put(run.dataset[:2], sharding.beside_members(devices))
  hlo = program.train_chunk.lower(states, *data, jax.device_put(np.ones(8, np.int32), split)).compile().as_text()
  return {"chunk_compilations": compiled, "collectives": sum(hlo.count(c) for c in COLLECTIVES),
          "state_devices": sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(states)}),
          "state_split": all(leaf.sharding.spec[0] == sharding.MEMBERS for leaf in jax.tree.leaves(states)),
          "per_device_members": sorted({s.data.shape[0] for s in jax.tree.leaves(states)[0].addressable_shards})}

results = {"device_count": jax.device_count()}
for name, overrides in json.loads(sys.argv[1]).items():
  sweep_dir, tick = root / name, __import__("time").perf_counter()
  try:
    main.main(["train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"])
  except SystemExit:
    pass
  print(name, "sweep", round(__import__("time").perf_counter() - tick, 1), "s", file=sys.stderr)
  rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
  jobs = {}
  for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
    summary = writers.read_summary(job)
    jobs[job.name] = {"summary": summary,
                      "trees": final_params(job) if summary["status"] == "completed" else None}
  results[name] = {"rows": rows, "jobs": jobs, "dirs": sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())}
  launcher_devices = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.launcher.devices=")]
  if launcher_devices and launcher_devices[0] != "1" and "devices=2" not in overrides:
    devices = int(launcher_devices[0]) if launcher_devices[0].isdigit() else launcher_devices[0]
    results[name].update(chunk_on_mesh([o for o in overrides if "," not in o and not o.startswith("hydra")],
                                       sharding.resolve_member_devices(devices)))
print("RESULTS" + json.dumps(results))
"""


def run_sweeps_on_eight_devices(sweeps: dict[str, list[str]]) -> dict:
  return run_script_on_eight_devices(MESH_SWEEPS, sweeps)


def assert_same_jobs(split: dict, one: dict) -> None:
  """Every job of the sweep on several devices ends as on one: status, steps, metrics and parameters."""
  assert split["jobs"].keys() == one["jobs"].keys()
  for num, job in split["jobs"].items():
    ours, theirs = job["summary"], one["jobs"][num]["summary"]
    for field in ("status", "steps_run", "diverged_at_step", "best_val/step", "early_stopping/restored_step",
                  "vectorized_members"):
      assert ours.get(field) == theirs.get(field), (num, field)
    for field in ("test/loss", "test/accuracy", "best_val/loss"):
      assert (ours.get(field) is None) == (theirs.get(field) is None), (num, field)
      if theirs.get(field) is not None:
        np.testing.assert_allclose(ours[field], theirs[field], rtol=1e-4, atol=1e-5, err_msg=f"{num} {field}")
    if ours["status"] == "completed":
      assert_same_trees(job["trees"], one["jobs"][num]["trees"], rtol=1e-4, atol=1e-5)


def test_a_sweep_split_over_four_devices_ends_as_on_one():
  """6 jobs on 4 devices: 8 slots, 2 of them placeholders. One compilation, no collectives, 2 members a device."""
  results = run_sweeps_on_eight_devices({"four": SWEEP + ["hydra.launcher.devices=4"],
                                         "one": SWEEP + ["hydra.launcher.devices=1"],
                                         "both": SWEEP[:1] + ["seed=0,1", "devices=2", "hydra.launcher.devices=4"]})
  four, one, both = results["four"], results["one"], results["both"]
  assert_same_jobs(four, one)
  assert sorted(four["jobs"]) == [str(i) for i in range(6)] == four["dirs"]  # no directory for a placeholder
  assert sorted(int(r["job"]) for r in four["rows"]) == list(range(6))  # results.csv: a row per job, no more
  assert sorted(r["status"] for r in four["rows"]) == ["completed"] * 4 + ["diverged"] * 2
  assert {j["summary"]["vectorized_devices"] for j in four["jobs"].values()} == {4}
  assert {j["summary"]["vectorized_devices"] for j in one["jobs"].values()} == {1}
  assert four["chunk_compilations"] == 1  # every chunk of the group, the shorter last one too: one program
  assert four["collectives"] == 0  # members never talk to each other
  assert four["state_devices"] == [4] and four["state_split"] and four["per_device_members"] == [2]
  # A job's own data parallelism and the launcher's devices: refused, job by job, in one line.
  assert [j["summary"]["status"] for j in both["jobs"].values()] == ["failed"] * 2
  assert {j["summary"]["error"] for j in both["jobs"].values()} == {
      "devices=2 is not allowed with hydra.launcher.devices=4: a job's batches split over devices (data parallel) "
      "and a group's members split over them cannot be combined; set one of them to 1"}


@pytest.mark.slow  # two sweeps with diagnostics and checkpoints in a fresh process: about 40 s on 2 idle cores
def test_all_devices_with_early_stopping_diagnostics_checkpoints_and_a_capped_group():
  """hydra.launcher.devices=all (8) and max_members=5: a group of 5 padded to 8 (3 placeholders) and a job alone.
  Early stopping stops members at different evaluations, diagnostics and checkpoints take each member's state."""
  sweep = SWEEP[:3] + ["steps=60", "eval_every=10", "log_every=5", "model.widths=[16]",
                       "regularizer=[early_stopping]", "regularizer.early_stopping.patience=1", "checkpoint.every=20",
                       "diagnostics=default", "diagnostics.every=20", "diagnostics.histogram_every=0",
                       "hydra.launcher.max_members=5"]
  results = run_sweeps_on_eight_devices({"all": sweep + ["hydra.launcher.devices=all"],
                                         "one": sweep + ["hydra.launcher.devices=1"]})
  split, one = results["all"], results["one"]
  assert_same_jobs(split, one)
  assert sorted(split["jobs"]) == [str(i) for i in range(6)] == split["dirs"]
  assert sorted(int(r["job"]) for r in split["rows"]) == list(range(6))
  grouped = [j["summary"] for j in split["jobs"].values() if "vectorized_members" in j["summary"]]
  assert len(grouped) == 5 and {s["vectorized_devices"] for s in grouped} == {8}
  assert len({s["steps_run"] for s in grouped if s["status"] == "completed"}) > 1  # stopped at different steps
  assert split["chunk_compilations"] == 1 and split["collectives"] == 0
  assert split["state_devices"] == [8] and split["per_device_members"] == [1]


@pytest.mark.parametrize("devices, message", [
    (0, "hydra.launcher.devices=0 is not allowed: it must be a positive number of devices or all"),
    ("some", "hydra.launcher.devices=some is not allowed: it must be a positive number of devices or all"),
    (1.5, "hydra.launcher.devices=1.5 is not allowed: it must be a positive number of devices or all"),
    (2, "hydra.launcher.devices=2 is not allowed: this machine has 1 cpu device, so it must be at most 1 (or all)"),
])
def test_bad_launcher_devices_are_refused(devices, message):
  with pytest.raises(ConfigError) as info:
    VectorizedLauncher(devices=devices)
  assert str(info.value) == message
  assert VectorizedLauncher(devices="all").devices == 1 and VectorizedLauncher().devices == 1


def test_the_command_refuses_them_in_one_line_before_the_sweep_starts(tmp_path):
  proc = run_cli("train", "-m", *SWEEP, "hydra.launcher.devices=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 cwd=tmp_path, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines() == ["error: hydra.launcher.devices=2 is not allowed: this machine has 1 "
                                              "cpu device, so it must be at most 1 (or all)"]
  assert not (tmp_path / "sweep").exists()  # nothing written
