"""Starting from another run's parameters (`init.from_run`) and keeping parts of a model fixed (`freeze`).

Layers are named by their path in the params tree (`Dense_0`, `Block_1/Conv_0`), and selected by paths or glob
patterns that match a layer or any module above it (`Dense_*`, `Block_1`); the word `hidden` selects every layer
but the output layer (the top-level `Dense_N` with the largest N, which every model ends with), so
`freeze=[hidden]` on a loaded run trains a linear classifier on its top-level features.

Which leaves are loaded and which are frozen is structure (a mask the optimizer is built with, in
`trainlab.optim`), decided on the host before the program is built; the loaded arrays are values: they replace
the initial parameters after the program's `init`, so a run loaded from any source reuses the program of any
other with the same structure. The source run is only read: its checkpoints through `rundir.checkpoint`'s own
restore, opened read-only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import pathlib
import re
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from trainlab import optim
from trainlab.config import ConfigError

HOST_KEYS = ("from_run", "from_checkpoint", "from_layers", "source_overrides")  # init keys read here, not by the program
ALL_BUT_OUTPUT = "hidden"


class Plan(NamedTuple):
  """What a run takes from where: the leaves (paths) it loads and freezes, the arrays it loads, and the record
  of its source for the log and summary.json."""
  loaded: tuple[str, ...]  # params leaves taken from the source
  frozen: tuple[str, ...]  # params leaves the optimizer leaves alone
  frozen_norms: tuple[str, ...]  # batch-norm layers inside the frozen part: they use their (loaded) statistics
  arrays: dict  # {"params": {path: array}, "model_state": {path: array}}
  loaded_layers: tuple[str, ...]
  fresh_layers: tuple[str, ...]
  source: dict | None  # init_source of summary.json

  def structure(self) -> dict:
    return {"loaded": list(self.loaded), "frozen": list(self.frozen), "frozen_norms": list(self.frozen_norms)}


# --- paths ------------------------------------------------------------------------------------------------
def flatten(tree: Any) -> dict[str, Any]:
  """{"Dense_0/kernel": leaf, ...} of a params (or model state) tree, in its leaves' order."""
  paths = jax.tree.leaves(optim.leaf_labels(tree, lambda path: path))
  return dict(zip(paths, jax.tree.leaves(tree)))


def layer_of(path: str) -> str:
  return path.rsplit("/", 1)[0] if "/" in path else path


def output_layer(paths: Sequence[str]) -> str | None:
  """The top-level Dense_N with the largest N: the layer every model of trainlab.models ends with."""
  found = {int(m.group(1)) for p in paths if (m := re.fullmatch(r"Dense_(\d+)", p.split("/")[0]))}
  return f"Dense_{max(found)}" if found else None


def select(paths: Sequence[str], patterns: Sequence[str], key: str) -> list[str]:
  """The paths that the patterns select; ConfigError naming `key` for a pattern that selects none."""
  out = output_layer(paths)
  chosen = set()
  for pattern in patterns:
    if pattern == ALL_BUT_OUTPUT:
      if out is None:
        raise ConfigError(f"{key}=[{ALL_BUT_OUTPUT}] is not allowed here: the model has no dense output layer")
      hits = {p for p in paths if not (p == out or p.startswith(out + "/"))}
    else:
      hits = {p for p in paths if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(p))}
    if not hits:
      raise ConfigError(f"{key}: {pattern} matches no layer of this model; its layers are "
                        f"{', '.join(sorted({layer_of(p) for p in paths}))} (or {ALL_BUT_OUTPUT}: all but the output)")
    chosen |= hits
  return sorted(chosen)


def _prefixes(path: str) -> list[str]:
  parts = path.split("/")
  return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


# --- the source run ---------------------------------------------------------------------------------------
def find_run(path: str, key: str = "init.from_run") -> tuple[pathlib.Path, int | None]:
  """(the run directory, a step named by the path) of init.from_run: a run directory, its checkpoints folder,
  or one checkpoint in it (checkpoints/STEP)."""
  from trainlab.rundir import checkpoint

  given = pathlib.Path(path).expanduser().resolve()
  step = None
  if given.name.isdigit() and given.parent.name == checkpoint.CHECKPOINT_DIR:
    given, step = given.parent, int(given.name)
  run_dir = given.parent if given.name == checkpoint.CHECKPOINT_DIR else given
  if not run_dir.is_dir():
    raise ConfigError(f"{key}={path}: no such directory; it must be a run directory (or its checkpoints "
                      "folder) of an earlier run")
  if not checkpoint.has_checkpoint(run_dir):
    raise ConfigError(f"{key}={path}: {run_dir} holds no checkpoint (checkpoints/STEP/); it must be the "
                      "directory of a run that saved one")
  return run_dir, step


