"""init.from_run, freeze and init.from_lr_scale: exact loaded tensors, frozen parameters bit for bit, the
learning-rate factor against its formula, the one-line refusals, and a source run left untouched."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import QUICK, compose_config, run_cli, train_in_process
from trainlab import config, optim, train, transfer
from trainlab.rundir import checkpoint

SMALL = [o for o in QUICK if not o.startswith("steps")] + ["steps=100", "eval_every=50", "model.norm=batch"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
  """A run pretrained on classes 0-4 (5 outputs), with early stopping's best parameters kept."""
  workdir = tmp_path_factory.mktemp("source")
  train_in_process([*SMALL, "data.classes=[0,1,2,3,4]", "regularizer=[early_stopping]",
                    "regularizer.early_stopping.patience=1"], workdir)
  return workdir


def _saved(workdir: pathlib.Path, name: str = "state"):
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    tree = ckpt.restore(None, ckpt.all_steps()[-1], name)
  finally:
    ckpt.close()
  return (tree["params"], tree["model_state"]) if name == "state" else tuple(tree)


def _config(overrides):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def _start(overrides):
  cfg = _config([*SMALL, *overrides])
  run = train.setup(cfg)
  return run, transfer.load_into(run.program.init(np.int32(cfg.seed), run.values), run.transfer)


def _files(workdir: pathlib.Path) -> dict:
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(workdir.rglob("*"))}


def test_loaded_layers_hold_the_source_tensors_and_a_new_head_starts_fresh(source):
  before = _files(source)
  params, stats = _saved(source)
  run, state = _start([f"init.from_run={source}"])  # 10 classes: the 5-way output layer does not fit
  fresh = run.program.init(np.int32(0), run.values)
  assert run.transfer.loaded_layers == ("BatchNorm_0", "Dense_0") and run.transfer.fresh_layers == ("Dense_1",)
  for layer in ("Dense_0", "BatchNorm_0"):
    for name, saved in params[layer].items():
      np.testing.assert_array_equal(np.asarray(state.params[layer][name]), saved)
  for name, saved in stats["batch_stats"]["BatchNorm_0"].items():
    np.testing.assert_array_equal(np.asarray(state.model_state["batch_stats"]["BatchNorm_0"][name]), saved)
  np.testing.assert_array_equal(state.params["Dense_1"]["kernel"], fresh.params["Dense_1"]["kernel"])
  assert not np.array_equal(state.params["Dense_0"]["kernel"], fresh.params["Dense_0"]["kernel"])
  assert _files(source) == before  # only read


def test_best_checkpoint_and_from_layers(source):
  best_params, _ = _saved(source, "best")
  run, state = _start(["data.classes=[5,6,7,8,9]", f"init.from_run={source}", "init.from_checkpoint=best",
                       "init.from_layers=[Dense_0]"])
  assert run.transfer.loaded_layers == ("Dense_0",)  # the 5-way head fits but was not asked for
  assert run.transfer.source["checkpoint"] == "best"
  np.testing.assert_array_equal(np.asarray(state.params["Dense_0"]["kernel"]), best_params["Dense_0"]["kernel"])


def test_the_loaded_values_reuse_the_program_of_the_same_structure(source, tmp_path):
  other = tmp_path / "other"
  train_in_process([*SMALL, "data.classes=[0,1,2,3,4]", "seed=1", "steps=50"], other)
  a, _ = _start([f"init.from_run={source}"])
  b, _ = _start([f"init.from_run={other}", "init.from_lr_scale=0.3"])
  assert a.spec == b.spec and a.program is b.program


