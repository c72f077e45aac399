"""The one rule that separates what a compiled program is built from and what it is fed.

Every float under the groups `model`, `init`, `optimizer`, `schedule` and `regularizer` is a *value*: it enters
the compiled program as a traced array. Everything else (ints, strings, bools, None, lists, which options are
chosen) is *structure*, and the program is built from the structure alone, so the jobs of a sweep that differ
only in values share one compilation, and can be `vmap`-ed over.
"""

from __future__ import annotations

from typing import Any

import jax

PROGRAM_GROUPS = ("model", "init", "optimizer", "schedule", "regularizer")


def is_value(x: Any) -> bool:
  """Whether a config leaf is a value (traced) rather than structure: floats, and arrays already traced."""
  return isinstance(x, (float, jax.Array))


def split(tree: Any) -> tuple[Any, Any]:
  """Splits a config tree into (structure, values): values holds its floats, structure the rest (floats 0)."""
  if isinstance(tree, dict):
    structure, values = {}, {}
    for key, child in tree.items():
      structure[key], child_values = split(child)
      if child_values is not None:
        values[key] = child_values
    return structure, values
  if is_value(tree):
    return 0.0, tree
  return tree, None


def merge(structure: Any, values: Any) -> Any:
  """The inverse of `split`; `values` may hold traced arrays."""
  if isinstance(structure, dict):
    return {k: merge(v, values[k]) if k in values else v for k, v in structure.items()}
  return values


def structural_names(kwargs: dict) -> tuple[str, ...]:
  """The names of a factory's keyword arguments that are structure (static to `optax.inject_hyperparams`)."""
  return tuple(name for name, v in kwargs.items() if not is_value(v))
