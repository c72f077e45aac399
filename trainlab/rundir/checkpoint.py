"""Checkpoints of a run, so that an interrupted run continues exactly where it stopped.

A checkpoint holds the whole `TrainState` pytree (step, params, model_state, opt_state with the optimizer's and
the schedule's values, hparams, and the run's PRNG key) through orbax, and beside it a small JSON record of the
host loop: the partial window of training metrics not yet logged, the best validation point so far, the
training time, and the config the run was started with. The data order depends only on the key and the step,
so this is everything a resumed run needs to continue bit for bit; with early stopping, its best parameters are
a second tree and its counters part of the host record. The record carries SHA-256 checksums of the trees and of
itself, verified on restore, and the fingerprint of the data the run trains on. Orbax writes each checkpoint into a
temporary folder and renames it into place, so a run killed while saving keeps its previous checkpoint.

Checkpoints live in `<run dir>/checkpoints/<step>/`. trainlab never deletes one of a run it resumes: a checkpoint
that does not restore is set aside as `<step>.corrupt` (orbax reads only numbered folders), for the user to
inspect or delete.
"""

from __future__ import annotations

import errno
import hashlib
import functools
import json
import os
import logging
import pathlib
import shutil
from typing import Any

import numpy as np

from trainlab import config

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Keys that may differ between a run and its resumption: they say how to run it, not what to run (a run may move
# to more devices, or processes: its state is restored onto the new ones).
RUN_CONTROL_KEYS = ("resume", "checkpoint", "devices", "parallel", "distributed")
CORRUPT_SUFFIX = ".corrupt"


class ResumeError(config.ConfigError):
  """A run directory that cannot be resumed by this config; the directory is left as it is."""


class Checkpointer:
  """Saves and restores (TrainState, host record) pairs in `<workdir>/checkpoints`, keeping the newest `keep`."""

  def __init__(self, workdir: pathlib.Path, keep: int | None = None, read_only: bool = False):
    """read_only: for another run's checkpoints (init.from_run), which are read and never written or pruned."""
    import orbax.checkpoint as ocp  # imported here: it imports JAX, which `trainlab --help` must not wait for

    self._ocp = ocp
    self.directory = pathlib.Path(workdir).resolve() / CHECKPOINT_DIR
    # cleanup_tmp_directories: a save cut off (a second signal, a kill) leaves orbax's temporary folder behind
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, host: dict, best: Any = None) -> None:
    """Writes the checkpoint of `step` (blocking: the state's buffers are donated to the next chunk): the state,
    early stopping's best parameters when there are any, and the host record with the checksums of all three."""
    args = self._ocp.args
    trees = {"state": state} if best is None else {"state": state, "best": best}
    _check_space(self.directory, trees)
    host = {**host, "checksums": {name: tree_checksum(tree) for name, tree in trees.items()}}
    host["checksums"]["host"] = json_checksum(host)
    saves = {name: args.StandardSave(tree) for name, tree in trees.items()}
    self._manager.save(step, args=args.Composite(**saves, host=args.JsonSave(host)), force=True)
    self._manager.wait_until_finished()

  def restore_host(self, step: int) -> dict:
    """The host record of `step` alone: cheap, and readable whatever shapes the saved state has."""
    return self._manager.restore(step, args=self._ocp.args.Composite(host=self._ocp.args.JsonRestore()))["host"]

  def restore(self, target: Any, step: int, name: str = "state") -> Any:
    """The state (or early stopping's best parameters: name="best") saved at `step`.

    Args:
      target: a tree with the structure and dtypes to restore into (a fresh TrainState), or None for the
        saved pytree as orbax rebuilds it (dicts and lists).
      step: which checkpoint.
      name: which tree of the checkpoint.
    """
    args = self._ocp.args
    return self._manager.restore(step, args=args.Composite(**{name: args.StandardRestore(target)}))[name]

  def close(self) -> None:
    self._manager.close()


def _check_space(directory: pathlib.Path, trees: dict) -> None:
  """Raises OSError(ENOSPC) before a save that the disk cannot hold: orbax's many writer threads would each log
  their own traceback of the failure (the arrays' bytes, plus room for orbax's metadata)."""
  import jax

  needed = sum(leaf.nbytes for tree in trees.values() for leaf in jax.tree.leaves(tree)) + (1 << 20)
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a checkpoint needs about {needed:,} bytes in "
                  f"{directory}, {free:,} are free)")


class CorruptCheckpoint(Exception):
  """A checkpoint whose contents do not match the checksums written with it."""


def tree_checksum(tree: Any) -> str:
  """SHA-256 of a pytree's structure, shapes, dtypes and bytes, as the host sees them."""
  import jax  # imported here, as orbax is

  digest = hashlib.sha256(str(jax.tree.structure(tree)).encode())
  as_data = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  for leaf in jax.device_get([as_data(leaf) for leaf in jax.tree.leaves(tree)]):
    leaf = np.asarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def json_checksum(host: dict) -> str:
  """SHA-256 of a host record without its own checksum."""
  checksums = {k: v for k, v in host.get("checksums", {}).items() if k != "host"}
  return hashlib.sha256(json.dumps({**host, "checksums": checksums}, sort_keys=True).encode()).hexdigest()


