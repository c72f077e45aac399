"""The training loop, top to bottom: the state, one step, a chunk of steps, evaluation, and the host loop.

A run's program is built from its `Spec` (the structure of its config: trainlab.values) and fed its values as
traced arrays, so the jobs of a sweep that share a structure share one compilation. One jitted call of
`train_chunk` runs many steps in a `lax.scan` over data already on the device and returns their metrics;
Python only walks between chunks (`train_and_evaluate`), where trainlab.runlog keeps the run's records.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
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

from trainlab import (backup_workers, config, data, diagnostics, fast, fitnets, initializers, losses, models, optim,
                      regularizers, runlog, sharding, transfer, values)
from trainlab.rundir import atomic, on_demand, writers
from trainlab.signals import StopRequest

log = logging.getLogger(__name__)

EVAL_BATCH = 1000  # examples per evaluation batch; one compiled call walks the whole split
CALIBRATION_SUMS = "calibration_sums"  # evaluation's running per-bin sums, turned into `ece` at the end


class Spec(NamedTuple):
  """Everything a compiled program depends on. Hashable: it keys the program cache."""
  structure: str  # JSON of the program groups with every float set to 0
  batch_size: int
  total_steps: int
  chunk_steps: int
  input_shape: tuple[int, ...]
  num_classes: int  # outputs of the model: classes, or regression targets
  task: str = "classification"  # a key of losses.TASKS, set by the data set
  devices: int = 1  # each batch split over this many devices (trainlab.sharding)
  shard_params: bool = False  # with devices > 1: parameters and optimizer state split over them too


def metric_names(spec: Spec) -> tuple[str, ...]:
  """The per-step training metrics, in the order train_step computes them."""
  return ("loss", losses.TASKS[spec.task].metric_name, "learning_rate", "grad_norm")


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  model_state: Any  # mutable collections (batch norm statistics); {} for models without
  opt_state: Any  # holds the optimizer's and the schedule's values
  hparams: Any  # values of the model and regularizer groups
  key: jax.Array  # fixed for the run; data order and dropout masks are folded from it and the step


@functools.lru_cache(maxsize=64)
def structure_of(spec: Spec) -> dict:
  return json.loads(spec.structure)


def selected_regularizers(spec: Spec, hparams: dict) -> dict:
  """{name: options} of the selected regularizers, their values (traced) merged into their structure."""
  return values.merge(structure_of(spec)["regularizer"], hparams["regularizer"])


def create_model(spec: Spec, hparams: dict, **kwargs) -> nn.Module:
  """The model of `spec` with the run's model values (and a regularizer's model options, such as dropout)."""
  model_cfg = values.merge(structure_of(spec)["model"], hparams["model"])
  options = {"dropout_rate": None}
  if structure_of(spec).get("transfer", {}).get("frozen_norms"):
    options["frozen_norms"] = tuple(structure_of(spec)["transfer"]["frozen_norms"])
  for make, o in regularizers.hooks(selected_regularizers(spec, hparams), "model_options"):
    options.update(make(o))
  try:
    return instantiate(model_cfg, num_outputs=spec.num_classes, _convert_="all", **options, **kwargs)
  except InstantiationException as e:  # a model's own check of its keys (the saddle's negative <= dim - 1)
    if isinstance(e.__cause__, config.ConfigError):
      raise e.__cause__ from None
    raise


def create_optimizer(spec: Spec, run_values: dict, seed: Any = None):
  """(tx, learning_rate_fn) of `spec`. Every float of the chain lives in its state (optax.inject_hyperparams),
  so the chain that `train_step` updates with is the same function whatever values it was built from."""
  structure = structure_of(spec)
  merged = {g: values.merge(structure[g], run_values.get(g, {})) for g in ("optimizer", "schedule", "regularizer",
                                                                          "init")}
  moved = structure.get("transfer") and {**structure["transfer"], "lr_scale": merged["init"]["from_lr_scale"]}
  return optim.build_optimizer(merged["optimizer"], merged["schedule"], spec.total_steps, merged["regularizer"],
                               seed=seed, transfer=moved)


def create_train_state(spec: Spec, seed: jax.Array, run_values: dict) -> TrainState:
  """The state at step 0: parameters from the init group, the optimizer's state holding the run's values."""
  key = jax.random.PRNGKey(seed)
  hparams = {"model": run_values["model"], "regularizer": run_values["regularizer"]}
  if "teacher" in run_values:  # distillation's teacher: its parameters are values of the program, never trained
    hparams["teacher"] = run_values["teacher"]
  inits = initializers.build(values.merge(structure_of(spec)["init"], run_values["init"]))
  # Biases start at init.bias through the models' own bias_init, so a model's special biases (the LSTM's
  # forget gate) keep theirs; only the output bias is set afterwards, when it comes from the class frequencies.
  recurrent = {} if inits.recurrent is None else {"recurrent_init": inits.recurrent}
  model = create_model(spec, hparams, kernel_init=inits.kernel, bias_init=jax.nn.initializers.constant(inits.bias),
                       **recurrent)
  variables = dict(model.init(jax.random.fold_in(key, 2), jnp.zeros((1, *spec.input_shape)), train=False))
  params = variables.pop("params")
  if inits.output_bias:
    params = initializers.set_output_bias(params, run_values["init"]["log_class_frequency"])
  hint = structure_of(spec).get("hint")
  if hint is not None:  # FitNets' hint stage: the regressor trains beside the student (trainlab.fitnets)
    regressor = fitnets.Regressor(tuple(hint["hint_shape"]), kernel_init=inits.kernel)
    params[fitnets.REGRESSOR] = regressor.init(jax.random.fold_in(key, 3), jnp.zeros((1, *hint["guided_shape"])))[
        "params"]
  tx, _ = create_optimizer(spec, run_values, seed=seed)
  return TrainState(jnp.zeros((), jnp.int32), params, variables, tx.init(params), hparams, key)


def apply_model(spec: Spec, state: TrainState, params, x, *, train: bool, rng=None, capture: str | None = None):
  """(outputs, model_state): the model on a batch; in training, batch statistics are updated and returned. With
  `capture` (a module path), outputs is (the model's outputs, that module's output)."""
  model = create_model(spec, state.hparams, kernel_init=nn.initializers.zeros)
  variables = {"params": fitnets.model_params(params), **state.model_state}
  rngs = {"dropout": rng} if train else None
  mutable = list(state.model_state) if train else []
  if capture is None and not mutable:
    return model.apply(variables, x, train=train, rngs=rngs), state.model_state
  extra = {"capture_intermediates": fitnets.at(capture)} if capture else {}
  outputs, changed = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable + ["intermediates"] * bool(
      capture), **extra)
  changed = dict(changed)
  if capture:
    outputs = (outputs, fitnets.captured(changed.pop("intermediates"), capture))
  return outputs, (changed if mutable else state.model_state)


def teacher_model(spec: Spec) -> nn.Module:
  teacher = structure_of(spec)["teacher"]
  return instantiate(teacher["model"], num_outputs=teacher["num_outputs"], _convert_="all")


def teacher_logits(spec: Spec, state: TrainState, x: jax.Array) -> jax.Array:
  """The distillation teacher's logits of a batch, from its parameters in the state; it is not differentiated."""
  return jax.lax.stop_gradient(teacher_model(spec).apply(state.hparams["teacher"], x, train=False))


