"""Regularizers that act on the weights or the inputs. Each is read by the part of the program that implements it:
penalties (l2, l1) and the max-norm projection here; decoupled weight decay in optim.py; dropout by the model;
label smoothing and the confidence penalty in losses.py; early stopping in the host loop of train.py; and
input augmentation here, applied to each training batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainlab.config import ConfigError


def is_weight(path: tuple, leaf: jax.Array) -> bool:
  """Weights are the kernels of dense and convolutional layers; biases and norm scales are not penalized."""
  del leaf  # Unused: the name decides.
  return getattr(path[-1], "key", None) == "kernel"


def weights(params) -> list[jax.Array]:
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if is_weight(path, leaf)]


def weight_mask(params):
  """A pytree of bools like `params`: True at the weights (for optax's `mask` arguments)."""
  return jax.tree_util.tree_map_with_path(is_weight, params)


def l2_penalty(params, weight: jax.Array) -> jax.Array:
  """weight * sum(w^2) over all weights (no factor 1/2)."""
  return weight * sum(jnp.sum(jnp.square(w)) for w in weights(params))


def l1_penalty(params, weight: jax.Array) -> jax.Array:
  """weight * sum(|w|) over all weights."""
  return weight * sum(jnp.sum(jnp.abs(w)) for w in weights(params))


def penalty(params, regularizer: dict) -> jax.Array:
  """The sum of the selected loss penalties; `regularizer` holds the traced values of the regularizer group."""
  total = jnp.zeros((), jnp.float32)
  if "l2" in regularizer:
    total += l2_penalty(params, regularizer["l2"]["weight"])
  if "l1" in regularizer:
    total += l1_penalty(params, regularizer["l1"]["weight"])
  return total


def max_norm(params, radius: jax.Array):
  """w_j <- w_j * r / ||w_j|| for every unit j whose incoming weights have norm above r; others unchanged.

  A unit's incoming weights are a kernel's slice along its last (output) axis: a dense kernel's column, a
  convolution's filter.
  """

  def project(path, w):
    if not is_weight(path, w):
      return w
    norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(w.ndim - 1)), keepdims=True))
    return jnp.where(norm > radius, w * (radius / jnp.maximum(norm, 1e-30)), w)

  return jax.tree_util.tree_map_with_path(project, params)


def project(params, regularizer: dict):
  """The projections applied after every optimizer step (max_norm, when selected)."""
  if "max_norm" in regularizer:
    params = max_norm(params, regularizer["max_norm"]["r"])
  return params


def augment(x: jax.Array, options: dict, rng: jax.Array) -> jax.Array:
  """Random input transformations of one training batch, each example drawn independently.

  Vectors and sequences (batch, length) or (batch, length, channels): a circular shift along the length by up to
  `shift` positions either way, then additive N(0, noise^2). Images (batch, height, width, channels): a random
  crop of the image padded by `crop` zeros on each side, a horizontal flip with probability 1/2 when `flip`,
  then the noise.

  Args:
    x: the batch.
    options: `noise` (a traced float), `shift`, `crop` (ints) and `flip` (bool).
    rng: the step's key.
  """
  k_shift, k_flip, k_noise = jax.random.split(rng, 3)
  n = x.shape[0]
  if x.ndim == 4:
    crop = options.get("crop", 0)
    if crop:
      h, w = x.shape[1:3]
      padded = jnp.pad(x, [(0, 0), (crop, crop), (crop, crop), (0, 0)])
      offsets = jax.random.randint(k_shift, (n, 2), 0, 2 * crop + 1)
      x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, x.shape[3])))(padded, offsets)
    if options.get("flip", False):
      flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
      x = jnp.where(flip, x[:, :, ::-1, :], x)
  else:
    shift = options.get("shift", 0)
    if shift:
      shifts = jax.random.randint(k_shift, (n,), -shift, shift + 1)
      x = jax.vmap(lambda row, s: jnp.roll(row, s, axis=0))(x, shifts)
  return x + options["noise"] * jax.random.normal(k_noise, x.shape, x.dtype)


class EarlyStopping:
  """Host-side early stopping: stops after `patience` evaluations without improvement of val/`metric` and keeps
  a device copy of the best parameters (and batch statistics) to restore before the test evaluation."""

  def __init__(self, patience: int, metric: str = "accuracy"):
    self.patience, self.metric = patience, metric
    self.sign = 1.0 if metric == "accuracy" else -1.0  # accuracy is maximized, loss and mse minimized
    self.best, self.best_step, self.best_state, self.bad = None, None, None, 0

  def update(self, step: int, val: dict, state) -> bool:
    """Records one evaluation; returns True when training should stop."""
    key = f"val/{self.metric}"
    if key not in val:
      raise ConfigError(f"regularizer.early_stopping.metric={self.metric} is not allowed for this data set: it must "
                        f"be one of {', '.join(k.split('/', 1)[1] for k in val)}")
    score = self.sign * val[key]
    if self.best is None or score > self.best:
      self.best, self.best_step, self.bad = score, step, 0
      # A copy: the training chunk donates (reuses) the buffers of the state it is given.
      self.best_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
      return False
    self.bad += 1
    return self.bad >= self.patience

  def restore(self, state):
    if self.best_state is None:
      return state
    params, model_state = self.best_state
    return state._replace(params=params, model_state=model_state)
