"""Each activation against its formula (RReLU in both modes), PReLU's learned slope, and the norms: batch norm's
running statistics after known batches and their use at evaluation, layer norm per example."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab import models
from trainlab.models import activations

X = np.linspace(-4, 4, 81).astype(np.float32)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


FORMULAS = {
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),  # exact, as PyTorch's default
    "silu": lambda x: x * sigmoid(x),
    "prelu": lambda x: np.where(x >= 0, x, 0.25 * x),  # at its initial slope
    "rrelu": lambda x: np.where(x >= 0, x, (1 / 8 + 1 / 3) / 2 * x),  # evaluation: the mean slope
}


def act(kind, x, *, train=False, rng=None, **kw):
  module = activations.Activation(kind, **kw)
  variables = module.init(jax.random.PRNGKey(0), x, train=False)
  out = module.apply(variables, x, train=train, rngs={"dropout": rng} if train else None)
  return np.asarray(out), variables


@pytest.mark.parametrize("kind", sorted(FORMULAS))
def test_activation_formula(kind):
  got, _ = act(kind, jnp.array(X))
  np.testing.assert_allclose(got, FORMULAS[kind](X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_leaky_relu_slope_is_a_traced_value():
  f = jax.jit(lambda a: activations.Activation("leaky_relu", alpha=a).apply({}, jnp.array(X), train=False))
  np.testing.assert_allclose(f(jnp.float32(0.2)), np.where(X >= 0, X, 0.2 * X), rtol=1e-6)
  np.testing.assert_allclose(f(jnp.float32(0.05)), np.where(X >= 0, X, 0.05 * X), rtol=1e-6)


def test_prelu_slope_is_learned():
  x = jnp.array(X)
  module = activations.Activation("prelu")
  variables = module.init(jax.random.PRNGKey(0), x, train=False)
  (slope,) = jax.tree.leaves(variables["params"])
  assert float(slope) == 0.25
  g = jax.grad(lambda v: module.apply(v, x, train=False).sum())(variables)
  np.testing.assert_allclose(jax.tree.leaves(g)[0], np.minimum(X, 0).sum(), rtol=1e-5)


def test_rrelu_training_draws_slopes_from_the_interval():
  x = -jnp.ones((100_000,))
  got, _ = act("rrelu", x, train=True, rng=jax.random.PRNGKey(3), rrelu_lower=0.1, rrelu_upper=0.3)
  slopes = -got
  assert slopes.min() >= 0.1 and slopes.max() <= 0.3
  assert abs(slopes.mean() - 0.2) < 5 * 0.2 / math.sqrt(12) / math.sqrt(x.size)
  assert abs(slopes.var() / (0.2 ** 2 / 12) - 1) < 0.05  # uniform on [0.1, 0.3]
  positive, _ = act("rrelu", jnp.array([0.5, 2.0]), train=True, rng=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(positive, [0.5, 2.0])
  at_eval, _ = act("rrelu", jnp.array([-2.0, 3.0]), rrelu_lower=0.1, rrelu_upper=0.3)
  np.testing.assert_allclose(at_eval, [-0.4, 3.0], rtol=1e-6)


class Norm(nn.Module):
  kind: str
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train):
    return activations.norm(self.kind, x, train=train, momentum=self.momentum)


def test_batch_norm_running_statistics_after_known_batches():
  rng = np.random.default_rng(0)
  batches = [rng.normal(2.0, 3.0, size=(32, 4)).astype(np.float32) for _ in range(3)]
  module = Norm("batch", momentum=0.9)
  variables = module.init(jax.random.PRNGKey(0), jnp.array(batches[0]), train=False)
  mean, var = np.zeros(4), np.ones(4)
  for b in batches:
    out, updates = module.apply(variables, jnp.array(b), train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}
    # Training normalizes with the batch's own statistics (biased variance, eps 1e-5).
    np.testing.assert_allclose(out, (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5), rtol=1e-4, atol=1e-4)
    mean = 0.9 * mean + 0.1 * b.mean(0)
    var = 0.9 * var + 0.1 * b.var(0)
  stats = variables["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-5)
  # Evaluation uses the running averages, not the batch's statistics.
  x = rng.normal(size=(5, 4)).astype(np.float32)
  np.testing.assert_allclose(module.apply(variables, jnp.array(x), train=False), (x - mean) / np.sqrt(var + 1e-5),
                             rtol=1e-4, atol=1e-5)


def test_layer_norm_normalizes_each_example():
  x = np.random.default_rng(1).normal(3.0, 2.0, size=(6, 10)).astype(np.float32)
  module = Norm("layer")
  variables = module.init(jax.random.PRNGKey(0), jnp.array(x), train=False)
  out = module.apply(variables, jnp.array(x), train=False)
  want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_none_is_the_identity():
  x = jnp.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(Norm("none").apply({}, x, train=True), x)


def test_mlp_order_dense_norm_activation():
  """Each hidden layer computes act(norm(x W + b)); the output layer is a plain dense layer."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
  mlp = models.MLP(widths=(7,), activation="tanh", num_outputs=3, norm="layer")
  variables = mlp.init(jax.random.PRNGKey(1), x, train=False)
  p = variables["params"]
  h = np.asarray(x) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
  h = np.tanh((h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5))
  want = h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])
  np.testing.assert_allclose(mlp.apply(variables, x, train=False), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["cnn", "resnet"])
@pytest.mark.parametrize("kind", ["leaky_relu", "prelu", "rrelu"])
def test_convolutional_models_take_every_activation_with_its_floats(model, kind):
  """cnn and resnet run their activations through the same Activation as the MLP: leaky_relu's slope is the
  model.alpha value (traced: one program for two slopes), prelu owns one learned slope per layer, rrelu draws
  its slopes in training."""
  from conftest import compose_config
  from hydra.utils import instantiate
  from omegaconf import OmegaConf

  cfg = OmegaConf.to_container(compose_config([f"model={model}", f"model.activation={kind}"]).model, resolve=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))

  def forward(alpha, train):
    net = instantiate({**cfg, "alpha": alpha}, num_outputs=3, _convert_="all")
    variables = net.init(jax.random.PRNGKey(1), x, train=False)
    rngs = {"dropout": jax.random.PRNGKey(2)} if train else None
    out = net.apply(variables, x, train=train, rngs=rngs, mutable=["batch_stats"] if train else False)
    return (out[0] if train else out), variables["params"]

  forward = jax.jit(forward, static_argnums=1)
  (a, params), (b, _) = forward(0.01, False), forward(0.3, False)
  slopes = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "negative_slope" in str(path)]
  if kind == "leaky_relu":
    assert not np.allclose(a, b) and forward._cache_size() == 1
  else:
    np.testing.assert_array_equal(a, b)  # alpha is leaky_relu's alone
  # One activation per conv block and hidden dense layer of the cnn (2 + 1); in the resnet, the stem's and two
  # per block (inside it, and after the sum), 1 + 2 * 3 stages.
  assert len(slopes) == ({"cnn": 3, "resnet": 7}[model] if kind == "prelu" else 0)
  np.testing.assert_array_equal(slopes, 0.25)
  if kind == "rrelu":  # random slopes in training, their mean at evaluation
    assert not np.allclose(forward(0.01, True)[0], a)
