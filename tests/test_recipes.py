"""The README's defaults and recipes do what it says: a healthy default run, every everyday command, the IRNN
learning the adding problem and the overfitting preset overfitting (those two are slow: pytest -m slow)."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from conftest import run_cli, train_in_process


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


def everyday_commands() -> list[list[str]]:
  """The `trainlab train ...` lines of the README's "Everyday use" block, as argument lists."""
  readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
  block = readme.split("## Everyday use", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  return [line.split("#", 1)[0].split()[1:] for line in block.splitlines() if line.startswith("trainlab train")]


def test_every_everyday_command_of_the_readme_runs(tmp_path):
  """Each command as written, shortened to a few steps; the grid makes the 12 runs it announces."""
  commands = everyday_commands()
  assert len(commands) == 6
  short = ["steps=20", "eval_every=10", "log_every=10", "diagnostics=off"]
  for i, args in enumerate(commands):
    if "--help" in args or "--cfg" in args:
      out = run_cli(*args, cwd=tmp_path)
      assert out.stdout.strip()
      continue
    where = f"hydra.sweep.dir={tmp_path / str(i)}" if "-m" in args else f"hydra.run.dir={tmp_path / str(i)}"
    run_cli(*args, *short, where, cwd=tmp_path)
    if "-m" in args:
      with open(tmp_path / str(i) / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
      assert len(rows) == 12 and {r["status"] for r in rows} == {"completed"}
    else:
      assert json.loads((tmp_path / str(i) / "summary.json").read_text())["status"] == "completed"
