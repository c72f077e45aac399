"""Regularizers, each one entry of `REGULARIZERS` that says where it acts.

A regularizer is selected by `regularizer=[name, ...]` and configured under `regularizer.<name>`; its options
reach it as one dict (traced values and structure merged). Where it can act:

  loss_term(params, options) -> scalar         added to the training objective (l2, l1)
  reshape_loss(loss, logits, labels, options)  replaces the per-example classification loss (label smoothing,
                                               the confidence penalty, distillation), in the registry's order
  gradient_transform(options, learning_rate)   an optax stage after the optimizer's direction (weight decay)
  wrap_optimizer(tx, learning_rate_fn, options) the whole optimizer wrapped, with the learning rate it applies
                                               (proximal L1)
  project(params, options) -> params           applied after every optimizer step (max-norm)
  augment(x, options, rng) -> x                applied to each training batch (augment)
  model_options(options) -> dict               keyword arguments of the model (dropout)
  between_chunks(options) -> EarlyStopping     the host loop's early stopping

Adding a regularizer is one entry here and one conf/regularizer/NAME.yaml (with its schema in trainlab/config).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainlab import losses, metrics
from trainlab.config import ConfigError


def is_weight(path: tuple, leaf: jax.Array) -> bool:
  """Weights are the kernels of dense and convolutional layers; biases and norm scales are not penalized."""
  del leaf  # Unused: the name decides.
  return getattr(path[-1], "key", None) == "kernel"


def weights(params) -> list[jax.Array]:
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if is_weight(path, leaf)]


def zero_fraction(params) -> jax.Array:
  """The fraction of all weights that are exactly 0 (the sparsity that init=sparse and L1 give)."""
  kernels = weights(params)
  return sum(jnp.sum(w == 0) for w in kernels) / max(sum(w.size for w in kernels), 1)


def weight_mask(params):
  """A pytree of bools like `params`: True at the weights (for optax's `mask` arguments)."""
  return jax.tree_util.tree_map_with_path(is_weight, params)


# --- loss terms and per-example losses ---------------------------------------------------------------------
def l2_penalty(params, weight: jax.Array) -> jax.Array:
  """weight * sum(w^2) over all weights (no factor 1/2)."""
  return weight * sum(jnp.sum(jnp.square(w)) for w in weights(params))


def l1_penalty(params, weight: jax.Array) -> jax.Array:
  """weight * sum(|w|) over all weights, whose gradient is weight * sign(w) with sign(0) = 0 (Goodfellow et al.
  eq. 7.20, PyTorch): written as w * sign(w) with the sign held constant, since JAX's derivative of |w| is 1 at 0."""
  return weight * sum(jnp.sum(w * jax.lax.stop_gradient(jnp.sign(w))) for w in weights(params))


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, eps: jax.Array) -> jax.Array:
  """Cross-entropy against the target (1 - eps) y + eps / K (Szegedy et al. 2016), per example."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), eps)
  return optax.softmax_cross_entropy(logits, targets)


def entropy(logits: jax.Array) -> jax.Array:
  """H(p) = -sum_k p_k log p_k of p = softmax(logits), per example."""
  log_p = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def distillation_loss(loss: jax.Array, logits: jax.Array, teacher_logits: jax.Array, temperature: jax.Array,
                      alpha: jax.Array) -> jax.Array:
  """(1 - alpha) loss + alpha T^2 KL(p_t^T || p_s^T), per example (Hinton et al. 2015): `loss` the cross-entropy
  with the labels, p^T = softmax(logits / T) of the student and of the teacher. T^2 keeps the soft targets'
  gradients on the scale of the hard ones' as T changes (they shrink as 1/T^2)."""
  kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(logits / temperature),
                                                   jax.nn.log_softmax(teacher_logits / temperature))
  return (1.0 - alpha) * loss + alpha * temperature**2 * kl


# --- after the optimizer's direction, and after the step -----------------------------------------------------
def add_decoupled_weight_decay(weight: float, learning_rate: float) -> optax.GradientTransformation:
  """Adds -learning_rate * weight * w to the update of every weight (kernel), not to biases or norm scales.

  It follows the phase's lr-scaled direction, so the step is theta <- theta - lr (d + weight theta), and the
  schedule multiplies both terms (Loshchilov & Hutter's decoupled decay, in optax's and PyTorch's AdamW form).
  """

  def update_fn(updates, state, params):
    decayed = jax.tree_util.tree_map_with_path(
        lambda path, u, w: u - learning_rate * weight * w if is_weight(path, w) else u, updates, params)
    return decayed, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class SoftThresholdState(NamedTuple):
  inner: Any  # the optimizer's own state
  weight: jax.Array  # lambda, the run's L1 strength


def soft_threshold_weights(tx: optax.GradientTransformation, learning_rate_fn: Callable,
                           weight: Any) -> tuple[optax.GradientTransformation, Callable]:
  """`tx` followed by the proximal step of lr * weight * ||w||_1 on the weights (ISTA): with u tx's update and
  lr the learning rate it applies, w + u becomes sign(w + u) max(|w + u| - lr weight, 0), which sets small
  weights to exactly 0. Returns the transform and the learning-rate function of its state."""

  def init_fn(params):
    return SoftThresholdState(tx.init(params), jnp.asarray(weight, jnp.float32))

  def update_fn(updates, state, params):
    threshold = learning_rate_fn(state.inner) * state.weight
    updates, inner = tx.update(updates, state.inner, params)

    def step(path, w, u):
      if not is_weight(path, w):
        return u
      return jnp.sign(w + u) * jnp.maximum(jnp.abs(w + u) - threshold, 0.0) - w

    return jax.tree_util.tree_map_with_path(step, params, updates), SoftThresholdState(inner, state.weight)

  return optax.GradientTransformation(init_fn, update_fn), lambda state: learning_rate_fn(state.inner)


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


