"""Convolution and max pooling lowered to slices and matmuls for CPUs: the same function as flax's, faster there.

XLA's CPU backend runs a convolution fast only where its layout pass hands it to Eigen, which it does not do for
the gradient convolutions inside a `lax.scan` body, where trainlab's chunk runs every step; the gradient of
`reduce_window` max pooling (`select_and_scatter`) is a slow path too (docs/speed.md, "Convolutions on CPU").
Here a convolution is patches times the kernel (im2col: the padded input's windows as strided slices, side by
side on the channel axis, times the kernel reshaped to (kh*kw*cin, cout)), or one of two variants of it for
channel counts where the full patches cost more than the matmul (`_row_patches_conv`, `_elementwise_conv`); a
max pool with window == strides is the maximum over each window's offsets (`_strided_max`).

The convolution plugs into nn.Conv through its `conv_general_dilated` hook, so the module, its parameter names
and shapes and its init are flax's own. `impl="auto"` takes this lowering on CPU, and XLA's own convolution on
other backends or with the speed switch off (trainlab.fast.ENABLED). tests/test_conv.py holds values and
gradients equal to flax's.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from trainlab import fast

IMPLS = ("auto", "xla", "im2col")

# Which lowering a 2-D convolution takes, by its input channels (docs/speed.md, "Convolutions on CPU"): up to
# _ELEMENTWISE_CHANNELS the elementwise sum; within _ROW_PATCHES_CHANNELS (inclusive), at stride 1 along the rows,
# the row patches; otherwise the full patches.
_ELEMENTWISE_CHANNELS = 1
_ROW_PATCHES_CHANNELS = (8, 64)


def resolve(impl: str) -> str:
  """auto -> im2col on CPU with the speed switch on, xla otherwise; xla and im2col stay as they are."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl {impl!r} is not one of {IMPLS}")
  if impl == "auto":
    return "im2col" if fast.ENABLED and jax.default_backend() == "cpu" else "xla"
  return impl


def _channels_last(ndim: int, dimension_numbers) -> bool:
  """Whether the dimension numbers are (N, *spatial, C) input and output and a (*spatial, Cin, Cout) kernel."""
  spatial = tuple(range(1, ndim - 1))
  expected = lax.ConvDimensionNumbers((0, ndim - 1, *spatial), (ndim - 1, ndim - 2, *range(ndim - 2)),
                                      (0, ndim - 1, *spatial))
  if dimension_numbers is None:
    return False
  if not isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    dimension_numbers = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  return tuple(dimension_numbers) == tuple(expected)


def im2col_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                                preferred_element_type=None):
  """`lax.conv_general_dilated` as patches times kernel; channels-last, undilated, ungrouped calls (the ones
  nn.Conv makes for our models). Any other call goes to lax.conv_general_dilated unchanged."""
  kernel_size = rhs.shape[:-2]
  ones = (1,) * len(kernel_size)
  simple = (_channels_last(lhs.ndim, dimension_numbers) and tuple(lhs_dilation or ones) == ones
            and tuple(rhs_dilation or ones) == ones and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None)
  pads = lax.padtype_to_pads(lhs.shape[1:-1], kernel_size, window_strides, padding) if isinstance(
      padding, str) else [tuple(p) for p in padding]
  if not simple or any(lo < 0 or hi < 0 for lo, hi in pads):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)
  channels = lhs.shape[-1]
  if lhs.ndim == 4 and channels <= _ELEMENTWISE_CHANNELS:
    return _elementwise_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, pads)), precision)
  if lhs.ndim == 4 and window_strides[0] == 1 and _ROW_PATCHES_CHANNELS[0] <= channels <= _ROW_PATCHES_CHANNELS[1]:
    return _row_patches_conv(lhs, rhs, window_strides[1], pads, precision)
  windows = _padded_windows(lhs, kernel_size, window_strides, pads)
  # Strided windows are the one case where XLA's own concatenate, given as stacks it fuses, is the faster way to
  # build the patches (docs/speed.md, "Convolutions on CPU"); the others take the sum of pads of _side_by_side.
  patches = _stacked_windows(windows, kernel_size) if max(window_strides) > 1 else _side_by_side(windows)
  return _patches_times_kernel(patches, rhs.reshape(-1, rhs.shape[-1]), precision, preferred_element_type)


