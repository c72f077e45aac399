"""summary.json's times are wall-clock times of the run: compilation in two threads at once counts once, and no
part is longer than the whole."""

from __future__ import annotations

import pytest

from conftest import QUICK, train_in_process
from trainlab.fast import compilation


def test_compile_spans_in_two_threads_count_once(monkeypatch):
  monkeypatch.setattr(compilation, "_SPANS", [])
  monkeypatch.setitem(compilation._COMPILE, "seconds", 0.0)
  compilation.add_span(10.0, 14.0)  # the chunk, compiling in the background thread
  compilation.add_span(11.0, 12.5)  # the diagnostics, compiling meanwhile in the run's thread
  assert compilation.seconds() == pytest.approx(4.0)
  compilation.add_span(13.0, 16.0)  # overlapping the end
  compilation.add_span(20.0, 21.0)  # later, alone
  assert compilation.seconds() == pytest.approx(7.0)
  compilation.add_span(9.0, 22.0)  # covering everything
  assert compilation.seconds() == pytest.approx(13.0)


def test_no_part_of_a_run_is_longer_than_the_run(tmp_path):
  """A run whose first chunk compiles ahead while the step-0 diagnostics compile and run."""
  summary = train_in_process([*QUICK, "diagnostics=default", "diagnostics.every=100", "model.widths=[24]"],
                             tmp_path)
  wall = summary["wall_time_s"]
  for part in ("compile_time_s", "startup_time_s", "diagnostics_time_s"):
    assert 0.0 <= summary[part] <= wall, part
  assert summary["steps_run"] / summary["steps_per_second"] <= wall  # the time in the chunks