def test_frozen_layers_are_bit_for_bit_the_loaded_ones_at_the_end(source, tmp_path):
  """Momentum and decoupled weight decay would move every weight; the frozen ones, batch-norm statistics
  included, stay exactly as loaded, the others train."""
  _, start = _start(["data.classes=[5,6,7,8,9]", f"init.from_run={source}", "freeze=[hidden]",
                     "optimizer=momentum", "regularizer=[weight_decay]"])
  summary = train_in_process([*SMALL, "data.classes=[5,6,7,8,9]", f"init.from_run={source}", "freeze=[hidden]",
                              "optimizer=momentum", "regularizer=[weight_decay]"], tmp_path)
  assert summary["frozen_layers"] == ["BatchNorm_0", "Dense_0"]
  params, stats = _saved(tmp_path)
  for layer in ("Dense_0", "BatchNorm_0"):
    for name, end in params[layer].items():
      assert np.asarray(start.params[layer][name]).tobytes() == end.tobytes(), (layer, name)
  for name, end in stats["batch_stats"]["BatchNorm_0"].items():
    assert np.asarray(start.model_state["batch_stats"]["BatchNorm_0"][name]).tobytes() == end.tobytes()
  assert not np.array_equal(start.params["Dense_1"]["kernel"], params["Dense_1"]["kernel"])


