"""The one place where optax chains are composed from the `optimizer`, `schedule` and `regularizer` groups.

One optimizer *phase* is the chain

  stale gradients (optimizer.staleness) -> clip (optimizer.clip_value, optimizer.clip_norm) -> gradient noise (optimizer.noise_eta, noise_gamma)
  -> the optimizer's direction times optimizer.lr (an optax alias, or one of ours below)
  -> decoupled weight decay (regularizer=weight_decay): minus lr * weight * w, weights only.

`optimizer.then` (a second optimizer's config) with `optimizer.switch_step` makes two phases, switched at that
step ("Adam first, then SGD"). The schedule's multiplier follows, so the update that step k applies is
schedule(k) times the phase's update; proximal L1 (regularizer.l1.proximal) then wraps the whole optimizer. Every stage is wrapped in `optax.inject_hyperparams`, so every float of
the groups lives in the optimizer state as an array: a sweep over them reuses one compiled program.

Conventions (docs/catalogue.md has the table): momentum is optax's and PyTorch's form v <- a v + g,
theta <- theta - lr_k v, so the current lr scales the whole velocity; AdaGrad starts its accumulator at
`initial_accumulator_value` (0, as PyTorch and Goodfellow et al.) with eps outside the square root; RMSProp puts
eps outside the square root (PyTorch); Adam puts eps outside sqrt(s_hat) (paper, optax, PyTorch).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from hydra.utils import get_method

from trainlab import regularizers, values
from trainlab.config import ConfigError

# Keys of the optimizer group read here rather than passed to the optimizer's own factory;
# workers and backup_workers act on the batch, in train_step (trainlab.backup_workers), not in the chain.
PHASE_KEYS = ("_target_", "lr", "staleness", "workers", "backup_workers", "clip_value", "clip_norm", "noise_eta",
              "noise_gamma", "then", "switch_step")


def _scale_by(schedule_factory: Callable[..., optax.Schedule]) -> Callable[..., optax.GradientTransformation]:
  """Turns a schedule factory into a transform factory with the same signature (for inject_hyperparams)."""

  @functools.wraps(schedule_factory)
  def factory(*args, **kwargs):
    return optax.scale_by_schedule(schedule_factory(*args, **kwargs))

  return factory


def _inject(factory: Callable, **kwargs) -> optax.GradientTransformation:
  return optax.inject_hyperparams(factory, static_args=values.structural_names(kwargs))(**kwargs)


# --- optimizers that optax lacks in the catalogue's form ------------------------------------------------------
class ScaleByAdagradState(NamedTuple):
  sum_of_squares: Any  # s, the running sum of g * g; a pytree like the params


def scale_by_adagrad(initial_accumulator_value: float = 0.0, eps: float = 1e-7) -> optax.GradientTransformation:
  """s <- s + g * g ; g <- g / (sqrt(s) + eps), with s_0 = initial_accumulator_value.

  optax.scale_by_rss puts eps inside the square root and starts at 0.1; this is Goodfellow et al.'s Algorithm 8.4
  and PyTorch's Adagrad (eps outside, s_0 = 0 by default).
  """

  def init_fn(params):
    return ScaleByAdagradState(jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params))

  def update_fn(updates, state, params=None):
    del params  # Unused: the step depends on the gradient only.
    s = jax.tree.map(lambda s, g: s + g * g, state.sum_of_squares, updates)
    updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, s)
    return updates, ScaleByAdagradState(s)

  return optax.GradientTransformation(init_fn, update_fn)


def adagrad(learning_rate, initial_accumulator_value: float = 0.0, eps: float = 1e-7):
  """AdaGrad: theta <- theta - lr * g / (sqrt(s) + eps), s the sum of squared gradients so far (this one included)."""
  return optax.chain(scale_by_adagrad(initial_accumulator_value, eps), optax.scale_by_learning_rate(learning_rate))


# RMSProp with eps outside the square root (PyTorch's placement): s <- decay s + (1 - decay) g*g,
# d = g / (sqrt(s) + eps) (centered: sqrt(s - mean(g)^2)); with momentum, v <- momentum v + d, step -lr v.
rmsprop = functools.partial(optax.rmsprop, eps_in_sqrt=False)


def adamw(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4):
  """optax.adamw (theta <- theta - lr (m_hat / (sqrt(s_hat) + eps) + weight_decay theta)), decaying weights only."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=regularizers.weight_mask)


