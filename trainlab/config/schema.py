"""What every schema is written with: fields whose domain is written beside their type, the registry of schemas
by the name option files extend, and the range check that reads the domains."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
  """A config value outside its domain; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Interval:
  """The allowed values of a number: an interval, finite numbers only unless `finite` is false."""
  lo: float = -math.inf
  hi: float = math.inf
  lo_open: bool = False
  hi_open: bool = False
  finite: bool = True  # inf and nan pass the comparisons below (nan fails them) but train no model

  def __contains__(self, x: float) -> bool:
    if self.finite and not math.isfinite(x):
      return False
    above = x > self.lo if self.lo_open else x >= self.lo
    below = x < self.hi if self.hi_open else x <= self.hi
    return above and below

  def __str__(self) -> str:
    lo, hi = (f"{int(x)}" if float(x).is_integer() else f"{x:g}" for x in (self.lo, self.hi))
    if self.hi == math.inf and self.lo == -math.inf:
      return "a finite number" if self.finite else "any number"
    if self.hi == math.inf:
      return f"{'>' if self.lo_open else '>='} {lo}"
    if self.lo == -math.inf:
      return f"{'<' if self.hi_open else '<='} {hi}"
    return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def value(lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False, finite=True, default=MISSING):
  """A numeric field whose allowed values are the finite numbers (all numbers: finite=False) from lo to hi; on a
  list field (model.widths), every element's."""
  return field(default=default, metadata={"allowed": Interval(lo, hi, lo_open, hi_open, finite)})


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
      if OmegaConf.is_missing(cfg, f.name) or cfg.get(f.name) is None:
        continue
      x = cfg.get(f.name)
      if allowed is None and isinstance(x, float):  # a float without a domain of its own is still a number
        allowed = Interval()
      if allowed is None:
        continue
      if isinstance(x, ListConfig):
        if isinstance(allowed, Interval) and any(not _is_number(e) or e not in allowed for e in x):
          raise ConfigError(f"{prefix}{f.name}={_shown(x)} is not allowed: each of its numbers must be {allowed}")
        continue
      if (isinstance(allowed, Interval) and x not in allowed) or (isinstance(allowed, tuple) and x not in allowed):
        what = str(allowed) if isinstance(allowed, Interval) else "one of " + ", ".join(allowed)
        bounded = isinstance(allowed, Interval) and what != str(Interval())
        if bounded and math.isinf(x) and x in dataclasses.replace(allowed, finite=False):
          what = f"a finite number {what}"  # inside the interval's bounds, but not a number a model can use
        raise ConfigError(f"{prefix}{f.name}={x} is not allowed: it must be {what}")
  for key in cfg:
    child = cfg.get(key)
    if isinstance(child, DictConfig):
      check_ranges(child, f"{prefix}{key}.")


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _shown(values: ListConfig) -> str:
  """A list as the command line writes it: [0,16]."""
  return "[" + ",".join(str(x) for x in values) + "]"
