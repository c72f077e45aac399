"""The CPU lowering of convolutions and max pooling against flax's own nn.Conv and nn.max_pool: values and
gradients, 1-D and 2-D, odd and even sizes, strides 1 and 2 (and mixed), kernels 1/3/5, any padding, channel
counts from 1 to 65 (which span every way the lowering builds a convolution), ties in the pool; and the CNN and
ResNet computing the same function with either lowering."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import compose_config
from trainlab import config, fast
from trainlab.fast import conv

TOL = dict(rtol=1e-5, atol=1e-5)


def primitives(fn, *args) -> set[str]:
  """Names of the primitives in fn's jaxpr, nested jaxprs included (to see which lowering ran)."""
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return names


# (spatial size, kernel, strides, input channels): the lowering builds a convolution one way for a single input
# channel, another for a middling count at stride 1 along the rows, another for few or many channels or
# strided rows; these cases take each of them, in 1-D and 2-D, whatever the counts where one way gives way to
# the next.
CONV_CASES = ([(spatial, k, s, 3) for spatial in [(9,), (7, 7)] for k in (1, 3, 5) for s in (1, 2)]
              + [(spatial, 3, s, 3) for spatial in [(8,), (8, 6)] for s in (1, 2)]
              + [((7, 7), k, s, 8) for k in (1, 3, 5) for s in (1, 2)] + [((8, 6), 3, 1, 8)]
              + [(spatial, k, s, 1) for spatial in [(9,), (7, 7)] for k in (1, 3) for s in (1, 2)]
              + [((6, 6), 3, s, channels) for channels in (16, 64, 65) for s in (1, 2)]
              + [((7, 7), 3, s, channels) for channels in (1, 8, 65) for s in ((1, 2), (2, 1))])


@pytest.mark.parametrize("spatial,k,stride,channels", CONV_CASES)
def test_im2col_conv_equals_flax_conv_in_values_and_gradients(spatial, k, stride, channels):
  strides = (stride,) * len(spatial) if isinstance(stride, int) else stride
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *spatial, channels))
  kw = dict(features=4, kernel_size=(k,) * len(spatial), strides=stride, padding="SAME")
  reference, ours = nn.Conv(**kw), conv.Conv(**kw, impl="im2col")
  params = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.PRNGKey(1), x)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params)  # nonzero bias
  # The im2col path really runs: no convolution primitive is left, forward or backward.
  assert "conv_general_dilated" not in primitives(jax.grad(lambda p, x: ours.apply(p, x).sum(), (0, 1)), params, x)

  cotangent = jax.random.normal(jax.random.PRNGKey(3), jax.eval_shape(reference.apply, params, x).shape)

  @functools.partial(jax.jit, static_argnums=0)  # one compilation, not one per operation
  def values_and_gradients(module, params, x):
    out, vjp = jax.vjp(module.apply, params, x)
    return (out, *vjp(cotangent))

  results = [values_and_gradients(module, params, x) for module in (reference, ours)]
  expected_out = np.asarray(results[0][0])
  assert expected_out.shape == (2, *(-(-n // s) for n, s in zip(spatial, strides)), 4)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(b, a, **TOL)


def test_conv_against_a_hand_written_sum():
  """Every output of the 2-D lowering equals the sum
  y[n,i,j,o] = b[o] + sum_{a,b,c} xpad[n,si+a,sj+b,c] w[a,b,c,o]."""
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (1, 6, 5, 2)))
  module = conv.Conv(3, (3, 3), 2, padding="SAME", impl="im2col")
  params = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(1), x))
  params["params"]["bias"] = np.array([0.5, -1.0, 2.0], np.float32)
  w, b = params["params"]["kernel"], params["params"]["bias"]
  out = np.asarray(module.apply(params, x))
  assert out.shape == (1, 3, 3, 3)
  # SAME with stride 2: out = ceil(6/2) = 3, pad total (3-1)*2 + 3 - 6 = 1 -> (0, 1) rows; 5 cols -> total 2 -> (1, 1)
  xp = np.pad(x, [(0, 0), (0, 1), (1, 1), (0, 0)])
  for i in range(3):
    for j in range(3):
      expected = b + np.einsum("abc,abco->o", xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
      np.testing.assert_allclose(out[0, i, j], expected, rtol=1e-5, atol=1e-5)


def test_other_calls_fall_back_to_xla_convolution():
  """Dilated or grouped convolutions are not lowered; they still compute what lax computes."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 4))
  for kw in (dict(kernel_dilation=2), dict(feature_group_count=2)):
    reference, ours = nn.Conv(4, (3, 3), **kw), conv.Conv(4, (3, 3), impl="im2col", **kw)
    params = reference.init(jax.random.PRNGKey(1), x)
    assert "conv_general_dilated" in primitives(lambda p: ours.apply(p, x), params)
    np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), **TOL)


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("height,padding", [(5, "VALID"), (5, ((2, 0), (0, 1))), (5, ((0, 3), (1, 1))),
                                            (5, ((4, 4), (1, 1))), (1, ((1, 1), (1, 1))), (1, ((4, 4), (0, 0)))])
def test_the_lowering_equals_lax_at_any_padding(height, padding, channels):
  """Any padding, even past the kernel's reach (rows that meet only padding) or on a 1-row input, gives lax's
  values and gradients (the lowering leaves rows of zero padding out of its matmul where it can)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, height, 6, channels))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, channels, 5))
  pads = padding if isinstance(padding, str) else [tuple(p) for p in padding]
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  reference = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=numbers,
                                                    precision="highest")
  ours = lambda x, w: conv.im2col_conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=numbers,
                                                       precision="highest")
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  np.testing.assert_allclose(ours(x, w), reference(x, w), **TOL)
  for a, b in zip(jax.grad(loss(reference), (0, 1))(x, w), jax.grad(loss(ours), (0, 1))(x, w)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)  # float32 sums of 2x5x6x8 terms, in another order