def gradient_noise(eta: float, gamma: float, seed: Any = 0) -> optax.GradientTransformation:
  """g <- g + N(0, eta / (1 + t)^gamma) with t the number of earlier steps (optax.add_noise; Neelakantan et al.)."""
  return optax.add_noise(eta, gamma, key=jax.random.fold_in(jax.random.key(seed), 3))


# --- stale gradients ----------------------------------------------------------------------------------------
class DelayState(NamedTuple):
  count: jax.Array  # int32 scalar: updates taken
  buffer: Any  # the last `steps` gradients, a pytree like the params with a leading axis of length `steps`


def delay(steps: int) -> optax.GradientTransformation:
  """Passes on the gradient computed `steps` updates ago (zeros before there was one): asynchronous SGD's stale
  gradients, on one machine."""

  def init_fn(params):
    return DelayState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros((steps, *p.shape), p.dtype), params))

  def update_fn(updates, state, params=None):
    del params  # Unused: the delay depends on the gradients only.
    slot = state.count % steps
    stale = jax.tree.map(lambda b: b[slot], state.buffer)
    buffer = jax.tree.map(lambda b, g: b.at[slot].set(g), state.buffer, updates)
    return stale, DelayState(state.count + 1, buffer)

  return optax.GradientTransformation(init_fn, update_fn)


# --- switching between two optimizers --------------------------------------------------------------------------
class SwitchState(NamedTuple):
  count: jax.Array  # int32 scalar: updates taken
  first: Any
  second: Any


def switch(first: optax.GradientTransformation, second: optax.GradientTransformation,
           step: int) -> optax.GradientTransformation:
  """Updates with `first` for the first `step` updates and with `second` after; each keeps its own state."""

  def init_fn(params):
    return SwitchState(jnp.zeros((), jnp.int32), first.init(params), second.init(params))

  def update_fn(updates, state, params=None):
    def run_first(_):
      u, s = first.update(updates, state.first, params)
      return u, s, state.second

    def run_second(_):
      u, s = second.update(updates, state.second, params)
      return u, state.first, s

    u, s1, s2 = jax.lax.cond(state.count < step, run_first, run_second, None)
    return u, SwitchState(state.count + 1, s1, s2)

  return optax.GradientTransformation(init_fn, update_fn)


# --- composition -------------------------------------------------------------------------------------------
def learning_rate_of(phase_state: Any) -> jax.Array:
  """The base learning rate that an optimizer phase's state holds, found by name (optax.tree_utils): the
  `learning_rate` of its direction (a weight decay stage after it holds the same value under that name)."""
  return optax.tree_utils.tree_get_all_with_path(phase_state, "learning_rate")[0][1]


def _phase(optimizer: dict, regularizer: dict, seed: Any) -> optax.GradientTransformation:
  """One optimizer config's chain: stale gradients, clipping, noise, the direction times lr, weight decay."""
  stages = []
  if optimizer.get("staleness"):
    stages.append(delay(optimizer["staleness"]))
  if optimizer.get("clip_value") is not None:
    stages.append(_inject(optax.clip, max_delta=optimizer["clip_value"]))
  if optimizer.get("clip_norm") is not None:
    stages.append(_inject(optax.clip_by_global_norm, max_norm=optimizer["clip_norm"]))
  if optimizer.get("noise_eta") is not None:
    # The seed is static to inject_hyperparams (only init reads it: the key then lives in the state).
    stages.append(optax.inject_hyperparams(gradient_noise, static_args=("seed",))(
        eta=optimizer["noise_eta"], gamma=optimizer["noise_gamma"], seed=0 if seed is None else seed))
  kwargs = {k: v for k, v in optimizer.items() if k not in PHASE_KEYS}
  stages.append(_inject(get_method(optimizer["_target_"]), learning_rate=optimizer["lr"], **kwargs))
  stages.extend(make(o, optimizer["lr"]) for make, o in regularizers.hooks(regularizer, "gradient_transform"))
  if optimizer.get("then") is None:
    return optax.chain(*stages)
  if optimizer.get("switch_step") is None:
    raise ConfigError("optimizer.switch_step=None is not allowed with optimizer.then: it must be the step (>= 0) "
                      "at which the second optimizer takes over")
  return switch(optax.chain(*stages), _phase(optimizer["then"], regularizer, seed), optimizer["switch_step"])


