"""Diagnostics: per-layer statistics against a hand-computed network, the power method against a known
spectrum, the Glorot/He variance argument, and the diagnostics a real run writes."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import QUICK, train_in_process

from trainlab import diagnostics, initializers, train
from trainlab.models import MLP
from trainlab.rundir import writers

# A 2-3-2 ReLU net with chosen weights: hidden unit 2 has negative weights and bias, so with these
# non-negative inputs it is never positive (dead).
X = np.array([[1.0, 2.0], [0.5, 0.0], [2.0, 1.0], [0.0, 1.5]], np.float32)
Y = np.array([0, 1, 1, 0])
W1 = np.array([[0.5, -1.0, -0.3], [-0.4, 0.8, -0.2]], np.float32)
B1 = np.array([0.1, 0.0, -0.1], np.float32)
W2 = np.array([[1.0, -0.5], [0.3, 0.7], [-0.2, 0.4]], np.float32)
B2 = np.array([0.05, -0.05], np.float32)
PARAMS = {"Dense_0": {"kernel": W1, "bias": B1}, "Dense_1": {"kernel": W2, "bias": B2}}


def by_hand(act=lambda z: np.maximum(z, 0), dact=lambda z: (z > 0).astype(np.float32)):
  """Forward and backward pass in numpy: pre-activations and per-example gradients ∂ℓᵢ/∂z."""
  z1 = X @ W1 + B1
  h = act(z1)
  z2 = h @ W2 + B2
  p = np.exp(z2 - z2.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dz2 = p - np.eye(2)[Y]  # ∂ℓᵢ/∂z2 of the cross-entropy of example i
  dz1 = dz2 @ W2.T * dact(z1)
  n = len(X)
  grads = {"Dense_0": {"kernel": X.T @ dz1 / n, "bias": dz1.mean(0)},
           "Dense_1": {"kernel": h.T @ dz2 / n, "bias": dz2.mean(0)}}
  return z1, z2, dz1, dz2, grads


def norm(tree):
  return np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(tree)))


def apply_fn(activation):
  model = MLP(widths=(3,), activation=activation, num_outputs=2)
  return lambda params, x: model.apply({"params": params}, x, train=False)


def test_layer_statistics_equal_a_hand_computed_relu_network():
  stats, grads = diagnostics.layer_statistics(apply_fn("relu"), PARAMS, X, Y, activation="relu")
  z1, z2, dz1, dz2, want_grads = by_hand()
  assert list(stats) == ["Dense_0", "Dense_1"]
  for name, z, dz in (("Dense_0", z1, dz1), ("Dense_1", z2, dz2)):
    s = stats[name]
    np.testing.assert_allclose(s["act_mean"], z.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["act_std"], z.std(), rtol=1e-5)
    np.testing.assert_allclose(s["act_var"], z.var(), rtol=1e-5)
    np.testing.assert_allclose(s["grad_var"], dz.var(), rtol=1e-4)
    np.testing.assert_allclose(s["grad_norm"], norm(want_grads[name]), rtol=1e-5)
    np.testing.assert_allclose(s["param_norm"], norm(PARAMS[name]), rtol=1e-6)
    assert s["zero_fraction"] == np.mean(PARAMS[name]["kernel"] == 0)
  np.testing.assert_allclose(stats["Dense_0"]["dead_fraction"], np.mean(np.all(z1 <= 0, axis=0)))
  assert stats["Dense_0"]["dead_fraction"] == pytest.approx(1 / 3)  # unit 2, by construction
  assert "dead_fraction" not in stats["Dense_1"]  # the logits are not followed by a ReLU
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, want_grads)


def test_zero_fraction_counts_exact_zeros_of_the_kernel_only():
  sparse = {**PARAMS, "Dense_0": {"kernel": W1 * (np.arange(W1.size).reshape(W1.shape) % 3 == 0), "bias": B1 * 0}}
  stats, _ = diagnostics.layer_statistics(apply_fn("relu"), sparse, X, Y, activation="relu")
  want = np.mean(sparse["Dense_0"]["kernel"] == 0)
  assert 0 < want < 1 and stats["Dense_0"]["zero_fraction"] == pytest.approx(want)


def test_saturated_fraction_of_a_tanh_network():
  big = {**PARAMS, "Dense_0": {"kernel": W1 * 4, "bias": B1}}  # push some units past |tanh| = 0.99
  stats, _ = diagnostics.layer_statistics(apply_fn("tanh"), big, X, Y, activation="tanh")
  z1 = X @ (W1 * 4) + B1
  want = np.mean(np.abs(np.tanh(z1)) >= 0.99)
  assert 0 < want < 1
  np.testing.assert_allclose(stats["Dense_0"]["saturated_fraction"], want)
  assert "dead_fraction" not in stats["Dense_0"]


def test_update_ratio_is_the_optimizer_step_over_the_parameter_norm():
  lr = 0.1
  model = MLP(widths=(3,), activation="relu", num_outputs=2)
  apply = lambda state, params, x, train: (model.apply({"params": params}, x, train=train), {})
  tx = optax.sgd(lr)
  state = train.TrainState(jnp.zeros((), jnp.int32), PARAMS, {}, tx.init(PARAMS), {}, jax.random.PRNGKey(0))
  stats, _ = diagnostics.build(apply, tx, "relu").probe(state, X, Y)
  *_, want_grads = by_hand()
  for name in PARAMS:  # SGD: ‖Δθ‖ = lr ‖g‖
    np.testing.assert_allclose(stats[name]["update_ratio"], lr * norm(want_grads[name]) / norm(PARAMS[name]),
                               rtol=1e-5)


def test_layers_of_any_linen_model_are_named_by_their_params_path_in_forward_order():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.LayerNorm()(nn.relu(nn.Dense(4)(x)))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Conv(3, (3,))(x[..., None]).reshape(x.shape[0], -1)
      return nn.Dense(2)(Block()(x))

  params = Net().init(jax.random.PRNGKey(0), X)["params"]
  apply = lambda state, params, x, train: (Net().apply({"params": params}, x), {})
  tx = optax.sgd(0.1)
  state = train.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), {}, jax.random.PRNGKey(0))
  stats, _ = diagnostics.build(apply, tx, "relu").probe(state, X, Y)
  assert list(stats) == ["Conv_0", "Block_0/Dense_0", "Block_0/LayerNorm_0", "Dense_0"]  # forward order
  conv = nn.Conv(3, (3,)).apply({"params": params["Conv_0"]}, X[..., None])
  np.testing.assert_allclose(stats["Conv_0"]["act_std"], np.std(conv), rtol=1e-5)
  assert all("grad_var" in s for s in stats.values())


def test_power_method_finds_the_largest_eigenvalue_of_a_quadratic():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  eigenvalues = np.array([7.0, 3.0, 1.0, 0.5, 0.1])
  a = jnp.asarray((q * eigenvalues) @ q.T, jnp.float32)
  params = {"u": jnp.ones(3), "v": jnp.ones(2)}  # a tree: ravelled to θ = (u, v)

  def loss(p):
    theta = jnp.concatenate([p["u"], p["v"]])
    return 0.5 * theta @ a @ theta  # Hessian = A

  top = diagnostics.top_hessian_eigenvalue(loss, params, jax.random.PRNGKey(1), iters=50)
  np.testing.assert_allclose(top, 7.0, rtol=1e-4)


@pytest.mark.parametrize("init, ratio", [("he", 1.0), ("glorot", 0.5)])
def test_step0_variance_is_flat_with_he_and_halves_per_layer_with_glorot(init, ratio):
  """He et al.: Var[z_l] = Var[z_{l-1}] through ReLUs with N(0, 2/m); Glorot's 2/(m+n) = 1/m halves it."""
  from omegaconf import OmegaConf
  from conftest import compose_config

  width, depth = 256, 5
  kernel_init = initializers.build(OmegaConf.to_container(compose_config([f"init={init}"]).init)).kernel
  model = MLP(widths=(width,) * depth, activation="relu", num_outputs=10, kernel_init=kernel_init)
  x = jax.random.normal(jax.random.PRNGKey(0), (512, width))
  y = jnp.zeros(512, jnp.int32)
  params = model.init(jax.random.PRNGKey(1), x, train=False)["params"]
  statistics = jax.jit(lambda p, x, y: diagnostics.layer_statistics(
      lambda p, x: model.apply({"params": p}, x, train=False), p, x, y, activation="relu"))
  stats, _ = statistics(params, x, y)
  var = [stats[f"Dense_{i}"]["act_var"] for i in range(depth)]
  factors = np.array(var[1:]) / np.array(var[:-1])
  np.testing.assert_allclose(factors, ratio, rtol=0.2)