def test_single_channel_convolutions_keep_gradients_and_hessian_vector_products_behind_their_barrier():
  """A single input channel's lowering (an output barrier and its own jvp) changes nothing computed: values,
  gradients and forward-over-reverse Hessian-vector products equal XLA's convolution, as the training chunk
  compiles it (fast.KEEP_BARRIERS), with respect to the input and the kernel."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 1))
  kw = dict(features=3, kernel_size=(3, 3), strides=(2, 1), padding="SAME")
  xla, ours = conv.Conv(**kw, impl="xla"), conv.Conv(**kw, impl="im2col")
  params = xla.init(jax.random.PRNGKey(1), x)
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), (params, x))
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  jit = functools.partial(jax.jit, compiler_options=fast.KEEP_BARRIERS)
  grad_and_hvp = lambda m: jit(lambda p, x: jax.jvp(jax.grad(loss(m), (0, 1)), (p, x), v))(params, x)
  assert "opt-barrier" in jit(jax.grad(loss(ours))).lower(params, x).compile().as_text()
  np.testing.assert_allclose(jit(loss(ours))(params, x), jit(loss(xla))(params, x), **TOL)
  for a, b in zip(jax.tree.leaves(grad_and_hvp(xla)), jax.tree.leaves(grad_and_hvp(ours))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


POOL_CASES = [((8,), (2,)), ((9,), (2,)), ((8, 8), (2, 2)), ((7, 9), (2, 2)), ((9, 9), (3, 3))]


@pytest.mark.parametrize("spatial,window", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_slice_max_pool_equals_flax_max_pool_in_values_and_gradients(spatial, window, ties):
  """With ties (small integers, and zeros from a relu), the gradient goes to the first maximum of each window, in
  row-major order, as select_and_scatter sends it."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *spatial, 3))
  if ties:
    x = jnp.maximum(jnp.round(2 * x), 0.0)  # values in {0, 1, 2, ...}: many windows have equal maxima
  pool_ref = lambda x: nn.max_pool(x, window, strides=window, padding="SAME")
  pool_ours = lambda x: conv.max_pool(x, window, strides=window, padding="SAME", impl="im2col")
  names = primitives(jax.grad(lambda x: pool_ours(x).sum()), x)
  assert not names & {"reduce_window_max", "select_and_scatter_add", "select_and_gather_add"}, names
  expected, vjp_ref = jax.vjp(pool_ref, x)
  out, vjp_ours = jax.vjp(pool_ours, x)
  np.testing.assert_array_equal(out, expected)
  cotangent = jax.random.normal(jax.random.PRNGKey(1), out.shape)
  np.testing.assert_array_equal(vjp_ours(cotangent)[0], vjp_ref(cotangent)[0])
  if ties:  # the case is real: some window holds its maximum twice (SAME pads these windows at the end only)
    xp = np.pad(np.asarray(x), [(0, 0), *[(0, -n % w) for n, w in zip(spatial, window)], (0, 0)],
                constant_values=-np.inf)
    hits = sum(xp[(slice(None), *(slice(o, None, w) for o, w in zip(offset, window)))] == np.asarray(out)
               for offset in itertools.product(*map(range, window)))
    assert np.any(hits >= 2)


