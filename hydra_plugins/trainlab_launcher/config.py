"""The configs of trainlab's Hydra plugins: the `vectorized` launcher (hydra/launcher=vectorized) and the `grid`
sweeper (hydra/sweeper=grid, the default of `trainlab train -m`)."""

from dataclasses import dataclass
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class VectorizedLauncherConf:
  _target_: str = "hydra_plugins.trainlab_launcher.vectorized_launcher.VectorizedLauncher"
  # The most jobs trained as one vmapped program (memory grows with it); null: all jobs that can be.
  max_members: Optional[int] = None
  # The devices a group's members are split over (1, N or all): each device trains its share of the members,
  # whole, with no communication between them; a group is padded to a multiple of them with idle placeholders.
  devices: Any = 1


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf,
                             provider="trainlab")


@dataclass
class GridSweeperConf:
  _target_: str = "hydra_plugins.trainlab_launcher.grid_sweeper.GridSweeper"
  # As Hydra's basic sweeper: the most jobs per batch (null: all), and overrides swept in every job.
  max_batch_size: Optional[int] = None
  params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="trainlab")
