"""Recurrent models: the simple RNN, the LSTM and the GRU, each a stack of layers that scan one cell over time."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab.models.feedforward import Initializer, Model, maybe_dropout, with_channels


def _per_gate(init: Initializer, gates: int) -> Initializer:
  """Initializes a (fan_in, gates * H) kernel as `gates` separate (fan_in, H) kernels, so that fan-based
  scales, orthogonal and identity inits mean the same per gate as in a plain RNN."""

  def init_fn(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, (shape[0], shape[1] // gates), dtype) for k in keys], axis=-1)

  return init_fn


class _Cell(nn.Module):
  """One step of a recurrence: (carry, x) -> (carry, h), where x is the step's input projection W x_t + b."""

  activation: str
  recurrent_init: Initializer


class _SimpleStep(_Cell):
  @nn.compact
  def __call__(self, h, x):
    h = getattr(nn, self.activation)(x + nn.Dense(h.shape[-1], use_bias=False, kernel_init=self.recurrent_init,
                                                  name="recurrent")(h))
    return h, h


class _LSTMStep(_Cell):
  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    z = x + nn.Dense(4 * h.shape[-1], use_bias=False, kernel_init=_per_gate(self.recurrent_init, 4),
                     name="recurrent")(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class _GRUStep(_Cell):
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


class Recurrent(Model, kw_only=True):
  """`layers` stacked recurrent layers of `hidden` units over (N, T) or (N, T, F) sequences, each scanning the
  subclass's `cell`; the output layer reads the last step's state."""

  hidden: int
  layers: int
  recurrent_init: Initializer | None = None  # None: kernel_init
  inputs: ClassVar[tuple[str, ...]] = ("sequence",)
  cell: ClassVar[str]  # a key of _CELLS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = with_channels(x)
    recurrent_init = self.recurrent_init or self.kernel_init
    for i in range(self.layers):  # only rnn has an activation field, only lstm a forget bias
      x = RecurrentLayer(self.cell, self.hidden, getattr(self, "activation", "tanh"), self.kernel_init,
                         self.bias_init, recurrent_init, getattr(self, "forget_bias", None), name=f"layer_{i}")(x)
    h = maybe_dropout(self, x[:, -1], train)
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, bias_init=self.bias_init, name="output")(h)


class RNN(Recurrent, kw_only=True):
  """Simple recurrent net h_t = act(W x_t + U h_{t-1} + b); with relu and init=identity on U, the IRNN of
  Le et al. 2015."""

  activation: str
  option: ClassVar[str] = "rnn"
  cell: ClassVar[str] = "rnn"


class LSTM(Recurrent, kw_only=True):
  """Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""

  forget_bias: Any  # a float of the model group, so a traced value
  option: ClassVar[str] = "lstm"
  cell: ClassVar[str] = "lstm"


class GRU(Recurrent, kw_only=True):
  """Gated recurrent unit (Cho et al. 2014): h_t = (1 - z) n + z h_{t-1}, n = tanh(W_n x + r (U_n h))."""

  option: ClassVar[str] = "gru"
  cell: ClassVar[str] = "gru"