def test_max_pool_keeps_values_gradients_and_hessian_vector_products_behind_its_barrier():
  """The max pool's output barrier and its own jvp (the masked window sum) change nothing computed, as the
  training chunk compiles it (fast.KEEP_BARRIERS): values and gradients equal flax's max pool exactly,
  forward-over-reverse Hessian-vector products to float tolerance (away from ties, where JAX's own forward mode
  of reduce_window may take another maximum than its reverse mode)."""
  ties = jnp.maximum(jnp.round(2 * jax.random.normal(jax.random.PRNGKey(0), (2, 7, 9, 3))), 0.0)
  x = jax.random.normal(jax.random.PRNGKey(1), ties.shape)
  v = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  loss_ref = lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")))
  loss_ours = lambda x: jnp.sum(jnp.sin(conv.max_pool(x, (2, 2), padding="SAME", impl="im2col")))
  jit = functools.partial(jax.jit, compiler_options=fast.KEEP_BARRIERS)
  assert "opt-barrier" in jit(jax.grad(loss_ours)).lower(x).compile().as_text()
  for inputs in (ties, x):
    np.testing.assert_array_equal(jit(loss_ours)(inputs), jit(loss_ref)(inputs))
    np.testing.assert_array_equal(jit(jax.grad(loss_ours))(inputs), jit(jax.grad(loss_ref))(inputs))
  hvp = lambda f: jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])(x, v)
  np.testing.assert_allclose(hvp(loss_ours), hvp(loss_ref), rtol=1e-5, atol=1e-6)


