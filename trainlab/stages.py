"""Runs in stages (the `pretrain` group): greedy layer-wise supervised pretraining, and FitNets' hint training
followed by distillation.

A staged run is one run: one directory, one metrics.jsonl (each point with its `stage`) and TensorBoard run, and
one step count across its stages. Each stage is the run's config changed where the stage differs (the model's
widths, the steps, the frozen layers, the regularizers, FitNets' hint), so a compiled program of its own, built by
train.setup as any run's. A stage starts from the step where the one before ended, from its trained parameters:
those whose path and shape fit are loaded as init.from_run loads a run's (trainlab.transfer), with a fresh
optimizer. Its checkpoints record the stage, so a resumed run rebuilds the program of the stage it stopped in and
goes on inside it.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from trainlab import config, fast, runlog, sharding, train, transfer
from trainlab.config import ConfigError
from trainlab.rundir import checkpoint
from trainlab.signals import StopRequest

log = logging.getLogger(__name__)


class Stage(NamedTuple):
  name: str
  cfg: DictConfig  # the run's config as this stage trains
  carry: str  # what it takes from the stage before: "none", "hidden" (all but its output layer) or "all"
  freeze_carried: bool = False  # whether the layers it takes stay fixed
  hint: dict | None = None  # FitNets' hint stage: train.setup's `hint`


# --- the stages of each option ---------------------------------------------------------------------------------
def greedy(cfg: DictConfig, steps_per_stage: int, freeze_lower: bool, finetune_steps: int) -> list[Stage]:
  """Stage k trains hidden layers 1..k of the MLP and a fresh output layer, starting from the hidden layers of
  stage k - 1 (kept fixed with freeze_lower); then, unless finetune_steps is 0, the whole net trains."""
  widths = list(cfg.model.get("widths") or [])
  if not cfg.model._target_.endswith(".MLP") or not widths:
    raise ConfigError("pretrain=greedy is for model=mlp with at least one hidden layer (model.widths): its "
                      "stages add the hidden layers one by one")
  stages = [Stage(f"layer {k}", _changed(cfg, steps=steps_per_stage, widths=widths[:k]), "none" if k == 1 else
                  "hidden", freeze_lower) for k in range(1, len(widths) + 1)]
  if finetune_steps:
    stages.append(Stage("finetune", _changed(cfg, steps=finetune_steps), "all"))
  return stages


def fitnets(cfg: DictConfig, hint_layer: str, guided_layer: str, hint_steps: int, distill_steps: int) -> list[Stage]:
  """Stage 1 (hint): the student's layers up to guided_layer, and a regressor, learn the teacher's hint_layer;
  stage 2 (distill): the whole student trains on the run's objective, distillation from the same teacher."""
  if "distill" not in cfg.regularizer:
    raise ConfigError("pretrain=fitnets needs regularizer=[distill] with regularizer.distill.teacher=DIR: that "
                      "teacher gives the hints of stage 1 and distills into the student in stage 2")
  teacher = cfg.regularizer.distill
  hint = {"teacher": teacher.teacher, "checkpoint": str(teacher.checkpoint), "hint_layer": hint_layer,
          "guided_layer": guided_layer}
  regularizers = [name for name in cfg.regularizer if name != "distill"]
  return [Stage("hint", _changed(cfg, steps=hint_steps, regularizer=regularizers), "none", hint=hint),
          Stage("distill", _changed(cfg, steps=distill_steps), "all")]


def _changed(cfg: DictConfig, steps: int, widths: list | None = None, regularizer: list | None = None) -> DictConfig:
  """The run's config as one stage trains it."""
  stage = copy.deepcopy(cfg)
  with open_dict(stage):
    stage.pretrain, stage.steps, stage.epochs = None, steps, None
    if widths is not None:
      stage.model.widths = widths
    for name in list(stage.regularizer):
      if regularizer is not None and name not in regularizer:
        del stage.regularizer[name]
  return stage


def stages_of(cfg: DictConfig) -> list[Stage]:
  """The stages that cfg.pretrain makes.

  Raises:
    ConfigError: a setting a staged run cannot take, in one line.
  """
  config.check(cfg)
  if cfg.epochs is not None:
    raise ConfigError(f"epochs={cfg.epochs} is not allowed with pretrain: each stage's length is a number of steps "
                      "(pretrain.*_steps)")
  if cfg.init.get("from_run"):
    raise ConfigError("init.from_run is not allowed with pretrain: a staged run starts from the init group")
  if "early_stopping" in cfg.regularizer:
    raise ConfigError("regularizer=early_stopping is not allowed with pretrain: it would end the whole run "
                      "inside one stage")
  options = OmegaConf.to_container(cfg.pretrain, resolve=True)
  return get_method(options.pop("_target_"))(cfg, **options)


# --- one stage's program and starting point ------------------------------------------------------------------
def _carried(stage: Stage, params: dict, model_state: dict) -> transfer.Carried | None:
  """What `stage` takes of the parameters (flat, by path) that the stage before ended with."""
  if stage.carry == "none":
    return None
  layers = ()
  if stage.carry == "hidden":
    output = transfer.output_layer(list(params))
    layers = tuple(sorted({transfer.layer_of(p) for p in params if transfer.layer_of(p) != output}))
  return transfer.Carried(params, model_state, layers)


def _setup(stage: Stage, carried: transfer.Carried | None) -> train.Setup:
  if carried is not None and stage.freeze_carried:
    stage = stage._replace(cfg=copy.deepcopy(stage.cfg))
    with open_dict(stage.cfg):
      stage.cfg.freeze = [*stage.cfg.freeze, *carried.layers]
  return train.setup(stage.cfg, carried, stage.hint)


