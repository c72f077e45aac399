"""The program store: a later process loads a run's traced programs instead of tracing them, and gets the same
run; structures that name a user's code, damaged entries and foreign pickles are traced as usual; a program's
key, argument types and recorded names travel with its entry."""

from __future__ import annotations

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from conftest import QUICK, train_in_process
from trainlab import fast, train
from trainlab.fast import program_store

RUN = [*QUICK, "model.widths=[24]"]  # a structure of its own, so that this file's first run stores it


def traced_functions(overrides: list[str], workdir) -> tuple[dict, list[str]]:
  """Runs in this process as a fresh process would (in-memory programs and traces dropped); returns the summary
  and the names of the functions JAX traced."""
  traced = []
  listener = lambda event, seconds, **kw: traced.append(kw.get("fun_name")) if event.endswith(
      "jaxpr_trace_duration") else None
  train.compile_program.cache_clear()
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
  stored = fast.jit(lambda a: a * 2.0, "double", "key")
  np.testing.assert_array_equal(jax.vmap(stored)(np.arange(3.0)), [0.0, 2.0, 4.0])
  np.testing.assert_array_equal(stored(np.arange(3.0)), [0.0, 2.0, 4.0])


@pytest.fixture
def store(tmp_path):
  """A store of its own: JAX's persistent cache pointed at a fresh folder, and back after the test."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  yield tmp_path / "trainlab-programs"
  jax.config.update("jax_compilation_cache_dir", before)
  compilation_cache.reset_cache()


def counting(traces: list, record: list | None = None):
  """A program that notes each time Python traces it, with a nested output tree and names set while traced."""

  def update(state, x):
    traces.append(x.dtype)
    if record is not None:
      record[:] = ["loss", "norm"]
    new = {"w": state["w"] - 0.5 * jnp.outer(state["w"] @ x, x), "count": state["count"] + 1}
    return new, (jnp.sum(new["w"] ** 2), jnp.linalg.norm(x))

  return update


def arguments(dtype=np.float32):
  return {"w": np.arange(9, dtype=dtype).reshape(3, 3) / 10, "count": np.int32(0)}, np.ones(3, dtype)


def test_a_fresh_program_loads_its_stored_trace_with_its_tree_and_record(store):
  traces, record = [], []
  first = fast.jit(counting(traces, record), "update", "key", donate_argnums=(0,), record=record)(*arguments())
  assert len(traces) == 1 and len(list(store.glob("update-*.bin"))) == 1
  jax.clear_caches()
  names: list = []
  later = fast.jit(counting(traces, names), "update", "key", donate_argnums=(0,), record=names)(*arguments())
  assert len(traces) == 1, "the stored trace was not loaded"
  assert names == ["loss", "norm"]
  assert jax.tree.structure(later) == jax.tree.structure(first)
  jax.tree.map(np.testing.assert_array_equal, later, first)


def test_another_key_or_other_argument_types_trace_anew(store):
  traces = []
  fast.jit(counting(traces), "update", "key")(*arguments())
  fast.jit(counting(traces), "update", "another key")(*arguments())
  fast.jit(counting(traces), "update", "key")(*arguments(np.float16))
  assert len(traces) == 3 and len(list(store.glob("update-*.bin"))) == 3


def test_without_a_key_or_a_persistent_cache_nothing_is_stored(store):
  traces = []
  fast.jit(counting(traces), "update", None)(*arguments())
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    fast.jit(counting(traces), "update", "key")(*arguments())
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
  assert len(traces) == 2 and not store.exists()


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
