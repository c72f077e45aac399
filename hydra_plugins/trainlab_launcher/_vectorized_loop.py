"""Vectorized sweeps: the runs of a sweep that share one compiled program, trained together by `jax.vmap`.

Runs whose `train.Spec` (program structure, batch size, steps, chunk length, data shapes) and data set are
equal differ only in their values (trainlab.values) and seeds, which all reach the program as traced arrays.
So train.py's own create_train_state, train_chunk and evaluate, vmapped over a leading member axis of the
state, train all of them at once: each member draws its own data order and dropout masks from its own key,
exactly as when it runs alone. The loop is train.run_chunks, the one the single run walks; each member keeps
its own trainlab.runlog record, so it writes into its run directory what it would write alone.

A member that diverges or stops early is masked, not removed: it gets `num_steps = 0` in later chunks, which
makes every step of the chunk a no-op for it, while the others go on.

With `hydra.launcher.devices=N` the members are split over N devices (trainlab.sharding's `members` axis): the
stacked states, the members' values, seeds and step counts are split along their leading axis, the data sets sit
whole on every device, and a constraint on what each program returns keeps that layout, so the group still
compiles once. Members do not communicate, so the compiled program holds no collectives: each device trains its
own share. A group is padded to a multiple of N with placeholders (copies of its first member) that run 0 steps
and are never written.

The module's name starts with "_" so that Hydra's plugin scan, which imports every other module here at each
start of `trainlab`, does not import JAX with it.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple

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
def compile_vectorized(spec: train.Spec, devices: int = 1) -> train.Program:
  """The program of `spec` over a leading member axis: init(seeds, values), train_chunk(states, x, y, steps),
  evaluate(states, x, y, n). The data are shared (not batched); each member has its own number of steps. With
  `devices` > 1, what each returns stays split over the devices' members axis."""
  keep = functools.partial(sharding.keep_members, devices)
  init = _then(keep, jax.vmap(functools.partial(train.create_train_state, spec)))
  chunk = _then(keep, jax.vmap(functools.partial(train.train_chunk, spec), in_axes=(0, None, None, 0)))
  evaluate = _then(keep, jax.vmap(functools.partial(train.evaluate, spec), in_axes=(0, None, None, None)))
  return train.Program(fast.jit(init, "vmap_init", None, run_rarely=True),
                       fast.jit(chunk, "vmap_train_chunk", None, donate_argnums=(0,), keep_barriers=True),
                       fast.jit(evaluate, "vmap_evaluate", None), train.compile_program(spec).diagnostics)


def _then(after: Callable, fun: Callable) -> Callable:
  """fun, then `after` on what it returns (inside the same program)."""
  return lambda *args: after(fun(*args))


@jax.jit
def member_state(states: train.TrainState, i: jax.Array) -> train.TrainState:
  """Member i's own state, as the single-run program has it (for diagnostics, checkpoints, tests)."""
  return jax.tree.map(lambda a: a[i], states)


def member_on_default_device(states: train.TrainState, i: int) -> train.TrainState:
  """Member i's own state, whole on the default device where the single-run programs (test evaluation,
  diagnostics) run, from states split over the members' mesh. Only the share of the device that holds member i
  moves: member_state on the split states would compile to an all-gather of every member onto every device."""
  leaves, tree = jax.tree.flatten(states)
  shares = [next(s for s in leaf.addressable_shards if s.index[0].start <= i < s.index[0].stop) for leaf in leaves]
  local = jax.device_put([share.data for share in shares], jax.devices()[0])
  return member_state(jax.tree.unflatten(tree, local), i - shares[0].index[0].start)


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _on(placement: Any, tree: Any) -> Any:
  """`tree` put where `placement` says; None: as it is (what the program is given on one device)."""
  return tree if placement is None else jax.device_put(tree, placement)


def train_group(members: list[Member], started: float | None = None, devices: int = 1) -> list[dict]:
  """Trains the members (equal `group_key`s) as one vmapped program, split over `devices` (the resolved
  hydra.launcher.devices); returns each member's summary.

  Under SIGTERM or SIGINT, every member still running checkpoints at the end of the chunk and is
  `interrupted`; resume=true continues each through the single-run path.
  """
  started = time.perf_counter() if started is None else started
  run = members[0].run
  vector = compile_vectorized(run.spec, devices)
  # Each member's batches split over run.spec.devices, as in its single run (trainlab.sharding), or, with the
  # launcher's devices, whole members on each device: the launcher never lets both exceed 1.
  split, beside = sharding.split_members(devices), sharding.beside_members(devices)
  train_split = jax.device_put(run.dataset[:2], beside or sharding.replicated(run.spec.devices))
  val, test = train.eval_splits(run.dataset, run.spec.devices)
  val = _on(beside, val)
  # Placeholders fill the last device's share: copies of the first member that run 0 steps and have no record.
  slots = [*members, *[members[0]] * (sharding.padded_batch(devices, len(members)) - len(members))]
  member = member_state if devices == 1 else member_on_default_device

  def train_chunk(states, x, y, steps):  # run_chunks counts the members' steps; every placeholder runs 0
    return vector.train_chunk(states, x, y, _on(split, np.pad(steps, (0, len(slots) - len(members)))))

  program = vector._replace(train_chunk=train_chunk)
  compiling_before = fast.seconds()
  with StopRequest() as stop:
    states = vector.init(*_on(split, (np.array([m.cfg.seed for m in slots], np.int32),
                                      _stack([m.run.values for m in slots]))))
    if members[0].run.transfer is not None:  # one structure, so all or none: each member's init.from_run
      states = _stack([transfer.load_into(member(states, i), m.run.transfer) for i, m in enumerate(slots)])
      for m in members:
        m.logger.info("%s", transfer.describe(m.run.transfer))
    states = _on(split, sharding.put_state(run.spec.devices, run.spec.shard_params, states))
    records = [runlog.open_run(m.cfg, m.workdir, m.run, member(states, i), stop, m.logger, started)[0]
               for i, m in enumerate(members)]
    try:
      for i, record in enumerate(records):
        runlog.diagnose(record, member(states, i))
      states = train.run_chunks(records, program, states, train_split, val, member=member)
      summaries = [runlog.summarize(record, member(states, i), lambda s: run.program.evaluate(s, *test))
                   for i, record in enumerate(records)]
    finally:
      for record in records:
        runlog.close(record)
  for summary, m in zip(summaries, members):
    summary.update(compile_time_s=fast.seconds() - compiling_before, vectorized_members=len(members),
                   vectorized_devices=devices)
    summary.update(transfer.summary(m.run.transfer, m.run.teacher))
  return summaries