def test_a_run_writes_diagnostics_at_their_intervals(tmp_path):
  summary = train_in_process([*QUICK, "diagnostics=default", "model.widths=[16,16]", "diagnostics.every=200",
                              "diagnostics.histogram_every=300", "diagnostics.hessian_every=300",
                              "diagnostics.hessian_iters=5"], tmp_path)
  points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = lambda key: [p["step"] for p in points if key in p]
  # Chunks end at 100, 200, 300: statistics at 0 and 200, curvature at 0 and 300 (the first boundaries past
  # each multiple), the step-0 variances once.
  assert steps("diag/Dense_1/act_std") == [0, 200]
  assert steps("diag/Dense_0/update_ratio") == [0, 200]
  assert steps("diag/Dense_2/grad_norm") == [0, 200]
  assert steps("diag/Dense_0/dead_fraction") == [0, 200]
  assert steps("step0/Dense_2/grad_var") == [0]
  assert steps("curvature/top_eigenvalue") == [0, 300]
  assert all(p["curvature/top_eigenvalue"] > 0 for p in points if "curvature/top_eigenvalue" in p)
  assert summary["diagnostics_time_s"] > 0

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(writers.events_dir(tmp_path)), size_guidance={"histograms": 0}).Reload()
  assert "hist/Dense_0/kernel" in events.Tags()["histograms"]
  assert [e.step for e in events.Histograms("hist_grad/Dense_1/bias")] == [0, 300]
  # The step-0 variances are for the report (metrics.jsonl): one point per run would read as broken there.
  assert not any(tag.startswith("step0/") for tag in events.Tags()["scalars"])
  histogram = events.Histograms("hist/Dense_0/kernel")[0].histogram_value
  assert histogram.num == 40 * 16  # MNIST-1D has 40 features


def test_diagnostics_off_writes_none(tmp_path):
  train_in_process([*QUICK, "diagnostics=off"], tmp_path)
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "diag/" not in text and "step0/" not in text and "curvature/" not in text


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_recurrent_regression_runs_get_diagnostics_of_the_squared_error(model, tmp_path):
  """The cells that nn.scan runs get their norms (their outputs stay inside the scan: capturing them leaked a
  tracer); the probe loss is the task's own, the squared error (cross-entropy rejects float targets)."""
  train_in_process([f"model={model}", "data=adding", "data.length=8", "data.n_train=256", "model.hidden=8",
                    "steps=4", "eval_every=2", "diagnostics=default", "diagnostics.probe_size=64"], tmp_path)
  points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  first = next(p for p in points if "diag/output/grad_norm" in p)
  assert first["step"] == 0
  assert first["diag/layer_0/cell/recurrent/grad_norm"] > 0
  assert "diag/layer_0/input/act_std" in first and "diag/layer_0/cell/recurrent/act_std" not in first
  step0 = next(p for p in points if "step0/output/grad_var" in p)
  assert step0["step0/output/grad_var"] > 0