def hint_objective(params, spec: Spec, state: TrainState, x: jax.Array, rng: jax.Array):
  """FitNets' hint stage: (hint loss + the regularizers' penalties, (hint loss, outputs, model_state)). The
  teacher's hint is a value, never differentiated; the student's outputs are only reported."""
  hint = structure_of(spec)["hint"]
  (outputs, guided), model_state = apply_model(spec, state, params, x, train=True, rng=rng,
                                               capture=hint["guided_layer"])
  target = jax.lax.stop_gradient(fitnets.layer_output(teacher_model(spec), state.hparams["teacher"], x,
                                                      hint["hint_layer"]))
  predicted = fitnets.Regressor(tuple(hint["hint_shape"])).apply({"params": params[fitnets.REGRESSOR]}, guided)
  loss = fitnets.hint_loss(target, predicted)
  return loss + regularizers.penalty(params, selected_regularizers(spec, state.hparams)), (loss, outputs, model_state)


def loss_fn(params, spec: Spec, state: TrainState, x: jax.Array, y: jax.Array, rng: jax.Array):
  """(objective, (data loss, outputs, model_state)): the objective is what training minimizes (the task's loss
  reshaped and penalized by the regularizers), the data loss what is reported. In FitNets' hint stage, both are
  the hint loss (`hint_objective`)."""
  if "hint" in structure_of(spec):
    return hint_objective(params, spec, state, x, rng)
  task = losses.TASKS[spec.task]
  selected = selected_regularizers(spec, state.hparams)
  outputs, model_state = apply_model(spec, state, params, x, train=True, rng=rng)
  if "distill" in selected:
    selected = {**selected, "distill": {**selected["distill"], "teacher_logits": teacher_logits(spec, state, x)}}
  data_loss = task.loss(outputs, y).mean()
  # label smoothing and the confidence penalty reshape the classification loss; regression trains on mse
  fitted = regularizers.objective(outputs, y, selected).mean() if spec.task == "classification" else data_loss
  return fitted + regularizers.penalty(params, selected), (data_loss, outputs, model_state)


