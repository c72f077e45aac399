"""Each initializer's sample variance (or bound) against the catalogue's formula, the structured ones exactly,
the bias rules, and the symmetry failure of equal initial weights."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from conftest import compose_config
from trainlab import config, initializers, train
from trainlab.values import PROGRAM_GROUPS, merge as merge_values, split as split_values

SHAPES = [(256, 128), (64, 512), (300, 300), (3, 3, 16, 64)]  # the last a convolution: fan_in 3*3*16


@functools.lru_cache(maxsize=None)
def sample_shapes(init: str, shapes: tuple, seed=0, overrides=()):
  """Weights of each shape from the `init` option as configured in conf/init/, its floats traced; one compile."""
  cfg = OmegaConf.to_container(compose_config([f"init={init}", *overrides]).init, resolve=True)
  structure, values = split_values(cfg)

  @jax.jit
  def draw(values):
    kernel_init = initializers.build(merge_values(structure, values)).kernel
    return [kernel_init(jax.random.fold_in(jax.random.PRNGKey(seed), i), s) for i, s in enumerate(shapes)]

  return [np.asarray(w, np.float64) for w in draw(jax.tree.map(np.float32, values))]


def sample(init: str, shape, seed=0, overrides=(), shapes=None):
  shapes = tuple(shapes or (shape,))
  return sample_shapes(init, shapes, seed, tuple(overrides))[shapes.index(tuple(shape))]


def fans(shape):
  """(m, n): a convolution's fans are its in and out channels times the kernel area (as jax and Keras)."""
  area = int(np.prod(shape[:-2]))
  return area * shape[-2], area * shape[-1]


# name: (variance(m, n), uniform bound(m, n) or None)
VARIANCES = {
    "lecun": (lambda m, n: 1 / (3 * m), lambda m, n: 1 / np.sqrt(m)),
    "lecun_uniform": (lambda m, n: 1 / (3 * m), lambda m, n: 1 / np.sqrt(m)),
    "lecun_normal": (lambda m, n: 1 / m, None),
    "glorot": (lambda m, n: 2 / (m + n), lambda m, n: np.sqrt(6 / (m + n))),
    "glorot_uniform": (lambda m, n: 2 / (m + n), lambda m, n: np.sqrt(6 / (m + n))),
    "xavier": (lambda m, n: 2 / (m + n), lambda m, n: np.sqrt(6 / (m + n))),
    "xavier_uniform": (lambda m, n: 2 / (m + n), lambda m, n: np.sqrt(6 / (m + n))),
    "glorot_normal": (lambda m, n: 2 / (m + n), None),
    "xavier_normal": (lambda m, n: 2 / (m + n), None),
    "he": (lambda m, n: 2 / m, None),
    "he_normal": (lambda m, n: 2 / m, None),
    "kaiming": (lambda m, n: 2 / m, None),
    "kaiming_normal": (lambda m, n: 2 / m, None),
    "he_uniform": (lambda m, n: 2 / m, lambda m, n: np.sqrt(6 / m)),
    "kaiming_uniform": (lambda m, n: 2 / m, lambda m, n: np.sqrt(6 / m)),
    "normal": (lambda m, n: 0.1 ** 2, None),
    "uniform": (lambda m, n: 0.1 ** 2 / 3, lambda m, n: 0.1),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(VARIANCES))
def test_variance_and_bound(name, shape):
  w = sample(name, shape, shapes=SHAPES)
  m, n = fans(shape)
  variance, bound = VARIANCES[name]
  # Relative std of a sample variance is sqrt((kurtosis - 1) / N) <= sqrt(2 / N); 5 of them.
  assert abs(w.var() / variance(m, n) - 1) < 5 * np.sqrt(2 / w.size), (w.var(), variance(m, n))
  assert abs(w.mean()) < 5 * np.sqrt(variance(m, n) / w.size)
  if bound is not None:
    assert np.abs(w).max() <= bound(m, n) * (1 + 1e-6)
    assert np.abs(w).max() > 0.99 * bound(m, n)


