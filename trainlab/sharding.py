"""Synchronous data-parallel SGD over the devices of this host (`devices=`), by JAX's sharding annotations.

With `devices=N` (N > 1) a run's arrays live on a one-axis `jax.sharding.Mesh` of N devices. Each batch is
split over the mesh's `batch` axis (a sharding constraint on the examples a step gathers); the parameters, the
optimizer's state and the data sets sit replicated on every device. The program is the single-device program
with these annotations: XLA partitions it, every device computes the loss and gradient of its share of the
batch, and the collectives that the compiler inserts sum the shares. The step is therefore the step of one
device on the same global batch (synchronous SGD), to float rounding: batch-norm statistics are those of the
global batch (the mean over a sharded axis is an all-reduce), and dropout masks, drawn for the global batch,
are those of one device. Nothing here is hand-written communication: no `psum`, no `pmap`.

With `parallel.shard_params=true` the parameters and the optimizer's state are split over the same axis instead
of replicated (FSDP/ZeRO style, for a state that would not fit one device): each array along its largest
dimension that the devices divide, by the same annotations; the compiler gathers a layer's parameters where the
step needs them whole and splits the summed gradient to their owners. The numbers are the same, to rounding.

With `distributed.enabled=true` (trainlab.distributed) the mesh is that of every process's devices, and the
host puts arrays onto it with jax.make_array_from_process_local_data, which JAX documents for multi-process
arrays: every process holds the whole data set and the initial state (the same on all), and passes them whole.

With `devices=1` (the default) none of this runs: every function below returns its argument as the
single-device loop has it, so a run computes exactly what it did before this module existed.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from trainlab.config import ConfigError

log = logging.getLogger("trainlab")

AXIS = "batch"  # the mesh's one axis: each batch's examples are split along it


def resolve_devices(devices: Any, batch_size: int, shard_params: bool = False) -> int:
  """The number of devices of `devices=` (1, N or "all") on this host; warns when `parallel.shard_params=true`
  cannot act (one device).

  Raises:
    ConfigError: a value that is not a positive count or "all", more devices than this host has, or a batch
      size that the devices cannot share equally.
  """
  available = jax.device_count()
  kind = f"{jax.devices()[0].platform} device{'s' if available > 1 else ''}"
  if devices == "all":
    count = available
  elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
    count = devices
  else:
    raise ConfigError(f"devices={devices} is not allowed: it must be a positive number of devices or all")
  if jax.process_count() > 1 and count != available:  # a mesh must hold devices of every process
    raise ConfigError(f"devices={devices} is not allowed in a distributed run: it must be all (the {available} "
                      f"devices of its {jax.process_count()} processes)")
  if jax.process_count() > 1 and shard_params:  # a checkpoint's checksums read every array whole on one process
    raise ConfigError("parallel.shard_params=true is not allowed in a distributed run (yet): the state must sit "
                      "whole on every device; set parallel.shard_params=false")
  if count > available:
    raise ConfigError(f"devices={devices} is not allowed: this machine has {available} {kind}, so it must be "
                      f"at most {available} (or all)")
  if batch_size % count:
    raise ConfigError(f"batch_size={batch_size} is not allowed with devices={devices}: it must be a multiple of "
                      f"{count}, so that every device takes an equal share of each batch")
  if shard_params and count == 1:
    log.warning("parallel.shard_params=true has no effect with devices=%s on this machine: the state sits whole "
                "on its one device", devices)
  return count


@functools.lru_cache(maxsize=8)
def mesh(devices: int) -> Mesh:
  """The first `devices` devices of this host as a one-axis mesh. Auto axes: the compiler places what is not
  annotated, where explicit axes would make every array's sharding part of its type."""
  return jax.make_mesh((devices,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:devices])


def split_batch(devices: int, tree: Any) -> Any:
  """Inside a program: the arrays of `tree` (a batch, examples first) split over the devices."""
  if devices == 1:
    return tree
  return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh(devices), PartitionSpec(AXIS)))


def state_shardings(devices: int, shard_params: bool, state: Any) -> Any:
  """The sharding of each array of a train state (a NamedTuple with `params` and `opt_state`): all whole on
  every device, or with `shard_params` the float arrays of the parameters and the optimizer's state split along
  their largest dimension that `devices` divides (an array with none stays whole: a bias of 10 classes)."""
  whole = NamedSharding(mesh(devices), PartitionSpec())

  def split(leaf) -> NamedSharding:
    shape = np.shape(leaf)
    divisible = [d for d in range(len(shape)) if shape[d] % devices == 0]
    if not np.issubdtype(jax.numpy.result_type(leaf), np.floating) or not divisible:
      return whole
    dim = max(divisible, key=lambda d: shape[d])
    return NamedSharding(mesh(devices), PartitionSpec(*[None] * dim, AXIS))

  shardings = jax.tree.map(lambda _: whole, state)
  if shard_params:
    shardings = shardings._replace(params=jax.tree.map(split, state.params),
                                   opt_state=jax.tree.map(split, state.opt_state))
  return shardings


