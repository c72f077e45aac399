"""The config of the `vectorized` launcher, registered as hydra/launcher=vectorized."""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class VectorizedLauncherConf:
  _target_: str = "hydra_plugins.trainlab_launcher.vectorized_launcher.VectorizedLauncher"
  # The most jobs trained as one vmapped program (memory grows with it); null: all jobs that can be.
  max_members: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf,
                             provider="trainlab")
