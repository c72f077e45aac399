"""Speed of trainlab, measured side by side in one process and one run, reported as ratios.

Workloads:
  mlp    MLP 784-512-512-10, batch 128, 60,000 examples, Adam: a bare `lax.scan` epoch (the reference)
         against trainlab's own loop with default logging; both against the measured matmul peak.
  sweep  MNIST-1D, 4 learning rates x 4 seeds of small runs (MLP 64-64-10, 20 epochs, 560 steps): one process
         compiling once (trainlab's default), the same with every job recompiling, one fresh process per job,
         and the `trainlab train -m` command itself (one process: start-up, Hydra composing each job, the
         results table and the report included).
  diagnostics  the default run (`trainlab train`) with diagnostics at their default intervals against
         diagnostics=off, alternating: compiling from scratch (cold), with the programs in JAX's persistent
         cache (warm: a later run in a fresh process) and in memory (sweep: a later job).
  vectorized  the same sweep as one vmapped program (hydra/launcher=vectorized) against the jobs one after
         another in one process; each path compiles once, with fresh in-memory and no on-disk caches.
  cnn    conv32-pool-conv64-pool-128-10 on synthetic 28x28 images, batch 128, Adam: trainlab's loop with the
         device's convolution lowering (model.conv_impl=auto: im2col on CPU) against the same loop with XLA's
         convolution and against a jitted single step fed by a Python loop; PyTorch eager when torch is installed.
  resnet the default resnet on synthetic 32x32x3 images, batch 128, Adam, the same comparisons (PyTorch: the
         same net, with BatchNorm2d; its stride-2 convolutions pad 1 on each side where SAME pads 0 and 1).
  data_parallel  the MLP 784-512-512-10 (batch 128 and 1024, Adam) with `devices=8` (and 2) against `devices=1`
         on the same global batch, in one process: synchronous data-parallel SGD. Where this process sees a single CPU
         device, it runs in a child process with 8 simulated ones (XLA_FLAGS=--xla_force_host_platform_device_count=8)
         that share this machine's cores, so on CPU it measures the overhead of splitting a batch (the partitioned
         program and its collectives), not a speed-up; on a machine with 8 devices it measures them.
  vectorized_mesh  a vectorized group of 32 small jobs (MNIST-1D, MLP 32-10, 500 steps) with its members split over 8
         devices (hydra.launcher.devices=8) against the same group on one device, in interleaved rounds in one
         process. As for data_parallel, where this process sees one CPU device it runs in a child process with 8
         simulated ones sharing this machine's cores: on CPU it measures the overhead of splitting the members (8
         programs' shares, dispatched and waited for), not a speed-up.
  layers each convolution shape of the default resnet alone, batch 128: forward, input and kernel gradients
         inside a `lax.scan` with the device's lowering, against PyTorch eager's when torch is installed (the
         stem without an input gradient, as in the net); where a conv net's step goes, layer by layer.

The per-step and per-run times (mlp, diagnostics, cnn, resnet, layers) are measured several times, the paths
interleaved, and reported as the best (fastest) of their repeats, with the median beside the headline ratios
(`..._median`): on a shared virtual machine the noise (other guests, the hypervisor's steal time) only ever
adds time, so the fastest repeat is the closest to what the code costs, and every side of a ratio gets the
same estimate. The sweeps, tens of seconds each, run once.

Usage:  python scripts/bench.py            (the full sizes; several minutes on 2 cores)
        python scripts/bench.py --tiny     (a smoke run of every path, seconds)
Writes the table as JSON under outputs/bench/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from trainlab import config, train
from trainlab.fast import conv  # noqa: E402


def matmul_peak_gflops(n: int, repeats: int) -> float:
  """Float32 matmul throughput of this device: the ceiling for dense layers."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def mlp_flops_per_step(widths: list[int], batch: int) -> float:
  """Forward 2·B·Σ(m·n), backward twice that."""
  return 3 * 2 * batch * sum(m * n for m, n in zip(widths[:-1], widths[1:]))


def bare_scan_epoch(x, y, widths, batch) -> Callable[[int], float]:
  """The reference: the same MLP and Adam as one lax.scan per epoch, no metrics, no logging. Compiled here;
  returns a function that runs epoch e and returns its seconds (from the first execution on, as trainlab's
  run time counts them)."""
  import flax.linen as nn

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      for w in widths[1:-1]:
        x = nn.relu(nn.Dense(w)(x))
      return nn.Dense(widths[-1])(x)

  model, tx = MLP(), optax.adam(1e-3)
  params = model.init(jax.random.PRNGKey(0), x[:1])
  steps = len(y) // batch

  @jax.jit
  def epoch(params, opt_state, key):
    perm = jax.random.permutation(key, len(y))[: steps * batch].reshape(steps, batch)

    def step(carry, idx):
      params, opt_state = carry
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[idx]), y[idx]).mean()
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, opt_state), perm)[0]

  state = (params, tx.init(params))
  compiled = epoch.lower(*state, jax.random.PRNGKey(0)).compile()

  def run_epoch(e: int) -> float:
    nonlocal state
    start = time.perf_counter()
    state = jax.block_until_ready(compiled(*state, jax.random.PRNGKey(e)))
    return time.perf_counter() - start

  return run_epoch


