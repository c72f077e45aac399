"""pretrain=greedy: which parameters each stage has and trains, the lower layers bit for bit when frozen, the
records of the stages, and resume inside a stage and at a stage's end, exactly as the uninterrupted run."""

from __future__ import annotations

import json
import pathlib
import signal

import numpy as np
import pytest
from omegaconf import open_dict

from conftest import compose_config, train_in_process
from test_resume import assert_same_run, read_jsonl, stop_when_logged
from trainlab import config, stages, train
from trainlab.rundir import checkpoint

# 3 hidden layers of 8 units: stages of 20 steps (two chunks of 10), then 20 steps of fine-tuning; 100 steps in all
GREEDY = ["model.widths=[8,8,8]", "pretrain=greedy", "pretrain.steps_per_stage=20", "steps=20", "eval_every=10",
          "log_every=5", "batch_size=16", "diagnostics=off", "regularizer=[]", "checkpoint.every=null",
          "checkpoint.keep=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 6)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0.5)
  path = tmp_path_factory.mktemp("data") / "data.npz"
  np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
  return ["data=npz", f"data.path={path}"]


def _config(overrides):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def _params_at(workdir: pathlib.Path, step: int) -> dict:
  saved = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return saved.restore(None, step)["params"]
  finally:
    saved.close()


def test_stages_add_one_hidden_layer_each_with_a_fresh_output_layer(data):
  cfg = _config([*data, *GREEDY, "pretrain.freeze_lower=true"])
  planned = stages.stages_of(cfg)
  assert [s.name for s in planned] == ["layer 1", "layer 2", "layer 3", "finetune"]
  assert [list(s.cfg.model.widths) for s in planned] == [[8], [8, 8], [8, 8, 8], [8, 8, 8]]
  assert [s.cfg.steps for s in planned] == [20, 20, 20, 20] and all(s.cfg.pretrain is None for s in planned)
  assert [s.carry for s in planned] == ["none", "hidden", "hidden", "all"]
  assert stages.stages_of(_config([*data, *GREEDY, "pretrain.finetune_steps=0"]))[-1].name == "layer 3"


def test_frozen_lower_layers_stay_bit_for_bit_and_each_stage_starts_from_the_last(data, tmp_path):
  summary = train_in_process([*data, *GREEDY, "pretrain.freeze_lower=true", "optimizer=momentum",
                              "regularizer=[weight_decay]"], tmp_path)
  assert summary["status"] == "completed" and summary["steps"] == 80 and summary["steps_run"] == 80
  got = [(s["name"], s["first_step"], s["last_step"], s["loaded_layers"], s["frozen_layers"])
         for s in summary["stages"]]
  assert got == [("layer 1", 0, 20, [], []), ("layer 2", 20, 40, ["Dense_0"], ["Dense_0"]),
                 ("layer 3", 40, 60, ["Dense_0", "Dense_1"], ["Dense_0", "Dense_1"]),
                 ("finetune", 60, 80, ["Dense_0", "Dense_1", "Dense_2", "Dense_3"], [])]
  ends = {step: _params_at(tmp_path, step) for step in (20, 40, 60, 80)}  # a checkpoint ends every stage
  assert sorted(ends[20]) == ["Dense_0", "Dense_1"] and ends[20]["Dense_1"]["kernel"].shape == (8, 3)
  assert sorted(ends[40]) == ["Dense_0", "Dense_1", "Dense_2"] and ends[40]["Dense_1"]["kernel"].shape == (8, 8)
  assert sorted(ends[60]) == sorted(ends[80]) == ["Dense_0", "Dense_1", "Dense_2", "Dense_3"]
  same = lambda a, b: all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in ("kernel", "bias"))
  # momentum and weight decay move every trained weight; the frozen ones end as the stage before left them
  assert same(ends[20]["Dense_0"], ends[40]["Dense_0"]) and same(ends[20]["Dense_0"], ends[60]["Dense_0"])
  assert same(ends[40]["Dense_1"], ends[60]["Dense_1"])
  assert not same(ends[20]["Dense_1"], ends[40]["Dense_1"])  # a new hidden layer, not the old output layer
  for layer in ("Dense_0", "Dense_1", "Dense_2", "Dense_3"):  # the final stage trains them all
    assert not same(ends[60][layer], ends[80][layer]), layer
  points = read_jsonl(tmp_path)
  assert {p["stage"] for p in points if p["step"] <= 20} == {1}
  assert {p["stage"] for p in points if 60 < p["step"]} == {4}
  val = [p for p in points if "val/loss" in p]
  for result in summary["stages"]:  # each stage's final validation point
    last = next(p for p in val if p["step"] == result["last_step"])
    assert result["val/loss"] == last["val/loss"] and result["val/accuracy"] == last["val/accuracy"]
  assert "test/accuracy" in summary and summary["stages"][3]["stage"] == 4