def read_source(path: str, which: str, keys: tuple[str, str] = ("init.from_run", "init.from_checkpoint")
                ) -> tuple[dict, dict, dict]:
  """(params, model_state, record) of the checkpoint of the run at `path` that `which` names (best, last or a
  step), restored as saved (nothing is written into the source run); `keys` name the two in messages."""
  from trainlab.rundir import checkpoint, writers

  run_dir, step_in_path = find_run(path, keys[0])
  which = str(which)
  if which not in ("best", "last") and not which.isdigit():
    raise ConfigError(f"{keys[1]}={which} is not allowed: it must be best, last or a step number")
  with _quiet("absl"):  # orbax logs a warning that a read-only manager is read-only
    checkpointer = checkpoint.Checkpointer(run_dir, read_only=True)
  try:
    steps = checkpointer.all_steps()
    step = step_in_path if step_in_path is not None else int(which) if which.isdigit() else steps[-1]
    if step not in steps:
      raise ConfigError(f"{keys[1]}={which}: {run_dir} has no checkpoint at step {step}; it has "
                        f"{', '.join(map(str, steps))}")
    try:
      host = checkpointer.restore_host(step)
      best = which == "best" and "early_stopping" in host
      if best:
        params, model_state = checkpointer.restore(None, step, "best")
      elif which != "best":
        state = checkpointer.restore(None, step)
        params, model_state = state["params"], state["model_state"]
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds; the user needs which checkpoint and why
      raise ConfigError(f"{keys[0]}={path}: the checkpoint at step {step} in {run_dir} does not read: "
                        f"{str(e).splitlines()[0][:200]}") from None
    if which == "best" and not best:
      raise ConfigError(f"{keys[1]}=best: the run in {run_dir} kept no best parameters (it ran "
                        "without regularizer=early_stopping); use last or a step")
    step = host["early_stopping"]["best_step"] if best else step
  finally:
    checkpointer.close()
  summary = writers.read_summary(run_dir) or {}
  record = {"run": str(run_dir), "checkpoint": which, "step": step, "overrides": summary.get("overrides"),
            "config": host.get("config")}
  return params, model_state, record


@contextlib.contextmanager
def _quiet(name: str):
  logger = logging.getLogger(name)
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


# --- the plan -------------------------------------------------------------------------------------------------
class Carried(NamedTuple):
  """Parameters handed from one stage of a run to the next (trainlab.stages), in place of a source run's."""
  params: dict  # {path: array}: the previous stage's trained leaves (or their shapes, when resuming)
  model_state: dict  # {path: array} of its model state
  layers: tuple[str, ...] = ()  # the layers taken (paths or patterns); () takes every one that fits


def plan(init: dict, freeze: Sequence[str], fresh: Any, carried: Carried | None = None) -> Plan | None:
  """The run's Plan (None when it neither loads nor freezes), from its init group, its freeze list and `fresh`,
  the shapes of its initial TrainState (jax.eval_shape); `carried`, a stage's parameters from the one before,
  is loaded as init.from_run would be, without a source run.

  Raises:
    ConfigError: no run or checkpoint at init.from_run; no layer in common with the source; a layer of
      init.from_layers that the source lacks or has with another shape; a freeze pattern that matches nothing.
  """
  if not init.get("from_run") and not freeze and carried is None:
    return None
  fresh_params, fresh_stats = flatten(fresh.params), flatten(fresh.model_state)
  loaded, arrays, source = [], {"params": {}, "model_state": {}}, None
  if init.get("from_run") or carried is not None:
    if carried is None:
      params, model_state, source = read_source(init["from_run"], init.get("from_checkpoint", "last"))
      saved, saved_stats = flatten(params), flatten(model_state)
    else:
      saved, saved_stats = carried.params, carried.model_state
      init = {**init, "from_layers": list(carried.layers), "from_run": "the previous stage"}
    shape = lambda p: tuple((fresh_params[p] if p in fresh_params else fresh_stats[p]).shape)
    fits = lambda p, have: p in have and tuple(np.shape(have[p])) == shape(p)
    wanted = list(fresh_params)
    if init.get("from_layers"):
      wanted = select(list(fresh_params), init["from_layers"], "init.from_layers")
      bad = [p for p in wanted if not fits(p, saved)]
      if bad:
        what = "lacks" if bad[0] not in saved else f"has shape {tuple(np.shape(saved[bad[0]]))} for"
        raise ConfigError(f"init.from_layers: the run in {source['run']} {what} {bad[0]} (this model's is "
                          f"{tuple(fresh_params[bad[0]].shape)}); it has {', '.join(_layers(saved))}")
    loaded = [p for p in wanted if fits(p, saved)]
    if not loaded:
      raise ConfigError(f"init.from_run={init['from_run']}: the source model has no layer in common with this one "
                        f"(same path and shape): it has {', '.join(_layers(saved))}, this one "
                        f"{', '.join(_layers(fresh_params))}")
    arrays["params"] = {p: saved[p] for p in loaded}
    loaded_layers = {layer_of(p) for p in loaded}
    arrays["model_state"] = {p: saved_stats[p] for p in fresh_stats
                             if _stats_layer(p) in loaded_layers and fits(p, saved_stats)}
  frozen = select(list(fresh_params), freeze, "freeze") if freeze else []
  frozen_layers = {layer_of(p) for p in frozen}
  norms = sorted({_stats_layer(p) for p in fresh_stats if _stats_layer(p) in frozen_layers})
  layers = _layers(fresh_params)
  loaded_layers = sorted({layer_of(p) for p in loaded})
  return Plan(tuple(loaded), tuple(frozen), tuple(norms), arrays, tuple(loaded_layers),
              tuple(layer for layer in layers if layer not in loaded_layers), source)


