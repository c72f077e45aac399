"""The experiment presets of the course's claims (conf/experiment/): each composes as `--cfg job` prints it, each
runs shortened, and the claims that are robust at small scale hold with margins: momentum's √κ against gradient
descent's κ on the quadratic, clipping on the cliff and on an IRNN's exploding gradients, and the symmetry a
constant init never breaks."""

from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF, compose_config, run_cli, train_in_process
from trainlab.rundir import writers

PRESETS = ("optimizers_quadratic", "clipping", "clipping_rnn", "saddle", "symmetry")


def grid(name: str) -> list[list[str]]:
  """The jobs of a preset's sweep (hydra.sweeper.params), as command-line overrides, in the sweeper's order."""
  params = compose_config([f"experiment={name}"]).hydra.sweeper.params
  parser = OverridesParser.create()
  axes = [[f"{key}={v}" for v in parser.parse_override(f"{key}={value}").sweep_string_iterator()]
          for key, value in params.items()]
  return [list(job) for job in itertools.product(*axes)]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_starts_with_its_command_and_sources(name):
  text = (CONF / "experiment" / f"{name}.yaml").read_text()
  assert text.startswith("# @package _global_\n")
  comment = text.split("\ndefaults:")[0]
  assert f"`trainlab train -m experiment={name}`" in comment
  assert "[00" in comment and "Look at" in comment  # a course deck, and what to look for


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_cfg_job(name, tmp_path):
  printed = run_cli("train", f"experiment={name}", "--cfg", "job", cwd=tmp_path).stdout
  assert printed.startswith("seed: 0\n") and "\nmodel:\n  _target_: trainlab.models." in printed
  assert len(grid(name)) >= 3


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_shortened(name, tmp_path):
  """The preset's first job, a few steps long."""
  first = grid(name)[0]
  summary = train_in_process([f"experiment={name}", *first, "steps=20", "eval_every=10", "log_every=10",
                              "checkpoint.every=null"], tmp_path)
  assert summary["status"] == "completed" and summary["steps_run"] == 20


def _first_step_below(workdir, metric: str, tol: float) -> int | None:
  return next((p["step"] for p in writers.read_metrics(workdir) if p.get(metric, math.inf) <= tol), None)


def test_momentum_needs_about_sqrt_kappa_steps_where_gradient_descent_needs_kappa(tmp_path):
  """κ = 100: per e-fold of the error, GD at 2 / (1 + κ) takes 1 / -log((κ - 1) / (κ + 1)) ≈ κ / 2 steps, heavy-ball
  momentum at its best 1 / -log((√κ - 1) / (√κ + 1)) ≈ √κ / 2 (Polyak 1964)."""
  kappa, tol, start = 100.0, 1e-4, math.sqrt(10)  # dim 10, error 1 along each eigendirection
  jobs = {"gd": ["optimizer.momentum=null", "optimizer.lr=0.0198"],
          "momentum": ["optimizer.momentum=0.6694", "optimizer.lr=0.033"]}
  assert [j for j in grid("optimizers_quadratic") if j in jobs.values()] == list(jobs.values())  # the preset's own
  steps = {}
  for name, job in jobs.items():
    train_in_process(["experiment=optimizers_quadratic", *job, "eval_every=2", "log_every=2"], tmp_path / name)
    steps[name] = _first_step_below(tmp_path / name, "val/distance", tol)
  e_folds = math.log(start / tol)
  predicted = {"gd": e_folds / -math.log((kappa - 1) / (kappa + 1)),
               "momentum": e_folds / -math.log((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1))}
  assert 0.7 * predicted["gd"] <= steps["gd"] <= 1.1 * predicted["gd"], (steps, predicted)  # 478 of 518
  assert steps["momentum"] <= 2 * predicted["momentum"], (steps, predicted)  # 62 of 52: critical damping's t r^t
  assert steps["gd"] / steps["momentum"] >= 0.5 * math.sqrt(kappa), steps