def verify(host: dict, trees: dict[str, Any], step: int) -> None:
  """Raises CorruptCheckpoint unless the host record and each restored tree match their checksums; a checkpoint
  written before checksums were (no "checksums") passes."""
  checksums = host.get("checksums")
  if checksums is None:
    return
  if checksums.get("host") != json_checksum(host):
    raise CorruptCheckpoint(f"the host record of step {step} does not match its checksum")
  for name, tree in trees.items():
    if checksums.get(name) != tree_checksum(tree):
      raise CorruptCheckpoint(f"the {name} of step {step} does not match its checksum")


def clear_step(workdir: pathlib.Path, step: int) -> None:
  """Removes the checkpoint of one step (the run then resumes from an earlier one)."""
  shutil.rmtree(pathlib.Path(workdir) / CHECKPOINT_DIR / str(step))


def set_aside(workdir: pathlib.Path, step: int) -> pathlib.Path:
  """Renames the checkpoint of `step` to `<step>.corrupt` (`.corrupt-2`, ... if taken), out of orbax's sight."""
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  aside, n = directory / f"{step}{CORRUPT_SUFFIX}", 1
  while aside.exists():
    n += 1
    aside = directory / f"{step}{CORRUPT_SUFFIX}-{n}"
  (directory / str(step)).rename(aside)
  return aside


def set_aside_ones(workdir: pathlib.Path) -> list[str]:
  """The names of the checkpoints set aside as corrupt in `workdir`, in order."""
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  return sorted(p.name for p in directory.glob(f"*{CORRUPT_SUFFIX}*")) if directory.is_dir() else []


def has_checkpoint(workdir: pathlib.Path) -> bool:
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def run_config(cfg_container: dict) -> dict:
  """The part of a run's config that a resumption must repeat exactly."""
  return {k: v for k, v in cfg_container.items() if k not in RUN_CONTROL_KEYS}


def config_differences(saved: dict, current: dict, holder: str = "the run") -> tuple[list[str], list[str]]:
  """(differences, added): `key=current (<holder> has saved)` for each key whose value differs, and the keys that
  only `current` has (a newer trainlab's options: not a difference, since the saved run could not have set them)."""
  differences, added = [], []

  def walk(a: Any, b: Any, prefix: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        if key in a:
          walk(a[key], b.get(key), f"{prefix}{key}.")
        else:
          added.append(f"{prefix}{key}")
    elif a != b:
      differences.append(f"{prefix[:-1]}={b} ({holder} has {a})")

  walk(saved, current, "")
  return differences, added


def check_same_config(saved: dict, current: dict, workdir: pathlib.Path) -> None:
  """Raises ResumeError naming the first keys whose values differ between a checkpoint's run and this one.

  A key the checkpoint's config lacks came with a newer trainlab than the one that wrote it (a new option, at
  its default unless overridden now): it is not a difference, since the old run could not have set it; a
  warning names it.
  """
  differences, added = config_differences(saved, current, "the checkpoint")
  if added and not differences:
    log.warning("resuming a run whose checkpoint predates the config keys %s: they take their values now",
                ", ".join(added))
  if differences:
    raise ResumeError(
        f"cannot resume the run in {workdir}: its config differs: {'; '.join(differences[:3])}. "
        "Resume with the run's own overrides, or start a new run in another directory")


# --- the data a run trains on -------------------------------------------------------------------------------
def data_fingerprint(data_cfg: dict) -> dict:
  """What identifies a run's data: its loader's config (for a generated or published data set, whose files are
  checked against their published checksums, that is all), and the size and SHA-256 of a file the user names
  (`data.path`)."""
  files = {}
  path = data_cfg.get("path")
  if isinstance(path, str) and pathlib.Path(path).expanduser().is_file():
    file = pathlib.Path(path).expanduser().resolve()
    files[str(file)] = _file_fingerprint(str(file), *_identity(file))
  return {"config": data_cfg, "files": files}


def _identity(file: pathlib.Path) -> tuple[int, int, int]:
  stat = file.stat()
  return stat.st_size, stat.st_mtime_ns, stat.st_ino


@functools.lru_cache(maxsize=16)
def _file_fingerprint(path: str, size: int, mtime_ns: int, inode: int) -> dict:
  """Size and SHA-256 of a file, hashed once per process for an unchanged file (the jobs of a sweep share it)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return {"bytes": size, "sha256": digest.hexdigest()}


def check_same_data(saved: dict | None, current: dict, workdir: pathlib.Path) -> None:
  """Raises ResumeError naming the data file whose contents differ from those the run in `workdir` trained on
  (a record without a fingerprint, from an older trainlab, passes)."""
  if saved is None:
    return
  for path, was in saved.get("files", {}).items():
    now = current["files"].get(path)
    if now != was:
      what = ("is missing" if now is None else f"has {now['bytes']} bytes, the run trained on {was['bytes']}"
              if now["bytes"] != was["bytes"] else "is not the file the run trained on (its SHA-256 differs)")
      raise ResumeError(f"cannot resume the run in {workdir}: its data file {path} {what}; put the run's file "
                        "back, or start a new run in another directory")
