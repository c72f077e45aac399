"""The checks a run's config gets before training, besides the ranges (schema.check_ranges): keys left unset, and
settings that cannot take effect as written, which get one warning line saying what happens instead."""

from __future__ import annotations

import dataclasses
import logging

from omegaconf import DictConfig, OmegaConf

from trainlab.config.schema import ConfigError, check_ranges

log = logging.getLogger("trainlab")


def check(cfg: DictConfig) -> None:
  """Raises ConfigError for the first mandatory key left unset (`???`), then for the first value out of range, then
  for settings that cannot be run together."""
  missing = sorted(OmegaConf.missing_keys(cfg))
  if missing:
    raise ConfigError(f"{missing[0]} is mandatory and not set: add it to the command, for example "
                      f"{missing[0]}={_example(cfg, missing[0])}")
  check_ranges(cfg)
  _backup_workers(cfg.optimizer, cfg.batch_size)
  _layer_norm_of_one_unit(cfg.model)


def _backup_workers(optimizer: DictConfig, batch_size: int) -> None:
  """N workers with b backups (trainlab.backup_workers) split each batch into N equal shards and wait for N - b."""
  workers, backups = optimizer.get("workers", 1), optimizer.get("backup_workers", 0)
  if backups >= workers:
    raise ConfigError(f"optimizer.backup_workers={backups} is not allowed with optimizer.workers={workers}: it must "
                      f"be below the number of workers (0 to {workers - 1}), so that some worker's gradient arrives")
  if batch_size % workers:
    raise ConfigError(f"optimizer.workers={workers} is not allowed with batch_size={batch_size}: the workers split "
                      "each batch into equal shards, so it must divide batch_size")


def _layer_norm_of_one_unit(model: DictConfig) -> None:
  """Layer norm over a layer of one unit subtracts the unit's own value: the layer would output its bias alone."""
  if model.get("norm") != "layer":
    return
  hidden = list(model.widths) if "widths" in model else [model.width] * (model.depth - 1) if "depth" in model else []
  if 1 in hidden:
    size = "model.widths" if "widths" in model else "model.width"
    raise ConfigError(f"model.norm=layer is not allowed with a hidden layer of one unit ({size}="
                      f"{OmegaConf.select(model, size.split('.')[1])}): normalized over its one unit it is always 0; "
                      "use model.norm=batch, or wider layers")


def _example(cfg: DictConfig, key: str) -> str:
  """The `example` written beside the key's schema field, or a placeholder."""
  parent, _, name = key.rpartition(".")
  node_type = OmegaConf.get_type(OmegaConf.select(cfg, parent) if parent else cfg)
  fields = {f.name: f for f in dataclasses.fields(node_type)} if dataclasses.is_dataclass(node_type) else {}
  return fields[name].metadata.get("example", "VALUE") if name in fields else "VALUE"


def warn_ineffective(cfg: DictConfig, steps: int) -> list[str]:
  """Logs (and returns) one warning per setting that cannot take effect as written in a run of `steps` steps."""
  chunk = min(cfg.eval_every, steps)
  edges = [*range(0, steps, chunk), steps]  # where the host runs anything: the ends of the compiled chunks
  warnings = [*_optimizer(cfg.optimizer, steps), *_schedule(cfg.schedule, steps),
              *_between_chunks(cfg, edges, chunk)]
  for warning in warnings:
    log.warning("%s", warning)
  return warnings


def _optimizer(optimizer: DictConfig, steps: int) -> list[str]:
  name = optimizer._target_.rsplit(".", 1)[-1]
  if optimizer.get("then") is None and optimizer.get("switch_step") is not None:
    return [f"optimizer.switch_step={optimizer.switch_step} has no effect without optimizer.then (the optimizer "
            f"to switch to): the run uses {name} throughout"]
  if optimizer.get("then") is not None and optimizer.switch_step is not None and optimizer.switch_step >= steps:
    return [f"optimizer.switch_step={optimizer.switch_step} is not below steps={steps}: the run never switches to "
            f"{optimizer.then._target_.rsplit('.', 1)[-1]} and uses {name} throughout"]
  return []


def _schedule(schedule: DictConfig, steps: int) -> list[str]:
  """A schedule counts its steps after the warmup: k = 0 .. steps - warmup_steps - 1."""
  warmup, found = schedule.get("warmup_steps", 0), []
  if warmup >= steps:
    found.append(f"schedule.warmup_steps={warmup} is not below steps={steps}: the learning rate is still warming "
                 "up when the run ends and never reaches optimizer.lr")
  if schedule.get("step_size") is not None and schedule.step_size >= steps - warmup:
    found.append(f"schedule.step_size={schedule.step_size} is not below steps - warmup_steps={steps - warmup}: "
                 "the learning rate never decays")
  if schedule.get("staircase") and (schedule.decay_steps is None or schedule.decay_steps >= steps - warmup):
    found.append(f"schedule.staircase=true with decay_steps={schedule.decay_steps or 'null (steps - warmup_steps)'}"
                 ": its first stair is past the last step, so the learning rate never decays")
  return found


def _between_chunks(cfg: DictConfig, edges: list[int], chunk: int) -> list[str]:
  """What runs on the host between compiled chunks happens at chunk edges only, the first at or past each multiple
  of its interval (trainlab.diagnostics): an interval that is not a multiple of the chunk is not kept as written."""
  from trainlab.diagnostics import _due  # the Monitor's own rule, which checkpoints follow too

  found = []
  for key in ("diagnostics.every", "diagnostics.histogram_every", "diagnostics.hessian_every", "checkpoint.every"):
    every = OmegaConf.select(cfg, key)
    if not every or every % chunk == 0:
      continue
    last, due = (None, []) if key.startswith("diagnostics") else (0, [])  # diagnostics only run at step 0
    at_end = key in ("diagnostics.histogram_every", "checkpoint.every")  # these are written at the last step too
    for edge in edges:
      if _due(every, last, edge) or (at_end and edge == edges[-1]):
        last, due = edge, [*due, edge]
    shown = ", ".join(map(str, due)) if len(due) <= 6 else f"{', '.join(map(str, due[:4]))}, ..., {due[-1]}"
    found.append(f"{key}={every} is not a multiple of eval_every={cfg.eval_every}: it can act at chunk edges only, "
                 f"at steps {shown}")
  early = cfg.regularizer.get("early_stopping")
  if early is not None and early.patience + 1 >= len(edges) - 1:  # the earliest stop: patience + 1 evaluations
    found.append(f"regularizer.early_stopping.patience={early.patience} needs {early.patience + 2} evaluations or "
                 f"more to stop early, and the run has {len(edges) - 1}: it never stops early")
  return found