def scale_leaves(scale: float, mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies the updates of the leaves that `mask` selects by `scale` (the others pass unchanged)."""
  return optax.masked(optax.scale(scale), mask)


def build_optimizer(optimizer: dict, schedule: dict, total_steps: int, regularizer: dict,
                    seed: Any = None, transfer: dict | None = None
                    ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  """Returns (tx, learning_rate_fn): the optax transform and a function of its state giving the current lr.

  Args:
    optimizer: the `optimizer` group as a dict: `_target_` (an optimizer factory), `lr`, the factory's own args,
      and the options every optimizer has (staleness, clip_value, clip_norm, noise_eta, noise_gamma, then,
      switch_step).
    schedule: the `schedule` group as a dict: `_target_` (a function of trainlab.schedules) and its args.
    total_steps: the run's number of optimizer steps, the horizon of decaying schedules.
    regularizer: the selected regularizers ({name: options}); those with a gradient transform join each phase.
    seed: the run's seed, for the gradient noise (may be traced).
    transfer: the leaves loaded from another run and those frozen (trainlab.transfer), with `lr_scale`, the
      factor of the loaded leaves' updates: the chain's updates of loaded, unfrozen leaves are multiplied by it
      (their whole step, decoupled weight decay included), and frozen leaves get optax.set_to_zero through
      optax.multi_transform around everything, so no momentum, weight decay or proximal step moves them and
      the optimizer keeps no state for them.
  """
  direction = _phase(optimizer, regularizer, seed)
  switch_step = optimizer.get("switch_step") if optimizer.get("then") is not None else None

  sched_kwargs = {k: v for k, v in schedule.items() if k != "_target_"}
  sched_kwargs["total_steps"] = total_steps
  schedule_factory = get_method(schedule["_target_"])
  static = values.structural_names(sched_kwargs)
  multiplier = optax.inject_hyperparams(_scale_by(schedule_factory), static_args=static)(**sched_kwargs)

  def learning_rate_fn(opt_state: Any) -> jax.Array:
    """The learning rate that the next update applies: the phase's lr times the schedule at this step."""
    direction_state, multiplier_state = opt_state[0], opt_state[1]
    if switch_step is None:
      base = learning_rate_of(direction_state)
    else:
      base = jnp.where(direction_state.count < switch_step, learning_rate_of(direction_state.first),
                       learning_rate_of(direction_state.second))
    hyperparams = {k: sched_kwargs[k] for k in static} | dict(multiplier_state.hyperparams)
    return base * schedule_factory(**hyperparams)(multiplier_state.count)

  transfer = transfer or {"loaded": (), "frozen": ()}
  loaded = set(transfer["loaded"]) - set(transfer["frozen"])
  stages = [direction, multiplier]
  if loaded:
    stages.append(_inject(scale_leaves, scale=transfer["lr_scale"], mask=leaf_mask(loaded)))
  tx = optax.chain(*stages)
  for wrap, o in regularizers.hooks(regularizer, "wrap_optimizer"):
    tx, learning_rate_fn = wrap(tx, learning_rate_fn, o)
  if transfer["frozen"]:
    frozen = set(transfer["frozen"])
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: leaf_labels(params, lambda path: "frozen" if path in frozen else "train"))
    learning_rate_fn = functools.partial(lambda inner, state: inner(state.inner_states["train"].inner_state),
                                         learning_rate_fn)
  return tx, learning_rate_fn


def leaf_labels(params: Any, label: Callable[[str], Any]) -> Any:
  """A tree like `params` holding label(path) at each leaf, its path written as "Dense_0/kernel"."""
  name = lambda entry: str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))
  return jax.tree_util.tree_map_with_path(lambda path, _: label("/".join(name(k) for k in path)), params)


def leaf_mask(paths: set[str]) -> Callable[[Any], Any]:
  """The optax mask function selecting the leaves at `paths`."""
  return lambda params: leaf_labels(params, lambda path: path in paths)
