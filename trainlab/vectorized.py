"""Vectorized sweeps: the runs of a sweep that share one compiled program, trained together by `jax.vmap`.

Runs whose `train.Spec` (program structure, batch size, steps, chunk length, data shapes) and data set are
equal differ only in their values (the floats of `train.split_values`) and their seeds, which all reach the
program as traced arrays. So the program's init, train_chunk and evaluate, vmapped over a leading member
axis of the state, train all of them at once: each member draws its own data order and dropout masks from its
own key, exactly as when it runs alone.

A member that diverges or stops early is masked, not removed: it gets `num_steps = 0` in later chunks, which
makes every step of the chunk a no-op for it (train_chunk's traced step mask), while the others go on. The
host side of each member (logs, best validation point, early stopping, diagnostics, checkpoints, summary) is
the single run's own `train.RunLog`, given that member's slice of the state when it needs one.

The Hydra side (jobs, run directories, which jobs go together) is the `vectorized` launcher in
hydra_plugins/trainlab_launcher.
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

from trainlab import train
from trainlab.fast import compilation

log = logging.getLogger(__name__)


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
def build_vectorized(spec: train.Spec) -> train.Program:
  """The program of `spec` over a leading member axis: init(seeds, values), train_chunk(states, x, y, steps),
  evaluate(states, x, y, n). The data are shared (not batched); each member has its own number of steps."""
  program = train.build_program(spec)
  # init runs once, compiled for compile speed as the single-run init is; the chunk keeps its barriers as the
  # single-run chunk does (jit options cannot be nested, so those two vmap the functions the jits wrap).
  return train.Program(
      jax.jit(jax.vmap(program.init.__wrapped__), compiler_options=compilation.RUN_RARELY),
      jax.jit(jax.vmap(program.train_chunk.__wrapped__, in_axes=(0, None, None, 0)), donate_argnums=0,
              compiler_options=compilation.KEEP_BARRIERS),
      jax.jit(jax.vmap(program.evaluate, in_axes=(0, None, None, None))),
      program.diagnostics)


def member_state(states: train.TrainState, i: int) -> train.TrainState:
  """Member i's own state, as the single-run program has it (for diagnostics, checkpoints, tests)."""
  return jax.tree.map(lambda a: a[i], states)


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def train_group(members: list[Member], started: float | None = None) -> list[dict]:
  """Trains the members (equal `group_key`s) as one vmapped program; returns each member's summary.

  Each member writes into its own run directory what it would write alone. Under SIGTERM or SIGINT, every
  member still running checkpoints at the end of the chunk and is `interrupted`; resume=true continues each
  through the single-run path.
  """
  started = time.perf_counter() if started is None else started
  run = members[0].run
  spec, program = run.spec, run.program
  vector = build_vectorized(spec)
  x_train, y_train = jax.device_put(run.dataset[:2])
  val_split, test_split = train.eval_splits(run.dataset)
  seeds = np.array([m.cfg.seed for m in members], np.int32)
  compiling_before = compilation.seconds()
  with train.StopRequest() as stop:
    states = vector.init(seeds, _stack([m.run.values for m in members]))
    records = [train.RunLog(m.cfg, m.workdir, m.run, stop, m.logger, started) for m in members]
    startup = time.perf_counter() - started
    try:
      for i, record in enumerate(records):
        record.startup_seconds = startup
        record.open(run.dataset.x_train, run.dataset.y_train)
        record.diagnose_start(lambda i=i: member_state(states, i))
      active = [True] * len(members)
      while any(active):
        run_now = np.array([min(r.chunk_steps, r.steps - r.step) if a else 0 for r, a in zip(records, active)],
                           np.int32)
        tick, compiling = time.perf_counter(), compilation.seconds()
        states, metrics = vector.train_chunk(states, x_train, y_train, run_now)
        metrics = jax.device_get(metrics)  # the one host transfer of the chunk, for all members
        seconds = time.perf_counter() - tick - (compilation.seconds() - compiling)
        val = jax.device_get(vector.evaluate(states, *val_split))
        for i, record in enumerate(records):
          if not active[i]:
            continue
          if record.chunk_done({k: v[i] for k, v in metrics.items()}, int(run_now[i]), seconds):
            active[i] = False
          elif record.evaluated({k: v[i] for k, v in val.items()}, int(run_now[i]),
                                lambda i=i: member_state(states, i)):
            active[i] = False
          elif record.step >= record.steps:
            active[i] = False
      summaries = [record.finish(member_state(states, i), lambda s: program.evaluate(s, *test_split))
                   for i, record in enumerate(records)]
    finally:
      for record in records:
        record.close()
  compile_seconds = compilation.seconds() - compiling_before
  for summary in summaries:
    summary.update(compile_time_s=compile_seconds, vectorized_members=len(members))
  return summaries
