"""A sweep's jobs as their directories record them: the directories in job order, each job's overrides."""

from __future__ import annotations

import pathlib

# The folder of a sweep that holds the runs its jobs made on demand (rundir/on_demand.py): not a job of the sweep.
SOURCES_DIR = "sources"


def job_dirs(sweep_dir: pathlib.Path) -> list[pathlib.Path]:
  """The folders of `sweep_dir` in job order: Hydra's numbered ones by number (2 before 10), then the others; not
  the sources folder."""
  folders = [p for p in pathlib.Path(sweep_dir).iterdir() if p.is_dir() and p.name != SOURCES_DIR]
  return sorted(folders, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def parse_override(override: str) -> tuple[str, str]:
  """The key of a `key=value` override without Hydra's `+`, `++` or `~`, and its value ("" where none)."""
  key, _, value = override.partition("=")
  return key.lstrip("+~"), value


def run_overrides(overrides: list[str]) -> list[str]:
  """The overrides that say what a job is: `resume` says how to run it, so it is left out."""
  return [o for o in overrides if parse_override(o)[0] != "resume"]


def parse_overrides(overrides: list[str]) -> dict[str, str]:
  """key -> value as written on the command line, in order (a repeated key: its last value)."""
  return dict(map(parse_override, overrides))
