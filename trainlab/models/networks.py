"""Flax linen models. Their parameters are plain pytrees, so vmap, scan, orbax and optax compose with them."""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from hydra.utils import get_class

from trainlab.config import ConfigError

from trainlab.models import activations
from trainlab.fast import conv as conv_ops

Initializer = Callable[..., jax.Array]


def dropout(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Inverted dropout with a traced rate: keep each unit with probability 1 - rate, scale by 1/(1 - rate).

  flax's nn.Dropout branches on its rate in Python, which a rate that is a traced hyperparameter cannot do.
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, x.shape)
  return jnp.where(mask, x / keep, 0.0)


class MLP(nn.Module):
  """Dense layers, each followed by norm, activation and dropout in that order; `widths=()` is softmax regression."""

  widths: Sequence[int]
  activation: str
  num_outputs: int
  norm: str = "none"  # none, batch, layer (activations.NORMS)
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3
  batch_momentum: Any = 0.99
  dropout_rate: Any = None  # a traced scalar, or None for no dropout layers
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.widths:
      x = nn.Dense(width, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
      x = activations.norm(self.norm, x, train=train, momentum=self.batch_momentum)
      x = activations.Activation(self.activation, self.alpha, self.rrelu_lower, self.rrelu_upper)(x, train=train)
      if self.dropout_rate is not None and train:
        x = dropout(x, self.dropout_rate, self.make_rng("dropout"))
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)


# --- models beyond the MLP ------------------------------------------------------------------------------------
# Every model takes the same arguments from the program: num_outputs, dropout_rate (a traced scalar or None)
# and kernel_init (the `init` group, used by every conv, dense and recurrent kernel). `inputs` names the data
# layouts (data.LAYOUTS) a model can read; check_input turns a mismatch into one line at start.


def _with_channels(x: jax.Array) -> jax.Array:
  """(N, T) sequences get one channel, (N, T, 1); (N, T, F) and (N, H, W, C) are already channels-last."""
  return x[..., None] if x.ndim == 2 else x