def _layers(flat: dict) -> list[str]:
  return sorted({layer_of(p) for p in flat})


def _stats_layer(path: str) -> str:
  """The layer of a model-state leaf: batch_stats/BatchNorm_0/mean -> BatchNorm_0."""
  return layer_of(path.split("/", 1)[1] if "/" in path else path)


def load_into(state: Any, plan: Plan | None) -> Any:
  """The state with the plan's loaded arrays in place of the initial ones (same shapes and dtypes: the program
  is not compiled again); the optimizer's state, which holds no parameter values, is kept."""
  if plan is None or not plan.arrays["params"]:
    return state

  def put(tree: Any, arrays: dict) -> Any:
    leaves = flatten(tree)
    new = {p: np.asarray(arrays[p], leaves[p].dtype) if p in arrays else leaves[p] for p in leaves}
    return jax.tree.unflatten(jax.tree.structure(tree), [new[p] for p in leaves])

  return state._replace(params=put(state.params, plan.arrays["params"]),
                        model_state=put(state.model_state, plan.arrays["model_state"]))


def summary(plan: Plan | None, teacher: dict | None = None) -> dict:
  """The fields summary.json gets from the plan and from where a distillation teacher came."""
  found = {"distill_teacher": teacher} if teacher else {}
  if plan is None:
    return found
  return {**found, "loaded_layers": list(plan.loaded_layers),
          "fresh_layers": list(plan.fresh_layers) if plan.source else None,
          "frozen_layers": sorted({layer_of(p) for p in plan.frozen}), "init_source": plan.source}


def describe(plan: Plan) -> str:
  """The log line of what was loaded, initialized fresh and frozen."""
  parts = []
  if plan.source:
    src = plan.source
    parts.append(f"init.from_run: loaded {', '.join(plan.loaded_layers)} from {src['run']} ({src['checkpoint']}, "
                 f"step {src['step']}); fresh from the init group: {', '.join(plan.fresh_layers) or 'none'}")
  if plan.frozen:
    parts.append(f"frozen: {', '.join(sorted({layer_of(p) for p in plan.frozen}))}")
  return "; ".join(parts)


# --- a teacher (regularizer=[distill]) --------------------------------------------------------------------
TEACHER_KEYS = ("teacher", "checkpoint")  # regularizer.distill keys read here, not by the program


class Teacher(NamedTuple):
  structure: dict  # {"model": its model group, "num_outputs"}: what the program builds the teacher from
  variables: dict  # {"params": ..., and its model state (batch norm statistics)}: values the program is fed
  source: dict  # distill_teacher of summary.json


def take_teacher(program_cfg: dict) -> Teacher | None:
  """Reads the teacher that regularizer.distill names, and takes its host keys out of the program's config."""
  options = program_cfg["regularizer"].get("distill")
  if options is None:
    return None
  path, which = (options.pop(key) for key in TEACHER_KEYS)
  options.pop("teacher_overrides", None)  # what trained the teacher at `path` (trainlab.rundir.on_demand)
  return load_teacher(path, which)


def load_teacher(path: str, which: str,
                 keys: tuple[str, str] = ("regularizer.distill.teacher", "regularizer.distill.checkpoint")) -> Teacher:
  """The teacher run at `path` (its checkpoint `which`), for distillation or FitNets' hints."""
  params, model_state, source = read_source(path, which, keys)
  model = (source["config"] or {}).get("model")
  out = output_layer(list(flatten(params)))
  if model is None or out is None:
    raise ConfigError(f"{keys[0]}={path}: its checkpoint records no model with a dense output "
                      "layer (a run of another version of trainlab?)")
  variables = jax.tree.map(np.asarray, {"params": params, **model_state})
  return Teacher({"model": model, "num_outputs": int(np.shape(params[out]["kernel"])[-1])}, variables, source)
