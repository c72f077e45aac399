"""A sweep's jobs as their directories record them: the job directories in job order, and each job's overrides.

Hydra names a multirun's job directories 0, 1, 2, ... and a job's summary.json lists the command-line overrides
it ran with (`key=value`, with Hydra's `+`, `++` or `~` before the key where the command had one).
"""

from __future__ import annotations

import pathlib


def job_dirs(sweep_dir: pathlib.Path) -> list[pathlib.Path]:
  """The folders of `sweep_dir` in job order: numbered ones by number (2 before 10), then the others by name."""
  def order(path: pathlib.Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)

  return sorted((p for p in pathlib.Path(sweep_dir).iterdir() if p.is_dir()), key=order)


def parse_override(override: str) -> tuple[str, str]:
  """The key of a `key=value` override without Hydra's prefix, and its value ("" where there is no `=`)."""
  key, _, value = override.partition("=")
  return key.lstrip("+~"), value


def parse_overrides(overrides: list[str]) -> dict[str, str]:
  """key -> value as written on the command line, in the overrides' order (a repeated key: the last value)."""
  return dict(map(parse_override, overrides))
