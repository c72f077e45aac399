"""The `grid` sweeper: Hydra's basic sweeper (the grid of the command line's comma lists), composing each job's
config once rather than twice.

Hydra's basic sweeper composes every job's config before launching a batch, so that a bad override fails the
sweep before any job starts; the launcher then composes each config again, because it may run in another
process. Composing costs as much as training a small job (docs/speed.md, "Composing a sweep's configs once"):
for a launcher in this process (basic, vectorized) the configs composed by the check are handed over instead.
A launcher that runs jobs elsewhere (joblib, a cluster) composes them again there.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

# Private: Hydra exports no public grid sweeper to extend, and this one must stay Hydra's own grid.
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from trainlab.rundir import sweep


class _ComposedOnce:
  """A ConfigLoader that returns the config the sweeper's check composed for a job's overrides, once; every
  other call goes to Hydra's loader."""

  def __init__(self, loader: Any):
    self.loader = loader
    self.composed: dict[tuple[str, ...], DictConfig] = {}

  def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
    composed = self.composed.pop(tuple(sweep_overrides), None)
    if composed is not None:
      return composed
    return self.loader.load_sweep_config(master_config, sweep_overrides)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.loader, name)

  def __getstate__(self) -> dict:  # a launcher that ships the context to other processes ships Hydra's loader
    return {"loader": self.loader, "composed": {}}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)


class GridSweeper(BasicSweeper):
  def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
    self.loader = _ComposedOnce(hydra_context.config_loader)
    super().setup(hydra_context=HydraContext(config_loader=self.loader, callbacks=hydra_context.callbacks),
                  task_function=task_function, config=config)

  def split_arguments(self, overrides: Any, max_batch_size: int | None) -> list[list[list[str]]]:
    """Hydra's batches of the grid; the sweep's whole list of jobs is also written into the sweep directory, so
    that a sweep stopped by a signal lists its jobs not started in results.csv (as `pending`)."""
    batches = BasicSweeper.split_arguments(overrides, max_batch_size)
    sweep.write_jobs(pathlib.Path(self.config.hydra.sweep.dir), [job for batch in batches for job in batch])
    return batches

  def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
    """Composes every job's config of the batch (a bad override fails here, before any job starts) and keeps
    them for the launcher."""
    self.loader.composed = {tuple(overrides): self.loader.loader.load_sweep_config(self.config, list(overrides))
                            for overrides in batch}
