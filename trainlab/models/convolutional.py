"""Convolutional models, 2-D on images and 1-D on sequences: a LeNet-style CNN and a small ResNet. Their
convolutions and pools go through trainlab.fast.conv, which lowers flax's functions for speed (`conv_impl`)."""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from trainlab.fast import conv as conv_ops
from trainlab.models import activations
from trainlab.models.feedforward import ActivatedModel, activate, dense_head, maybe_dropout, with_channels


class CNN(ActivatedModel, kw_only=True):
  """LeNet-style: per entry of `features`, a convolution (`kernel_size` wide, same padding), the activation and
  a 2x max pool; then dense layers `widths` and the output. 2-D on images, 1-D on sequences (MNIST-1D)."""

  features: Sequence[int]
  kernel_size: int
  widths: Sequence[int]
  conv_impl: str = "auto"  # how convolutions and pools are lowered (conv.IMPLS); the same function either way
  inputs: ClassVar[tuple[str, ...]] = ("image", "sequence")
  option: ClassVar[str] = "cnn"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = with_channels(x)
    window = (2,) * (x.ndim - 2)
    for features in self.features:
      conv = conv_ops.Conv(features, (self.kernel_size,) * len(window), padding="SAME", kernel_init=self.kernel_init,
                           bias_init=self.bias_init, impl=self.conv_impl)
      x = conv_ops.max_pool(activate(self, conv(x), train), window, strides=window, padding="SAME",
                            impl=self.conv_impl)
    return dense_head(self, x.reshape((x.shape[0], -1)), self.widths, train)


class ResNet(ActivatedModel, kw_only=True):
  """A small residual net (He et al. 2016): a stem convolution of width features[0], then one stage per entry
  of `features` with `blocks` residual blocks each (the first block of every later stage halves the resolution),
  global average pooling and the output layer. Block: conv-norm-act-conv-norm, plus the input (through a 1x1
  convolution where the shape changes), then act. `norm`: batch (running averages at evaluation), layer, none."""

  features: Sequence[int]
  blocks: int
  kernel_size: int
  norm: str
  conv_impl: str = "auto"  # how convolutions are lowered (conv.IMPLS); the same function either way
  inputs: ClassVar[tuple[str, ...]] = ("image", "sequence")
  option: ClassVar[str] = "resnet"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = lambda y: activate(self, y, train)
    norm = lambda y: activations.norm(self.norm, y, train=train, momentum=0.9, layer_epsilon=1e-6,  # flax's default
                                      frozen=self.frozen_norms)
    x = with_channels(x)
    dims = x.ndim - 2
    conv = lambda f, size, stride=1: conv_ops.Conv(f, (size,) * dims, (stride,) * dims, padding="SAME",
                                                   use_bias=self.norm == "none", kernel_init=self.kernel_init,
                                                   bias_init=self.bias_init, impl=self.conv_impl)
    x = act(norm(conv(self.features[0], self.kernel_size)(x)))
    for stage, features in enumerate(self.features):
      for block in range(self.blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        y = act(norm(conv(features, self.kernel_size, stride)(x)))
        y = norm(conv(features, self.kernel_size)(y))
        if stride != 1 or x.shape[-1] != features:
          x = norm(conv(features, 1, stride)(x))
        x = act(x + y)
    x = maybe_dropout(self, x.mean(axis=tuple(range(1, 1 + dims))), train)
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
