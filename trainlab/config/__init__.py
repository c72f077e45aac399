"""The typed schema of every config group, and the range check that runs before training.

Each option file in `conf/<group>/` starts from one schema here (`defaults: [/<group>_<kind>_schema@_here_]`),
so Hydra rejects unknown keys and values of the wrong type while composing. Values out of their domain are
caught by `check_ranges`, which reads the `allowed` metadata of each field, so a key's domain is written once,
next to its type. Defaults live in the YAML files, not here.

This module holds the main config's schema; schema.py the machinery; the others the schemas of their groups:
data.py, model.py (model, init), optimizer.py (optimizer, schedule) and regularizer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from trainlab.config import data, model, optimizer, pretrain, regularizer  # noqa: F401 (they register theirs)
from trainlab.config.checks import check, warn_ineffective  # noqa: F401
from trainlab.config.model import ACTIVATIONS, NORMS  # noqa: F401
from trainlab.config.schema import MISSING, SCHEMAS, ConfigError, Interval, check_ranges, schema, value  # noqa: F401


@dataclass
class CheckpointConfig:
  every: Optional[int] = value(1)  # null: only at the end (and on SIGTERM/SIGINT)
  keep: Optional[int] = value(1)  # null: keep every checkpoint


@dataclass
class ParallelConfig:
  shard_params: bool = MISSING


@dataclass
class DistributedConfig:  # trainlab.distributed
  enabled: bool = MISSING
  coordinator: Optional[str] = None
  num_processes: Optional[int] = value(1, default=None)
  process_id: Optional[int] = value(0, default=None)
  timeout_s: int = value(1, default=300)
  connect_timeout_s: int = value(1, default=20)


@schema("train_schema")
class TrainConfig:
  seed: int = value(0, 2**31 - 1)  # an int32: it enters the program as a traced array
  steps: int = value(1)
  epochs: Optional[int] = value(1)
  batch_size: int = value(1)
  eval_every: int = value(1)
  log_every: int = value(1)
  devices: Any = MISSING  # a count or "all", resolved against this host's devices by trainlab.sharding
  parallel: ParallelConfig = MISSING
  distributed: DistributedConfig = MISSING
  resume: bool = MISSING
  checkpoint: CheckpointConfig = MISSING
  data: Any = MISSING
  model: Any = MISSING
  init: Any = MISSING
  optimizer: Any = MISSING
  schedule: Any = MISSING
  regularizer: Dict[str, Any] = field(default_factory=dict)
  diagnostics: Any = MISSING
  report: Any = MISSING
  freeze: List[str] = field(default_factory=list)  # layers the optimizer leaves alone (trainlab.transfer)
  pretrain: Any = None  # a run in stages (trainlab.stages); null: one stage
  gallery: Any = None  # read by scripts/gallery.py only (a preset's main plot and checks); training ignores it


@schema("diagnostics_schema")
class DiagnosticsConfig:  # what a run measures besides its loss
  every: int = value(0)  # 0 turns the per-layer diagnostics off
  probe_size: int = value(1)
  histogram_every: int = value(0)
  hessian_every: int = value(0)
  hessian_iters: int = value(1)


@schema("report_schema")
class ReportConfig:  # how a sweep is summarized
  metric: Optional[str] = None  # null: the task's validation metric
  target: Optional[float] = value(default=None)
  best_per: Optional[str] = None  # a swept key: best.csv, the best configuration for each of its values


def register_schemas() -> None:
  """Stores the schemas at the root of Hydra's config store, where the group files extend them."""
  store = ConfigStore.instance()
  for name, node in SCHEMAS.items():
    store.store(name=name, node=node, provider="trainlab")