def train_step(spec: Spec, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
  """One optimizer step on one batch; returns the new state and the step's metrics (float32 scalars)."""
  rng = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
  optimizer = structure_of(spec)["optimizer"]
  x, y = backup_workers.arrived(x, y, jax.random.fold_in(rng, 2), optimizer.get("workers", 1),
                                optimizer.get("backup_workers", 0))
  selected = selected_regularizers(spec, state.hparams)
  x = regularizers.augment_batch(x, selected, jax.random.fold_in(rng, 1))
  (_, (data_loss, outputs, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, spec, state, x, y, rng)
  tx, learning_rate_fn = create_optimizer(spec, {})
  step_metrics = (data_loss, losses.TASKS[spec.task].metric(outputs, y).mean(), learning_rate_fn(state.opt_state),
                  optax.global_norm(grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = regularizers.project(optax.apply_updates(state.params, updates), selected)
  new_state = state._replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
  return new_state, {name: jnp.asarray(v, jnp.float32) for name, v in zip(metric_names(spec), step_metrics)}


def epoch_orders(spec: Spec, state: TrainState, n: int, num_steps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(orders, first epoch): the example orders of every epoch a chunk starting at state.step can touch.

  Each epoch's order is drawn from the run's key and the epoch number, so it depends only on the step and a
  chunk can start anywhere. They are drawn before the loop, not at each epoch's start inside it: no branch on
  the step, which vmap would turn into a permutation at every step. The one extra epoch a chunk touches when it
  starts late in its first epoch is drawn only then.
  """
  per_epoch = n // spec.batch_size
  data_key = jax.random.fold_in(state.key, 0)
  first_epoch = state.step // per_epoch
  spans = -(-spec.chunk_steps // per_epoch)
  draw = lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n)
  touches_one_more = state.step % per_epoch + num_steps > spans * per_epoch
  one_more = jax.lax.cond(touches_one_more, draw, lambda e: jnp.arange(n), first_epoch + spans)  # else unread
  return jnp.concatenate([jax.vmap(draw)(first_epoch + jnp.arange(spans)), one_more[None]]), first_epoch


def train_chunk(spec: Spec, state: TrainState, x: jax.Array, y: jax.Array, num_steps: jax.Array):
  """Runs min(num_steps, chunk_steps) steps in one lax.scan; returns the state and per-step metrics (0 where
  not run: a traced step count, so the last, shorter chunk and masked vmap members reuse the program)."""
  n, batch = x.shape[0], spec.batch_size
  per_epoch = n // batch
  orders, first_epoch = epoch_orders(spec, state, n, num_steps)
  skipped = {name: jnp.zeros((), jnp.float32) for name in metric_names(spec)}

  def body(state, i):
    order = orders[state.step // per_epoch - first_epoch]
    idx = jax.lax.dynamic_slice_in_dim(order, state.step % per_epoch * batch, batch)
    run = lambda s: train_step(spec, s, *sharding.split_batch(spec.devices, (x[idx], y[idx])))
    new_state, step_metrics = jax.lax.cond(i < num_steps, run, lambda s: (s, skipped), state)
    return sharding.keep_state(spec.devices, spec.shard_params, new_state), step_metrics

  return jax.lax.scan(body, state, jnp.arange(spec.chunk_steps))


def evaluate(spec: Spec, state: TrainState, x: jax.Array, y: jax.Array, n: jax.Array) -> dict:
  """Mean loss and metric (and the task's extras, and a classification's expected calibration error `ece`) over
  the first n examples of a split, in batches of up to EVAL_BATCH inside one compiled call. Rows past n are
  padding (`eval_splits` pads validation and test to one shape, so that one program evaluates both); only the
  batches that hold real examples are run."""
  task = losses.TASKS[spec.task]
  rows = x.shape[0]
  size = sharding.padded_batch(spec.devices, min(rows, EVAL_BATCH))
  batches = -(-rows // size)
  pad = batches * size - rows
  xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(batches, size, *x.shape[1:])
  ys = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape(batches, size, *y.shape[1:])

  def sums(b):
    real = b * size + jnp.arange(size) < n
    outputs, _ = apply_model(spec, state, state.params, sharding.split_batch(spec.devices, xs[b]),
                             train=False)
    extras = task.extras(outputs, ys[b]) if task.extras else {}  # an analytic problem's coordinates
    per_example = {"loss": task.loss(outputs, ys[b]), task.metric_name: task.metric(outputs, ys[b]), **extras}
    totals = {k: jnp.sum(v * real) for k, v in per_example.items()}
    if task.calibration:  # each confidence bin's sum of (confidence - correct)
      totals[CALIBRATION_SUMS] = jnp.sum(task.calibration(outputs, ys[b]) * real[:, None], 0)
    return totals

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sums, 0))
  totals = jax.lax.fori_loop(0, (n + size - 1) // size, lambda b, acc: jax.tree.map(jnp.add, acc, sums(b)), zeros)
  gaps = totals.pop(CALIBRATION_SUMS, None)
  return {k: v / n for k, v in totals.items()} | ({} if gaps is None else {"ece": jnp.sum(jnp.abs(gaps)) / n})


class Program(NamedTuple):
  """The compiled functions of one Spec."""
  init: Callable  # (seed, values) -> TrainState
  train_chunk: Callable  # (state, x, y, num_steps) -> (state, per-step metrics)
  evaluate: Callable  # (state, x, y, n) -> {"loss", <the task's metric>, "ece" for a classification}
  diagnostics: diagnostics.Diagnostics  # per-layer statistics and curvature, between chunks


@functools.lru_cache(maxsize=32)
def compile_program(spec: Spec) -> Program:
  """The jitted functions of `spec`; cached, so a sweep's jobs reuse them. Their traces are kept on disk for
  later processes (trainlab.fast) where the structure names no code of the user's."""
  key = repr(spec) if fast.trusted(structure_of(spec)) else None
  apply = functools.partial(apply_model, spec)
  tx, _ = create_optimizer(spec, {})
  activation = structure_of(spec)["model"].get("activation")
  return Program(
      fast.jit(functools.partial(create_train_state, spec), "init", key, run_rarely=True),
      fast.jit(functools.partial(train_chunk, spec), "train_chunk", key, donate_argnums=(0,), keep_barriers=True),
      fast.jit(functools.partial(evaluate, spec), "evaluate", key),
      diagnostics.build(apply, tx, activation, losses.TASKS[spec.task].loss, key))


# --- the host side -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_data(data_cfg_json: str) -> data.Dataset:
  """Loads a data set once per process: jobs of a sweep run in one process share it."""
  loader_cfg, subset = data.split_config(json.loads(data_cfg_json))
  try:
    return data.cut(instantiate(loader_cfg), **subset)
  except InstantiationException as e:  # Hydra wraps the loader's own error; the user needs that one
    if isinstance(e.__cause__, (data.DataError, config.ConfigError)):
      raise e.__cause__ from None
    raise


def load_data(data_cfg: DictConfig) -> data.Dataset:
  return _load_data(json.dumps(OmegaConf.to_container(data_cfg, resolve=True), sort_keys=True))


def eval_splits(dataset: data.Dataset, devices: int = 1) -> tuple[tuple, tuple]:
  """The validation and test splits on the device (on each of `devices`) as (x, y, n), padded to one number of
  rows, so that one compiled `evaluate` serves both (n: the real examples)."""
  rows = max(len(dataset.y_val), len(dataset.y_test))
  pad = lambda a: np.pad(a, [(0, rows - len(a))] + [(0, 0)] * (a.ndim - 1))
  return tuple((*sharding.put_replicated(devices, (pad(x), pad(y))), np.int32(len(y)))
               for x, y in ((dataset.x_val, dataset.y_val), (dataset.x_test, dataset.y_test)))


def _warn_unseen_labels(dataset: data.Dataset) -> None:
  """One warning line when the validation or test split holds labels the training split lacks."""
  for split, labels in data.core.labels_missing_from_training(dataset).items():
    y = dataset.y_val if split == "val" else dataset.y_test
    shown = ", ".join(map(str, labels[:10])) + (", ..." if len(labels) > 10 else "")
    log.warning("the %s split holds labels that never occur in the training split: %s (%d of its %d examples); "
                "the model cannot learn them, so those examples count as errors", split, shown,
                int(np.isin(y, labels).sum()), len(y))


def total_steps(cfg: DictConfig, n_train: int) -> int:
  return cfg.steps if cfg.epochs is None else cfg.epochs * (n_train // cfg.batch_size)


class Setup(NamedTuple):
  """What a run needs before its first step, from its config alone: the program, its values and its data."""
  spec: Spec
  values: Any  # the run's floats (float32), a pytree the program's `init` takes
  dataset: data.Dataset
  program: Program
  transfer: transfer.Plan | None = None  # what it loads from another run and freezes
  teacher: dict | None = None  # where its distillation teacher comes from


def setup(cfg: DictConfig, carried: transfer.Carried | None = None, hint: dict | None = None) -> Setup:
  """Checks the config, loads the data and builds (or finds cached) the compiled program of a run, or of one
  stage of a staged run (trainlab.stages): `carried`, the parameters the stage starts from, loaded as
  init.from_run's are; `hint`, FitNets' hint stage ({"teacher", "checkpoint", "hint_layer", "guided_layer"}).

  Raises:
    config.ConfigError, data.DataError: a config or a data set that cannot be run, with one clear message.
  """
  on_demand.check_resolved(cfg)
  config.check(cfg)
  fast.enable_persistent_cache()
  dataset = load_data(cfg.data)
  _warn_unseen_labels(dataset)
  models.check_input(cfg.model._target_, cfg.data._target_, dataset.layout, dataset.x_train.shape[1:])
  models.check_init(cfg.model._target_, cfg.init.get("recurrent", "same"))
  n_train = len(dataset.y_train)
  if cfg.batch_size > n_train:
    raise config.ConfigError(
        f"batch_size={cfg.batch_size} is not allowed: it must be <= {n_train}, the size of the training split")
  devices = sharding.resolve_devices(cfg.devices, cfg.batch_size, cfg.parallel.shard_params)
  steps = total_steps(cfg, n_train)
  config.warn_ineffective(cfg, steps)
  program_cfg = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in values.PROGRAM_GROUPS}
  init_cfg = dict(program_cfg["init"])
  teacher = transfer.take_teacher(program_cfg)
  if hint is not None:
    teacher = transfer.load_teacher(hint["teacher"], hint["checkpoint"])
  for key in transfer.HOST_KEYS:  # which values the run starts from, not what its program is built from
    program_cfg["init"].pop(key, None)
  structure, run_values = values.split(program_cfg)
  run_values = jax.tree.map(np.float32, run_values)
  if teacher is not None:
    structure["teacher"], run_values["teacher"] = teacher.structure, teacher.variables
  if cfg.init.get("output_bias") == "marginal":
    run_values.setdefault("init", {})["log_class_frequency"] = initializers.log_class_frequency(
        dataset.y_train, dataset.num_classes)
  spec = Spec(json.dumps(structure, sort_keys=True), cfg.batch_size, steps, min(cfg.eval_every, steps),
              tuple(dataset.x_train.shape[1:]), dataset.num_classes, dataset.task, devices,
              cfg.parallel.shard_params and devices > 1)
  if teacher is not None and teacher.structure["num_outputs"] != dataset.num_classes:
    raise config.ConfigError(f"regularizer.distill.teacher: the teacher has {teacher.structure['num_outputs']} "
                             f"outputs and this data set {dataset.num_classes} classes; they must be equal")
  freeze = list(cfg.freeze)
  if hint is not None:
    structure["hint"], after = _hint_structure(spec, run_values, hint)
    spec = spec._replace(structure=json.dumps(structure, sort_keys=True))
    freeze += after
  plan = None
  if init_cfg.get("from_run") or freeze or carried is not None:
    if freeze and "max_norm" in cfg.regularizer:
      raise config.ConfigError("freeze is not allowed with regularizer=max_norm: its projection would move the "
                               "frozen weights")
    shapes = jax.eval_shape(functools.partial(create_train_state, spec), np.int32(0), run_values)
    plan = transfer.plan(init_cfg, freeze, shapes, carried)
    spec = spec._replace(structure=json.dumps({**structure, "transfer": plan.structure()}, sort_keys=True))
  check_fits_in_memory(spec, run_values)
  return Setup(spec, run_values, dataset, compile_program(spec), plan, teacher and teacher.source)


def _hint_structure(spec: Spec, run_values: dict, hint: dict) -> tuple[dict, list[str]]:
  """(the program's `hint` structure, the student's layers the hint does not reach, frozen in its stage)."""
  student = create_model(spec, {"model": run_values["model"], "regularizer": run_values["regularizer"]})
  guided, target, order = fitnets.shapes(student, teacher_model(spec), run_values["teacher"], spec.input_shape,
                                         hint["guided_layer"], hint["hint_layer"])
  params = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, *spec.input_shape)),
                                               train=False))["params"]
  after = [name for name in fitnets.layers_after(order, hint["guided_layer"]) if name in params]
  return {"hint_layer": hint["hint_layer"], "guided_layer": hint["guided_layer"], "guided_shape": list(guided),
          "hint_shape": list(target)}, after


def check_fits_in_memory(spec: Spec, run_values: Any) -> None:
  """Raises ConfigError when the training state and the gradients alone would not fit in the device's memory,
  before anything is compiled or allocated (XLA would fail later, with a long traceback)."""
  if spec not in _TRAINING_BYTES:  # the shapes depend on the structure only, not on the values
    _TRAINING_BYTES[spec] = _training_bytes(spec, run_values)
  needed, parameters = _TRAINING_BYTES[spec]
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  available = stats["bytes_limit"] - stats["bytes_in_use"] if stats else data.core.available_memory()
  if needed > available:
    gib = lambda n: f"{n / 2**30:,.1f} GiB"
    raise config.ConfigError(
        f"the model does not fit in memory: its {parameters:,} parameters, their gradients and the optimizer's state "
        f"need at least {gib(needed)}, and {device.platform} has {gib(available)} available; choose a smaller model "
        "(model.widths, model.features, model.hidden, ...)")


_TRAINING_BYTES: dict[Spec, tuple[int, int]] = {}


def _training_bytes(spec: Spec, run_values: Any) -> tuple[int, int]:
  """(bytes of the state plus one more copy of the parameters for the gradients, number of parameters), from
  the shapes alone (jax.eval_shape allocates nothing)."""
  shapes = jax.eval_shape(functools.partial(create_train_state, spec), np.int32(0), run_values)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return nbytes(shapes) + nbytes(shapes.params), sum(x.size for x in jax.tree.leaves(shapes.params))


def train_and_evaluate(cfg: DictConfig, workdir: pathlib.Path, started: float | None = None,
                       logger: logging.Logger = log, stop_file: pathlib.Path | None = None) -> dict:
  """Trains the model that `cfg` describes, writes the run's files into `workdir`, returns the summary.

  With `cfg.resume`, the run continues from the latest checkpoint in `workdir` (from step 0 if there is none),
  and the logs of the steps after that checkpoint are dropped, since they are about to be run again.

  Raises:
    atomic.WriteError: the disk filled up; what was half-written is removed, the last checkpoint kept.
  """
  try:
    return _train_and_evaluate(cfg, workdir, started, logger, stop_file)
  except Exception as e:
    reason = atomic.disk_full(e)
    if reason is None:
      raise
    writers.remove_unfinished(workdir)
    raise atomic.WriteError(f"cannot write the run's files in {workdir}: {reason}; free some space, then continue "
                            "with the same command and resume=true") from None


def _train_and_evaluate(cfg: DictConfig, workdir: pathlib.Path, started: float | None, logger: logging.Logger,
                        stop_file: pathlib.Path | None) -> dict:
  started = time.perf_counter() if started is None else started
  if cfg.get("pretrain") is not None:  # a run in stages, each a program of its own
    from trainlab import stages

    return stages.train_and_evaluate(cfg, workdir, started, logger, stop_file)
  with StopRequest(stop_file) as stop:
    compiling_before = fast.seconds()
    logger.info("loading data=%s", cfg.data._target_.rsplit(".", 1)[-1])
    run = setup(cfg)
    program = run.program
    train_split = sharding.put_replicated(run.spec.devices, run.dataset[:2])  # once; they stay there
    val, test = eval_splits(run.dataset, run.spec.devices)
    logger.info("run directory %s; %d training, %d validation, %d test examples; compiling the program (a "
                "structure's first run compiles, later runs take it from the cache)", workdir,
                len(run.dataset.y_train), len(run.dataset.y_val), len(run.dataset.y_test))
    state = transfer.load_into(program.init(np.int32(cfg.seed), run.values), run.transfer)
    if run.transfer is not None:
      logger.info("%s", transfer.describe(run.transfer))
    state = sharding.put_state(run.spec.devices, run.spec.shard_params, state)  # onto the mesh; one device: as is
    record, state = runlog.open_run(cfg, pathlib.Path(workdir), run, state, stop, logger, started)
    try:
      wait = lambda: None
      if record.step < record.steps and record.monitor.is_due(record.step):
        # the first chunk and evaluation compile in the background while the starting point's diagnostics run
        first = np.int32(min(record.chunk_steps, record.steps - record.step))
        wait = fast.compile_ahead([(program.train_chunk, (state, *train_split, first)), (program.evaluate, (state, *val))])
      try:
        runlog.diagnose(record, state)
      finally:  # before the first chunk donates the state lowered against, and before an error ends the process
        wait()  # (a process that exits while XLA compiles in a thread aborts)
      state = run_chunks([record], program, state, train_split, val)
      summary = runlog.summarize(record, state, lambda s: program.evaluate(s, *test))
    finally:
      runlog.close(record)
  summary.update(transfer.summary(run.transfer, run.teacher))
  summary["compile_time_s"] = fast.seconds() - compiling_before
  return summary


def run_chunks(records: list[runlog.RunRecord], program: Program, state: Any, train_split: tuple, val: tuple,
               member: Callable[[Any, int], Any] | None = None) -> Any:
  """Walks the chunks of one run, or of the members of a vmapped group; returns the last state.

  With `member` (the vectorized launcher), `state` stacks the members' states, `program` is vmapped over them,
  metrics carry a leading member axis and member(state, i) gives member i's own state. A member that has
  stopped (diverged, stopped early, finished) runs 0 steps in later chunks while the others go on.
  """
  stacked = member is not None
  active = [record.step < record.steps for record in records]
  pick = (lambda tree, i: jax.tree.map(lambda a: a[i], tree)) if stacked else (lambda tree, i: tree)
  member = member or (lambda tree, i: tree)
  while any(active):
    run_now = np.array([min(r.chunk_steps, r.steps - r.step) if a else 0 for r, a in zip(records, active)], np.int32)
    tick, compiling = time.perf_counter(), fast.seconds()
    state, chunk_metrics = program.train_chunk(state, *train_split, run_now if stacked else run_now[0])
    chunk_metrics = jax.device_get(chunk_metrics)  # the one host transfer of the chunk
    seconds = time.perf_counter() - tick - (fast.seconds() - compiling)
    val_metrics = jax.device_get(program.evaluate(state, *val))
    for i, record in enumerate(records):
      if active[i]:
        stopped = (runlog.record_chunk(record, pick(chunk_metrics, i), int(run_now[i]), seconds)
                   or runlog.record_evaluation(record, pick(val_metrics, i), int(run_now[i]), member(state, i)))
        active[i] = not stopped and record.step < record.steps
  return state
