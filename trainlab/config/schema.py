"""What every schema is written with: fields whose domain is written beside their type, the registry of schemas
by the name option files extend, and the range check that reads the domains."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
  """A config value outside its domain; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Interval:
  lo: float = -math.inf
  hi: float = math.inf
  lo_open: bool = False
  hi_open: bool = False

  def __contains__(self, x: float) -> bool:
    above = x > self.lo if self.lo_open else x >= self.lo
    below = x < self.hi if self.hi_open else x <= self.hi
    return above and below

  def __str__(self) -> str:
    lo, hi = (f"{int(x)}" if float(x).is_integer() else f"{x:g}" for x in (self.lo, self.hi))
    if self.hi == math.inf:
      return f"{'>' if self.lo_open else '>='} {lo}"
    if self.lo == -math.inf:
      return f"{'<' if self.hi_open else '<='} {hi}"
    return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def value(lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False, default=MISSING):
  """A numeric field whose allowed values are the interval from lo to hi."""
  return field(default=default, metadata={"allowed": Interval(lo, hi, lo_open, hi_open)})


def choice(*options: str, default=MISSING):
  """A string field that takes one of `options`."""
  return field(default=default, metadata={"allowed": options})


POSITIVE = dict(lo=0.0, lo_open=True)
FRACTION = dict(lo=0.0, hi=1.0, hi_open=True)  # [0, 1): momentum, betas, dropout rates
HELD_OUT = dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # (0, 1): a validation split must not be empty


@dataclass
class TargetConfig:
  _target_: str = MISSING  # the dotted path of the function or class that builds the option


SCHEMAS: dict[str, type] = {}  # by the name option files extend: <group>_<kind>_schema, train_schema for the root


def schema(name: str) -> Callable[[type], type]:
  """A dataclass decorator that also registers the class in SCHEMAS under `name`."""

  def register(cls: type) -> type:
    SCHEMAS[name] = dataclass(cls)
    return SCHEMAS[name]

  return register


def check_ranges(cfg: DictConfig, prefix: str = "") -> None:
  """Raises ConfigError for the first value outside the `allowed` domain of its schema field."""
  node_type = OmegaConf.get_type(cfg)
  if dataclasses.is_dataclass(node_type):
    for f in dataclasses.fields(node_type):
      allowed = f.metadata.get("allowed")
      x = cfg.get(f.name)
      if allowed is None or x is None or OmegaConf.is_missing(cfg, f.name):
        continue
      if (isinstance(allowed, Interval) and x not in allowed) or (isinstance(allowed, tuple) and x not in allowed):
        what = str(allowed) if isinstance(allowed, Interval) else "one of " + ", ".join(allowed)
        raise ConfigError(f"{prefix}{f.name}={x} is not allowed: it must be {what}")
  for key in cfg:
    child = cfg.get(key)
    if isinstance(child, DictConfig):
      check_ranges(child, f"{prefix}{key}.")