def compose_run(overrides: list[str]):
  with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
    # The workloads train without the default dropout, as every bench run before it did.
    cfg = compose(config_name="train", overrides=["regularizer=[]", *overrides])
  with open_dict(cfg):
    cfg.pop("hydra", None)
  return cfg


def trainlab_epoch_seconds(npz_path, widths, batch, epochs, workdir) -> float:
  hidden = ",".join(str(w) for w in widths[1:-1])
  cfg = compose_run([f"data=npz", f"data.path={npz_path}", f"model.widths=[{hidden}]",
                     f"batch_size={batch}", f"epochs={epochs}", "optimizer=adam", "init=glorot"])
  n_train = int(np.load(npz_path)["y_train"].shape[0])
  steps_per_epoch = n_train // batch
  with open_dict(cfg):
    cfg.eval_every = steps_per_epoch  # one chunk per epoch, as the reference
  summary = train.train_and_evaluate(cfg, workdir)
  return steps_per_epoch / summary["steps_per_second"]


def bench_mlp(tiny: bool, tmp: pathlib.Path) -> dict:
  n, widths, batch = (1024, [784, 32, 32, 10], 128) if tiny else (60000, [784, 512, 512, 10], 128)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 784)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  path = tmp / "mlp.npz"
  np.savez(path, x_train=x, y_train=y, x_test=x[:1000], y_test=y[:1000], x_val=x[:1000], y_val=y[:1000])
  # Interleaved rounds of one epoch each: the bare scan's epoch, then a one-epoch trainlab run (one chunk, its
  # start, evaluation and logging around it). This shared machine drifts by more than the differences measured,
  # in stretches of seconds to minutes, so many short samples find its quiet stretches for both sides where a
  # few 3-epoch averages (5 rounds, before) mostly did not: the same two programs measured 0.94x in-process
  # (12 interleaved rounds) where those averages gave 0.83-0.87x.
  bare_epoch = bare_scan_epoch(jnp.asarray(x), jnp.asarray(y), widths, batch)
  peaks, bares, ours = [], [], []
  for r in range(1 if tiny else 12):
    peaks.append(matmul_peak_gflops(512 if tiny else 2048, 3 if tiny else 10))
    bares.append(bare_epoch(r))
    ours.append(trainlab_epoch_seconds(path, widths, batch, 1, tmp / f"mlp_run{r}"))
  peak, bare, ours_best = max(peaks), _best(bares), _best(ours)
  flops_per_epoch = mlp_flops_per_step(widths, batch) * (n // batch)
  return {
      "matmul_peak_gflops": peak,
      "bare_scan_epoch_s": bare,
      "trainlab_epoch_s": ours_best,
      "trainlab_vs_bare": bare / ours_best,
      "trainlab_vs_bare_median": _median(bares) / _median(ours),
      "trainlab_vs_bare_paired_median": float(np.median(np.array(bares) / np.array(ours))),
      "bare_pct_of_peak": 100 * flops_per_epoch / bare / 1e9 / peak,
      "trainlab_pct_of_peak": 100 * flops_per_epoch / ours_best / 1e9 / peak,
      "trainlab_samples_per_s": (n // batch) * batch / ours_best,
      "bare_scan_epochs_s": bares,  # every round, in order: how the machine drifted through them
      "trainlab_epochs_s": ours,
  }


def bench_sweep(tiny: bool, tmp: pathlib.Path) -> dict:
  lrs, seeds = ([1e-3, 3e-3], [0]) if tiny else ([3e-4, 1e-3, 3e-3, 1e-2], [0, 1, 2, 3])
  # Small runs, the scale of the speed issue's own sweep (an MLP 64-64-10, 20 epochs): start-up and compilation
  # are what such a sweep waits for.
  base = ["regularizer=[]", *(["steps=20", "eval_every=10"] if tiny else ["model.widths=[64,64]", "epochs=20"])]
  jobs = [base + [f"optimizer.lr={lr}", f"seed={s}"] for lr in lrs for s in seeds]

  def in_process(recompile: bool, tag: str) -> float:
    start = time.perf_counter()
    for i, overrides in enumerate(jobs):
      if recompile:  # what a loop that bakes hyperparameters into the program pays for every job
        train.compile_program.cache_clear()
        jax.clear_caches()
        set_persistent_cache(False)
      train.train_and_evaluate(compose_run(overrides), tmp / tag / str(i))
    set_persistent_cache(True)
    return time.perf_counter() - start

  env = {**os.environ, "PYTHONPATH": str(ROOT)}

  def fresh_processes() -> float:
    start = time.perf_counter()
    for i, overrides in enumerate(jobs):
      subprocess.run([sys.executable, "-m", "trainlab", "train", *overrides,
                      f"hydra.run.dir={tmp / 'fresh' / str(i)}"], check=True, env=env, capture_output=True)
    return time.perf_counter() - start

  def multirun() -> float:
    """`trainlab train -m` as a user types it: one process, Hydra composing each job, results.csv and the
    report at the end."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainlab", "train", "-m", *base, f"optimizer.lr={','.join(map(str, lrs))}",
                    f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={tmp / 'multirun'}"], check=True, env=env,
                   capture_output=True)
    return time.perf_counter() - start

  train.load_data(compose_run(jobs[0]).data)  # generate and cache MNIST-1D before any clock starts
  train.compile_program.cache_clear()
  jax.clear_caches()
  once = in_process(False, "once")
  recompile = in_process(True, "recompile")
  fresh = fresh_processes()
  command = multirun()
  return {
      "jobs": len(jobs),
      "one_compilation_s": once,
      "recompile_every_job_s": recompile,
      "fresh_processes_s": fresh,
      "multirun_command_s": command,
      "speedup_vs_recompile": recompile / once,
      "speedup_vs_fresh_processes": fresh / once,
      "multirun_speedup_vs_fresh_processes": fresh / command,
  }


def set_persistent_cache(enabled: bool) -> None:
  """JAX decides once whether its persistent cache is used; reset_cache makes it decide again."""
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update("jax_enable_compilation_cache", enabled)
  compilation_cache.reset_cache()


def bench_diagnostics(tiny: bool, tmp: pathlib.Path) -> dict:
  """The default run with diagnostics=default against diagnostics=off, alternating, in three settings:
  `cold`, every run compiling from scratch (a structure's first run); `warm`, programs from JAX's persistent
  cache on disk, in-memory caches cleared (a later run of that structure in a fresh process: `trainlab train`
  again, a joblib job); `sweep`, programs in memory (a later job of a one-process sweep, the basic launcher)."""
  base = ["regularizer=[]", *(["steps=100", "eval_every=25"] if tiny else [])]
  repeats = 1 if tiny else 7  # a run takes seconds, and a 2-core machine's noise is of the size measured
  train.load_data(compose_run(base).data)  # generate and cache MNIST-1D before any clock starts
  results = {}
  for mode in ("cold", "warm", "sweep"):
    set_persistent_cache(mode != "cold")
    times, chunks, shares = {"off": [], "default": []}, {"off": [], "default": []}, []
    for i in range(repeats + (mode != "cold")):  # warm, sweep: a first round fills the caches
      for setting in times:
        if mode != "sweep":
          train.compile_program.cache_clear()
          jax.clear_caches()
        summary = train.train_and_evaluate(compose_run([*base, f"diagnostics={setting}"]),
                                           tmp / f"diag-{mode}-{setting}-{i}")
        if mode == "cold" or i > 0:
          times[setting].append(summary["wall_time_s"])
          chunks[setting].append(summary["steps_run"] / summary["steps_per_second"])
          if setting == "default":
            shares.append(summary["diagnostics_time_s"] / summary["wall_time_s"])
    off, on = np.array(times["off"]), np.array(times["default"])
    chunks_off, chunks_on = np.array(chunks["off"]), np.array(chunks["default"])
    results.update({
        f"{mode}_run_off_s": _best(off), f"{mode}_run_default_s": _best(on),
        f"{mode}_diagnostics_cost_pct": 100 * (_best(on) - _best(off)) / _best(off),
        # Paired: each run with diagnostics against the run without them just before it, the median pair.
        f"{mode}_diagnostics_cost_pct_paired_median": float(100 * np.median((on - off) / off)),
        # The same pairs (their median) outside the training chunks: diagnostics run between chunks, and the
        # chunks are one compiled program either way, so their time (half of a run or more, and most of its
        # noise: the same chunks took 3.2 to 6.0 s in one process) is left out of both sides; the ratio of the
        # chunks' own times shows whether diagnostics slow them. Cold, this leans against diagnostics: the run
        # without them compiles its first chunk when calling it, and what that call costs beyond the compile
        # stays in its chunk time.
        f"{mode}_diagnostics_cost_pct_outside_chunks": float(
            100 * np.median(((on - chunks_on) - (off - chunks_off)) / off)),
        f"{mode}_chunks_time_ratio_paired_median": float(np.median(chunks_on / chunks_off)),
        # The run's own count of the seconds its diagnostics took (compiling them included), of its wall time.
        f"{mode}_diagnostics_share_pct_median": float(100 * np.median(shares))})
  set_persistent_cache(True)
  return results

def bench_vectorized(tiny: bool, tmp: pathlib.Path) -> dict:
  """The sweep of bench_sweep as one vmapped program against one-process sequential jobs, compile included."""
  import logging

  from hydra_plugins.trainlab_launcher import _vectorized_loop as vectorized

  lrs, seeds = ([1e-3, 3e-3], [0]) if tiny else ([3e-4, 1e-3, 3e-3, 1e-2], [0, 1, 2, 3])
  base = ["steps=20", "eval_every=10"] if tiny else ["steps=1000", "eval_every=250"]
  cfgs = [compose_run(base + [f"optimizer.lr={lr}", f"seed={s}"]) for lr in lrs for s in seeds]
  train.load_data(cfgs[0].data)  # generate and cache MNIST-1D before any clock starts

  def fresh() -> None:
    train.compile_program.cache_clear()
    vectorized.compile_vectorized.cache_clear()
    jax.clear_caches()
    set_persistent_cache(False)

  fresh()
  start = time.perf_counter()
  for i, cfg in enumerate(cfgs):
    train.train_and_evaluate(cfg, tmp / "sequential" / str(i))
  sequential = time.perf_counter() - start
  fresh()
  start = time.perf_counter()
  members = [vectorized.Member(cfg, tmp / "vectorized" / str(i), train.setup(cfg), logging.getLogger("bench"))
             for i, cfg in enumerate(cfgs)]
  summaries = vectorized.train_group(members)
  together = time.perf_counter() - start
  set_persistent_cache(True)
  return {
      "jobs": len(cfgs),
      "sequential_s": sequential,
      "vectorized_s": together,
      "vectorized_compile_s": summaries[0]["compile_time_s"],
      "speedup_vs_sequential": sequential / together,
  }


DATA_PARALLEL_DEVICES = 8


def bench_data_parallel(tiny: bool, tmp: pathlib.Path) -> dict:
  """Steps per second of the trainlab loop with each batch split over 8 devices against one device."""
  if jax.device_count() < DATA_PARALLEL_DEVICES:
    if jax.devices()[0].platform != "cpu":
      return {"skipped": f"{jax.device_count()} devices, fewer than {DATA_PARALLEL_DEVICES}"}
    return _in_child_with_simulated_devices(tiny, tmp)
  n, widths, batches = (1024, [784, 32, 32, 10], [128]) if tiny else (16384, [784, 512, 512, 10], [128, 1024])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 784)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  path = tmp / "data_parallel.npz"
  np.savez(path, x_train=x, y_train=y, x_test=x[:1000], y_test=y[:1000], x_val=x[:1000], y_val=y[:1000])
  hidden = ",".join(str(w) for w in widths[1:-1])
  result = {"devices": DATA_PARALLEL_DEVICES, "device": str(jax.devices()[0])}
  for batch in batches:
    steps = 20 if tiny else max(25, 25600 // batch)  # 200 steps of 128 examples, 25 of 1024
    times: dict[int, list[float]] = {1: [], 2: [], DATA_PARALLEL_DEVICES: []}
    for r in range(1 if tiny else 6):  # interleaved rounds: one device, then the meshes
      for devices in times:
        cfg = compose_run([f"data=npz", f"data.path={path}", f"model.widths=[{hidden}]", f"batch_size={batch}",
                           f"steps={steps}", f"eval_every={steps}", "optimizer=adam", "init=glorot",
                           "diagnostics=off", f"devices={devices}"])
        summary = train.train_and_evaluate(cfg, tmp / f"dp-{batch}-{devices}-{r}")
        times[devices].append(1000 / summary["steps_per_second"])  # ms per step, in the chunks
    one = np.array(times[1])
    result[f"batch{batch}_one_device_ms"] = _best(one)
    for devices in list(times)[1:]:
      many = np.array(times[devices])
      result.update({
          f"batch{batch}_{devices}_devices_ms": _best(many),
          f"batch{batch}_{devices}_devices_time_ratio": _best(many) / _best(one),
          f"batch{batch}_{devices}_devices_time_ratio_paired_median": float(np.median(many / one)),
      })
    result.update({f"batch{batch}_{devices}_device_rounds_ms": t for devices, t in times.items()})
  return result


def _in_child_with_simulated_devices(tiny: bool, tmp: pathlib.Path, workload: str = "data_parallel") -> dict:
  """A workload (bench_data_parallel, bench_vectorized_mesh) in a fresh process whose CPU is split into 8 simulated
  devices (read when JAX starts)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DATA_PARALLEL_DEVICES}"
  out = tmp / f"{workload}_child"
  tiny_flag = ["--tiny"] if tiny else []
  subprocess.run([sys.executable, __file__, "--only", workload, "--out", str(out), *tiny_flag], check=True,
                 env={**os.environ, "XLA_FLAGS": flags.strip()})
  (table,) = out.glob("bench-*.json")
  return {**json.loads(table.read_text())[workload], "simulated_on_cpu": True}


def bench_vectorized_mesh(tiny: bool, tmp: pathlib.Path) -> dict:
  """A vectorized group of 32 small jobs with its members split over 8 devices (hydra.launcher.devices=8, 4 jobs
  a device) against the same group on one device, in interleaved rounds in one process. On CPU the 8 devices are
  simulated on this machine's cores (a child process, as for data_parallel): it measures what splitting the
  members costs, not a speed-up."""
  import logging

  from hydra_plugins.trainlab_launcher import _vectorized_loop as vectorized

  devices = DATA_PARALLEL_DEVICES
  if jax.device_count() < devices:
    if jax.devices()[0].platform != "cpu":
      return {"skipped": f"{jax.device_count()} devices, fewer than {devices}"}
    return _in_child_with_simulated_devices(tiny, tmp, "vectorized_mesh")
  lrs, seeds = ([1e-3, 3e-3], [0, 1, 2, 3]) if tiny else ([3e-4, 1e-3, 3e-3, 1e-2], list(range(8)))
  steps = ["steps=20", "eval_every=10"] if tiny else ["steps=500", "eval_every=250"]
  cfgs = [compose_run(steps + ["model.widths=[32]", "diagnostics=off", "checkpoint.every=null",
                               f"optimizer.lr={lr}", f"seed={s}"]) for lr in lrs for s in seeds]
  train.load_data(cfgs[0].data)  # generate and cache MNIST-1D before any clock starts
  logger = logging.getLogger("bench")
  times: dict[int, list[float]] = {1: [], devices: []}
  group_step_ms: dict[int, list[float]] = {1: [], devices: []}
  compile_s: dict[int, float] = {}
  for r in range(2 if tiny else 4):  # interleaved rounds; the first compiles each side's program
    for d in times:
      members = [vectorized.Member(cfg, tmp / f"mesh-{d}-{r}" / str(i), train.setup(cfg), logger)
                 for i, cfg in enumerate(cfgs)]
      start = time.perf_counter()
      summaries = vectorized.train_group(members, devices=d)
      times[d].append(time.perf_counter() - start)
      group_step_ms[d].append(1000 / summaries[0]["steps_per_second"])  # in the chunks: all members' step
      compile_s.setdefault(d, summaries[0]["compile_time_s"])
  one, many = np.array(times[1][1:]), np.array(times[devices][1:])  # compiled: the rounds after the first
  one_step, many_step = np.array(group_step_ms[1][1:]), np.array(group_step_ms[devices][1:])
  return {
      "jobs": len(cfgs), "devices": devices, "device": str(jax.devices()[0]),
      "first_round_one_device_s": times[1][0], f"first_round_{devices}_devices_s": times[devices][0],
      "compile_one_device_s": compile_s[1], f"compile_{devices}_devices_s": compile_s[devices],
      "one_device_s": _best(one), f"{devices}_devices_s": _best(many),
      f"{devices}_devices_time_ratio": _best(many) / _best(one),
      f"{devices}_devices_time_ratio_paired_median": float(np.median(many / one)),
      "one_device_group_step_ms": _best(one_step), f"{devices}_devices_group_step_ms": _best(many_step),
      f"{devices}_devices_group_step_ratio": _best(many_step) / _best(one_step),
      "one_device_rounds_s": times[1], f"{devices}_devices_rounds_s": times[devices],
  }


# --- convolutional workloads -----------------------------------------------------------------------------------
PYTORCH_EAGER_CNN_MS = 35.0  # the measurement of the cnn workload (2 cores, AVX-512), for reference only


def _median(xs: list[float]) -> float:
  return float(np.median(xs))


def _best(xs: list[float]) -> float:
  """The fastest of repeated timings: the noise of a shared machine only adds (see the module's docstring)."""
  return float(np.min(xs))


def trainlab_loop_step_ms(overrides: list[str], steps: int, chunk: int, workdir: pathlib.Path,
                          repeats: int) -> list[float]:
  """ms per training step of trainlab's own chunked loop (compilation excluded), one value per repeated run."""
  cfg = compose_run([*overrides, f"steps={steps}", f"eval_every={chunk}"])
  return [1000 / train.train_and_evaluate(cfg, workdir / str(r))["steps_per_second"] for r in range(repeats)]


def jitted_step_ms(model, x, y, batch: int, steps: int, repeats: int) -> tuple[list[float], float]:
  """ms per step of one jitted Adam step fed batch by batch from Python; and the step's FLOPs (XLA's count)."""
  tx = optax.adam(1e-3)
  variables = dict(model.init(jax.random.PRNGKey(0), x[:1], train=False))
  params = variables.pop("params")

  @jax.jit
  def step(params, state, opt_state, xb, yb):
    def loss_fn(p):
      if state:
        logits, new_state = model.apply({"params": p, **state}, xb, train=True, mutable=list(state))
      else:
        logits, new_state = model.apply({"params": p}, xb, train=True), state
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new_state

    (_, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state

  carry = (params, variables, tx.init(params))
  compiled = step.lower(*carry, x[:batch], y[:batch]).compile()
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
  per_epoch = len(y) // batch
  carry = step(*carry, x[:batch], y[:batch])
  jax.block_until_ready(carry)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for i in range(steps):
      j = i % per_epoch * batch
      carry = step(*carry, x[j:j + batch], y[j:j + batch])
    jax.block_until_ready(carry)
    times.append(1000 * (time.perf_counter() - start) / steps)
  return times, flops


def torch_net(workload: str, image_shape: tuple[int, ...]):
  """The workload's model in PyTorch (NCHW), only when torch happens to be installed (it is no dependency):
  the same layers, widths and parameter count as trainlab's `cnn` and default `resnet`."""
  try:
    import torch
  except ImportError:
    return None
  nn = torch.nn
  if workload == "cnn":
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * (image_shape[0] // 4) * (image_shape[1] // 4), 128), nn.ReLU(),
        nn.Linear(128, 10))

  class Block(nn.Module):  # conv-norm-act-conv-norm, plus the input (a 1x1 convolution where the shape changes)
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
      self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      return torch.relu(self.skip(x) + self.body(x))

  features = [16, 32, 64]
  stages = [Block(cin, cout, 1 if i == 0 else 2) for i, (cin, cout) in enumerate(zip(features[:1] + features, features))]
  return nn.Sequential(nn.Conv2d(image_shape[-1], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), *stages,
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def torch_step_ms(net, x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> float:
  """ms per Adam step of PyTorch eager on `net`, batch by batch."""
  import torch

  opt = torch.optim.Adam(net.parameters(), 1e-3)
  xt, yt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
  per_epoch = len(y) // batch

  def run(n):
    for i in range(n):
      j = i % per_epoch * batch
      opt.zero_grad()
      torch.nn.functional.cross_entropy(net(xt[j:j + batch]), yt[j:j + batch]).backward()
      opt.step()

  run(3)
  start = time.perf_counter()
  run(steps)
  return 1000 * (time.perf_counter() - start) / steps


def bench_conv(workload: str, tiny: bool, tmp: pathlib.Path) -> dict:
  """The cnn or resnet workload: trainlab's loop with conv_impl=auto and =xla, a jitted step, as ratios."""
  from hydra.utils import instantiate
  from omegaconf import OmegaConf

  if workload == "cnn":
    shape, model = ((8, 8, 1), ["model=cnn", "model.features=[4,8]", "model.widths=[16]"]) if tiny else (
        (28, 28, 1), ["model=cnn"])
  else:
    shape, model = ((8, 8, 3), ["model=resnet", "model.features=[4,8]"]) if tiny else ((32, 32, 3), ["model=resnet"])
  batch, n = (32, 256) if tiny else (128, 128 * 20)
  # Each compiled call of the chunk first touches fresh memory for its temporaries (XLA's CPU runtime allocates
  # them per call): 57 MB for the cnn, 204 MB for the resnet, some 15 and 50 ms of page faults per call on
  # 2 cores. A run's chunk is eval_every steps (250 by default, where that is 0.2 ms a step); the loop here runs
  # chunks of 40 steps, where 10-step chunks charged the resnet 5 ms a step that no default run pays.
  # the jitted steps are references far from the targets: 3 repeats each
  steps, chunk, xla_steps, repeats, jitted_repeats = (4, 2, 2, 1, 1) if tiny else (40, 40, 2, 10, 3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, *shape)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  path = tmp / f"{workload}.npz"
  np.savez(path, x_train=x, y_train=y, x_test=x[:batch], y_test=y[:batch], x_val=x[:batch], y_val=y[:batch])
  base = ["data=npz", f"data.path={path}", *model, f"batch_size={batch}", "optimizer=adam"]
  # trainlab's loop and, where torch is installed, PyTorch eager, interleaved run by run: this shared machine
  # drifts by up to 1.5x within minutes, more than the difference measured. PyTorch's own time moves more than
  # trainlab's (137-255 against 170-227 ms a resnet step in one run of 10 rounds), so the best of each side
  # mostly compares their luckiest rounds; the paired median of the rounds' ratios cancels the drift that both
  # sides of a round share, and is reported beside it.
  loop, torch_runs, net = [], [], None if tiny else torch_net(workload, shape)
  for r in range(repeats):
    loop += trainlab_loop_step_ms([*base, "model.conv_impl=auto"], steps, chunk, tmp / f"{workload}_auto{r}", 1)
    if net is not None:
      torch_runs.append(torch_step_ms(net, x, y, batch, steps))
  # XLA's convolution inside the loop is the slow case (tens of times slower on CPU): few steps, one run.
  loop_xla = trainlab_loop_step_ms([*base, "model.conv_impl=xla"], xla_steps, xla_steps, tmp / f"{workload}_xla", 1)
  make = lambda impl: instantiate(OmegaConf.to_container(compose_run([*base, f"model.conv_impl={impl}"]).model,
                                                         resolve=True), num_outputs=10, _convert_="all")
  xd, yd = jnp.asarray(x), jnp.asarray(y)
  step_xla, _ = jitted_step_ms(make("xla"), xd, yd, batch, steps, jitted_repeats)
  step_chosen, flops = jitted_step_ms(make("auto"), xd, yd, batch, steps, jitted_repeats)
  peak = matmul_peak_gflops(512 if tiny else 1024, 3 if tiny else 10)
  result = {
      "conv_impl_auto": conv.resolve("auto"),
      "trainlab_loop_ms": _best(loop),
      "trainlab_loop_ms_median": _median(loop),
      "trainlab_loop_xla_conv_ms": _best(loop_xla),
      "jitted_step_xla_conv_ms": _best(step_xla),
      "jitted_step_auto_ms": _best(step_chosen),
      "loop_speedup_vs_xla_conv_loop": _best(loop_xla) / _best(loop),
      "loop_speedup_vs_jitted_xla_step": _best(step_xla) / _best(loop),
      "step_gflop": flops / 1e9,
      "matmul_peak_gflops": peak,
      "loop_pct_of_peak": 100 * flops / (_best(loop) / 1000) / 1e9 / peak,
      "trainlab_samples_per_s": batch / (_best(loop) / 1000),
  }
  if workload == "cnn" and not tiny:
    result["loop_vs_pytorch_eager_35ms"] = _best(loop) / PYTORCH_EAGER_CNN_MS  # <= 1: at least as fast
  if torch_runs:
    result["pytorch_eager_ms"] = _best(torch_runs)
    result["pytorch_eager_ms_median"] = _median(torch_runs)
    result["loop_vs_pytorch_eager"] = _best(loop) / _best(torch_runs)
    result["loop_vs_pytorch_eager_median"] = _median(loop) / _median(torch_runs)
    result["loop_vs_pytorch_eager_paired_median"] = float(np.median(np.array(loop) / np.array(torch_runs)))
    result["trainlab_loop_ms_rounds"], result["pytorch_eager_ms_rounds"] = loop, torch_runs  # in order
  return result


# (name, input size, channels in, out, kernel, stride) of the default resnet's convolutions, in order
RESNET_LAYERS = [("stem_3_16", 32, 3, 16, 3, 1), ("conv_16", 32, 16, 16, 3, 1), ("conv_16_32_s2", 32, 16, 32, 3, 2),
                 ("proj_16_32_s2", 32, 16, 32, 1, 2), ("conv_32", 16, 32, 32, 3, 1),
                 ("conv_32_64_s2", 16, 32, 64, 3, 2), ("proj_32_64_s2", 16, 32, 64, 1, 2), ("conv_64", 8, 64, 64, 3, 1)]


def conv_layer_ms(batch: int, size: int, cin: int, cout: int, kernel: int, stride: int, input_grad: bool,
                  steps: int, repeats: int) -> float:
  """ms per forward + backward of one convolution (trainlab's lowering for this device) inside a lax.scan, as
  the training chunk runs it; its loss sum(y * c) needs the output, so the forward is computed too."""
  from trainlab.fast import compilation

  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, cin))
  module = conv.Conv(cout, (kernel, kernel), stride, padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False)
  params = module.init(jax.random.PRNGKey(1), x[:1])
  c = jax.random.normal(jax.random.PRNGKey(2), module.apply(params, x).shape)
  loss = lambda p, x: jnp.sum(module.apply(p, x) * c)

  def chunk(params, x):
    def step(carry, _):
      p, x = carry
      if input_grad:
        value, (dp, dx) = jax.value_and_grad(loss, argnums=(0, 1))(p, x)
      else:  # x still changes from step to step, so that XLA cannot hoist its patches out of the loop
        (value, dp), dx = jax.value_and_grad(loss)(p, x), -1e-3
      return (jax.tree.map(lambda a, b: a - 1e-6 * b, p, dp), x - 1e-6 * dx + 1e-9 * value), None
    return jax.lax.scan(step, (params, x), None, length=steps)[0]

  run = jax.jit(chunk, compiler_options=compilation.KEEP_BARRIERS)
  jax.block_until_ready(run(params, x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(params, x))
    times.append(1000 * (time.perf_counter() - start) / steps)
  return _best(times)


def torch_conv_layer_ms(batch: int, size: int, cin: int, cout: int, kernel: int, stride: int, input_grad: bool,
                        steps: int, repeats: int) -> float | None:
  """The same in PyTorch eager (NCHW, oneDNN), when torch is installed."""
  try:
    import torch
  except ImportError:
    return None
  layer = torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
  x = torch.randn(batch, cin, size, size, requires_grad=input_grad)
  c = torch.randn_like(layer(x))

  def run(n):
    for _ in range(n):
      layer.zero_grad()
      (layer(x) * c).sum().backward()

  run(2)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(steps)
    times.append(1000 * (time.perf_counter() - start) / steps)
  return _best(times)


def bench_layers(tiny: bool) -> dict:
  """Each convolution of the default resnet alone, trainlab's lowering and then PyTorch eager on the same shape."""
  batch, steps, repeats = (8, 2, 1) if tiny else (128, 5, 5)
  result = {}
  for i, (name, size, cin, cout, kernel, stride) in enumerate(RESNET_LAYERS):
    input_grad = i > 0  # the stem's input is the data: no gradient
    args = (batch, size // 4 if tiny else size, cin, cout, kernel, stride, input_grad, steps, repeats)
    ours, theirs = conv_layer_ms(*args), None if tiny else torch_conv_layer_ms(*args)
    result[f"{name}_ms"] = ours
    if theirs is not None:
      result[f"{name}_pytorch_ms"] = theirs
      result[f"{name}_vs_pytorch"] = ours / theirs
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="a smoke run of every path at tiny sizes")
  parser.add_argument("--only", choices=["mlp", "sweep", "diagnostics", "vectorized", "data_parallel",
                                         "vectorized_mesh", "cnn", "resnet", "layers"],
                      help="one workload")
  parser.add_argument("--out", default=str(ROOT / "outputs" / "bench"), help="folder for the JSON result")
  args = parser.parse_args()

  config.register_schemas()
  os.environ.setdefault("TRAINLAB_CACHE", tempfile.mkdtemp(prefix="trainlab-bench-cache-"))
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
             "cores": os.cpu_count(), "device": str(jax.devices()[0]), "jax": jax.__version__, "tiny": args.tiny}
  with tempfile.TemporaryDirectory() as tmp:
    if args.only in (None, "mlp"):
      results["mlp"] = bench_mlp(args.tiny, pathlib.Path(tmp))
    if args.only in (None, "sweep"):
      results["sweep"] = bench_sweep(args.tiny, pathlib.Path(tmp))
    if args.only in (None, "diagnostics"):
      results["diagnostics"] = bench_diagnostics(args.tiny, pathlib.Path(tmp))
    if args.only in (None, "vectorized"):
      results["vectorized"] = bench_vectorized(args.tiny, pathlib.Path(tmp))
    if args.only in (None, "data_parallel"):
      results["data_parallel"] = bench_data_parallel(args.tiny, pathlib.Path(tmp))
    if args.only in (None, "vectorized_mesh"):
      results["vectorized_mesh"] = bench_vectorized_mesh(args.tiny, pathlib.Path(tmp))
    for workload in ("cnn", "resnet"):
      if args.only in (None, workload):
        results[workload] = bench_conv(workload, args.tiny, pathlib.Path(tmp))
    if args.only in (None, "layers"):
      results["layers"] = bench_layers(args.tiny)

  for workload in ("mlp", "sweep", "diagnostics", "vectorized", "data_parallel", "vectorized_mesh", "cnn", "resnet",
                   "layers"):
    for key, value in results.get(workload, {}).items():
      if isinstance(value, list):
        value = " ".join(f"{v:.3g}" for v in value)
      shown = f"{value:>10}" if isinstance(value, str) else f"{value:10.4g}"
      print(f"{workload:11} {key:36} {shown}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"bench-{results['date'].replace(':', '-')}{'-tiny' if args.tiny else ''}.json"
  path.write_text(json.dumps(results, indent=2) + "\n")
  print(f"written {path}")


if __name__ == "__main__":
  main()