def test_lr_scale_and_freeze_in_the_optimizer_against_the_formula():
  """SGD with momentum 0.9, lr 0.1: fresh leaves step -lr v, loaded ones -scale lr v, frozen ones 0; the
  optimizer keeps no momentum for frozen leaves."""
  params = {"Dense_0": {"kernel": np.ones((2, 3), np.float32)}, "Dense_1": {"kernel": np.ones((3, 2), np.float32)},
            "Dense_2": {"kernel": np.ones((2, 1), np.float32)}}
  moved = {"loaded": ["Dense_0/kernel", "Dense_1/kernel"], "frozen": ["Dense_0/kernel"], "lr_scale": 0.25}
  tx, lr_fn = optim.build_optimizer({"_target_": "optax.sgd", "lr": 0.1, "momentum": 0.9}, {
      "_target_": "trainlab.schedules.constant", "warmup_steps": 0}, 10, {}, transfer=moved)
  state = tx.init(params)
  assert np.isclose(lr_fn(state), 0.1)
  rng = np.random.default_rng(0)
  v = jax.tree.map(np.zeros_like, params)
  for _ in range(3):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    v = jax.tree.map(lambda v, g: 0.9 * v + g, v, grads)
    np.testing.assert_array_equal(updates["Dense_0"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["Dense_1"]["kernel"], -0.25 * 0.1 * v["Dense_1"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["Dense_2"]["kernel"], -0.1 * v["Dense_2"]["kernel"], rtol=1e-6)
  momenta = [leaf for leaf in jax.tree.leaves(state) if getattr(leaf, "shape", None) == (2, 3)]
  assert not momenta  # no state at all for the frozen (2, 3) kernel


def test_freeze_patterns_and_the_all_but_output_spelling():
  paths = ["Block_0/Conv_0/kernel", "Block_1/Conv_0/kernel", "Conv_0/kernel", "Dense_0/kernel", "Dense_1/bias",
           "Dense_1/kernel"]
  assert transfer.select(paths, ["Block_*"], "freeze") == paths[:2]
  assert transfer.select(paths, ["Block_1/Conv_0", "Dense_0"], "freeze") == [paths[1], paths[3]]
  assert transfer.select(paths, ["hidden"], "freeze") == paths[:4]
  with pytest.raises(config.ConfigError, match="freeze: Dense_7 matches no layer of this model; its layers are"):
    transfer.select(paths, ["Dense_7"], "freeze")


@pytest.mark.parametrize("overrides, message", [
    (["init.from_run={missing}"], "init.from_run={missing}: no such directory"),
    (["init.from_run={empty}"], "holds no checkpoint"),
    (["init.from_run={source}", "model.widths=[32]", "model.norm=none"], "the source model has no layer in common"),
    (["init.from_run={source}", "init.from_layers=[Dense_1]"],
     "has shape (5,) for Dense_1/bias (this model's is (10,))"),
    (["init.from_run={source}", "model.widths=[64,64]", "init.from_layers=[Dense_2]"], "{source} lacks Dense_2/bias"),
    (["init.from_run={source}", "init.from_layers=[Conv_0]"], "init.from_layers: Conv_0 matches no layer of this"),
    (["init.from_run={source}", "init.from_checkpoint=7"], "has no checkpoint at step 7"),
    (["init.from_run={source}", "init.from_checkpoint=first"], "it must be best, last or a step number"),
    (["freeze=[Dense_0]", "regularizer=[max_norm]"], "freeze is not allowed with regularizer=max_norm"),
])
def test_refusals_name_the_key_in_one_line(source, tmp_path, overrides, message):
  (tmp_path / "empty").mkdir()
  paths = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "source": source}
  with pytest.raises(config.ConfigError) as caught:
    train.setup(_config([*SMALL, *(o.format(**paths) for o in overrides)]))
  assert message.format(**paths) in str(caught.value) and "\n" not in str(caught.value)


def test_best_of_a_run_without_early_stopping_is_refused(tmp_path):
  train_in_process([*SMALL, "steps=50"], tmp_path / "plain")
  with pytest.raises(config.ConfigError, match="kept no best parameters"):
    train.setup(_config([*SMALL, f"init.from_run={tmp_path / 'plain'}", "init.from_checkpoint=best"]))


@pytest.mark.slow
def test_cli_records_the_source_in_summary_and_refuses_in_one_line(source, tmp_path):
  run_cli("train", *SMALL, "data.classes=[5,6,7,8,9]", f"init.from_run={source}/checkpoints",
          "init.from_layers=[hidden]", "freeze=[hidden]", f"hydra.run.dir={tmp_path / 'probe'}", cwd=tmp_path)
  summary = json.loads((tmp_path / "probe" / "summary.json").read_text())
  assert summary["loaded_layers"] == ["BatchNorm_0", "Dense_0"] and summary["fresh_layers"] == ["Dense_1"]
  assert summary["init_source"]["run"] == str(source) and summary["init_source"]["config"]["data"]["classes"] == [
      0, 1, 2, 3, 4]
  assert "init.from_run: loaded BatchNorm_0, Dense_0" in (tmp_path / "probe" / "train.log").read_text()
  proc = run_cli("train", "init.from_run=nowhere", cwd=tmp_path, check=False)
  assert proc.returncode != 0 and "init.from_run=nowhere: no such directory" in proc.stderr
  assert "Traceback" not in proc.stderr


# --- distillation (regularizer=[distill]) ------------------------------------------------------------------
def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _distill_reference(logits, teacher, labels, temperature, alpha):
  """(1 - a) CE(y, p_s) + a T^2 KL(p_t^T || p_s^T) in float64 NumPy, per example."""
  ce = -_log_softmax(logits)[np.arange(len(labels)), labels]
  log_s, log_t = _log_softmax(logits / temperature), _log_softmax(teacher / temperature)
  kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
  return (1 - alpha) * ce + alpha * temperature**2 * kl


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.3), (2.5, 1.0)])
def test_distillation_loss_against_numpy(temperature, alpha):
  from trainlab import regularizers

  rng = np.random.default_rng(1)
  logits, teacher = rng.normal(size=(2, 16, 5)) * 3
  labels = rng.integers(0, 5, 16)
  options = {"teacher_logits": teacher.astype(np.float32), "temperature": np.float32(temperature),
             "alpha": np.float32(alpha)}
  got = regularizers.objective(logits.astype(np.float32), labels, {"distill": options})
  np.testing.assert_allclose(got, _distill_reference(logits, teacher, labels, temperature, alpha), rtol=2e-5,
                             atol=2e-6)


