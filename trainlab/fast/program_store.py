"""Traced programs kept on disk (`jax.export`), so that a run in a fresh process skips tracing and lowering.

JAX's persistent compilation cache skips the compile of a program that an earlier process compiled, but not its
tracing and lowering, which every fresh process repeats (docs/speed.md, "The program store"). An entry is the
serialized program with its output tree, keyed by all that the trace depends on: the program's name and key (the
run's structure), the arguments' tree and types, the donated arguments and compile options, the libraries'
versions, trainlab's own source, JAX's configuration and the device. A later process jits the entry's call.

Only structures whose every `_target_` is code the key covers are stored (`trusted`). A program that cannot be
exported, or an entry that cannot be read or written, is traced as usual: the store only ever saves time. It is
off wherever JAX's persistent cache is off.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import pathlib
import pickle
from importlib import metadata
from typing import Any, Callable

import jax
import numpy as np

from trainlab.rundir import atomic

log = logging.getLogger(__name__)

FORMAT = 1  # of an entry: bump when what an entry holds changes
TRUSTED_TARGETS = ("trainlab.", "jax.", "flax.", "optax.")
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")


def trusted(structure: Any) -> bool:
  """Whether every `_target_` in a config structure is code the store's key covers."""
  if isinstance(structure, dict):
    target = structure.get("_target_")
    if isinstance(target, str) and not target.startswith(TRUSTED_TARGETS):
      return False
    return all(trusted(v) for v in structure.values())
  if isinstance(structure, list):
    return all(trusted(v) for v in structure)
  return True


