"""Synchronous SGD with backup workers (Chen et al. 2016, "Revisiting distributed synchronous SGD"), on one machine.

N workers (`optimizer.workers`) each compute the gradient of the loss on their own shard of the step's batch;
the step waits for the first N - b of them (`optimizer.backup_workers` = b) and averages those, dropping the b
stragglers. Here the stragglers are b shards drawn uniformly at random each step from the step's key (what
independent, identically distributed worker delays give), so a run is still reproducible from its seed.

The shards have equal sizes, so the average of the arrived shards' mean gradients is the gradient of the mean loss
over their examples: the step gathers the arrived examples (a batch of (N - b) / N of the rows) and takes the
ordinary gradient on them, inside the compiled step. With b = 0 every shard arrives, in order, and the step is
plain SGD on the whole batch. Batch norm, where the model has it, normalizes over the arrived examples (as a
data-parallel run's global batch would), not over each worker's own shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def arrived_shards(key: jax.Array, workers: int, backup_workers: int) -> jax.Array:
  """The indices (ascending) of the N - b worker shards whose gradients the step averages; the others straggle."""
  return jnp.sort(jax.random.permutation(key, workers)[:workers - backup_workers])


def arrived(x: jax.Array, y: jax.Array, key: jax.Array, workers: int,
            backup_workers: int) -> tuple[jax.Array, jax.Array]:
  """The examples of the arrived shards, in batch order: worker i holds rows i*s .. (i+1)*s - 1 (s = batch / N)."""
  if backup_workers == 0:
    return x, y
  shard = x.shape[0] // workers
  rows = (arrived_shards(key, workers, backup_workers)[:, None] * shard + jnp.arange(shard)).reshape(-1)
  return x[rows], y[rows]