def test_a_clipped_step_does_not_jump_off_the_cliff(tmp_path):
  """Without clipping, the step that lands on the wall throws θ far back down the valley; clipped by norm (or by
  value) to 1, no step is longer than lr = 0.1 and the distance to the minimum never grows."""
  runs = {"unclipped": [], "norm": ["optimizer.clip_norm=1.0"], "value": ["optimizer.clip_value=1.0"]}
  distances = {}
  for name, job in runs.items():
    train_in_process(["experiment=clipping", *job, "steps=80", "eval_every=1", "log_every=1"], tmp_path / name)
    distances[name] = np.array([p["val/distance"] for p in writers.read_metrics(tmp_path / name)
                                if "val/distance" in p])
  start = distances["unclipped"][0] + 0.1  # the first point is after one step of about lr * slope = 0.1
  assert distances["unclipped"].max() > 10 * start, distances["unclipped"].max()
  for name in ("norm", "value"):
    assert distances[name].max() <= start, (name, distances[name].max())
    assert distances[name][-1] < 0.05, (name, distances[name][-1])  # settled at the wall's foot


@pytest.mark.slow  # three runs, about 25 s on a busy 2-core CPU
def test_clipping_by_norm_keeps_an_irnn_from_blowing_up_on_a_long_adding_problem(tmp_path):
  """Length 100, SGD at lr 0.01: unclipped, the loss blows up within a few steps (seed 0 overflows at step 5; seeds
  1 to 3 reach 1e7 to 1e22); clipped by norm it never rises above its start (1.17); clipped by value it spikes too
  (at least 3e7 over seeds 0 to 3: the step's norm is not bounded) but recovers (val mse 0.38 at step 50)."""
  runs = {"unclipped": [], "norm": ["optimizer.clip_norm=1.0"], "value": ["optimizer.clip_value=1.0"]}
  summaries, losses, val = {}, {}, {}
  for name, job in runs.items():
    summaries[name] = train_in_process(["experiment=clipping_rnn", "optimizer.clip_value=null",
                                        "optimizer.clip_norm=null", *job, "steps=50", "eval_every=50", "log_every=1",
                                        "checkpoint.every=null"], tmp_path / name)
    points = writers.read_metrics(tmp_path / name)
    losses[name] = np.array([p["train/loss"] for p in points if p.get("train/loss") is not None])
    val[name] = [p["val/mse"] for p in points if "val/mse" in p]
  assert summaries["unclipped"]["status"] == "diverged" or losses["unclipped"].max() > 1e6, losses["unclipped"]
  assert summaries["norm"]["status"] == "completed" and losses["norm"].max() < 1.5, losses["norm"].max()
  assert val["norm"][-1] < 0.5, val["norm"]  # 0.25: on its way to the mean's 0.167
  assert summaries["value"]["status"] == "completed" and losses["value"].max() > 1e3, losses["value"].max()
  assert val["value"][-1] < 1.0, val["value"]  # recovered: under the 1.17 of the untrained net


@pytest.mark.slow
def test_a_constant_init_keeps_every_hidden_unit_identical(tmp_path):
  """From a constant init the units of a hidden layer get equal gradients and stay identical (unit_std 0, to float
  precision), while He's init starts them apart; from zeros, ReLU's hidden units output 0 throughout."""
  last = {}
  for init in ("constant", "zeros", "he"):
    train_in_process(["experiment=symmetry", f"init={init}", "steps=200", "eval_every=100", "log_every=100"],
                     tmp_path / init)
    last[init] = [p for p in writers.read_metrics(tmp_path / init) if "diag/Dense_0/unit_std" in p][-1]
    assert last[init]["step"] == 200
  for layer in ("Dense_0", "Dense_1"):
    assert last["he"][f"diag/{layer}/unit_std"] > 0.3
    assert last["constant"][f"diag/{layer}/act_std"] > 0.01  # not dead: the units vary over examples ...
    assert last["constant"][f"diag/{layer}/unit_std"] < 1e-6 * last["constant"][f"diag/{layer}/act_std"]  # ... alike
    assert last["zeros"][f"diag/{layer}/act_std"] == 0.0 and last["zeros"][f"diag/{layer}/grad_norm"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_sweep_runs_shortened_and_reports(name, tmp_path):
  sweep = tmp_path / "sweep"
  run_cli("train", "-m", f"experiment={name}", "steps=30", "eval_every=10", "log_every=10",
          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert len(rows) == len(grid(name))
  assert (sweep / "report.md").is_file() and (sweep / "curves.png").is_file()