def _shapes_at_end(stages: list[Stage], index: int) -> tuple[dict, dict]:
  """The flat shapes of the parameters and model state stage `index` ends with (for a resumed run, which
  restores its state instead of taking it from the stage before)."""
  run = train.setup(stages[index].cfg, None, stages[index].hint)
  shapes = jax.eval_shape(functools.partial(train.create_train_state, run.spec), np.int32(0), run.values)
  return transfer.flatten(shapes.params), transfer.flatten(shapes.model_state)


def _stage_of_checkpoint(cfg: DictConfig, workdir: pathlib.Path) -> int:
  """The stage (from 1) of the latest checkpoint of a run being resumed; 1 when there is none."""
  if not cfg.resume or not checkpoint.has_checkpoint(workdir):
    return 1
  saved = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    steps = saved.all_steps()
    return saved.restore_host(steps[-1]).get("stage", 1) if steps else 1
  finally:
    saved.close()


def describe(number: int, stages: list[Stage], run: train.Setup, first: int, last: int) -> str:
  stage = stages[number - 1]
  widths = stage.cfg.model.get("widths")
  parts = [f"stage {number}/{len(stages)} ({stage.name}): steps {first}..{last}",
           *([f"model.widths={list(widths)}"] if widths is not None else [])]
  if run.transfer is not None and run.transfer.loaded_layers:
    parts.append(f"from the stage before: {', '.join(run.transfer.loaded_layers)}")
  if run.transfer is not None and run.transfer.frozen:
    parts.append(f"frozen: {', '.join(sorted({transfer.layer_of(p) for p in run.transfer.frozen}))}")
  if stage.hint:
    parts.append(f"hint: the student's {stage.hint['guided_layer']} learns the teacher's {stage.hint['hint_layer']}")
  return "; ".join(parts)


# --- the run -------------------------------------------------------------------------------------------------
def train_and_evaluate(cfg: DictConfig, workdir: pathlib.Path, started: float, logger: logging.Logger = log,
                       stop_file: pathlib.Path | None = None) -> dict:
  """train.train_and_evaluate of a staged run: its stages one after the other, in one run directory."""
  workdir = pathlib.Path(workdir)
  stages = stages_of(cfg)
  ends = list(itertools.accumulate(stage.cfg.steps for stage in stages))
  with StopRequest(stop_file) as stop:
    compiling_before = fast.seconds()
    number = _stage_of_checkpoint(cfg, workdir)  # where the run starts: a resumed one, in its checkpoint's stage
    carried = None
    if number > 1:
      carried = _carried(stages[number - 1], *_shapes_at_end(stages, number - 2))
    run = _setup(stages[number - 1], carried)
    devices = run.spec.devices  # every stage's program splits its batches over the same mesh (trainlab.sharding)
    train_split = sharding.put_replicated(devices, run.dataset[:2])
    val, test = train.eval_splits(run.dataset, devices)
    logger.info("run directory %s; %d training, %d validation, %d test examples; %d stages, %d steps", workdir,
                len(run.dataset.y_train), len(run.dataset.y_val), len(run.dataset.y_test), len(stages), ends[-1])
    state = run.program.init(np.int32(cfg.seed), run.values)  # a resumed run's checkpoint replaces it
    state = sharding.put_state(devices, run.spec.shard_params, state)
    record, state = runlog.open_run(cfg, workdir, run, state, stop, logger, started)
    built = number  # the stage whose program `run` holds
    try:
      for number in range(number, len(stages) + 1):
        start, end = (ends[number - 2] if number > 1 else 0), ends[number - 1]
        if built != number:  # the stage begins here: from the state the one before ended with
          carried = _carried(stages[number - 1], transfer.flatten(state.params), transfer.flatten(state.model_state))
          run = _setup(stages[number - 1], carried)
          state = transfer.load_into(run.program.init(np.int32(cfg.seed), run.values), run.transfer)
          state = sharding.put_state(devices, run.spec.shard_params,
                                     state._replace(step=jnp.asarray(record.step, jnp.int32)))
          record.monitor.diagnostics, built = run.program.diagnostics, number
        record.stage, record.steps, record.chunk_steps = number, end, run.spec.chunk_steps
        record.monitor.final_step = end
        record.writer.fields["stage"] = number
        if record.step == start:
          logger.info("%s", describe(number, stages, run, start, end))
          record.writer.plot(start, {"stage": number})
          runlog.diagnose(record, state)
        state = train.run_chunks([record], run.program, state, train_split, val)
        if record.status != "completed" or record.step < end:
          break
        record.stage_results.append(_result(number, stages[number - 1], run, start, end, record.last_val))
        if stop.signal_name and number < len(stages):  # the stage's last checkpoint is the run's
          record.status = "interrupted"
          break
      record.steps = ends[-1]
      summary = runlog.summarize(record, state, lambda s: run.program.evaluate(s, *test))
    finally:
      runlog.close(record)
  summary.update(stages=record.stage_results, **({"distill_teacher": run.teacher} if run.teacher else {}))
  summary["compile_time_s"] = fast.seconds() - compiling_before
  return summary


def _result(number: int, stage: Stage, run: train.Setup, start: int, end: int, last_val: dict) -> dict:
  """A finished stage in summary.json: what trained, and its final validation point."""
  plan = run.transfer
  return {"stage": number, "name": stage.name, "first_step": start, "last_step": end,
          **({"model.widths": list(stage.cfg.model.widths)} if "widths" in stage.cfg.model else {}),
          "loaded_layers": list(plan.loaded_layers) if plan else [],
          "frozen_layers": sorted({transfer.layer_of(p) for p in plan.frozen}) if plan else [], **last_val}
