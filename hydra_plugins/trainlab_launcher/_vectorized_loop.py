"""Vectorized sweeps: the runs of a sweep that share one compiled program, trained together by `jax.vmap`.

Runs whose `train.Spec` (program structure, batch size, steps, chunk length, data shapes) and data set are
equal differ only in their values (trainlab.values) and seeds, which all reach the program as traced arrays.
So train.py's own create_train_state, train_chunk and evaluate, vmapped over a leading member axis of the
state, train all of them at once: each member draws its own data order and dropout masks from its own key,
exactly as when it runs alone. The loop is train.run_chunks, the one the single run walks; each member keeps
its own trainlab.runlog record, so it writes into its run directory what it would write alone.

A member that diverges or stops early is masked, not removed: it gets `num_steps = 0` in later chunks, which
makes every step of the chunk a no-op for it, while the others go on.

The module's name starts with "_" so that Hydra's plugin scan, which imports every other module here at each
start of `trainlab`, does not import JAX with it.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from trainlab import fast, runlog, sharding, train, transfer
from trainlab.signals import StopRequest


class Member(NamedTuple):
  """One job of a group: its config, run directory, prepared setup and logger (its own train.log)."""
  cfg: DictConfig
  workdir: pathlib.Path
  run: train.Setup
  logger: logging.Logger


def group_key(cfg: DictConfig, run: train.Setup) -> tuple:
  """Jobs with equal keys can be one vmapped program: same structure, same data, same tree of values."""
  data_cfg = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
  return run.spec, data_cfg, str(jax.tree.structure(run.values))


@functools.lru_cache(maxsize=8)
def compile_vectorized(spec: train.Spec) -> train.Program:
  """The program of `spec` over a leading member axis: init(seeds, values), train_chunk(states, x, y, steps),
  evaluate(states, x, y, n). The data are shared (not batched); each member has its own number of steps."""
  init = jax.vmap(functools.partial(train.create_train_state, spec))
  chunk = jax.vmap(functools.partial(train.train_chunk, spec), in_axes=(0, None, None, 0))
  evaluate = jax.vmap(functools.partial(train.evaluate, spec), in_axes=(0, None, None, None))
  return train.Program(fast.jit(init, "vmap_init", None, run_rarely=True),
                       fast.jit(chunk, "vmap_train_chunk", None, donate_argnums=(0,), keep_barriers=True),
                       fast.jit(evaluate, "vmap_evaluate", None), train.compile_program(spec).diagnostics)


@jax.jit
def member_state(states: train.TrainState, i: jax.Array) -> train.TrainState:
  """Member i's own state, as the single-run program has it (for diagnostics, checkpoints, tests)."""
  return jax.tree.map(lambda a: a[i], states)


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def train_group(members: list[Member], started: float | None = None) -> list[dict]:
  """Trains the members (equal `group_key`s) as one vmapped program; returns each member's summary.

  Under SIGTERM or SIGINT, every member still running checkpoints at the end of the chunk and is
  `interrupted`; resume=true continues each through the single-run path.
  """
  started = time.perf_counter() if started is None else started
  run = members[0].run
  vector = compile_vectorized(run.spec)
  devices = run.spec.devices  # each member's batches split over them, as in its single run (trainlab.sharding)
  train_split = jax.device_put(run.dataset[:2], sharding.replicated(devices))
  val, test = train.eval_splits(run.dataset, devices)
  compiling_before = fast.seconds()
  with StopRequest() as stop:
    states = vector.init(np.array([m.cfg.seed for m in members], np.int32), _stack([m.run.values for m in members]))
    if members[0].run.transfer is not None:  # one structure, so all or none: each member's init.from_run
      states = _stack([transfer.load_into(member_state(states, i), m.run.transfer) for i, m in enumerate(members)])
      for m in members:
        m.logger.info("%s", transfer.describe(m.run.transfer))
    states = sharding.put_state(devices, run.spec.shard_params, states)
    records = [runlog.open_run(m.cfg, m.workdir, m.run, member_state(states, i), stop, m.logger, started)[0]
               for i, m in enumerate(members)]
    try:
      for i, record in enumerate(records):
        runlog.diagnose(record, member_state(states, i))
      states = train.run_chunks(records, vector, states, train_split, val, member=member_state)
      summaries = [runlog.summarize(record, member_state(states, i), lambda s: run.program.evaluate(s, *test))
                   for i, record in enumerate(records)]
    finally:
      for record in records:
        runlog.close(record)
  for summary, m in zip(summaries, members):
    summary.update(compile_time_s=fast.seconds() - compiling_before, vectorized_members=len(members))
    summary.update(transfer.summary(m.run.transfer, m.run.teacher))
  return summaries