def test_auto_picks_im2col_on_cpu_and_xla_elsewhere(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert conv.resolve("auto") == "im2col" and conv.resolve("xla") == "xla"
  assert conv.Conv(4, (3,)).conv_general_dilated is conv.im2col_conv_general_dilated
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert conv.resolve("auto") == "xla" and conv.resolve("im2col") == "im2col"
  assert conv.Conv(4, (3,)).conv_general_dilated is None  # flax's own lax.conv_general_dilated
  with pytest.raises(ValueError, match="fast"):
    conv.resolve("fast")


def test_conv_impl_is_a_checked_choice():
  cfg = compose_config(["model=cnn", "model.conv_impl=fast"])
  with open_dict(cfg):
    del cfg["hydra"]
  message = "model.conv_impl=fast is not allowed: it must be one of auto, xla, im2col"
  with pytest.raises(config.ConfigError, match=message):
    config.check_ranges(cfg)


def _model(option: str, impl: str, overrides=()):
  cfg = compose_config([f"model={option}", f"model.conv_impl={impl}", *overrides])
  return instantiate(OmegaConf.to_container(cfg.model, resolve=True), num_outputs=3, _convert_="all")


@pytest.mark.parametrize("option,shape,overrides", [
    ("cnn", (9, 9, 2), ["model.features=[4,6]", "model.widths=[8]"]),
    ("cnn", (13,), ["model.features=[4]", "model.widths=[]", "model.kernel_size=5"]),
    ("resnet", (9, 9, 3), ["model.features=[4,8]"]),
    ("resnet", (12,), ["model.features=[4,8]", "model.norm=none"]),
])
def test_models_compute_the_same_function_with_either_lowering(option, shape, overrides):
  """Same parameters, same outputs, same gradients and same batch statistics with conv_impl xla and im2col."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, *shape))
  xla, im2col = _model(option, "xla", overrides), _model(option, "im2col", overrides)
  variables = jax.jit(lambda x: xla.init(jax.random.PRNGKey(1), x, train=False))(x)
  assert jax.tree.map(jnp.shape, jax.eval_shape(lambda x: im2col.init(jax.random.PRNGKey(1), x, train=False), x)) == \
      jax.tree.map(jnp.shape, variables)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def loss(model, params):
    out, new_state = model.apply({"params": params, **state}, x, train=True, mutable=list(state))
    return jnp.sum(jnp.sin(out)), (out, new_state)

  # jitted: a resnet op by op takes several times longer than its compilation
  results = [jax.jit(jax.grad(lambda p, m=m: loss(m, p), has_aux=True))(params) for m in (xla, im2col)]
  assert "conv_general_dilated" not in primitives(lambda p: loss(im2col, p)[0], params)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  forward = lambda m: jax.jit(lambda v: m.apply(v, x, train=False))(variables)
  np.testing.assert_allclose(forward(im2col), forward(xla), **TOL)


def test_hessian_vector_products_agree_across_lowerings():
  """Forward over reverse mode (the Hessian diagnostics' jvp of grad) runs through the lowering, and agrees."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 1))
  overrides = ["model.features=[3]", "model.widths=[]", "model.activation=tanh"]
  xla, im2col = _model("cnn", "xla", overrides), _model("cnn", "im2col", overrides)
  params = jax.jit(lambda x: xla.init(jax.random.PRNGKey(1), x, train=False))(x)["params"]
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, train=False) ** 2)
  hvp = lambda m: jax.jit(lambda params, v: jax.jvp(jax.grad(loss(m)), (params,), (v,))[1])(params, v)
  for a, b in zip(jax.tree.leaves(hvp(xla)), jax.tree.leaves(hvp(im2col))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_resnet_convolutions_keep_their_gradients_and_hessian_vector_products_behind_their_barriers():
  """The lowering's barriers on a resnet's 8-channel convolutions (kept through fusion by fast.KEEP_BARRIERS, as
  the training chunk compiles) change nothing computed: the resnet agrees with XLA's convolution in gradients and
  in forward-over-reverse Hessian-vector products."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  overrides = ["model.features=[8]", "model.norm=none", "model.activation=tanh"]
  xla, im2col = _model("resnet", "xla", overrides), _model("resnet", "im2col", overrides)
  params = jax.jit(lambda x: xla.init(jax.random.PRNGKey(1), x, train=False))(x)["params"]
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x, train=False)))
  jit = functools.partial(jax.jit, compiler_options=fast.KEEP_BARRIERS)
  grad_and_hvp = lambda m: jit(lambda p, v: jax.jvp(jax.grad(loss(m)), (p,), (v,)))(params, v)
  compiled = jit(jax.grad(loss(im2col))).lower(params).compile().as_text()
  assert "opt-barrier" in compiled  # the barrier is there in the program XLA runs
  for a, b in zip(jax.tree.leaves(grad_and_hvp(xla)), jax.tree.leaves(grad_and_hvp(im2col))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
