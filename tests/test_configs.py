"""Every option of every config group composes and runs; parametrized over conf/, so a new file is tested."""

from __future__ import annotations

import pytest

from conftest import CONF, compose_config, train_in_process
from trainlab import data, train

GROUPS = ("model", "init", "optimizer", "schedule", "regularizer")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
TINY = ["steps=6", "eval_every=3", "log_every=3", "batch_size=32"]


# identity stops with a clear error on non-square weights (every MLP has some) unless told how to extend
EXTRA = {("init", "identity"): ["init.non_square=eye"]}


def _select(group: str, option: str) -> str:
  return f"{group}=[{option}]" if group == "regularizer" else f"{group}={option}"


def test_every_group_has_options():
  for group in GROUPS + ("data",):
    assert list((CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_trains(group, option, tmp_path):
  cfg = compose_config([_select(group, option)])
  assert cfg[group] if group != "regularizer" else option in cfg.regularizer
  # Diagnostics (on by default) depend on the model; with every other option they would only add compile time.
  diagnostics = [] if group == "model" else ["diagnostics=off"]
  summary = train_in_process([_select(group, option), *EXTRA.get((group, option), []), *TINY, *diagnostics],
                             tmp_path)
  assert summary["status"] in ("completed", "diverged")
  assert summary["steps_run"] >= 1


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_data_option_composes_and_loads(option, write_npz):
  overrides = [f"data={option}"] + ([f"data.path={write_npz()}"] if option == "npz" else [])
  cfg = compose_config(overrides)
  if "download" in cfg.data:  # tests never reach the network; the offline message is the behaviour to check
    cfg.data.download = False
  try:
    dataset = train.load_data(cfg.data)  # unwraps Hydra's InstantiationException, as a run does
  except data.DataError as e:  # data sets that need files a user must supply say which, and where
    assert "data" in str(e)
    return
  assert len(dataset.x_train) == len(dataset.y_train) > 0
  assert dataset.x_val.shape[1:] == dataset.x_test.shape[1:] == dataset.x_train.shape[1:]