@functools.cache
def _trainlab_source() -> str:
  """A hash of trainlab's own source, every module of the package: an edited checkout traces anew."""
  digest = hashlib.sha256()
  package = pathlib.Path(__file__).resolve().parents[1]  # trainlab/, above this fast/ package
  for path in sorted(package.rglob("*.py")):
    digest.update(str(path.relative_to(package)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _environment() -> str:
  """What a trace depends on beyond the program's own arguments. JAX's configuration is read at each call:
  a flag a user sets (jax_enable_x64, a default precision) changes the key."""
  device = jax.devices()[0]
  config = sorted((k, repr(v)) for k, v in jax.config.values.items())
  versions = [(name, metadata.version(name)) for name in _LIBRARIES]
  return repr((FORMAT, versions, _trainlab_source(), config, device.platform, device.device_kind))


def _directory() -> pathlib.Path | None:
  """The store's folder beside JAX's persistent cache; None where that cache is off."""
  if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir is None:
    return None
  return pathlib.Path(jax.config.jax_compilation_cache_dir).expanduser() / "trainlab-programs"


class _TreeUnpickler(pickle.Unpickler):
  """Reads back an output tree: a PyTreeDef whose nodes are named tuples and mappings of trainlab, flax and
  optax. Nothing else is loaded, so an entry cannot run code."""

  def find_class(self, module: str, name: str):
    if (module.startswith("jaxlib") and name == "PyTreeDef") or (module, name) == ("jax._src.tree_util",
                                                                                  "default_registry"):
      return super().find_class(module, name)
    if module.split(".")[0] in ("trainlab", "flax", "optax"):
      cls = getattr(importlib.import_module(module), name, None)
      if isinstance(cls, type) and (issubclass(cls, tuple) or hasattr(cls, "keys")):
        return cls
    raise pickle.UnpicklingError(f"{module}.{name} is not a tree node")


def _read(path: pathlib.Path):
  """An entry: (the exported program, its output tree, what it recorded while traced)."""
  with path.open("rb") as f:
    out_tree, record = _TreeUnpickler(f).load()
    return jax.export.deserialize(bytearray(f.read())), out_tree, record


def _write(path: pathlib.Path, exported, out_tree, record) -> None:
  """Writes an entry whole or not at all (a temporary file renamed over it): a process that reads it
  meanwhile, or two jobs that write it at once, never see half of one."""
  with atomic.replacing(path) as f:
    pickle.dump((out_tree, record), f)
    f.write(exported.serialize())


class Stored:
  """`jax.jit(fun, compiler_options=...)` whose traced program is kept in the store, per argument signature.

  Called under a transformation (`jax.vmap` of a vectorized sweep, another jit), or where the store is off, it
  is that jitted function; `__wrapped__` is `fun`, as for a jitted function. `record`: a list that `fun` fills
  while it is traced (the diagnostics' value names), kept with the entry and filled from it on loading.
  """

  def __init__(self, fun: Callable, name: str, key: str | None, *, donate_argnums: tuple[int, ...] = (),
               compiler_options: dict | None = None, record: list | None = None):
    self.__wrapped__, self.name, self.key, self.record = fun, name, key, record
    self.donate_argnums, self.compiler_options = tuple(donate_argnums), compiler_options or {}
    self.jitted = jax.jit(fun, donate_argnums=donate_argnums, compiler_options=self.compiler_options)
    self._calls: dict[Any, tuple[Callable, Any]] = {}  # signature -> (jitted call of the program, output tree)

  def __call__(self, *args):
    leaves, in_tree = jax.tree.flatten(args)
    call, out_tree = self._stored_call(leaves, in_tree)
    if call is None:
      return self.jitted(*args)
    return jax.tree.unflatten(out_tree, call(*leaves))

  def lower(self, *args) -> jax.stages.Lowered:
    """The program for arguments of these types, loaded or traced, and lowered: `.compile()` on it gets it
    ready without running it, so that the call that follows only runs it. The compile is safe in another
    thread (compile_ahead)."""
    leaves, in_tree = jax.tree.flatten(args)
    call, _ = self._stored_call(leaves, in_tree)
    return self.jitted.lower(*args) if call is None else call.lower(*leaves)

  def _stored_call(self, leaves: list, in_tree) -> tuple[Callable | None, Any]:
    """(the jitted call of the stored program, its output tree) for these arguments; (None, None) where the
    plain jitted function serves: under a transformation, with no key, or with the store off."""
    if self.key is None or any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      return None, None
    types = tuple(jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)
                  for aval in map(jax.typeof, leaves))
    signature = (in_tree, types)
    if signature not in self._calls:
      directory = _directory()
      if directory is None:
        return None, None
      self._calls[signature] = self._load_or_export(directory, in_tree, types)
    return self._calls[signature]

  def _load_or_export(self, directory: pathlib.Path, in_tree, types):
    try:
      environment = _environment()
    except Exception as e:  # a JAX whose configuration or devices read differently: no key, so no store
      log.debug("program store: off (%s)", e)
      return None, None
    digest = hashlib.sha256(repr((self.name, self.key, str(in_tree), types, self.donate_argnums,
                                  sorted(self.compiler_options.items()), environment)).encode()).hexdigest()
    path = directory / f"{self.name}-{digest[:32]}.bin"
    exported = None
    if path.exists():
      try:
        exported, out_tree, record = _read(path)
        if self.record is not None:
          self.record[:] = record
      except Exception as e:  # a damaged or foreign entry: trace anew and replace it
        exported = None
        log.debug("program store: %s unreadable (%s); tracing", path, e)
    if exported is None:
      try:
        exported, out_tree = self._export(in_tree, types)
      except Exception as e:  # what jax.export does not support (a custom call it cannot keep stable)
        log.debug("program store: %s not exported (%s)", self.name, e)
        return None, None
      try:
        _write(path, exported, out_tree, None if self.record is None else list(self.record))
      except Exception as e:  # a full or read-only disk, a tree node that does not pickle
        log.debug("program store: %s not written (%s)", path, e)
    # The donated arguments' leaves, in the flat call.
    starts = np.cumsum([0, *(arg.num_leaves for arg in in_tree.children())])
    donated = tuple(i for a in self.donate_argnums for i in range(starts[a], starts[a + 1]))
    call = jax.jit(exported.call, donate_argnums=donated, compiler_options=self.compiler_options)
    return call, out_tree

  def _export(self, in_tree, types):
    out_trees = []

    def flat(*leaves):
      out = self.__wrapped__(*jax.tree.unflatten(in_tree, leaves))
      out_leaves, out_tree = jax.tree.flatten(out)
      out_trees.append(out_tree)
      return out_leaves

    flat.__name__ = self.name  # the program's name in JAX's logs, profiles and compile events
    exported = jax.export.export(jax.jit(flat))(*types)
    return exported, out_trees[-1]
