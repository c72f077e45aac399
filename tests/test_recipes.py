"""The README's defaults and recipes do what it says: a healthy default run, the IRNN learning the adding
problem, and the overfitting preset overfitting (the last two are slow: pytest -m slow)."""

from __future__ import annotations

import json
import pathlib

import pytest

from conftest import train_in_process


def val_losses(run: pathlib.Path) -> dict[int, float]:
  points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  return {p["step"]: p["val/loss"] for p in points if "val/loss" in p}


def test_the_default_run_is_healthy(tmp_path):
  """`trainlab train` as it is (diagnostics aside): the validation loss falls to the end instead of turning up."""
  summary = train_in_process(["diagnostics=off"], tmp_path)
  losses = val_losses(tmp_path)
  assert losses[3000] < losses[2000] < losses[1000] < losses[500]
  assert summary["best_val/step"] >= 2500 and summary["test/accuracy"] > 0.6


@pytest.mark.slow
def test_the_irnn_recipe_learns_the_adding_problem(tmp_path):
  summary = train_in_process(["data=adding", "model=rnn", "model.activation=relu", "init=normal",
                              "init.stddev=0.001", "init.recurrent=identity", "optimizer.clip_norm=1.0",
                              "diagnostics=off"], tmp_path)
  assert summary["test/mse"] < 0.05  # predicting the mean gives 0.167


@pytest.mark.slow
def test_the_overfitting_preset_overfits_without_dropout(tmp_path):
  without = val_losses_of(["experiment=overfitting", "regularizer=[]"], tmp_path / "without")
  with_dropout = val_losses_of(["experiment=overfitting", "regularizer=[dropout]"], tmp_path / "with")
  assert without[3000] > min(without.values()) + 0.3
  assert with_dropout[3000] == min(with_dropout.values())


def val_losses_of(overrides: list[str], run: pathlib.Path) -> dict[int, float]:
  train_in_process(overrides, run)
  return val_losses(run)