def test_distillation_in_the_step_uses_the_loaded_teacher_and_never_trains_it(source, tmp_path):
  from hydra.utils import instantiate

  overrides = ["data.classes=[0,1,2,3,4]", "model.widths=[16]", "model.norm=none", "regularizer=[distill]",
               f"regularizer.distill.teacher={source}", "regularizer.distill.temperature=3.0",
               "regularizer.distill.alpha=0.7"]
  run, state = _start(overrides)
  x, y = run.dataset.x_train[:64], run.dataset.y_train[:64]
  params, stats = _saved(source)
  teacher_cfg = run.teacher["config"]["model"]
  teacher = instantiate(teacher_cfg, num_outputs=5, _convert_="all").apply({"params": params, **stats}, x,
                                                                            train=False)
  student, _ = train.apply_model(run.spec, state, state.params, x, train=False)
  objective, _ = train.loss_fn(state.params, run.spec, state, x, y, jax.random.PRNGKey(0))
  expected = _distill_reference(np.asarray(student, np.float64), np.asarray(teacher, np.float64), y, 3.0, 0.7)
  np.testing.assert_allclose(objective, expected.mean(), rtol=1e-5)

  def objective_of_teacher(variables):
    return train.loss_fn(state.params, run.spec, state._replace(hparams={**state.hparams, "teacher": variables}),
                         x, y, jax.random.PRNGKey(0))[0]

  grads = jax.grad(objective_of_teacher)(state.hparams["teacher"])
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
  summary = train_in_process([*SMALL, *overrides], tmp_path)
  assert summary["distill_teacher"]["run"] == str(source) and summary["status"] == "completed"
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  end = ckpt.restore(None, ckpt.all_steps()[-1])["hparams"]["teacher"]
  ckpt.close()
  for a, b in zip(jax.tree.leaves(end["params"]), jax.tree.leaves(params)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_distillation_refusals(source, tmp_path):
  with pytest.raises(config.ConfigError, match="regularizer.distill.teacher=.*nowhere: no such directory"):
    train.setup(_config([*SMALL, "regularizer=[distill]", f"regularizer.distill.teacher={tmp_path / 'nowhere'}"]))
  with pytest.raises(config.ConfigError, match="the teacher has 5 outputs and this data set 10 classes"):
    train.setup(_config([*SMALL, "regularizer=[distill]", f"regularizer.distill.teacher={source}"]))


@pytest.mark.slow
def test_vectorized_members_load_their_source_as_a_single_run_does(source, tmp_path):
  common = [*SMALL, "steps=50", "data.classes=[5,6,7,8,9]", f"init.from_run={source}", "init.from_layers=[hidden]"]
  run_cli("train", "-m", "hydra/launcher=vectorized", f"hydra.sweep.dir={tmp_path / 'sweep'}", *common,
          "init.from_lr_scale=0.1,1.0", cwd=tmp_path)
  alone = train_in_process([*common, "init.from_lr_scale=0.1"], tmp_path / "alone")
  for job in ("0", "1"):
    summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
    assert summary["vectorized_members"] == 2 and summary["loaded_layers"] == ["BatchNorm_0", "Dense_0"]
  member = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
  np.testing.assert_allclose(member["test/loss"], alone["test/loss"], rtol=1e-4)


@pytest.mark.slow
def test_a_loaded_frozen_distilled_run_resumes_bit_for_bit(source, tmp_path, monkeypatch):
  """SIGTERM in the middle, then resume=true: the same points and final state (the teacher's included) as the
  run that was not interrupted; the source is read again, and still only read."""
  import signal

  from test_resume import assert_same_run, stop_when_logged

  overrides = [*SMALL, "steps=60", "eval_every=10", "checkpoint.every=20", "checkpoint.keep=null",
               "data.classes=[5,6,7,8,9]", f"init.from_run={source}", "init.from_layers=[hidden]", "freeze=[Dense_0]",
               "optimizer=momentum", "regularizer=[distill]", f"regularizer.distill.teacher={source}"]
  before = _files(source)
  reference = train_in_process(overrides, tmp_path / "reference")
  stop_when_logged(monkeypatch, 30, lambda: signal.raise_signal(signal.SIGTERM))
  assert train_in_process(overrides, tmp_path / "run")["status"] == "interrupted"
  monkeypatch.undo()
  resumed = train_in_process([*overrides, "resume=true"], tmp_path / "run")
  assert resumed["resumed_from_step"] == 30 and resumed["test/loss"] == reference["test/loss"]
  assert_same_run(tmp_path / "run", tmp_path / "reference")
  assert _files(source) == before
