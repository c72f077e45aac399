"""Each regularizer against its formula: penalties and their gradients, max-norm, dropout, the smoothed and
confidence-penalized losses, augmentation, and early stopping through the real training loop."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train_in_process
from test_initializers import program_state
from trainlab import losses, models, optim, regularizers

PARAMS = {
    "Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([4.0, -5.0])},
    "LayerNorm_0": {"scale": jnp.array([2.0, 2.0]), "bias": jnp.array([1.0, 1.0])},
    "Dense_1": {"kernel": jnp.array([[-1.5], [0.25]]), "bias": jnp.array([7.0])},
}
KERNELS = [np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[-1.5], [0.25]])]


def grads(fn):
  return jax.grad(fn)(PARAMS)


def test_l2_value_and_gradient_on_weights_only():
  lam = 0.3
  reg = {"l2": {"weight": jnp.float32(lam)}}
  np.testing.assert_allclose(regularizers.penalty(PARAMS, reg), lam * sum((k ** 2).sum() for k in KERNELS), rtol=1e-6)
  g = grads(lambda p: regularizers.penalty(p, reg))
  np.testing.assert_allclose(g["Dense_0"]["kernel"], 2 * lam * KERNELS[0], rtol=1e-6)
  np.testing.assert_allclose(g["Dense_1"]["kernel"], 2 * lam * KERNELS[1], rtol=1e-6)
  for path in (("Dense_0", "bias"), ("LayerNorm_0", "scale"), ("LayerNorm_0", "bias"), ("Dense_1", "bias")):
    np.testing.assert_array_equal(g[path[0]][path[1]], 0.0)


def test_l1_value_and_gradient_on_weights_only():
  lam = 0.2
  reg = {"l1": {"weight": jnp.float32(lam), "proximal": False}}
  np.testing.assert_allclose(regularizers.penalty(PARAMS, reg), lam * sum(np.abs(k).sum() for k in KERNELS), rtol=1e-6)
  g = grads(lambda p: regularizers.penalty(p, reg))
  np.testing.assert_allclose(g["Dense_0"]["kernel"], lam * np.sign(KERNELS[0]), rtol=1e-6)
  np.testing.assert_array_equal(g["Dense_0"]["bias"], 0.0)
  np.testing.assert_array_equal(g["LayerNorm_0"]["scale"], 0.0)


def test_l1_gradient_is_zero_at_zero_weights():
  """The subgradient at w = 0 is 0 (sign(0) = 0, as Goodfellow et al. eq. 7.20 and PyTorch), so a zero weight is
  not pushed off zero by the penalty; elsewhere it is weight * sign(w)."""
  lam = 0.5
  kernel = jnp.array([[0.0, -0.0, 2.0], [-3.0, 0.0, 1e-30]])
  reg = {"l1": {"weight": jnp.float32(lam), "proximal": False}}
  g = jax.grad(lambda p: regularizers.penalty(p, reg))({"Dense_0": {"kernel": kernel}})["Dense_0"]["kernel"]
  np.testing.assert_array_equal(g, [[0.0, 0.0, lam], [-lam, 0.0, lam]])
  assert float(regularizers.penalty({"Dense_0": {"kernel": kernel}}, reg)) == pytest.approx(lam * 5.0)


def test_proximal_l1_leaves_the_loss_and_soft_thresholds_each_step():
  """proximal: the penalty adds nothing to the loss; each SGD step on a weight w with gradient g is
  w <- sign(w - lr g) max(|w - lr g| - lr lam, 0) with lr the schedule's current rate; biases step plainly."""
  lam, lr, steps = 0.5, 0.1, 4
  reg = {"l1": {"weight": jnp.float32(lam), "proximal": True}}
  assert float(regularizers.penalty(PARAMS, reg)) == 0.0
  optimizer = {"_target_": "optax.sgd", "lr": lr, "momentum": None, "nesterov": False, "staleness": 0,
               "clip_value": None, "clip_norm": None, "noise_eta": None, "noise_gamma": 0.0, "then": None,
               "switch_step": None}
  schedule = {"_target_": "trainlab.schedules.linear", "end_factor": 0.0, "decay_steps": None, "warmup_steps": 0}
  tx, lr_fn = optim.build_optimizer(optimizer, schedule, 8, reg)
  grad = {"w": {"kernel": jnp.array([0.3, -0.04, 0.0, 2.0]), "bias": jnp.array([1.0])}}
  params = {"w": {"kernel": jnp.array([1.0, 0.01, -0.02, -0.5]), "bias": jnp.array([0.0])}}
  state, want = tx.init(params), jax.tree.map(np.asarray, params)
  for k in range(steps):
    rate = lr * (1 - k / 8)  # the linear schedule's multiplier at step k
    assert float(lr_fn(state)) == pytest.approx(rate, rel=1e-6)
    updates, state = tx.update(grad, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    z = want["w"]["kernel"] - rate * np.asarray(grad["w"]["kernel"])
    want = {"w": {"kernel": np.sign(z) * np.maximum(np.abs(z) - rate * lam, 0.0),
                  "bias": want["w"]["bias"] - rate * np.asarray(grad["w"]["bias"])}}
    np.testing.assert_allclose(params["w"]["kernel"], want["w"]["kernel"], atol=1e-7)
    np.testing.assert_allclose(params["w"]["bias"], want["w"]["bias"], rtol=1e-6)
  assert float(params["w"]["kernel"][2]) == 0.0  # a weight the step cannot lift past lr * lam is exactly zero


def test_proximal_l1_finds_the_exact_zeros_of_a_sparse_solution():
  """Least squares whose true weights are sparse: proximal L1 (ISTA) ends with the irrelevant weights exactly 0 and
  the relevant ones not; the subgradient form of the same penalty ends with no exact zero."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(200, 10)), jnp.float32)
  true = np.zeros(10, np.float32)
  true[[1, 4, 7]] = [2.0, -3.0, 1.5]
  y = x @ true + 0.01 * jnp.asarray(rng.normal(size=200), jnp.float32)
  data_loss = lambda p: jnp.mean(jnp.square(x @ p["Dense_0"]["kernel"] - y))

  def fit(proximal: bool):
    reg = {"l1": {"weight": jnp.float32(0.1), "proximal": proximal}}
    optimizer = {"_target_": "optax.sgd", "lr": 0.05, "momentum": None, "nesterov": False, "staleness": 0,
                 "clip_value": None, "clip_norm": None, "noise_eta": None, "noise_gamma": 0.0, "then": None,
                 "switch_step": None}
    schedule = {"_target_": "trainlab.schedules.constant", "warmup_steps": 0}
    tx, _ = optim.build_optimizer(optimizer, schedule, 500, reg)
    params = {"Dense_0": {"kernel": jnp.zeros(10)}}
    state = tx.init(params)
    loss = lambda p: data_loss(p) + regularizers.penalty(p, reg)
    for _ in range(500):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = jax.tree.map(lambda p, u: p + u, params, updates)
    return np.asarray(params["Dense_0"]["kernel"])

  proximal, subgradient = fit(True), fit(False)
  irrelevant = [i for i in range(10) if true[i] == 0]
  np.testing.assert_array_equal(proximal[irrelevant], 0.0)
  assert np.all(np.abs(proximal[[1, 4, 7]]) > 1.0)
  assert np.count_nonzero(subgradient == 0.0) == 0


def test_sparse_weights_stay_sparse_under_proximal_l1_and_are_reported(tmp_path):
  """init=sparse with proximal L1 in the real loop: the summary and the per-layer diagnostics report the weights'
  exact zeros, and the proximal step keeps more of them than the subgradient form of the same penalty."""
  run = ["steps=100", "eval_every=50", "log_every=25", "model.widths=[32]", "init=sparse", "init.k=4",
         "regularizer=[l1]", "regularizer.l1.weight=0.03", "diagnostics=default", "diagnostics.every=50",
         "diagnostics.histogram_every=0", "optimizer=sgd", "optimizer.lr=0.05"]
  proximal = train_in_process([*run, "regularizer.l1.proximal=true"], tmp_path / "proximal")
  subgradient = train_in_process(run, tmp_path / "subgradient")
  assert proximal["weights/zero_fraction"] > subgradient["weights/zero_fraction"]
  assert proximal["weights/zero_fraction"] > 0.5  # most of init=sparse's zeros are still exactly zero
  points = [json.loads(line) for line in (tmp_path / "proximal" / "metrics.jsonl").read_text().splitlines()]
  at_start = next(p for p in points if p["step"] == 0 and "diag/Dense_0/zero_fraction" in p)
  assert at_start["diag/Dense_0/zero_fraction"] == pytest.approx(1 - 4 / 40)  # k = 4 of MNIST-1D's 40 inputs


def test_l1_and_l2_add_up():
  reg = {"l1": {"weight": jnp.float32(0.2), "proximal": False}, "l2": {"weight": jnp.float32(0.3)}}
  want = sum(0.2 * np.abs(k).sum() + 0.3 * (k ** 2).sum() for k in KERNELS)
  np.testing.assert_allclose(regularizers.penalty(PARAMS, reg), want, rtol=1e-6)


def test_max_norm_rescales_only_units_above_r():
  kernel = np.array([[3.0, 0.1, 0.0], [4.0, 0.2, 2.0]], np.float32)  # column norms 5, 0.224, 2
  params = {"Dense_0": {"kernel": jnp.array(kernel), "bias": jnp.array([9.0, 9.0, 9.0])}}
  out = jax.jit(regularizers.max_norm)(params, jnp.float32(2.0))
  np.testing.assert_allclose(out["Dense_0"]["kernel"][:, 0], kernel[:, 0] * 2.0 / 5.0, rtol=1e-6)
  np.testing.assert_array_equal(out["Dense_0"]["kernel"][:, 1:], kernel[:, 1:])  # at or under r: untouched
  np.testing.assert_array_equal(out["Dense_0"]["bias"], 9.0)


def test_max_norm_conv_units_are_filters():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 5)) * 3
  out = regularizers.max_norm({"Conv_0": {"kernel": jnp.array(kernel)}}, jnp.float32(1.0))["Conv_0"]["kernel"]
  np.testing.assert_allclose(np.sqrt((np.asarray(out) ** 2).sum(axis=(0, 1, 2))), 1.0, rtol=1e-5)


def test_max_norm_after_every_step_in_training(write_npz):
  state, _ = program_state(["regularizer=[max_norm]", "regularizer.max_norm.r=0.5", "optimizer=sgd",
                            "optimizer.lr=1.0"], 7, write_npz())
  norms = np.concatenate([np.sqrt((state.params[layer]["kernel"] ** 2).sum(axis=0)) for layer in ("Dense_0", "Dense_1")])
  assert norms.max() <= 0.5 * (1 + 1e-5), norms
  assert norms.max() > 0.499  # the constraint was active: without it, the norms are larger
  free, _ = program_state(["optimizer=sgd", "optimizer.lr=1.0"], 7, write_npz())
  assert np.sqrt((free.params["Dense_0"]["kernel"] ** 2).sum(axis=0)).max() > 0.6


def test_dropout_keeps_the_expected_activation():
  x = jnp.ones((200_000,))
  y = np.asarray(models.dropout(x, jnp.float32(0.3), jax.random.PRNGKey(0)))
  assert abs((y == 0).mean() - 0.3) < 5 * np.sqrt(0.21 / x.size)
  np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 5 * np.sqrt(0.3 / 0.7 / x.size)


def test_dropout_is_the_identity_at_evaluation():
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 6))
  plain = models.MLP(widths=(16,), activation="relu", num_outputs=3)
  dropped = models.MLP(widths=(16,), activation="relu", num_outputs=3, dropout_rate=jnp.float32(0.5))
  variables = plain.init(jax.random.PRNGKey(0), x, train=False)
  np.testing.assert_array_equal(dropped.apply(variables, x, train=False), plain.apply(variables, x, train=False))
  trained = dropped.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(trained, plain.apply(variables, x, train=False))


LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0]])
LABELS = np.array([0, 2])


def log_softmax(z):
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_label_smoothing_loss_formula():
  eps, k = 0.2, 4
  target = (1 - eps) * np.eye(k)[LABELS] + eps / k
  want = -(target * log_softmax(LOGITS)).sum(-1)
  got = regularizers.objective(jnp.array(LOGITS), jnp.array(LABELS), {"label_smoothing": {"eps": jnp.float32(eps)}})
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_confidence_penalty_loss_formula():
  beta = 0.7
  logp = log_softmax(LOGITS)
  entropy = -(np.exp(logp) * logp).sum(-1)
  want = -logp[np.arange(2), LABELS] - beta * entropy
  got = regularizers.objective(jnp.array(LOGITS), jnp.array(LABELS), {"confidence_penalty": {"beta": jnp.float32(beta)}})
  np.testing.assert_allclose(got, want, rtol=1e-5)
  both = regularizers.objective(jnp.array(LOGITS), jnp.array(LABELS), {"confidence_penalty": {"beta": jnp.float32(beta)},
                                                                  "label_smoothing": {"eps": jnp.float32(0.0)}})
  np.testing.assert_allclose(both, want, rtol=1e-5)


def test_augment_vectors_shift_and_noise():
  x = jnp.tile(jnp.arange(10.0), (500, 1))
  out = np.asarray(regularizers.augment(x, {"noise": jnp.float32(0.0), "shift": 2}, jax.random.PRNGKey(0)))
  shifts = set()
  for row in out:
    s = [s for s in range(-2, 3) if np.array_equal(row, np.roll(np.arange(10.0), s))]
    assert len(s) == 1
    shifts.add(s[0])
  assert shifts == {-2, -1, 0, 1, 2}
  noisy = np.asarray(regularizers.augment(x, {"noise": jnp.float32(0.5), "shift": 0}, jax.random.PRNGKey(1)))
  assert abs((noisy - np.asarray(x)).std() / 0.5 - 1) < 0.03


def test_augment_images_crop_and_flip():
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 6, 6, 2))
  flipped = np.asarray(regularizers.augment(x, {"noise": jnp.float32(0.0), "crop": 0, "flip": True},
                                            jax.random.PRNGKey(1)))
  is_flip = [np.array_equal(f, np.asarray(i)[:, ::-1]) for f, i in zip(flipped, x)]
  is_same = [np.array_equal(f, np.asarray(i)) for f, i in zip(flipped, x)]
  assert all(a or b for a, b in zip(is_flip, is_same)) and 10 < sum(is_flip) < 54
  cropped = np.asarray(regularizers.augment(x, {"noise": jnp.float32(0.0), "crop": 2, "flip": False},
                                            jax.random.PRNGKey(2)))
  for c, im in zip(cropped, np.asarray(x)):
    padded = np.pad(im, [(2, 2), (2, 2), (0, 0)])
    assert any(np.array_equal(c, padded[i:i + 6, j:j + 6]) for i in range(5) for j in range(5))


class _State:
  def __init__(self, value):
    self.params, self.model_state = {"w": jnp.float32(value)}, {}

  def _replace(self, **kw):
    new = _State(0.0)
    new.__dict__.update(kw)
    return new


def test_early_stopping_counts_patience_and_keeps_the_best():
  stopper = regularizers.EarlyStopping(patience=2, metric="loss")
  history = [(10, 1.0), (20, 0.8), (30, 0.9), (40, 0.8), (50, 0.7), (60, 0.75), (70, 0.71)]
  stops = [stopper.update(step, {"val/loss": v}, _State(step)) for step, v in history]
  assert stops == [False, False, False, True, False, False, True][:len(stops)]
  # At step 40 (0.8 is not better than 0.8) it would have stopped; continuing: 50 is the new best.
  assert stopper.best_step == 50
  assert float(stopper.restore(_State(0)).params["w"]) == 50


def test_early_stopping_reports_the_best_parameters(tmp_path, write_npz):
  """Random labels: validation accuracy wanders, so it stops; the test metrics equal those of a run that trains
  exactly to the restored step."""
  common = ["data=npz", f"data.path={write_npz()}", "batch_size=20", "model.widths=[32]", "optimizer=sgd",
            "optimizer.lr=0.3", "eval_every=5", "log_every=5", "regularizer=[]"]
  stopped = train_in_process(common + ["steps=400", "regularizer=[early_stopping]",
                                       "regularizer.early_stopping.patience=3"], tmp_path / "a")
  best = stopped["early_stopping/restored_step"]
  lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  val_steps = [l["step"] for l in lines if "val/accuracy" in l]
  assert val_steps[-1] == best + 3 * 5 < 400  # stopped after exactly `patience` evaluations without improvement
  best_val = max(l["val/accuracy"] for l in lines if "val/accuracy" in l)
  assert [l["val/accuracy"] for l in lines if l["step"] == best and "val/accuracy" in l] == [best_val]
  reference = train_in_process(common + [f"steps={best}"], tmp_path / "b")
  np.testing.assert_allclose(stopped["test/accuracy"], reference["test/accuracy"])
  np.testing.assert_allclose(stopped["test/loss"], reference["test/loss"], rtol=1e-5)


def test_early_stopping_on_a_metric_the_data_set_lacks_is_a_config_error():
  from trainlab.config import ConfigError

  with pytest.raises(ConfigError, match="regularizer.early_stopping.metric=mse is not allowed for this data set"):
    regularizers.EarlyStopping(2, "mse").update(10, {"val/loss": 1.0, "val/accuracy": 0.5}, _State(0))