def test_without_freeze_lower_the_lower_layers_train_on(data, tmp_path):
  summary = train_in_process([*data, *GREEDY, "pretrain.freeze_lower=false", "pretrain.finetune_steps=0"], tmp_path)
  assert [s["frozen_layers"] for s in summary["stages"]] == [[], [], []] and summary["steps"] == 60
  a, b = _params_at(tmp_path, 20), _params_at(tmp_path, 40)
  assert not np.array_equal(a["Dense_0"]["kernel"], b["Dense_0"]["kernel"])


def test_the_first_stage_of_a_greedy_run_is_the_one_layer_run(data, tmp_path):
  """Stage 1 is the one-hidden-layer net trained alone, bit for bit: same program, same steps, same data order."""
  staged = train_in_process([*data, *GREEDY, "pretrain.freeze_lower=true"], tmp_path / "staged")
  alone = train_in_process([*data, *[o for o in GREEDY if not o.startswith(("model.", "pretrain"))],
                            "model.widths=[8]"], tmp_path / "alone")
  last_val = [p for p in read_jsonl(tmp_path / "alone") if "val/loss" in p][-1]
  assert last_val["step"] == 20 and staged["stages"][0]["val/loss"] == last_val["val/loss"]
  a, b = _params_at(tmp_path / "staged", 20), _params_at(tmp_path / "alone", 20)
  assert all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(
      [a[k][n] for k in sorted(a) for n in sorted(a[k])], [b[k][n] for k in sorted(b) for n in sorted(b[k])]))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[pathlib.Path, dict]:
  workdir = tmp_path_factory.mktemp("reference")
  return workdir, train_in_process([*data, *GREEDY, "pretrain.freeze_lower=true", "optimizer=adam",
                                    "checkpoint.every=20"], workdir)


@pytest.mark.parametrize("stop_at", [30, 40], ids=["middle_of_stage_2", "end_of_stage_2"])
def test_sigterm_inside_a_stage_then_resume_equals_uninterrupted(data, reference, stop_at, tmp_path, monkeypatch):
  overrides = [*data, *GREEDY, "pretrain.freeze_lower=true", "optimizer=adam", "checkpoint.every=20"]
  reference, reference_summary = reference
  stop_when_logged(monkeypatch, stop_at, lambda: signal.raise_signal(signal.SIGTERM))
  interrupted = train_in_process(overrides, tmp_path)
  monkeypatch.undo()
  assert interrupted["status"] == "interrupted" and interrupted["steps_run"] == stop_at
  assert [s["name"] for s in interrupted["stages"]] == ["layer 1", "layer 2"][:1 + (stop_at == 40)]
  saved = checkpoint.Checkpointer(tmp_path, read_only=True)
  assert saved.restore_host(saved.all_steps()[-1])["stage"] == 2
  saved.close()
  resumed = train_in_process([*overrides, "resume=true"], tmp_path)
  uninterrupted = reference_summary
  assert resumed["resumed_from_step"] == stop_at and resumed["status"] == "completed"
  for key in ("test/accuracy", "test/loss", "best_val/loss", "best_val/step", "steps_run", "stages"):
    assert resumed[key] == uninterrupted[key], key
  assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("overrides, message", [
    (["model=cnn"], "pretrain=greedy is for model=mlp with at least one hidden layer"),
    (["model.widths=[]"], "pretrain=greedy is for model=mlp"),
    (["epochs=2"], "epochs=2 is not allowed with pretrain"),
    (["regularizer=[early_stopping]"], "regularizer=early_stopping is not allowed with pretrain"),
    (["init.from_run=somewhere"], "init.from_run is not allowed with pretrain"),
    (["pretrain.steps_per_stage=0"], "pretrain.steps_per_stage=0 is not allowed: it must be >= 1"),
])
def test_refusals_in_one_line(data, overrides, message):
  with pytest.raises(config.ConfigError) as caught:
    stages.stages_of(_config([*data, *GREEDY, *overrides]))
  assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_staged_run_is_refused_before_it_writes_anything(data, tmp_path):
  with pytest.raises(config.ConfigError):
    train.train_and_evaluate(_config([*data, *GREEDY, "model.widths=[]"]), tmp_path / "run")
  assert not (tmp_path / "run").exists()