def _padded_windows(lhs, kernel_size, strides, pads) -> list[jax.Array]:
  """One strided slice of the zero-padded input per kernel offset, in the kernel's own (row-major) order, so that
  patches[..., (i, j, c)] lines up with kernel.reshape(-1, cout)[(i, j, c)]."""
  x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
  out = [(size - k) // s + 1 for size, k, s in zip(x.shape[1:-1], kernel_size, strides)]
  return [x[(slice(None), *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out)))]
          for offset in itertools.product(*map(range, kernel_size))]


def _stacked_windows(windows: list[jax.Array], kernel_size: Sequence[int]) -> jax.Array:
  """The patches (N, *out, prod(kernel_size) * C) of windows (N, *out, C) given in row-major kernel order, the
  same as their concatenate on the channel axis, built as stacks of at most max(kernel_size) windows each.

  XLA's CPU backend fuses a concatenate into the pass computing its operands only when it has few operands and
  few minor-axis elements, which a 3x3 kernel's flat concatenate exceeds. One stack per kernel axis keeps each
  concatenate to kw or kh operands, off the minor axis; the final reshape is free.
  """
  level = windows
  for depth, k in enumerate(reversed(kernel_size)):  # innermost kernel axis first: axis -2, then -3, ...
    level = [jnp.stack(level[g:g + k], axis=-2 - depth) for g in range(0, len(level), k)]
  (stacked,) = level  # (N, *out, *kernel_size, C)
  return stacked.reshape(*stacked.shape[:-1 - len(kernel_size)], -1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _elementwise_conv(lhs, rhs, strides, pads, precision):
  """A convolution of few input channels as a sum of kh*kw*cin scaled input windows, in one elementwise pass.

  With one input channel the patches' matmul is only kh*kw deep, too shallow to run near the matmul peak, and
  its patches are most of what it reads and writes; this writes only the output, behind a barrier so that XLA
  computes it once rather than inside each consumer (docs/speed.md, "Optimization barriers in the chunk"). The
  kernel gradient stays patches^T @ cotangent, one matmul (the jvp below).
  """
  cin = rhs.shape[-2]
  weights = rhs.reshape(-1, cin, rhs.shape[-1])
  windows = _padded_windows(lhs, rhs.shape[:-2], strides, pads)
  return lax.optimization_barrier(sum(window[..., c:c + 1] * weights[k, c]
                                      for k, window in enumerate(windows) for c in range(cin)))


def _elementwise_conv_jvp(strides, pads, precision, primals, tangents):
  lhs, rhs = primals
  dlhs, drhs = tangents
  out = _elementwise_conv(lhs, rhs, strides, pads, precision)
  dout = jnp.zeros_like(out)
  if type(dlhs) is not SymbolicZero:
    dout += _elementwise_conv(dlhs, rhs, strides, pads, precision)
  if type(drhs) is not SymbolicZero:
    windows = _padded_windows(lhs, rhs.shape[:-2], strides, pads)
    dout += _patches_times_kernel(_side_by_side(windows), drhs.reshape(-1, drhs.shape[-1]), precision)
  return out, dout


_elementwise_conv.defjvp(_elementwise_conv_jvp, symbolic_zeros=True)


def _side_by_side(cols: list[jax.Array]) -> jax.Array:
  """Slices of one shape placed side by side on the channel axis, as a sum of slices padded on that axis rather
  than a concatenate: XLA's CPU backend fuses the pads and the sum into one pass that writes the patches, where
  it would copy each slice out and then concatenate the copies. Strided windows go the other way
  (_stacked_windows)."""
  channels, last = cols[0].shape[-1], len(cols) - 1
  return sum(jnp.pad(col, [(0, 0)] * (col.ndim - 1) + [(k * channels, (last - k) * channels)])
             for k, col in enumerate(cols))


def _patches_times_kernel(patches, kernel, precision, preferred_element_type=None):
  """patches (..., depth) @ kernel (depth, cout), with the rows in two halves, each times the kernel: the kernel
  gradient, patches^T @ cotangent, then runs as two matmuls that XLA's CPU runtime can run in parallel, and a sum
  (docs/speed.md, "Convolutions on CPU")."""
  rows, depth = math.prod(patches.shape[:-1]), patches.shape[-1]
  split = 2 if rows % 2 == 0 else 1
  y = jnp.matmul(patches.reshape(split, rows // split, depth), jnp.broadcast_to(kernel, (split, *kernel.shape)),
                 precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(*patches.shape[:-1], kernel.shape[-1])


def _row_patches_conv(lhs, rhs, stride: int, pads, precision):
  """A 2-D convolution, stride 1 along the rows, with patches over the kernel's width offsets only.

  The patches (N, H, Wo, kw*cin) are kw times the input rather than kh*kw times. One matmul against the kernel's
  rows side by side, (kw*cin, kh*cout), gives every input row's contribution to each of the kh output rows it
  reaches; the output sums those over the kh row offsets. The same products and sums as full patches, in
  another order: a third of the patch memory for a 3x3 kernel, and H / Ho times the matmul rows.

  The rows of zero padding add nothing, so they stay out of the patches and the matmul; each kernel row's
  contributions are padded instead where they meet no input row. With few input channels the matmul's output,
  kh times the layer's, costs more than the full patches save: hence _ROW_PATCHES_CHANNELS.
  """
  kh, kw, cin, cout = rhs.shape
  (top, bottom), width_pads = pads
  x = jnp.pad(lhs, [(0, 0), (0, 0), width_pads, (0, 0)])
  n, h, wp, _ = x.shape
  ho, wo = h + top + bottom - kh + 1, (wp - kw) // stride + 1
  patches = _side_by_side([x[:, :, j:j + stride * (wo - 1) + 1:stride, :] for j in range(kw)])
  kernel = rhs.transpose(1, 2, 0, 3).reshape(kw * cin, kh * cout)  # [(j, c), (i, o)] = rhs[i, j, c, o]
  z = _patches_times_kernel(patches, kernel, precision).reshape(n, h, wo, kh, cout)
  # Each kernel row's contributions are split off z rather than indexed out of it: an index's transpose is a pad
  # back to z's full shape, so the backward would sum kh pads; split's transpose is one concatenate, one pass.
  rows = lax.split(z, [1] * kh, axis=3)
  # output row r takes input row r + i - top through kernel row i, where that row exists
  out = jnp.zeros((n, ho, wo, cout), z.dtype)
  for i in range(kh):
    first, last = i - top, i - top + ho  # the input rows kernel row i meets, of which [start, stop) exist
    start, stop = max(first, 0), min(last, h)
    if start < stop:
      out += jnp.pad(rows[i][:, start:stop, :, 0, :], [(0, 0), (start - first, last - stop), (0, 0), (0, 0)])
  return _materialized(out)


@jax.custom_jvp
def _materialized(x: jax.Array) -> jax.Array:
  """x, unchanged, computed into a buffer of its own; in the backward pass, so is x's cotangent.

  The row patches' output, a sum of kh row-shifted slices, is written once rather than fused into each consumer;
  the row-shifted cotangent of the backward is kept apart from what produces the output's cotangent, which XLA
  would otherwise recompute kh times over. The barriers hold only where the program is compiled with
  compilation.KEEP_BARRIERS; without it, the same values (docs/speed.md, "Optimization barriers in the chunk").
  """
  return lax.optimization_barrier(x)


@_materialized.defjvp
def _materialized_jvp(primals, tangents):
  return lax.optimization_barrier(primals[0]), lax.optimization_barrier(tangents[0])


def Conv(features: int, kernel_size: Sequence[int], strides: Any = 1, *, impl: str = "auto", **kwargs) -> nn.Conv:
  """flax's nn.Conv (same module, parameters and names), lowered per `impl` (IMPLS)."""
  if resolve(impl) == "im2col":
    kwargs["conv_general_dilated"] = im2col_conv_general_dilated
  return nn.Conv(features, kernel_size, strides, **kwargs)


def _strided_max(x: jax.Array, window: tuple[int, ...], padding) -> jax.Array:
  """nn.max_pool(x, window, strides=window, padding) as the maximum over each window's offsets.

  Its gradient goes to the first maximum of each window (row-major, the order select_and_scatter scans): the
  tangent is the window's sum of the input tangent where that mask is set (`_window_max`), so the gradient is
  one elementwise select of the upsampled cotangent, where the gradient of strided slices would be one
  full-size pad per window offset.
  """
  pads = lax.padtype_to_pads(x.shape[1:-1], window, window, padding) if isinstance(padding, str) else padding
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
  out = [size // w for size, w in zip(x.shape[1:-1], window)]
  x = x[(slice(None), *(slice(0, n * w) for n, w in zip(out, window)))]
  # (N, o1, w1, o2, w2, ..., C): window axes 2, 4, ...
  return _window_max(x.reshape(x.shape[0], *itertools.chain(*zip(out, window)), x.shape[-1]), window)


def _first_max(windows: jax.Array, window: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Each window's maximum and the row-major index of its first occurrence, over windows laid out as
  (N, o1, w1, o2, w2, ..., C)."""
  best, first = None, None
  for index, offset in enumerate(itertools.product(*map(range, window))):
    v = windows[(slice(None), *itertools.chain(*((slice(None), o) for o in offset)))]
    if best is None:
      best, first = v, jnp.zeros(v.shape, jnp.int32)
    else:  # strictly greater: ties keep the earlier offset
      first = jnp.where(v > best, index, first)
      best = jnp.where(v > best, v, best)
  return best, first


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(windows: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """The maximum of each window, computed in the pass that finds it, behind a barrier.

  The masked window sum that is its tangent gives the same values, but as the output it would write the masked
  windows out in full before summing them. The barrier keeps XLA from recomputing the maxima inside each
  consumer, such as the next layer's patches, which read each output several times (docs/speed.md,
  "Optimization barriers in the chunk").
  """
  return lax.optimization_barrier(_first_max(windows, window)[0])


@_window_max.defjvp
def _window_max_jvp(window, primals, tangents):
  (windows,), (dwindows,) = primals, tangents
  best, first = _first_max(windows, window)
  dims = len(window)  # each window position's row-major index, laid out as the windows are:
  offsets = jnp.arange(math.prod(window)).reshape(1, *itertools.chain(*((1, w) for w in window)), 1)
  expand = lambda a: a.reshape(a.shape[0], *itertools.chain(*((n, 1) for n in a.shape[1:-1])), a.shape[-1])
  mask = offsets == expand(first)
  return lax.optimization_barrier(best), jnp.where(mask, dwindows, 0.0).sum(axis=tuple(range(2, 2 + 2 * dims, 2)))


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None, padding="VALID", *,
             impl: str = "auto") -> jax.Array:
  """nn.max_pool over (N, *spatial, C); with im2col and non-overlapping windows, a masked sum per window."""
  window = tuple(window)
  strides = window if strides is None else tuple(strides)
  if (resolve(impl) == "im2col" and strides == window and x.ndim == len(window) + 2
      and jnp.issubdtype(x.dtype, jnp.floating)):
    return _strided_max(x, window, padding)
  return nn.max_pool(x, window, strides=strides, padding=padding)