class Regularizer(NamedTuple):
  """Where one regularizer acts: each field is a hook (module docstring), None where it does not act."""
  loss_term: Callable | None = None
  reshape_loss: Callable | None = None
  gradient_transform: Callable | None = None
  wrap_optimizer: Callable | None = None
  project: Callable | None = None
  augment: Callable | None = None
  model_options: Callable | None = None
  between_chunks: Callable | None = None


REGULARIZERS = {  # the order in which hooks of one kind apply
    "l2": Regularizer(loss_term=lambda params, o: l2_penalty(params, o["weight"])),
    "l1": Regularizer(  # proximal: the penalty leaves the loss and a soft-threshold ends each step
        loss_term=lambda params, o: 0.0 if o["proximal"] else l1_penalty(params, o["weight"]),
        wrap_optimizer=lambda tx, lr_fn, o: soft_threshold_weights(tx, lr_fn, o["weight"]) if o["proximal"]
        else (tx, lr_fn)),
    "label_smoothing": Regularizer(
        reshape_loss=lambda loss, logits, labels, o: smoothed_cross_entropy(logits, labels, o["eps"])),
    "confidence_penalty": Regularizer(reshape_loss=lambda loss, logits, labels, o: loss - o["beta"] * entropy(logits)),
    # the teacher's logits of the batch reach it among its options (train.loss_fn computes them in the step)
    "distill": Regularizer(reshape_loss=lambda loss, logits, labels, o: distillation_loss(
        loss, logits, o["teacher_logits"], o["temperature"], o["alpha"])),
    "weight_decay": Regularizer(gradient_transform=lambda o, learning_rate: optax.inject_hyperparams(
        add_decoupled_weight_decay)(weight=o["weight"], learning_rate=learning_rate)),
    "max_norm": Regularizer(project=lambda params, o: max_norm(params, o["r"])),
    "augment": Regularizer(augment=augment),
    "dropout": Regularizer(model_options=lambda o: {"dropout_rate": o["rate"]}),
    "early_stopping": Regularizer(between_chunks=lambda o: EarlyStopping(o["patience"], o["metric"])),
}


def hooks(selected: dict, kind: str) -> list[tuple[Callable, Any]]:
  """The `kind` hooks of the selected regularizers ({name: options}), with their options, in registry order."""
  return [(getattr(r, kind), selected[name]) for name, r in REGULARIZERS.items()
          if name in selected and getattr(r, kind) is not None]


def penalty(params, selected: dict) -> jax.Array:
  """The sum of the selected regularizers' loss terms."""
  return sum((term(params, o) for term, o in hooks(selected, "loss_term")), jnp.zeros((), jnp.float32))


def objective(logits: jax.Array, labels: jax.Array, selected: dict) -> jax.Array:
  """The per-example classification loss that training minimizes: cross-entropy, reshaped by the selected
  regularizers (label smoothing, then the confidence penalty)."""
  loss = losses.cross_entropy(logits, labels)
  for reshape, o in hooks(selected, "reshape_loss"):
    loss = reshape(loss, logits, labels, o)
  return loss


def project(params, selected: dict):
  """The selected projections, applied after an optimizer step."""
  for apply, o in hooks(selected, "project"):
    params = apply(params, o)
  return params


def augment_batch(x: jax.Array, selected: dict, rng: jax.Array) -> jax.Array:
  """The selected input transformations of one training batch."""
  for apply, o in hooks(selected, "augment"):
    x = apply(x, o, rng)
  return x


class EarlyStopping:
  """Host-side early stopping: stops after `patience` evaluations without improvement of val/`metric` and keeps
  a device copy of the best parameters (and batch statistics) to restore before the test evaluation."""

  def __init__(self, patience: int, metric: str = "accuracy"):
    self.patience, self.metric = patience, metric
    self.best, self.best_step, self.best_state, self.bad = None, None, None, 0

  def update(self, step: int, val: dict, state) -> bool:
    """Records one evaluation; returns True when training should stop."""
    key = f"val/{self.metric}"
    if key not in val:
      raise ConfigError(f"regularizer.early_stopping.metric={self.metric} is not allowed for this data set: it must "
                        f"be one of {', '.join(k.split('/', 1)[1] for k in val)}")
    if metrics.is_better(val[key], self.best, key):
      self.best, self.best_step, self.bad = val[key], step, 0
      # A copy: the training chunk donates (reuses) the buffers of the state it is given.
      self.best_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
      return False
    self.bad += 1
    return self.bad >= self.patience

  def saved(self) -> dict:
    """What a checkpoint keeps of it besides the best parameters (best_state, saved as a tree)."""
    return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

  def load(self, saved: dict, best_state) -> None:
    """Takes up where a checkpoint's early stopping was: `saved` from `saved()`, and its best parameters."""
    self.best, self.best_step, self.bad = saved["best"], saved["best_step"], saved["bad"]
    self.best_state = best_state

  def restore(self, state):
    if self.best_state is None:
      return state
    params, model_state = self.best_state
    return state._replace(params=params, model_state=model_state)
