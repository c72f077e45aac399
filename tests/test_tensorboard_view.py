"""What a user sees of an outputs/ folder in TensorBoard and in a sweep's tables: runs named by their overrides,
the training and validation curves first, the best point so far as a curve, histograms up to the last step, the
config's overrides first, and results.csv's numbers as the metrics were computed (float32, no noise)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_cli

from trainlab.rundir import report, writers

COMMON = ["steps=40", "eval_every=10", "log_every=10", "model.widths=[16]", "diagnostics=default",
          "diagnostics.every=20", "diagnostics.histogram_every=100"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """A 2-job sweep and a single run side by side, as `trainlab tb` would show them."""
  root = tmp_path_factory.mktemp("outputs")
  run_cli("train", "-m", "optimizer=sgd,adam", *COMMON, f"hydra.sweep.dir={root}/outputs/sweeps/s", cwd=root)
  run_cli("train", "init=glorot", *COMMON, f"hydra.run.dir={root}/outputs/runs/r", cwd=root)
  return root / "outputs"


def _multiplexer(outputs):
  from tensorboard.backend.event_processing import event_multiplexer

  mux = event_multiplexer.EventMultiplexer(size_guidance={"scalars": 0, "histograms": 0})
  mux.AddRunsFromDirectory(str(outputs))
  return mux.Reload()


def test_every_run_is_named_by_its_overrides_and_no_run_is_empty(outputs):
  overrides = ",".join(COMMON)
  assert sorted(_multiplexer(outputs).Runs()) == [f"runs/r/init=glorot,{overrides}",
                                                  f"sweeps/s/0/optimizer=sgd,{overrides}",
                                                  f"sweeps/s/1/optimizer=adam,{overrides}"]


def test_the_training_and_validation_curves_are_the_first_groups(outputs):
  mux = _multiplexer(outputs)
  for run in mux.Runs():
    tags = mux.GetAccumulator(run).Tags()
    # TensorBoard sorts tags by character code (capitals first), groups them by their first part, opens two.
    groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted(tags["scalars"])))
    assert groups == ["Train", "Val", "diag", "test"]  # no step0: one point per run reads as broken there
    assert not [tag for tag in tags["scalars"] if tag.startswith(("train/", "val/", "best_val/"))]


def test_the_best_validation_point_is_a_curve_ending_at_the_summarys(outputs):
  mux = _multiplexer(outputs)
  for job in (0, 1):
    job_dir = outputs / "sweeps" / "s" / str(job)
    events = mux.GetAccumulator(str(writers.events_dir(job_dir).relative_to(outputs)))
    val = [(e.step, e.value) for e in events.Scalars("Val/accuracy")]
    best = [(e.step, e.value) for e in events.Scalars("Val/best_accuracy")]
    assert [step for step, _ in val] == [10, 20, 30, 40]
    assert best == [(step, max(x for s, x in val if s <= step)) for step, _ in val]
    summary = writers.read_summary(job_dir)
    assert best[-1][1] == pytest.approx(summary["best_val/accuracy"])
    assert [e.step for e in events.Scalars("Val/best_loss")] == [10, 20, 30, 40]


def test_histograms_cover_the_whole_run(outputs):
  events = _multiplexer(outputs).GetAccumulator(str(writers.events_dir(outputs / "runs" / "r").relative_to(outputs)))
  assert [e.step for e in events.Histograms("hist/Dense_0/kernel")] == [0, 40]  # every 100 steps, and the last


def test_results_csv_writes_the_metrics_without_float32_noise(outputs):
  sweep_dir = outputs / "sweeps" / "s"
  rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
  for row in rows:
    summary = writers.read_summary(sweep_dir / row["job"])
    for name in ("test/accuracy", "test/loss", "best_val/accuracy", "best_val/loss"):
      assert row[name] == str(np.float32(summary[name]))  # shortest form of the float32 the metric was
      assert float(np.float32(row[name])) == summary[name]  # and exactly it
  assert report.to_csv([{"a": 0.4059999883174896, "b": 0.1, "c": 3, "d": None}]) == "a,b,c,d\n0.406,0.1,3,\n"


def test_report_numbers_have_three_significant_digits():
  cells = report.to_markdown([{"x mean": 0.4, "x std": 0.0123456, "steps mean": 1250.0, "steps std": None}])
  assert cells.splitlines()[2] == "| 0.400 ± 0.0123 | 1250 |"


def test_the_sweeps_report_selects_by_validation_and_links_its_plots(outputs):
  sweep_dir = outputs / "sweeps" / "s"
  text = (sweep_dir / "report.md").read_text()
  summaries = {s["overrides"][0]: s for _, s in writers.job_summaries(sweep_dir)}
  best = max(summaries, key=lambda k: summaries[k]["best_val/accuracy"])
  line = next(line for line in text.splitlines() if line.startswith("**Best configuration**"))
  assert f"): {best}: best_val/accuracy {report._fmt(summaries[best]['best_val/accuracy'])}, " in line
  assert f"test/accuracy {report._fmt(summaries[best]['test/accuracy'])}, " in line
  assert text.endswith("Plots: [curves.png](curves.png), [init_layers.png](init_layers.png)\n")
  assert json.loads((sweep_dir / "0" / "summary.json").read_text())["status"] == "completed"
