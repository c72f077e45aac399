"""pretrain=fitnets: the hint loss and the regressor against NumPy, the hint stage's objective in the compiled
step, which layers it trains, a teacher that never trains (zero gradient, bit-equal), and both stages in one run."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import compose_config, train_in_process
from trainlab import config, fitnets, stages, train
from trainlab.rundir import checkpoint

COMMON = ["eval_every=10", "log_every=5", "batch_size=16", "diagnostics=off", "checkpoint.every=null",
          "checkpoint.keep=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 6)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0.5)
  path = tmp_path_factory.mktemp("data") / "data.npz"
  np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
  return ["data=npz", f"data.path={path}"]


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> pathlib.Path:
  """A wide, shallow teacher: one hidden layer of 32."""
  workdir = tmp_path_factory.mktemp("teacher")
  train_in_process([*data, *COMMON, "model.widths=[32]", "steps=40", "regularizer=[]"], workdir)
  return workdir


def _student(data, teacher, *extra):
  """A deep, thin student (four layers of 8) guided at its second layer by the teacher's first."""
  return [*data, *COMMON, "model.widths=[8,8,8,8]", "pretrain=fitnets", "pretrain.guided_layer=Dense_1",
          "pretrain.hint_layer=Dense_0", "pretrain.hint_steps=20", "steps=20", "regularizer=[distill]",
          f"regularizer.distill.teacher={teacher}", *extra]


def _config(overrides):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def _saved(workdir: pathlib.Path, step: int) -> dict:
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.restore(None, step)
  finally:
    ckpt.close()


def test_hint_loss_against_numpy():
  rng = np.random.default_rng(0)
  for shape in ((16, 5), (4, 3, 3, 2)):
    hint, predicted = rng.normal(size=(2, *shape))
    expected = 0.5 * np.mean(np.sum((hint - predicted).reshape(shape[0], -1) ** 2, axis=1))
    np.testing.assert_allclose(fitnets.hint_loss(hint.astype(np.float32), predicted.astype(np.float32)), expected,
                               rtol=1e-6)


def test_the_regressor_is_dense_for_vectors_and_a_valid_convolution_for_images():
  x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
  dense = fitnets.Regressor((5,))
  params = dense.init(jax.random.PRNGKey(0), x)["params"]
  np.testing.assert_allclose(dense.apply({"params": params}, x), x @ params["Dense_0"]["kernel"] +
                             params["Dense_0"]["bias"], rtol=1e-5, atol=1e-6)
  images = np.zeros((2, 8, 8, 4), np.float32)
  conv = fitnets.Regressor((6, 6, 16))
  params = conv.init(jax.random.PRNGKey(0), images)["params"]
  assert params["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
  assert conv.apply({"params": params}, images).shape == (2, 6, 6, 16)


def test_the_hint_stage_objective_against_numpy_and_a_teacher_without_gradient(data, teacher):
  cfg = _config(_student(data, teacher))
  hint_stage, distill_stage = stages.stages_of(cfg)
  assert (hint_stage.name, distill_stage.name) == ("hint", "distill")
  assert "distill" not in hint_stage.cfg.regularizer and "distill" in distill_stage.cfg.regularizer
  run = stages._setup(hint_stage, None)
  # the hint reaches Dense_0 and Dense_1 (and the regressor); the layers above stay as they are
  assert sorted({p.split("/")[0] for p in run.transfer.frozen}) == ["Dense_2", "Dense_3", "Dense_4"]
  state = run.program.init(np.int32(0), run.values)
  assert state.params[fitnets.REGRESSOR]["Dense_0"]["kernel"].shape == (8, 32)
  x, y = run.dataset.x_train[:32], run.dataset.y_train[:32]
  objective, (hint_loss, _, _) = train.loss_fn(state.params, run.spec, state, x, y, jax.random.PRNGKey(0))
  tp, sp = _saved(teacher, 40)["params"], jax.tree.map(np.asarray, state.params)
  x64 = x.astype(np.float64)
  hint = x64 @ tp["Dense_0"]["kernel"] + tp["Dense_0"]["bias"]
  guided = np.maximum(x64 @ sp["Dense_0"]["kernel"] + sp["Dense_0"]["bias"], 0) @ sp["Dense_1"]["kernel"] + sp[
      "Dense_1"]["bias"]
  regressor = sp[fitnets.REGRESSOR]["Dense_0"]
  expected = 0.5 * np.mean(np.sum((hint - (guided @ regressor["kernel"] + regressor["bias"])) ** 2, axis=1))
  np.testing.assert_allclose(objective, expected, rtol=1e-5)
  np.testing.assert_allclose(hint_loss, expected, rtol=1e-5)

  def objective_of(params, variables):
    changed = state._replace(hparams={**state.hparams, "teacher": variables})
    return train.loss_fn(params, run.spec, changed, x, y, jax.random.PRNGKey(0))[0]

  student_grads, teacher_grads = jax.grad(objective_of, argnums=(0, 1))(state.params, state.hparams["teacher"])
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))
  for layer in ("Dense_2", "Dense_3", "Dense_4"):
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(student_grads[layer])), layer
  for layer in ("Dense_0", "Dense_1", fitnets.REGRESSOR):
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(student_grads[layer])), layer