def test_truncated_normal_variance_is_corrected():
  """lecun_normal is a normal truncated at 2 std whose variance is still 1/m: the raw std is divided by .8796."""
  w = sample("lecun_normal", (512, 256))
  m = 512
  assert np.abs(w).max() <= 2 * np.sqrt(1 / m) / 0.87962566103423978 * (1 + 1e-6)
  assert abs(w.var() * m - 1) < 5 * np.sqrt(2 / w.size)
  # Without the correction the variance would be 0.8796^2 = 0.774 of the target: far outside the tolerance.


@pytest.mark.parametrize("shape", [(128, 128), (200, 50), (50, 200), (3, 3, 8, 16)], ids=str)
def test_orthogonal_with_gain(shape):
  w = sample("orthogonal", shape, overrides=["init.gain=2.0"]).reshape(-1, shape[-1])
  m, n = w.shape
  gram = w.T @ w if m >= n else w @ w.T
  np.testing.assert_allclose(gram, 4.0 * np.eye(min(m, n)), atol=1e-4)


@pytest.mark.parametrize("shape", [(40, 64), (256, 10), (3, 3, 4, 8)], ids=str)
def test_sparse_has_exactly_k_incoming_nonzeros_per_unit(shape):
  w = sample("sparse", shape, overrides=["init.k=7", "init.scale=2.0"]).reshape(-1, shape[-1])
  np.testing.assert_array_equal((w != 0).sum(axis=0), np.full(shape[-1], 7))
  nonzero = w[w != 0]
  assert abs(nonzero.var() / 4.0 - 1) < 5 * np.sqrt(2 / nonzero.size)
  # Different units draw different inputs.
  assert len({tuple(np.flatnonzero(col)) for col in w.T}) > 1


def test_sparse_k_larger_than_fan_in_is_a_config_error():
  with pytest.raises(config.ConfigError, match=r"init\.k=15 is not allowed: it must be <= fan_in=10"):
    sample("sparse", (10, 5))


def test_identity_is_the_identity_times_gain():
  np.testing.assert_array_equal(sample("identity", (64, 64), overrides=["init.gain=1.5"]), 1.5 * np.eye(64))
  np.testing.assert_array_equal(sample("identity", (4, 6), overrides=["init.non_square=eye"]), np.eye(4, 6))
  w = sample("identity", (50, 20), overrides=["init.non_square=orthogonal"])
  np.testing.assert_allclose(w.T @ w, np.eye(20), atol=1e-5)


def test_identity_on_a_non_square_matrix_is_a_config_error():
  with pytest.raises(config.ConfigError, match=r"init=identity is not allowed on a weight of shape \(4, 6\)"):
    sample("identity", (4, 6))


def test_bias_rules_touch_dense_biases_only():
  """init.bias reaches every dense layer through the model's bias_init; norm offsets keep theirs."""
  import jax
  from trainlab import models

  model = models.MLP(widths=(3, 3), activation="relu", num_outputs=4, norm="layer",
                     bias_init=jax.nn.initializers.constant(0.3))
  params = model.init(jax.random.PRNGKey(0), np.ones((1, 2)), train=False)["params"]
  dense = [v["bias"] for k, v in params.items() if k.startswith("Dense")]
  norms = [v["bias"] for k, v in params.items() if "Norm" in k]
  assert len(dense) == 3 and norms
  for b in dense:
    np.testing.assert_allclose(b, 0.3)
  for b in norms:
    np.testing.assert_allclose(b, 0.0)


