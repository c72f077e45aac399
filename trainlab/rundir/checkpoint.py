"""Checkpoints of a run, so that an interrupted run continues exactly where it stopped.

A checkpoint holds the whole `TrainState` pytree (step, params, model_state, opt_state with the optimizer's and
the schedule's values, hparams, and the run's PRNG key) through orbax, and beside it a small JSON record of the
host loop: the partial window of training metrics not yet logged, the best validation point so far, the
training time, and the config the run was started with. The data order depends only on the key and the step,
so this is everything a resumed run needs to continue bit for bit. Orbax writes each checkpoint into a
temporary folder and renames it into place, so a run killed while saving keeps its previous checkpoint.

Checkpoints live in `<run dir>/checkpoints/<step>/`.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
from typing import Any

from trainlab import config

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Keys that may differ between a run and its resumption: they say how to run it, not what to run.
RUN_CONTROL_KEYS = ("resume", "checkpoint")


class ResumeError(config.ConfigError):
  """A run directory that cannot be resumed by this config; the directory is left as it is."""


class Checkpointer:
  """Saves and restores (TrainState, host record) pairs in `<workdir>/checkpoints`, keeping the newest `keep`."""

  def __init__(self, workdir: pathlib.Path, keep: int | None = None):
    import orbax.checkpoint as ocp  # imported here: it imports JAX, which `trainlab --help` must not wait for

    self._ocp = ocp
    self.directory = pathlib.Path(workdir).resolve() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, host: dict) -> None:
    """Writes the checkpoint of `step` (blocking: the state's buffers are donated to the next chunk)."""
    args = self._ocp.args
    self._manager.save(step, args=args.Composite(state=args.StandardSave(state), host=args.JsonSave(host)), force=True)
    self._manager.wait_until_finished()

  def restore_host(self, step: int) -> dict:
    """The host record of `step` alone: cheap, and readable whatever shapes the saved state has."""
    return self._manager.restore(step, args=self._ocp.args.Composite(host=self._ocp.args.JsonRestore()))["host"]

  def restore(self, target: Any, step: int) -> Any:
    """The state saved at `step`.

    Args:
      target: a state with the structure and dtypes to restore into (a fresh TrainState), or None for the
        saved pytree as orbax rebuilds it (dicts and lists).
      step: which checkpoint.
    """
    args = self._ocp.args
    return self._manager.restore(step, args=args.Composite(state=args.StandardRestore(target)))["state"]

  def close(self) -> None:
    self._manager.close()


def clear(workdir: pathlib.Path) -> None:
  """Removes a run's checkpoints, so that the run starts again from step 0."""
  shutil.rmtree(pathlib.Path(workdir) / CHECKPOINT_DIR, ignore_errors=True)


def clear_step(workdir: pathlib.Path, step: int) -> None:
  """Removes the checkpoint of one step (the run then resumes from an earlier one)."""
  shutil.rmtree(pathlib.Path(workdir) / CHECKPOINT_DIR / str(step))


def has_checkpoint(workdir: pathlib.Path) -> bool:
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def run_config(cfg_container: dict) -> dict:
  """The part of a run's config that a resumption must repeat exactly."""
  return {k: v for k, v in cfg_container.items() if k not in RUN_CONTROL_KEYS}


def check_same_config(saved: dict, current: dict, workdir: pathlib.Path) -> None:
  """Raises ResumeError naming the first keys whose values differ between a checkpoint's run and this one.

  A key the checkpoint's config lacks came with a newer trainlab than the one that wrote it (a new option, at
  its default unless overridden now): it is not a difference, since the old run could not have set it; a
  warning names it.
  """
  differences, added = [], []

  def walk(a: Any, b: Any, prefix: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        if key in a:
          walk(a[key], b.get(key), f"{prefix}{key}.")
        else:
          added.append(f"{prefix}{key}")
    elif a != b:
      differences.append(f"{prefix[:-1]}={b} (the checkpoint has {a})")

  walk(saved, current, "")
  if added and not differences:
    log.warning("resuming a run whose checkpoint predates the config keys %s: they take their values now",
                ", ".join(added))
  if differences:
    raise ResumeError(
        f"cannot resume the run in {workdir}: its config differs: {'; '.join(differences[:3])}. "
        "Resume with the run's own overrides, or start a new run in another directory")