def test_both_stages_in_one_run(data, teacher, tmp_path):
  overrides = _student(data, teacher, "optimizer=momentum", "regularizer=[distill,weight_decay]")
  start = stages._setup(stages.stages_of(_config(overrides))[0], None)
  initial = jax.tree.map(np.asarray, start.program.init(np.int32(0), start.values).params)
  summary = train_in_process(overrides, tmp_path)
  assert summary["status"] == "completed" and summary["steps"] == 40
  assert [(s["name"], s["first_step"], s["last_step"]) for s in summary["stages"]] == [("hint", 0, 20),
                                                                                       ("distill", 20, 40)]
  assert summary["stages"][0]["frozen_layers"] == ["Dense_2", "Dense_3", "Dense_4"]
  assert summary["stages"][1]["frozen_layers"] == [] and summary["distill_teacher"]["run"] == str(teacher)
  hinted, final = _saved(tmp_path, 20), _saved(tmp_path, 40)
  bits = lambda tree: [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]
  for layer in ("Dense_2", "Dense_3", "Dense_4"):  # weight decay and momentum leave the frozen layers alone
    assert bits(hinted["params"][layer]) == bits(initial[layer]), layer
  for layer in ("Dense_0", "Dense_1", fitnets.REGRESSOR):
    assert bits(hinted["params"][layer]) != bits(initial[layer]), layer
  assert fitnets.REGRESSOR not in final["params"]  # stage 2 is the student alone, every layer training
  for layer in ("Dense_0", "Dense_1", "Dense_2", "Dense_3", "Dense_4"):
    assert bits(final["params"][layer]) != bits(hinted["params"][layer]), layer
  source = _saved(teacher, 40)["params"]
  for saved in (hinted, final):  # the teacher's parameters, in each stage's state, are the source run's
    assert bits(saved["hparams"]["teacher"]["params"]) == bits(source)


@pytest.mark.parametrize("change, message", [
    (["regularizer=[]"], "pretrain=fitnets needs regularizer=[distill]"),
    (["pretrain.guided_layer=Dense_9"], "pretrain.guided_layer=Dense_9 names no module of the student; its modules "
                                        "are Dense_0, Activation_0, Dense_1"),
    (["pretrain.hint_layer=Conv_0"], "pretrain.hint_layer=Conv_0 names no module of the teacher"),
])
def test_refusals_in_one_line(data, teacher, change, message):
  with pytest.raises(config.ConfigError) as caught:
    overrides = _student(data, teacher, *change)
    if "regularizer=[]" in change:  # no distill group: no teacher key either
      overrides = [o for o in overrides if not o.startswith("regularizer.distill")]
    cfg = _config(overrides)
    stages._setup(stages.stages_of(cfg)[0], None)
  assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_layers_after_the_guided_one_follow_the_order_the_student_runs():
  """With batch norm, BatchNorm_1 runs after Dense_1 though its name sorts first: the hint does not reach it."""
  from trainlab.models import MLP

  student = MLP(num_outputs=3, widths=[8, 8, 8], activation="relu", norm="batch")
  teacher = MLP(num_outputs=3, widths=[32], activation="relu")
  variables = teacher.init(jax.random.PRNGKey(0), np.zeros((1, 6)), train=False)
  guided, hint, order = fitnets.shapes(student, teacher, variables, (6,), "Dense_1", "Dense_0")
  assert (guided, hint) == ((8,), (32,))
  assert fitnets.layers_after(order, "Dense_1") == ["BatchNorm_1", "Activation_1", "Dense_2", "BatchNorm_2",
                                                    "Activation_2", "Dense_3"]

  class ImageTeacher(nn.Module):  # its Dense_0 gives (2, 3, 4) per example: no dense regressor maps (8,) onto it
    @nn.compact
    def __call__(self, x, train):
      return nn.Dense(4, name="Dense_0")(x.reshape(x.shape[0], 2, 3, 1))

  images = ImageTeacher().init(jax.random.PRNGKey(0), np.zeros((1, 6)), train=False)
  with pytest.raises(config.ConfigError, match=r"gives \(8,\) per example and pretrain.hint_layer=Dense_0 \(2, 3, 4\)"):
    fitnets.shapes(student, ImageTeacher(), images, (6,), "Dense_1", "Dense_0")
