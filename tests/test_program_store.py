"""The program store: a later process loads a run's traced programs instead of tracing them, and gets the same
run; structures that name a user's code, damaged entries and foreign pickles are traced as usual."""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest

from conftest import QUICK, train_in_process
from trainlab import train
from trainlab.fast import program_store

RUN = [*QUICK, "model.widths=[24]"]  # a structure of its own, so that this file's first run stores it


def traced_functions(overrides: list[str], workdir) -> tuple[dict, list[str]]:
  """Runs in this process as a fresh process would (in-memory programs and traces dropped); returns the summary
  and the names of the functions JAX traced."""
  traced = []
  listener = lambda event, seconds, **kw: traced.append(kw.get("fun_name")) if event.endswith(
      "jaxpr_trace_duration") else None
  train.build_program.cache_clear()
  jax.clear_caches()
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    summary = train_in_process(overrides, workdir)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return summary, traced


def entries(name: str) -> list:
  return sorted(program_store._directory().glob(f"{name}-*.bin"))


def test_a_later_process_loads_the_programs_instead_of_tracing_them(tmp_path):
  first, traced_first = traced_functions(RUN, tmp_path / "first")
  assert {"init", "train_chunk", "evaluate"} <= set(traced_first)
  later, traced_later = traced_functions(RUN, tmp_path / "later")
  assert not {"init", "train_chunk", "evaluate"} & set(traced_later), traced_later
  for key in ("test/loss", "test/accuracy", "best_val/loss", "best_val/step"):
    assert later[key] == first[key], key  # the same program: bit for bit


def test_a_damaged_entry_is_traced_anew_and_replaced(tmp_path):
  traced_functions(RUN, tmp_path / "first")
  for path in entries("train_chunk"):
    path.write_bytes(b"not a program")
  summary, traced = traced_functions(RUN, tmp_path / "damaged")
  assert "train_chunk" in traced and summary["status"] == "completed"
  _, traced = traced_functions(RUN, tmp_path / "again")
  assert "train_chunk" not in traced  # the damaged entry was written anew


def test_an_entry_never_unpickles_anything_but_a_tree(tmp_path):
  path = tmp_path / "entry.bin"
  path.write_bytes(pickle.dumps(os.system) + b"rest")
  with pytest.raises(pickle.UnpicklingError, match="not a tree node"):
    program_store._read(path)


def test_user_code_in_the_structure_is_never_stored():
  assert program_store.trusted({"model": {"_target_": "trainlab.models.MLP"}, "init": {"_target_": "jax.nn.x"}})
  assert not program_store.trusted({"model": {"_target_": "my_models.Net", "widths": [3]}})
  assert not program_store.trusted({"regularizer": {"extra": [{"_target_": "mine.penalty"}]}})


def test_under_vmap_the_program_is_traced_as_usual():
  stored = program_store.Stored(lambda a: a * 2.0, "double", "key")
  assert np.allclose(jax.vmap(stored)(np.arange(3.0)), [0.0, 2.0, 4.0])
  assert np.allclose(stored(np.arange(3.0)), [0.0, 2.0, 4.0])


def test_the_diagnostics_probe_is_stored_with_its_value_names(tmp_path):
  run = [*RUN, "diagnostics=default", "diagnostics.every=100", "diagnostics.histogram_every=0"]
  diag = lambda workdir: [{k: v for k, v in row.items() if k.startswith(("diag/", "step0/"))}
                          for row in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
  _, traced = traced_functions(run, tmp_path / "first")
  assert "probe" in traced
  _, traced = traced_functions(run, tmp_path / "later")
  assert "probe" not in traced
  first, later = diag(tmp_path / "first"), diag(tmp_path / "later")
  assert any("diag/Dense_0/grad_norm" in row for row in first) and later == first