def _activation(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
  """The module's activation with its own floats (leaky_relu's slope, rrelu's bounds); prelu learns a slope."""
  return activations.Activation(module.activation, module.alpha, module.rrelu_lower, module.rrelu_upper)(x, train=train)


def _dense_head(module: nn.Module, x: jax.Array, widths: Sequence[int], train: bool) -> jax.Array:
  """Dense hidden layers with the module's activation and dropout, then the output layer."""
  for width in widths:
    x = _activation(module, nn.Dense(width, kernel_init=module.kernel_init, bias_init=module.bias_init)(x), train)
    if module.dropout_rate is not None and train:
      x = dropout(x, module.dropout_rate, module.make_rng("dropout"))
  return nn.Dense(module.num_outputs, kernel_init=module.kernel_init, bias_init=module.bias_init)(x)


class CNN(nn.Module):
  """LeNet-style: per entry of `features`, a convolution (`kernel_size` wide, same padding), the activation and
  a 2x max pool; then dense layers `widths` and the output. 2-D on images, 1-D on sequences (MNIST-1D)."""

  features: Sequence[int]
  kernel_size: int
  widths: Sequence[int]
  activation: str
  num_outputs: int
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  conv_impl: str = "auto"  # how convolutions and pools are lowered (conv.IMPLS); the same function either way
  inputs: ClassVar[tuple[str, ...]] = ("image", "sequence")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _with_channels(x)
    window = (2,) * (x.ndim - 2)
    for features in self.features:
      conv = conv_ops.Conv(features, (self.kernel_size,) * len(window), padding="SAME", kernel_init=self.kernel_init,
                           bias_init=self.bias_init, impl=self.conv_impl)
      x = conv_ops.max_pool(_activation(self, conv(x), train), window, strides=window, padding="SAME",
                            impl=self.conv_impl)
    return _dense_head(self, x.reshape((x.shape[0], -1)), self.widths, train)


class ResNet(nn.Module):
  """A small residual net (He et al. 2016): a stem convolution of width features[0], then one stage per entry
  of `features` with `blocks` residual blocks each (the first block of every later stage halves the resolution),
  global average pooling and the output layer. Block: conv-norm-act-conv-norm, plus the input (through a 1x1
  convolution where the shape changes), then act. `norm`: batch (running averages at evaluation), layer, none."""

  features: Sequence[int]
  blocks: int
  kernel_size: int
  norm: str
  activation: str
  num_outputs: int
  alpha: Any = 0.01  # leaky_relu's slope
  rrelu_lower: Any = 1 / 8
  rrelu_upper: Any = 1 / 3
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  conv_impl: str = "auto"  # how convolutions are lowered (conv.IMPLS); the same function either way
  inputs: ClassVar[tuple[str, ...]] = ("image", "sequence")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = lambda y: _activation(self, y, train)
    x = _with_channels(x)
    dims = x.ndim - 2
    conv = lambda f, size, stride=1: conv_ops.Conv(f, (size,) * dims, (stride,) * dims, padding="SAME",
                                                   use_bias=self.norm == "none", kernel_init=self.kernel_init,
                                                   bias_init=self.bias_init, impl=self.conv_impl)

    def norm(y):
      if self.norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
      return nn.LayerNorm()(y) if self.norm == "layer" else y

    x = act(norm(conv(self.features[0], self.kernel_size)(x)))
    for stage, features in enumerate(self.features):
      for block in range(self.blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        y = act(norm(conv(features, self.kernel_size, stride)(x)))
        y = norm(conv(features, self.kernel_size)(y))
        if stride != 1 or x.shape[-1] != features:
          x = norm(conv(features, 1, stride)(x))
        x = act(x + y)
    x = x.mean(axis=tuple(range(1, 1 + dims)))
    if self.dropout_rate is not None and train:
      x = dropout(x, self.dropout_rate, self.make_rng("dropout"))
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)


def _per_gate(init: Initializer, gates: int) -> Initializer:
  """Initializes a (fan_in, gates * H) kernel as `gates` separate (fan_in, H) kernels, so that fan-based
  scales, orthogonal and identity inits mean the same per gate as in a plain RNN."""

  def init_fn(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, (shape[0], shape[1] // gates), dtype) for k in keys], axis=-1)

  return init_fn


class _SimpleStep(nn.Module):
  activation: str
  recurrent_init: Initializer

  @nn.compact
  def __call__(self, h, x):  # x: this step's input projection W x_t + b
    h = getattr(nn, self.activation)(x + nn.Dense(h.shape[-1], use_bias=False, kernel_init=self.recurrent_init,
                                                  name="recurrent")(h))
    return h, h


class _LSTMStep(nn.Module):
  activation: str
  recurrent_init: Initializer

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    z = x + nn.Dense(4 * h.shape[-1], use_bias=False, kernel_init=_per_gate(self.recurrent_init, 4),
                     name="recurrent")(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class _GRUStep(nn.Module):
  activation: str
  recurrent_init: Initializer

  @nn.compact
  def __call__(self, h, x):
    x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(nn.Dense(3 * h.shape[-1], use_bias=False, kernel_init=_per_gate(self.recurrent_init, 3),
                                       name="recurrent")(h), 3, axis=-1)
    r, z = nn.sigmoid(x_r + h_r), nn.sigmoid(x_z + h_z)
    h = (1 - z) * jnp.tanh(x_n + r * h_n) + z * h
    return h, h


_CELLS = {"rnn": (_SimpleStep, 1), "lstm": (_LSTMStep, 4), "gru": (_GRUStep, 3)}


class RecurrentLayer(nn.Module):
  """One recurrent layer over (N, T, F) -> (N, T, hidden); the input projection of all steps is one matmul,
  the recurrence one nn.scan. Kernels: input/kernel from kernel_init, cell/recurrent/kernel from recurrent_init."""

  cell: str  # rnn, lstm, gru
  hidden: int
  activation: str
  kernel_init: Initializer
  bias_init: Initializer
  recurrent_init: Initializer
  forget_bias: Any = None  # LSTM only: the forget gate's initial bias (a traced value)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    step, gates = _CELLS[self.cell]
    bias_init = self.bias_init
    if self.cell == "lstm":  # gate order i, f, g, o: the forget gate starts at forget_bias (Gers et al. 2000)
      bias_init = lambda key, shape, dtype=jnp.float32: jnp.concatenate(
          [jnp.zeros(self.hidden, dtype), jnp.full(self.hidden, self.forget_bias, dtype),
           jnp.zeros(2 * self.hidden, dtype)])
    x = nn.Dense(gates * self.hidden, kernel_init=_per_gate(self.kernel_init, gates), bias_init=bias_init,
                 name="input")(x)
    h = jnp.zeros((x.shape[0], self.hidden), x.dtype)
    carry = (h, h) if self.cell == "lstm" else h
    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
    _, hs = scan(self.activation, self.recurrent_init, name="cell")(carry, x)
    return hs


def _read_sequence(module: nn.Module, x: jax.Array, train: bool, cell: str, forget_bias=None) -> jax.Array:
  """Stacked recurrent layers over the sequence; the output layer reads the last step's state."""
  x = _with_channels(x)
  recurrent_init = module.recurrent_init or module.kernel_init
  for i in range(module.layers):
    x = RecurrentLayer(cell, module.hidden, getattr(module, "activation", "tanh"), module.kernel_init,
                       module.bias_init, recurrent_init, forget_bias, name=f"layer_{i}")(x)
  h = x[:, -1]
  if module.dropout_rate is not None and train:
    h = dropout(h, module.dropout_rate, module.make_rng("dropout"))
  return nn.Dense(module.num_outputs, kernel_init=module.kernel_init, bias_init=module.bias_init, name="output")(h)


class RNN(nn.Module):
  """Simple recurrent net h_t = act(W x_t + U h_{t-1} + b); with relu and init=identity on U, the IRNN of
  Le et al. 2015. `layers` stacked layers of `hidden` units; the output reads the last state."""

  hidden: int
  layers: int
  activation: str
  num_outputs: int
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  recurrent_init: Initializer | None = None  # None: kernel_init
  inputs: ClassVar[tuple[str, ...]] = ("sequence",)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return _read_sequence(self, x, train, "rnn")


class LSTM(nn.Module):
  """Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""

  hidden: int
  layers: int
  forget_bias: Any  # a float of the model group, so a traced value
  num_outputs: int
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  recurrent_init: Initializer | None = None
  inputs: ClassVar[tuple[str, ...]] = ("sequence",)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return _read_sequence(self, x, train, "lstm", self.forget_bias)


class GRU(nn.Module):
  """Gated recurrent unit (Cho et al. 2014): h_t = (1 - z) n + z h_{t-1}, n = tanh(W_n x + r (U_n h))."""

  hidden: int
  layers: int
  num_outputs: int
  dropout_rate: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  recurrent_init: Initializer | None = None
  inputs: ClassVar[tuple[str, ...]] = ("sequence",)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return _read_sequence(self, x, train, "gru")


class LinearChain(nn.Module):
  """The deep linear chain y = x W_1 W_2 ... W_l of the course notes: `depth` dense layers without biases or
  activations, `width` units each (width 1 on a scalar input is the scalar chain x w_1 ... w_l). The function
  is linear, but the loss is not convex in the weights, and a step on one w_i rescales every later one."""

  depth: int
  width: int
  num_outputs: int
  dropout_rate: Any = None  # no dropout in a linear chain; accepted like every model's
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # Unused: no dropout, no norm.
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth - 1):
      x = nn.Dense(self.width, use_bias=False, kernel_init=self.kernel_init)(x)
    return nn.Dense(self.num_outputs, use_bias=False, kernel_init=self.kernel_init)(x)


# --- which models read which data ------------------------------------------------------------------------------
_LAYOUT_WORDS = {
    "vector": ("unordered vectors", "spirals, teacher, npz"),
    "sequence": ("sequences", "mnist1d, adding, sequential"),
    "image": ("images", "digits, mnist, fashion_mnist, cifar10"),
}


def _option_name(target: str) -> str:
  """trainlab.models.LinearChain -> linear_chain, the name of its config option."""
  return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", target.rsplit(".", 1)[-1]).lower()


def check_input(model_target: str, data_target: str, layout: str, example_shape: tuple[int, ...]) -> None:
  """Raises ConfigError (one line) when the model cannot read the data's layout; models without `inputs` read all."""
  model_cls = get_class(model_target)
  accepted = getattr(model_cls, "inputs", tuple(_LAYOUT_WORDS))
  if layout in accepted:
    return
  model, data = _option_name(model_target), data_target.rsplit(".", 1)[-1]
  takes = "; ".join(f"{words} (data={examples})" for words, examples in (_LAYOUT_WORDS[a] for a in accepted))
  readers = [_option_name(c.__module__ + "." + c.__name__) for c in (MLP, LinearChain, CNN, ResNet, RNN, LSTM, GRU)
             if layout in getattr(c, "inputs", tuple(_LAYOUT_WORDS))]
  raise ConfigError(f"model={model} cannot take data={data}, whose examples are {_LAYOUT_WORDS[layout][0]} of shape "
                   f"{tuple(example_shape)}: {model} takes {takes}; for {_LAYOUT_WORDS[layout][0]} use model="
                   f"{' or '.join(readers)}")


def check_init(model_target: str, recurrent: str) -> None:
  """Raises ConfigError when init.recurrent asks for recurrent kernels that the model does not have."""
  if recurrent != "same" and not hasattr(get_class(model_target), "recurrent_init"):
    raise ConfigError(f"init.recurrent={recurrent} is not allowed with model={_option_name(model_target)}: only "
                      "rnn, lstm and gru have recurrent kernels (init.recurrent=same for the others)")
