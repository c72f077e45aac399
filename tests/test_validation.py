"""Every numeric key of every option in conf/ has its allowed range in the schema, and a value outside it gets
one line naming the key, the value and the range.

The cases are read from the YAML files and the schemas' `allowed` metadata, so a new option file or a new key
is covered without a new test.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import CONF, compose_config
from trainlab import config

# experiment/ is not a group of keys: its presets set keys of the other groups, whose ranges are checked here.
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment"))


def _options() -> list[tuple[list[str], str]]:
  """(overrides selecting the option, dotted path of its node); the run level is the main config itself."""
  options = [([], "")]
  for group in GROUPS:
    for file in sorted((CONF / group).glob("*.yaml")):
      if group == "regularizer":  # a list: each option lives under regularizer.<name>
        options.append(([f"regularizer=[{file.stem}]"], f"regularizer.{file.stem}"))
      else:
        options.append(([f"{group}={file.stem}"], group))
  return options


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
  """Each option is composed once: the cases below change one key of a copy (composing ~500 times took minutes)."""
  cfg = compose_config(list(overrides))
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def _numeric(field: dataclasses.Field) -> str | None:
  """'int' or 'float' for a numeric field (optional or not), else None."""
  kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
  kind = re.sub(r"^Optional\[(.*)\]$", r"\1", kind)
  return kind if kind in ("int", "float") else None


def _out_of_range(allowed: config.Interval, kind: str) -> list:
  cast = float if kind == "float" else int
  values = []
  if allowed.lo != -math.inf:
    values.append(cast(allowed.lo) if allowed.lo_open else cast(allowed.lo) - 1)
  if allowed.hi != math.inf:
    values.append(cast(allowed.hi) if allowed.hi_open else cast(allowed.hi) + 1)
  if kind == "float":
    values.append(math.nan)  # outside every interval
  return values


def _cases():
  cases = []
  for overrides, path in _options():
    cfg = _composed(tuple(overrides))
    nodes = [(path, OmegaConf.select(cfg, path) if path else cfg)]
    while nodes:
      prefix, node = nodes.pop()
      schema = OmegaConf.get_type(node)
      if not dataclasses.is_dataclass(schema):
        continue
      for field in dataclasses.fields(schema):
        child = node.get(field.name)
        if isinstance(child, DictConfig) and not (prefix == "" and field.name in GROUPS):
          nodes.append((f"{prefix}.{field.name}".lstrip("."), child))
        kind, allowed = _numeric(field), field.metadata.get("allowed")
        if kind is None:
          continue
        key = f"{prefix}.{field.name}".lstrip(".")
        assert isinstance(allowed, config.Interval), f"{key} ({schema.__name__}) has no allowed range"
        for bad in _out_of_range(allowed, kind):
          cases.append(pytest.param(overrides, key, bad, allowed, id=f"{key}={bad}[{','.join(overrides)}]"))
  return cases


CASES = _cases()


def test_every_group_and_key_is_walked():
  keys = {case.values[1] for case in CASES}
  assert {"optimizer.lr", "optimizer.momentum", "optimizer.b2", "schedule.end_factor", "regularizer.dropout.rate",
          "regularizer.l2.weight", "init.scale", "init.value", "data.val_fraction", "steps", "batch_size",
          "checkpoint.every", "checkpoint.keep"} <= keys
  assert {key.split(".")[0] for key in keys} >= set(GROUPS) - {"model"}  # model's keys are a list and a choice


@pytest.mark.parametrize("overrides, key, bad, allowed", CASES)
def test_out_of_range_value_names_key_value_and_range(overrides, key, bad, allowed):
  cfg = copy.deepcopy(_composed(tuple(overrides)))
  OmegaConf.update(cfg, key, bad)  # as `key=bad` on the command line, type-checked by the schema
  assert bad not in allowed
  with pytest.raises(config.ConfigError) as caught:
    config.check_ranges(cfg)
  message = str(caught.value)
  assert message == f"{key}={OmegaConf.select(cfg, key)} is not allowed: it must be {allowed}"
  assert "\n" not in message


def test_every_numeric_schema_field_has_a_range():
  """Including schemas of options not in conf/ yet: a new numeric key needs its domain beside its type."""
  for name, schema in config.SCHEMAS.items():
    for field in dataclasses.fields(schema):
      if _numeric(field):
        assert isinstance(field.metadata.get("allowed"), config.Interval), f"{name}.{field.name}"