def test_output_bias_goes_to_the_last_created_layer():
  params = {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.full(3, 0.3)},
            "LayerNorm_0": {"scale": np.ones(3), "bias": np.zeros(3)},
            "Dense_10": {"kernel": np.ones((3, 3)), "bias": np.full(3, 0.3)},
            "Dense_2": {"kernel": np.ones((3, 4)), "bias": np.zeros(4)}}
  out = initializers.set_output_bias(params, np.log([0.1, 0.2, 0.3, 0.4]))
  np.testing.assert_allclose(out["Dense_0"]["bias"], 0.3)
  np.testing.assert_allclose(out["Dense_10"]["bias"], 0.3)
  np.testing.assert_allclose(out["LayerNorm_0"]["bias"], 0.0)
  # The output layer is the last created (dict order), not the last in sorted order ("Dense_10" > "Dense_2").
  np.testing.assert_allclose(out["Dense_2"]["bias"], np.log([0.1, 0.2, 0.3, 0.4]), rtol=1e-6)


def test_log_class_frequency():
  np.testing.assert_allclose(initializers.log_class_frequency(np.array([0, 0, 0, 1, 2, 2]), 4),
                             np.log([3 / 6, 1 / 6, 2 / 6, 0.5 / 6]), rtol=1e-6)


# --- through the training program --------------------------------------------------------------------------
def program_state(overrides, steps, npz):
  """The TrainState after `steps` steps of the real program on a small npz problem (as train_and_evaluate)."""
  cfg = compose_config([f"data=npz", f"data.path={npz}", "batch_size=20", "model.widths=[8]", "regularizer=[]",
                        *overrides])
  with open_dict(cfg):
    del cfg["hydra"]
  dataset = train.load_data(cfg.data)
  program_cfg = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in PROGRAM_GROUPS}
  structure, values = split_values(program_cfg)
  values = jax.tree.map(np.float32, values)
  if cfg.init.output_bias == "marginal":
    values["init"]["log_class_frequency"] = initializers.log_class_frequency(dataset.y_train, dataset.num_classes)
  spec = train.Spec(json.dumps(structure, sort_keys=True), cfg.batch_size, max(steps, 1), max(steps, 1),
                    tuple(dataset.x_train.shape[1:]), dataset.num_classes)
  program = train.compile_program(spec)
  state = program.init(np.int32(0), values)
  if steps:
    state, _ = program.train_chunk(state, dataset.x_train, dataset.y_train, np.int32(steps))
  return jax.device_get(state), dataset


def test_output_bias_is_log_class_frequency(write_npz):
  y = np.array([0] * 120 + [1] * 60 + [2] * 20)
  state, dataset = program_state(["init.output_bias=marginal", "init.bias=0.25"], 0, write_npz(y_train=y))
  counts = np.bincount(dataset.y_train, minlength=3)
  np.testing.assert_allclose(state.params["Dense_1"]["bias"], np.log(counts / counts.sum()), rtol=1e-5)
  np.testing.assert_allclose(state.params["Dense_0"]["bias"], 0.25)


@pytest.mark.parametrize("init", ["zeros", "constant"])
def test_equal_weights_keep_every_hidden_unit_identical(init, write_npz):
  """The symmetry failure: with equal initial weights every hidden unit gets the same gradient for ever."""
  state, _ = program_state([f"init={init}", "init.bias=0.1", "model.activation=tanh", "optimizer=sgd",
                            "optimizer.lr=0.5"], 50, write_npz())
  first, out = state.params["Dense_0"], state.params["Dense_1"]
  np.testing.assert_allclose(first["kernel"], first["kernel"][:, :1].repeat(8, 1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(first["bias"], first["bias"][0], rtol=1e-5)
  np.testing.assert_allclose(out["kernel"], out["kernel"][:1].repeat(8, 0), rtol=1e-5, atol=1e-7)
  assert np.abs(out["kernel"]).max() > 1e-3  # it trained: the units moved, together
  # A random init breaks the symmetry.
  state, _ = program_state(["init=he", "model.activation=tanh", "optimizer=sgd"], 5, write_npz())
  assert np.ptp(state.params["Dense_0"]["kernel"], axis=1).min() > 0
