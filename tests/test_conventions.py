"""The convention at each non-smooth point of the catalogue, pinned by its exact value and derivative there: the
ReLU family and ELU at 0, max-norm at exactly r, clipping at exactly the threshold, ties in max pooling.

docs/catalogue.md ("Conventions at non-smooth points") sets each beside PyTorch's. A failure here means that a
convention changed: that table changes with it. L1's subgradient at 0 is tested beside the penalty
(tests/test_regularizers.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainlab import optim, regularizers
from trainlab.fast import conv
from trainlab.models import activations

ZEROS = jnp.array([0.0, -0.0])  # both signs of zero: each takes the same branch


def value_and_derivative(kind: str, *, train: bool):
  """The activation `kind` at 0 and -0, with its derivative there in x (and in PReLU's slope), through jax.grad of
  trainlab's own module."""
  module = activations.Activation(kind)
  variables = module.init(jax.random.PRNGKey(0), ZEROS, train=False)
  rngs = {"dropout": jax.random.PRNGKey(1)} if train else None
  apply = lambda variables, x: module.apply(variables, x, train=train, rngs=rngs)
  d_variables, d_x = jax.grad(lambda v, x: apply(v, x).sum(), argnums=(0, 1))(variables, ZEROS)
  return apply(variables, ZEROS), d_x, d_variables


@pytest.mark.parametrize("train", [False, True])
def test_relu_has_derivative_zero_at_zero(train):
  value, d_x, _ = value_and_derivative("relu", train=train)
  np.testing.assert_array_equal(value, [0.0, 0.0])
  np.testing.assert_array_equal(d_x, [0.0, 0.0])


@pytest.mark.parametrize("kind", ["leaky_relu", "prelu", "rrelu"])
@pytest.mark.parametrize("train", [False, True])
def test_leaky_family_takes_the_identity_side_at_zero(kind, train):
  """x >= 0 selects x: the derivative at 0 is 1, not the negative side's slope (PyTorch's), whatever the slope is:
  leaky's alpha, PReLU's learned a, RReLU's random draw in training and mean slope at evaluation."""
  value, d_x, d_variables = value_and_derivative(kind, train=train)
  np.testing.assert_array_equal(value, [0.0, 0.0])
  np.testing.assert_array_equal(d_x, [1.0, 1.0])
  if kind == "prelu":  # the learned slope gets no gradient from an input at 0
    assert float(d_variables["params"]["PReLU_0"]["negative_slope"]) == 0.0


@pytest.mark.parametrize("train", [False, True])
def test_elu_has_derivative_one_at_zero(train):
  """The negative side alpha (e^x - 1) is taken at 0; with alpha = 1 its derivative e^0 = 1 meets the identity's."""
  value, d_x, _ = value_and_derivative("elu", train=train)
  np.testing.assert_array_equal(value, [0.0, 0.0])
  np.testing.assert_array_equal(d_x, [1.0, 1.0])
  _, tangent = jax.jvp(lambda x: activations.Activation("elu").apply({}, x, train=train), (ZEROS,),
                       (jnp.ones(2),))
  np.testing.assert_array_equal(tangent, [1.0, 1.0])


def test_max_norm_leaves_a_unit_of_norm_exactly_r_unchanged():
  """Only a norm strictly above r is projected: the column (3, 4) has norm 5 = r and stays, (6, 8) becomes (3, 4);
  biases are not weights and stay."""
  params = {"Dense_0": {"kernel": jnp.array([[3.0, 6.0], [4.0, 8.0]]), "bias": jnp.array([30.0, 40.0])}}
  projected = regularizers.max_norm(params, jnp.float32(5.0))
  np.testing.assert_array_equal(projected["Dense_0"]["kernel"], [[3.0, 3.0], [4.0, 4.0]])
  np.testing.assert_array_equal(projected["Dense_0"]["bias"], [30.0, 40.0])


def clipped(gradient, **clip):
  """The gradient after the clipping stages of the optimizer chain as trainlab builds it (SGD at lr 1, so the
  update is minus the clipped gradient)."""
  optimizer = {"_target_": "optax.sgd", "lr": 1.0, "momentum": None, "nesterov": False, "staleness": 0,
               "clip_value": None, "clip_norm": None, "noise_eta": None, "noise_gamma": 0.55, "then": None,
               "switch_step": None, **clip}
  schedule = {"_target_": "trainlab.schedules.constant", "warmup_steps": 0}
  tx, _ = optim.build_optimizer(optimizer, schedule, 10, {})
  updates, _ = tx.update(gradient, tx.init(gradient), gradient)
  return jax.tree.map(lambda u: -u, updates)


def test_clip_value_keeps_a_component_at_exactly_the_threshold():
  gradient = {"Dense_0": {"kernel": jnp.array([0.5, -0.5, 1.0, -1.0, 0.25])}}
  got = clipped(gradient, clip_value=0.5)
  np.testing.assert_array_equal(got["Dense_0"]["kernel"], [0.5, -0.5, 0.5, -0.5, 0.25])


def test_clip_norm_keeps_a_gradient_of_norm_exactly_the_threshold():
  """‖g‖ = 5 over all parameters (3 in a kernel, 4 in a bias): at clip_norm 5 it is unchanged, exactly (PyTorch's
  c / (‖g‖ + 1e-6) would shrink it); at clip_norm 2.5 it is halved."""
  gradient = {"Dense_0": {"kernel": jnp.array([[3.0], [0.0]]), "bias": jnp.array([4.0])}}
  assert float(optax.tree.norm(gradient)) == 5.0
  at = clipped(gradient, clip_norm=5.0)
  np.testing.assert_array_equal(at["Dense_0"]["kernel"], [[3.0], [0.0]])
  np.testing.assert_array_equal(at["Dense_0"]["bias"], [4.0])
  above = clipped(gradient, clip_norm=2.5)
  np.testing.assert_array_equal(above["Dense_0"]["kernel"], [[1.5], [0.0]])
  np.testing.assert_array_equal(above["Dense_0"]["bias"], [2.0])


@pytest.mark.parametrize("impl", ["im2col", "xla"])
def test_max_pool_sends_a_tie_to_the_first_maximum_in_row_major_order(impl):
  """Three 2x2 windows: all four equal; a tie between (0, 1) and (1, 0) above a smaller (0, 0); a tie between
  (1, 0) and (1, 1). The whole cotangent goes to the first maximum of each, as PyTorch's max_pool2d sends it."""
  windows = jnp.array([[[7.0, 7.0], [7.0, 7.0]], [[1.0, 2.0], [2.0, 0.0]], [[-1.0, -3.0], [0.0, 0.0]]])
  x = jnp.concatenate(list(windows), axis=1)[None, :, :, None]  # (1, 2, 6, 1): the windows side by side
  pool = lambda x: conv.max_pool(x, (2, 2), impl=impl)
  np.testing.assert_array_equal(pool(x)[0, 0, :, 0], [7.0, 2.0, 0.0])
  d_x = jax.grad(lambda x: (pool(x) * jnp.array([1.0, 2.0, 3.0])[None, None, :, None]).sum())(x)
  np.testing.assert_array_equal(d_x[0, :, :, 0], [[1.0, 0.0, 0.0, 2.0, 0.0, 0.0],
                                                  [0.0, 0.0, 0.0, 0.0, 3.0, 0.0]])
