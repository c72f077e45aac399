"""The training loop: one compiled program per run structure, run in chunks of many steps.

Reading order: how a config splits into structure and values, the compiled program (init, train_step,
train_chunk, evaluate), then the host side: `setup` (config, data, program of a run), `RunLog` (one run's
bookkeeping between chunks: logs, best validation point, early stopping, diagnostics, checkpoints, summary) and
`train_and_evaluate`, the loop that walks between chunks. vectorized.py drives many RunLogs with one vmapped
program.

Every float under the groups `model`, `init`, `optimizer`, `schedule` and `regularizer` is a *value*: it
enters the compiled program as a traced array (the optimizer's through `optax.inject_hyperparams`, the rest in
`TrainState.hparams`). Everything else (ints, strings, lists, which options are chosen) is *structure*, and
the program is built from the structure alone, so jobs of a sweep that differ only in values share it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import threading
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainlab import config, data, diagnostics, initializers, losses, models, optim, regularizers, signals
from trainlab.rundir import checkpoint, writers
from trainlab.fast import compilation, program_store

log = logging.getLogger(__name__)

PROGRAM_GROUPS = ("model", "init", "optimizer", "schedule", "regularizer")
EVAL_BATCH = 1000  # examples per evaluation batch; one compiled call walks the whole split


# --- structure and values ----------------------------------------------------------------------------------
def split_values(tree: Any) -> tuple[Any, Any]:
  """Splits a config tree into (structure, values): values holds its floats, structure the rest (floats 0)."""
  if isinstance(tree, dict):
    structure, values = {}, {}
    for key, child in tree.items():
      structure[key], child_values = split_values(child)
      if child_values is not None:
        values[key] = child_values
    return structure, values
  if isinstance(tree, float):
    return 0.0, tree
  return tree, None


def merge_values(structure: Any, values: Any) -> Any:
  """The inverse of split_values; `values` may hold traced arrays."""
  if isinstance(structure, dict):
    return {k: merge_values(v, values[k]) if k in values else v for k, v in structure.items()}
  return values


class Spec(NamedTuple):
  """Everything a compiled program depends on. Hashable: it keys the program cache."""
  structure: str  # JSON of the program groups with every float set to 0
  batch_size: int
  total_steps: int
  chunk_steps: int
  input_shape: tuple[int, ...]
  num_classes: int  # outputs of the model: classes, or regression targets
  task: str = "classification"  # a key of losses.TASKS, set by the data set


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  model_state: Any  # mutable collections (batch norm statistics); {} for models without
  opt_state: Any  # holds the optimizer's and the schedule's values
  hparams: Any  # values of the model and regularizer groups
  key: jax.Array  # fixed for the run; data order and dropout masks are folded from it and the step


class Program(NamedTuple):
  init: Callable  # (seed, values) -> TrainState
  train_chunk: Callable  # (state, x, y, num_steps) -> (state, per-step metrics)
  evaluate: Callable  # (state, x, y) -> {"loss", <the task's metric: "accuracy" or "mse">}
  diagnostics: Any = None  # diagnostics.Diagnostics: per-layer statistics and curvature, between chunks


# --- the compiled program ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def build_program(spec: Spec) -> Program:
  """Builds the jitted functions of a run from its structure; cached, so a sweep's jobs reuse them."""
  structure = json.loads(spec.structure)
  task = losses.TASKS[spec.task]
  classify = spec.task == "classification"

  def make_model(hparams: dict, **kwargs):
    dropout = hparams["regularizer"].get("dropout")
    return instantiate(merge_values(structure["model"], hparams["model"]), num_outputs=spec.num_classes,
                       dropout_rate=None if dropout is None else dropout["rate"], _convert_="all", **kwargs)

  tx, learning_rate_fn = optim.build_optimizer(structure["optimizer"], structure["schedule"], spec.total_steps,
                                               structure["regularizer"])
  augment = structure["regularizer"].get("augment")

  def init(seed: jax.Array, values: dict) -> TrainState:
    key = jax.random.PRNGKey(seed)
    hparams = {"model": values["model"], "regularizer": values["regularizer"]}
    inits = initializers.build(merge_values(structure["init"], values["init"]))
    # Biases start at init.bias through the models' own bias_init, so a model's special biases (the LSTM's
    # forget gate) keep theirs; only the output bias is set afterwards, when it comes from the class frequencies.
    recurrent = {} if inits.recurrent is None else {"recurrent_init": inits.recurrent}
    model = make_model(hparams, kernel_init=inits.kernel, bias_init=jax.nn.initializers.constant(inits.bias),
                       **recurrent)
    variables = dict(model.init(jax.random.fold_in(key, 2), jnp.zeros((1, *spec.input_shape)), train=False))
    params = variables.pop("params")
    if inits.output_bias:
      params = initializers.set_output_bias(params, values["init"]["log_class_frequency"])
    # The optimizer is built here from the traced values, so that its state carries them.
    run_tx, _ = optim.build_optimizer(merge_values(structure["optimizer"], values["optimizer"]),
                                      merge_values(structure["schedule"], values["schedule"]), spec.total_steps,
                                      merge_values(structure["regularizer"], values["regularizer"]), seed=seed)
    return TrainState(jnp.zeros((), jnp.int32), params, variables, run_tx.init(params), hparams, key)

  def apply(state: TrainState, params, x, *, train: bool, rng=None):
    model = make_model(state.hparams, kernel_init=nn.initializers.zeros)
    variables = {"params": params, **state.model_state}
    if train and state.model_state:
      return model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=list(state.model_state))
    return model.apply(variables, x, train=train, rngs={"dropout": rng} if train else None), state.model_state

  # The per-step training metrics, float32 scalars: the steps a chunk skips return their zeros without tracing
  # the step a second time (as jax.eval_shape did: a third of the chunk's tracing, 70-80 ms for the default MLP,
  # in every fresh process).
  metric_names = ("loss", task.metric_name, "learning_rate", "grad_norm")

  def train_step(state: TrainState, x: jax.Array, y: jax.Array):
    rng = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
    if augment is not None:
      x = regularizers.augment(x, merge_values(augment, state.hparams["regularizer"]["augment"]),
                               jax.random.fold_in(rng, 1))

    def loss_fn(params):
      logits, model_state = apply(state, params, x, train=True, rng=rng)
      data_loss = task.loss(logits, y).mean()
      # label smoothing and the confidence penalty reshape the classification loss; regression trains on mse
      fitted = losses.objective(logits, y, state.hparams["regularizer"]).mean() if classify else data_loss
      objective = fitted + regularizers.penalty(params, state.hparams["regularizer"])
      return objective, (data_loss, logits, model_state)

    (_, (data_loss, logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    values = (data_loss, task.metric(logits, y).mean(), learning_rate_fn(state.opt_state), optax.global_norm(grads))
    metrics = {name: jnp.asarray(v, jnp.float32) for name, v in zip(metric_names, values)}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = regularizers.project(optax.apply_updates(state.params, updates), state.hparams["regularizer"])
    return state._replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state), metrics

  def train_chunk(state: TrainState, x: jax.Array, y: jax.Array, num_steps: jax.Array):
    """Runs min(num_steps, chunk_steps) steps in one lax.scan; returns per-step metrics (0 where not run).

    Each epoch visits the training set in a fresh order drawn from the run's key and the epoch number, so
    the order depends only on the step: a chunk can start anywhere.
    """
    n, batch = x.shape[0], spec.batch_size
    per_epoch = n // batch
    data_key = jax.random.fold_in(state.key, 0)
    # The orders of every epoch the chunk can touch, drawn before the loop rather than at each epoch's start
    # inside it: the same orders, and no branch on the step, which vmap (a vectorized sweep) would turn into
    # drawing a permutation at every step. A chunk of chunk_steps touches `spans` epochs, and one more where it
    # starts late enough in its first epoch; that last order is drawn only then (under vmap the branch becomes
    # a select, which draws it always, as before). A chunk of one aligned epoch (the mlp bench's) draws one
    # permutation of 60,000 indices, not two: 43 ms of its 2.5 s.
    first_epoch = state.step // per_epoch
    spans = -(-spec.chunk_steps // per_epoch)
    draw = lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n)
    touches_one_more = state.step % per_epoch + num_steps > spans * per_epoch
    one_more = jax.lax.cond(touches_one_more, draw, lambda e: jnp.arange(n), first_epoch + spans)  # else unread
    orders = jnp.concatenate([jax.vmap(draw)(first_epoch + jnp.arange(spans)), one_more[None]])

    def body(state, i):
      order = orders[state.step // per_epoch - first_epoch]
      idx = jax.lax.dynamic_slice_in_dim(order, state.step % per_epoch * batch, batch)
      skipped = {name: jnp.zeros((), jnp.float32) for name in metric_names}
      return jax.lax.cond(i < num_steps, lambda s: train_step(s, x[idx], y[idx]), lambda s: (s, skipped), state)

    return jax.lax.scan(body, state, jnp.arange(spec.chunk_steps))

  def evaluate(state: TrainState, x: jax.Array, y: jax.Array, n: jax.Array) -> dict:
    """Mean loss and metric over the first n examples of a split, in batches of up to EVAL_BATCH inside one
    compiled call. Rows past n are padding (`eval_splits` pads validation and test to one shape, so that one
    program evaluates both); only the batches that hold real examples are run."""
    rows = x.shape[0]
    size = min(rows, EVAL_BATCH)
    batches = -(-rows // size)
    pad = batches * size - rows
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(batches, size, *x.shape[1:])
    ys = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape(batches, size, *y.shape[1:])

    def one(b, sums):
      real = b * size + jnp.arange(size) < n
      logits, _ = apply(state, state.params, xs[b], train=False)
      return sums + jnp.stack([jnp.sum(task.loss(logits, ys[b]) * real), jnp.sum(task.metric(logits, ys[b]) * real)])

    loss, metric = jax.lax.fori_loop(0, (n + size - 1) // size, one, jnp.zeros(2))
    return {"loss": loss / n, task.metric_name: metric / n}

  # init runs once per run: compiled for compile speed (compilation.RUN_RARELY), the per-step programs for run speed
  # (the chunk keeping its optimization barriers: compilation.KEEP_BARRIERS). Their traces are kept on disk for
  # later processes (program_store), where the structure names no code of the user's.
  key = repr(spec) if program_store.trusted(structure) else None
  return Program(program_store.Stored(init, "init", key, compiler_options=compilation.RUN_RARELY),
                 program_store.Stored(train_chunk, "train_chunk", key, donate_argnums=(0,),
                                      compiler_options=compilation.KEEP_BARRIERS),
                 program_store.Stored(evaluate, "evaluate", key),
                 diagnostics.build(apply, tx, structure["model"].get("activation"), task.loss, key))


# --- the host loop -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_data(data_cfg_json: str) -> data.Dataset:
  """Loads a data set once per process: jobs of a sweep run in one process share it."""
  try:
    return instantiate(json.loads(data_cfg_json))
  except InstantiationException as e:  # Hydra wraps the loader's own error; the user needs that one
    if isinstance(e.__cause__, (data.DataError, config.ConfigError)):
      raise e.__cause__ from None
    raise


def load_data(data_cfg: DictConfig) -> data.Dataset:
  return _load_data(json.dumps(OmegaConf.to_container(data_cfg, resolve=True), sort_keys=True))


def eval_splits(dataset: data.Dataset) -> tuple[tuple, tuple]:
  """The validation and test splits on the device as (x, y, n), padded to one number of rows, so that one
  compiled `evaluate` serves both (n: the real examples)."""
  rows = max(len(dataset.y_val), len(dataset.y_test))
  pad = lambda a: np.pad(a, [(0, rows - len(a))] + [(0, 0)] * (a.ndim - 1))
  return tuple((*jax.device_put((pad(x), pad(y))), np.int32(len(y)))
               for x, y in ((dataset.x_val, dataset.y_val), (dataset.x_test, dataset.y_test)))


def total_steps(cfg: DictConfig, n_train: int) -> int:
  return cfg.steps if cfg.epochs is None else cfg.epochs * (n_train // cfg.batch_size)


class _Window:
  """Averages the per-step training metrics over each window of `log_every` steps."""

  def __init__(self):
    self.sums, self.count = {}, 0

  def add(self, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.count += 1

  def pop(self) -> dict[str, float]:
    means = {f"train/{k}": v / self.count for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    return means


class StopRequest(signals.Stopping):
  """SIGTERM or SIGINT during a run: finish the chunk, checkpoint and stop. A second signal aborts at once.

  A job of a sweep also stops when its sweep's stop file appears (`stop_file`, holding the signal's name): the
  sweep's own process writes it on a signal, for the jobs that run in worker processes (the joblib launcher).
  """

  def __init__(self, stop_file: pathlib.Path | None = None):
    super().__init__()
    self.stop_file = stop_file

  def on_signal(self, signum: int) -> None:
    log.warning("%s: stopping at the end of this chunk, after a checkpoint", self.signal_name)

  def poll(self) -> str | None:
    """The signal's name once a stop is requested, by a signal or by the sweep's stop file."""
    if self.signal_name is None and self.stop_file is not None and self.stop_file.exists():
      self.signal_name = self.stop_file.read_text().strip() or "SIGTERM"
      log.warning("%s to the sweep: stopping at the end of this chunk, after a checkpoint", self.signal_name)
    return self.signal_name


def train_and_evaluate(cfg: DictConfig, workdir: pathlib.Path, started: float | None = None,
                       logger: logging.Logger = log, stop_file: pathlib.Path | None = None) -> dict:
  """Trains the model that `cfg` describes, writes the run's files into `workdir`, returns the summary.

  With `cfg.resume`, the run continues from the latest checkpoint in `workdir` (from step 0 if there is none),
  and the logs of the steps after that checkpoint are dropped, since they are about to be run again.
  """
  with StopRequest(stop_file) as stop:
    return _train_and_evaluate(cfg, pathlib.Path(workdir), started, stop, logger)


class Setup(NamedTuple):
  """What a run needs before its first step, from its config alone: the program, its values and its data."""
  spec: Spec
  values: Any  # the run's floats (float32), a pytree the program's `init` takes
  dataset: data.Dataset
  program: Program


def setup(cfg: DictConfig) -> Setup:
  """Checks the config, loads the data and builds (or finds cached) the compiled program of a run.

  Raises:
    config.ConfigError, data.DataError: a config or a data set that cannot be run, with one clear message.
  """
  config.check_ranges(cfg)
  compilation.enable_persistent_cache()
  dataset = load_data(cfg.data)
  models.check_input(cfg.model._target_, cfg.data._target_, dataset.layout, dataset.x_train.shape[1:])
  models.check_init(cfg.model._target_, cfg.init.get("recurrent", "same"))
  n_train = len(dataset.y_train)
  if cfg.batch_size > n_train:
    raise config.ConfigError(
        f"batch_size={cfg.batch_size} is not allowed: it must be <= {n_train}, the size of the training split")
  steps = total_steps(cfg, n_train)
  chunk_steps = min(cfg.eval_every, steps)
  program_cfg = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in PROGRAM_GROUPS}
  structure, values = split_values(program_cfg)
  values = jax.tree.map(np.float32, values)
  if cfg.init.get("output_bias") == "marginal":
    values.setdefault("init", {})["log_class_frequency"] = initializers.log_class_frequency(
        dataset.y_train, dataset.num_classes)
  spec = Spec(json.dumps(structure, sort_keys=True), cfg.batch_size, steps, chunk_steps,
              tuple(dataset.x_train.shape[1:]), dataset.num_classes, dataset.task)
  return Setup(spec, values, dataset, build_program(spec))


class RunLog:
  """The host side of one run between chunks: its logs, best validation point, early stopping, diagnostics,
  checkpoints, status and summary.

  The single-run loop below and the vectorized loop (vectorized.py, one member per run) drive it the same way:
  `open` and `diagnose_start`, then per chunk `chunk_done` (the per-step metrics: divergence and the training
  windows) and, unless that ended the run, `evaluated` (validation, best, diagnostics, early stopping,
  checkpoint, interruption); then `finish` (the test metrics and the summary) and `close`. Methods that may
  need the run's state take a function returning it, so that the vectorized loop slices a member's state out
  only when it is needed.
  """

  def __init__(self, cfg: DictConfig, workdir: pathlib.Path, run: Setup, stop: StopRequest,
               logger: logging.Logger = log, started: float | None = None):
    self.cfg, self.workdir, self.stop, self.log = cfg, pathlib.Path(workdir), stop, logger
    self.started = time.perf_counter() if started is None else started
    self.earlier_seconds = 0.0  # wall time of the sessions before a resume
    self.steps, self.chunk_steps = run.spec.total_steps, run.spec.chunk_steps
    self.log_every = int(cfg.log_every)  # read at every step: a plain int, not an OmegaConf lookup (~25 us each)
    self.task = losses.TASKS[run.dataset.task]
    self.metric = f"val/{self.task.metric_name}"
    self.diagnostics = run.program.diagnostics
    self.window, self.best, self.status, self.diverged_at = _Window(), None, "completed", None
    stopping = cfg.regularizer.get("early_stopping")
    self.stopper = stopping and regularizers.EarlyStopping(stopping.patience, stopping.metric)
    self.train_seconds, self.step, self.first_step = 0.0, 0, 0
    self.startup_seconds, self.compile_seconds = 0.0, 0.0
    self.checkpointer = checkpoint.Checkpointer(self.workdir, cfg.checkpoint.keep)
    self.run_cfg = checkpoint.run_config(OmegaConf.to_container(cfg, resolve=True))
    self.writer = self.monitor = None
    self.last_loss = math.nan

  def resume(self, state: TrainState) -> TrainState:
    """With cfg.resume, the state and host record of the latest checkpoint (the state unchanged if none)."""
    if self.cfg.resume and self.checkpointer.latest_step() is not None:
      host = self.checkpointer.restore_host(self.checkpointer.latest_step())
      checkpoint.check_same_config(host["config"], self.run_cfg, self.workdir)  # before the state: a clear message
      state = self.checkpointer.restore(state, self.checkpointer.latest_step())
      self.step, self.best, self.train_seconds = int(state.step), host["best"], host["train_seconds"]
      self.window.sums, self.window.count = host["window_sums"], host["window_count"]
      self.earlier_seconds = host.get("wall_seconds", 0.0)
      self.log.info("resuming from the checkpoint at step %d", self.step)
    elif self.cfg.resume:
      self.log.info("no checkpoint in %s: the run starts from step 0", self.workdir)
    self.first_step = self.step
    return state

  def open(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """Opens the run's writers and its diagnostics (x_train, y_train: the training split on the host, from
    which the diagnostics take their probe batch)."""
    self.writer = writers.RunWriter(self.workdir, purge_step=self.step + 1 if self.cfg.resume else None)
    self.writer.text("config", OmegaConf.to_yaml(self.cfg, resolve=True))
    self.monitor = diagnostics.Monitor(self.cfg.diagnostics, self.diagnostics, x_train, y_train, self.writer,
                                       resumed_at=self.step if self.step else None)

  def diagnose_start(self, state: Callable[[], TrainState]) -> None:
    """Takes the diagnostics of the starting point, where they are due (a run from step 0)."""
    if self.monitor.is_due(self.step):
      self.monitor(self.step, state())

  def chunk_done(self, metrics: dict[str, np.ndarray], run_now: int, seconds: float) -> bool:
    """Walks the chunk's per-step metrics (on the host); returns True when the run diverged in it."""
    self.train_seconds += seconds
    for i in range(run_now):
      self.step += 1
      if not math.isfinite(metrics["loss"][i]):
        self.status, self.diverged_at = "diverged", self.step
        if self.window.count:  # the finite steps of the last window: the curve runs up to the divergence
          self.writer.write(self.step - 1, self.window.pop())
        self.log.warning("diverged: the training loss became %s at step %d", metrics["loss"][i], self.diverged_at)
        return True
      self.window.add({k: float(v[i]) for k, v in metrics.items()})
      if self.step % self.log_every == 0 or self.step == self.steps:
        self.writer.write(self.step, self.window.pop())
    self.last_loss = float(metrics["loss"][run_now - 1])
    return False

  def evaluated(self, val: dict, run_now: int, state: Callable[[], TrainState]) -> bool:
    """Records the validation metrics after a chunk; returns True when the run stops here (early stopping, or
    a signal: then the run is `interrupted`), after the checkpoint it takes then."""
    step, metric = self.step, self.metric
    state = functools.cache(state)  # a vectorized member's slice of the state is taken once, when needed
    self.stop.poll()
    val = {f"val/{k}": float(v) for k, v in val.items()}
    self.writer.write(step, val)
    sign = 1.0 if self.task.higher_is_better else -1.0  # accuracy up, mse down
    if self.best is None or sign * val[metric] > sign * self.best[metric]:
      self.best = {"step": step, **val}
    if self.monitor.is_due(step):
      self.monitor(step, state())
    self.log.info("step %d/%d  train/loss %.4f  val/loss %.4f  %s %.4f", step, self.steps, self.last_loss,
                  val["val/loss"], metric, val[metric])
    stop_early = bool(self.stopper) and self.stopper.update(step, val, state())
    every = self.cfg.checkpoint.every
    passed_a_multiple = bool(every) and step // every > (step - run_now) // every
    if step == self.steps or self.stop.signal_name or stop_early or passed_a_multiple:
      self.save_checkpoint(state())
    if stop_early:
      self.log.info("early stopping at step %d: no better val/%s in %d evaluations since step %d", step,
                    self.stopper.metric, self.stopper.patience, self.stopper.best_step)
      return True
    if self.stop.signal_name and step < self.steps:
      self.status = "interrupted"
      return True
    return False

  def save_checkpoint(self, state: TrainState) -> None:
    self.writer.flush()  # the logs first: a checkpoint must never be ahead of them
    self.checkpointer.save(self.step, state, {
        "best": self.best, "train_seconds": self.train_seconds, "window_sums": self.window.sums,
        "window_count": self.window.count, "config": self.run_cfg, "wall_seconds": self.wall_seconds()})

  def wall_seconds(self) -> float:
    """The run's wall time so far, over all its sessions."""
    return self.earlier_seconds + time.perf_counter() - self.started

  def finish(self, state: TrainState, evaluate: Callable[[TrainState], dict]) -> dict:
    """The test metrics of a completed run (the best parameters' under early stopping) and the summary."""
    test = {}
    if self.stopper:
      state = self.stopper.restore(state)  # the reported test metrics are the best parameters'
    if self.status == "completed":
      test = {f"test/{k}": float(v) for k, v in jax.device_get(evaluate(state)).items()}
      self.writer.write(self.step, test)
    train_steps = self.step - (1 if self.status == "diverged" else 0)
    best, metric = self.best, self.metric
    return {
        "status": self.status,
        "interrupted_by": self.stop.signal_name if self.status == "interrupted" else None,
        "resumed_from_step": self.first_step if self.first_step else None,  # None: the run started from step 0
        "steps": self.steps,
        "steps_run": train_steps,
        "diverged_at_step": self.diverged_at,
        **test,
        "best_val/step": best and best["step"],
        "best_val/loss": best and best["val/loss"],
        f"best_{metric}": best and best[metric],
        **({"early_stopping/restored_step": self.stopper.best_step} if self.stopper else {}),
        "wall_time_s": self.wall_seconds(),  # every session of the run, resumed ones included
        "startup_time_s": self.startup_seconds,
        "compile_time_s": self.compile_seconds,
        "steps_per_second": train_steps / max(self.train_seconds, 1e-9),
        "diagnostics_time_s": self.monitor.seconds,
    }

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.checkpointer.close()


def _compile_ahead(program: Program, state: TrainState, x_train: jax.Array, y_train: jax.Array, val: tuple,
                   run_now: int) -> threading.Thread:
  """Compiles the first chunk and the evaluation in a background thread, while the host takes the starting
  point's diagnostics: XLA compiles without holding the GIL, and a compile leaves part of the second core idle,
  which the diagnostics' own tracing, compiling and running take instead of adding to the run's wall time.
  Both programs are traced and lowered here first, before the diagnostics trace theirs: tracing is Python and
  holds the GIL, so the two traces side by side each took about twice as long (a cold default run's
  diagnostics 0.88-1.20 s by their own clock, 0.57-0.77 s with the lowering first; six interleaved rounds, 2-core
  CPU). A program that fails to lower or compile here is compiled again, and reports its error, when it is
  called."""
  try:
    lowered = [program.train_chunk.lower(state, x_train, y_train, np.int32(run_now)),
               program.evaluate.lower(state, *val)]
  except Exception as e:  # noqa: BLE001 - the call that follows raises it
    log.debug("lowering ahead failed (%s); the programs compile when called", e)
    lowered = []

  def compile_programs():
    try:
      for program_lowered in lowered:
        program_lowered.compile()
    except Exception as e:  # noqa: BLE001 - the call that follows raises it, in the run's own thread
      log.debug("compiling ahead failed (%s); the programs compile when called", e)

  thread = threading.Thread(target=compile_programs, name="trainlab-compile", daemon=True)
  thread.start()
  return thread


def _train_and_evaluate(cfg: DictConfig, workdir: pathlib.Path, started: float | None, stop: StopRequest,
                        logger: logging.Logger) -> dict:
  started = time.perf_counter() if started is None else started
  run = setup(cfg)
  program = run.program
  x_train, y_train = jax.device_put(run.dataset[:2])  # once; they stay there
  val, test = eval_splits(run.dataset)
  compile_seconds_before = compilation.seconds()
  state = program.init(np.int32(cfg.seed), run.values)
  record = RunLog(cfg, workdir, run, stop, logger, started)
  record.startup_seconds = time.perf_counter() - started
  try:
    state = record.resume(state)
    record.open(run.dataset.x_train, run.dataset.y_train)
    ahead = None
    if record.step < record.steps and record.monitor.is_due(record.step):
      ahead = _compile_ahead(program, state, x_train, y_train, val, min(record.chunk_steps, record.steps - record.step))
    record.diagnose_start(lambda: state)
    if ahead is not None:
      ahead.join()  # before the first chunk donates the state that the thread lowers against
    while record.step < record.steps:
      run_now = min(record.chunk_steps, record.steps - record.step)
      tick, compiling = time.perf_counter(), compilation.seconds()
      state, metrics = program.train_chunk(state, x_train, y_train, np.int32(run_now))
      metrics = jax.device_get(metrics)  # the one host transfer of the chunk
      seconds = time.perf_counter() - tick - (compilation.seconds() - compiling)
      if record.chunk_done(metrics, run_now, seconds):
        break
      if record.evaluated(program.evaluate(state, *val), run_now, lambda: state):
        break
    summary = record.finish(state, lambda s: program.evaluate(s, *test))
  finally:
    record.close()
  summary["compile_time_s"] = compilation.seconds() - compile_seconds_before
  return summary