def keep_state(devices: int, shard_params: bool, state: Any) -> Any:
  """Inside a program: the train state in its layout (state_shardings), which pins the layout of the
  parameters and optimizer state that the chunk returns to the one it was given."""
  if devices == 1:
    return state
  return jax.lax.with_sharding_constraint(state, state_shardings(devices, shard_params, state))


def replicated(devices: int) -> NamedSharding | None:
  """Where the host puts a run's data sets: whole on every device of the mesh; with one device None,
  jax.device_put's default placement, as the single-device loop has always had it."""
  return None if devices == 1 else NamedSharding(mesh(devices), PartitionSpec())


def put_state(devices: int, shard_params: bool, state: Any) -> Any:
  """On the host: a state made by the `init` program (on the default device) put onto the mesh in its layout
  (state_shardings), before the first chunk and before a checkpoint is restored into it; with one device, as is."""
  return state if devices == 1 else put(state, state_shardings(devices, shard_params, state))


def put_replicated(devices: int, tree: Any) -> Any:
  """On the host: arrays (a data set) whole on every device of the mesh; with one device on the default one."""
  return jax.device_put(tree, replicated(devices)) if devices == 1 else put(tree, replicated(devices))


def put(tree: Any, shardings: Any) -> Any:
  """Arrays onto the mesh in `shardings` (one, or a tree of them). Across processes each passes the whole of
  every array, the same on all (jax.make_array_from_process_local_data takes its devices' parts of them)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  shardings = jax.tree.map(lambda _: shardings, tree) if isinstance(shardings, NamedSharding) else shardings
  return jax.tree.map(lambda a, s: jax.make_array_from_process_local_data(s, np.asarray(a), np.shape(a)),
                      jax.device_get(tree), shardings)


def padded_batch(devices: int, size: int) -> int:
  """`size` rounded up to a multiple of `devices`, so that an evaluation batch splits evenly."""
  return -(-size // devices) * devices


# --- the vectorized launcher's members axis (hydra.launcher.devices) -----------------------------------------
# A vmapped group's members are independent runs, so they need no collectives: each device holds whole members
# (their states, values and keys split along the leading member axis) and the data sets whole. This is another
# mesh than the data-parallel one above, and the two are never combined (the launcher refuses devices > 1 then).
MEMBERS = "members"


@functools.lru_cache(maxsize=8)
def member_mesh(devices: int) -> Mesh:
  """The first `devices` devices of this host as a one-axis mesh over a group's members."""
  return jax.make_mesh((devices,), (MEMBERS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:devices])


def split_members(devices: int) -> NamedSharding | None:
  """Arrays with a leading member axis, split along it over the devices; with one device None (the default
  placement, as the vectorized launcher has always had it)."""
  return None if devices == 1 else NamedSharding(member_mesh(devices), PartitionSpec(MEMBERS))


def beside_members(devices: int) -> NamedSharding | None:
  """What every member reads (the data sets): whole on each device of the members' mesh; one device: None."""
  return None if devices == 1 else NamedSharding(member_mesh(devices), PartitionSpec())


def keep_members(devices: int, tree: Any) -> Any:
  """Inside a program: every array of `tree` (members first) split over the devices, which pins the layout of
  what a vmapped program returns to the one it was given, so that its next call compiles nothing new."""
  if devices == 1:
    return tree
  return jax.lax.with_sharding_constraint(tree, split_members(devices))


def resolve_member_devices(devices: Any) -> int:
  """The number of devices of `hydra.launcher.devices=` (1, N or "all") on this host.

  Raises:
    ConfigError: a value that is not a positive count or "all", or more devices than this host has.
  """
  if isinstance(devices, bool) or not (devices == "all" or (isinstance(devices, int) and devices >= 1)):
    raise ConfigError(f"hydra.launcher.devices={devices} is not allowed: it must be a positive number of devices "
                      "or all")
  if devices == 1:  # the default: no mesh
    return 1
  available = jax.device_count()
  if devices == "all":
    return available
  if devices > available:
    kind = f"{jax.devices()[0].platform} device{'s' if available > 1 else ''}"
    raise ConfigError(f"hydra.launcher.devices={devices} is not allowed: this machine has {available} {kind}, so it "
                      f"must be at most {available} (or all)")
  return devices
