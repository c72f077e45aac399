"""Each optimizer against a plain NumPy implementation of the catalogue's formula, step by step.

The transform is built exactly as the training program builds it: every float enters as a traced value (the
state is initialized from a transform built from the values; updates run through one built from the structure
alone, whose floats are 0), so a float that leaked into the program as a constant would fail these tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainlab import optim, train
from trainlab.values import merge as merge_values, split as split_values
from trainlab.fast import compilation

STEPS = 6
TOTAL = 10
C = {"Dense_0": {"kernel": np.array([[1.0, 2.0], [0.5, 3.0], [4.0, 0.2]]), "bias": np.array([1.5, 0.7])}}
D = {"Dense_0": {"kernel": np.array([[0.3, -1.0], [2.0, 0.1], [-0.5, 0.4]]), "bias": np.array([-0.2, 0.9])}}
THETA0 = {"Dense_0": {"kernel": np.array([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]]), "bias": np.array([0.4, -0.2])}}


def grad(theta):
  """The gradient of sum(c theta^2 / 2 - d theta): differs per coordinate and changes as theta moves."""
  return jax.tree.map(lambda t, c, d: c * t - d, theta, C, D)


def run(optimizer: dict, schedule: dict | None = None, regularizer: dict | None = None, steps: int = STEPS,
        theta0=THETA0, grad_fn=grad):
  """Parameters after each of `steps` updates, and the learning rate each update used."""
  schedule = schedule or {"_target_": "trainlab.schedules.constant", "warmup_steps": 0}
  structure, values = split_values({"optimizer": optimizer, "schedule": schedule,
                                          "regularizer": regularizer or {}})
  values = jax.tree.map(np.float32, values)

  @jax.jit
  def go(values):
    merged = {g: merge_values(structure[g], values[g]) for g in structure}
    init_tx, _ = optim.build_optimizer(merged["optimizer"], merged["schedule"], TOTAL, merged["regularizer"])
    tx, lr_fn = optim.build_optimizer(structure["optimizer"], structure["schedule"], TOTAL,
                                      structure["regularizer"])
    params = jax.tree.map(jnp.float32, theta0)
    state = init_tx.init(params)
    trajectory, lrs = [], []
    for _ in range(steps):
      lrs.append(lr_fn(state))
      updates, state = tx.update(grad_fn(params), state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append(params)
    return trajectory, lrs

  return jax.device_get(go(values))


def base(target: str, lr: float, **kwargs) -> dict:
  return {"_target_": target, "lr": lr, "staleness": 0, "clip_value": None, "clip_norm": None, "noise_eta": None,
          "noise_gamma": 0.55, "then": None, "switch_step": None, **kwargs}


# --- NumPy references: each is (init(theta) -> state, step(theta, g, state, lr) -> (theta, state)) ------------
def ref_sgd():
  return lambda th: None, lambda th, g, s, lr: (th - lr * g, s)


def ref_momentum(alpha, nesterov=False):
  def step(th, g, v, lr):
    v = alpha * v + g  # the code's form: the current lr scales the whole velocity
    return th - lr * ((g + alpha * v) if nesterov else v), v
  return np.zeros_like, step


def ref_adagrad(s0, delta):
  def step(th, g, s, lr):
    s = s + g * g
    return th - lr * g / (np.sqrt(s) + delta), s
  return lambda th: np.full_like(th, s0), step


def ref_rmsprop(rho, delta, momentum=None, centered=False):
  def step(th, g, state, lr):
    s, mg, v = state
    s = rho * s + (1 - rho) * g * g
    mg = rho * mg + (1 - rho) * g
    d = g / (np.sqrt(s - mg * mg if centered else s) + delta)
    if momentum is None:
      return th - lr * d, (s, mg, v)
    v = momentum * v + d
    return th - lr * v, (s, mg, v)
  return lambda th: (np.zeros_like(th), np.zeros_like(th), np.zeros_like(th)), step


def ref_adam(b1, b2, delta, decay=0.0):
  def step(th, g, state, lr, is_weight=True):
    m, s, t = state
    t += 1
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * g * g
    m_hat, s_hat = m / (1 - b1 ** t), s / (1 - b2 ** t)
    return th - lr * (m_hat / (np.sqrt(s_hat) + delta) + (decay * th if is_weight else 0.0)), (m, s, t)
  return lambda th: (np.zeros_like(th), np.zeros_like(th), 0), step


def reference(ref, lrs, *, steps=STEPS, clip_value=None, clip_norm=None, decay=0.0, adamw=None):
  """Runs a reference on every leaf in float64; clipping and decoupled decay as the catalogue states."""
  init, step = ref
  theta = jax.tree.map(np.float64, THETA0)
  states = jax.tree.map(init, theta)
  out = []
  for k in range(steps):
    g = grad(theta)
    if clip_value is not None:
      g = jax.tree.map(lambda x: np.clip(x, -clip_value, clip_value), g)
    if clip_norm is not None:
      norm = np.sqrt(sum(np.sum(x * x) for x in jax.tree.leaves(g)))
      g = jax.tree.map(lambda x: x * min(1.0, clip_norm / norm), g)
    new = {}
    for layer in theta:
      new[layer] = {}
      for name in theta[layer]:
        th, s = theta[layer][name], states[layer][name]
        if adamw is not None:
          th2, s = step(th, g[layer][name], s, lrs[k], is_weight=name == "kernel")
        else:
          th2, s = step(th, g[layer][name], s, lrs[k])
        if name == "kernel":
          th2 = th2 - lrs[k] * decay * th
        new[layer][name], states[layer][name] = th2, s
    theta = new
    out.append(theta)
  return out


def linear_warmup_multiplier(k, warmup=2, tau=3, end=0.1):
  """The catalogue's linear schedule behind a linear warmup from 0, written out."""
  if k < warmup:
    return k / warmup
  k -= warmup
  return (1 - k / tau) + (k / tau) * end if k <= tau else end


SCHEDULES = {
    "constant": (None, lambda k: 1.0),
    "linear_warmup": ({"_target_": "trainlab.schedules.linear", "end_factor": 0.1, "decay_steps": 3,
                       "warmup_steps": 2}, linear_warmup_multiplier),
}

CASES = {
    "sgd": (base("optax.sgd", 0.1, momentum=None, nesterov=False), ref_sgd, {}),
    "momentum": (base("optax.sgd", 0.1, momentum=0.9, nesterov=False), lambda: ref_momentum(0.9), {}),
    "nesterov": (base("optax.sgd", 0.1, momentum=0.9, nesterov=True), lambda: ref_momentum(0.9, True), {}),
    "adagrad": (base("trainlab.optim.adagrad", 0.1, initial_accumulator_value=0.0, eps=1e-7),
                lambda: ref_adagrad(0.0, 1e-7), {}),
    "adagrad_s0": (base("trainlab.optim.adagrad", 0.1, initial_accumulator_value=0.1, eps=1e-7),
                   lambda: ref_adagrad(0.1, 1e-7), {}),
    "rmsprop": (base("trainlab.optim.rmsprop", 0.01, decay=0.9, eps=1e-8, momentum=None, centered=False,
                     nesterov=False), lambda: ref_rmsprop(0.9, 1e-8), {}),
    "rmsprop_momentum": (base("trainlab.optim.rmsprop", 0.01, decay=0.9, eps=1e-8, momentum=0.9, centered=False,
                              nesterov=False), lambda: ref_rmsprop(0.9, 1e-8, momentum=0.9), {}),
    "rmsprop_centered": (base("trainlab.optim.rmsprop", 0.01, decay=0.9, eps=1e-8, momentum=None, centered=True,
                              nesterov=False), lambda: ref_rmsprop(0.9, 1e-8, centered=True), {}),
    "adam": (base("optax.adam", 0.05, b1=0.9, b2=0.999, eps=1e-8), lambda: ref_adam(0.9, 0.999, 1e-8), {}),
    "adamw": (base("trainlab.optim.adamw", 0.05, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1),
              lambda: ref_adam(0.9, 0.999, 1e-8, decay=0.1), {"adamw": True}),
}


def check(trajectory, expected):
  for got, want in zip(trajectory, expected):
    for layer in want:
      for name in want[layer]:
        np.testing.assert_allclose(got[layer][name], want[layer][name], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("clip", [None, "value", "norm"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizer_matches_formula(name, schedule, clip):
  optimizer, ref, extra = CASES[name]
  clip_kwargs = {"value": {"clip_value": 0.5}, "norm": {"clip_norm": 1.0}}.get(clip, {})
  sched_cfg, multiplier = SCHEDULES[schedule]
  trajectory, lrs = run({**optimizer, **clip_kwargs}, sched_cfg)
  want_lrs = [optimizer["lr"] * multiplier(k) for k in range(STEPS)]
  np.testing.assert_allclose(lrs, want_lrs, rtol=1e-6, atol=1e-9)
  check(trajectory, reference(ref(), want_lrs, **clip_kwargs, **extra))


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_decoupled_weight_decay_on_weights_only(name):
  optimizer, ref, _ = CASES[name]
  trajectory, lrs = run(optimizer, regularizer={"weight_decay": {"weight": 0.3}})
  check(trajectory, reference(ref(), [optimizer["lr"]] * STEPS, decay=0.3))


def test_switch_to_second_optimizer_at_step():
  then = base("optax.sgd", 0.2, momentum=None, nesterov=False)
  first = {**CASES["adam"][0], "then": then, "switch_step": 3}
  trajectory, lrs = run(first, steps=STEPS)
  np.testing.assert_allclose(lrs, [0.05] * 3 + [0.2] * 3, rtol=1e-6)
  adam_part = reference(ref_adam(0.9, 0.999, 1e-8), [0.05] * 3, steps=3)
  check(trajectory[:3], adam_part)
  theta = adam_part[-1]
  for k in range(3, STEPS):
    theta = jax.tree.map(lambda t, g: t - 0.2 * g, theta, grad(theta))
    check([trajectory[k]], [theta])


def test_gradient_noise_has_annealed_variance():
  """With a zero gradient and SGD at lr 1, each step moves theta by -noise: Var = eta / (1 + t)^gamma, t the
  number of earlier steps."""
  eta, gamma, steps, n = 0.3, 0.55, 5, 20000
  theta0 = {"w": np.zeros(n)}
  optimizer = base("optax.sgd", 1.0, momentum=None, nesterov=False, noise_eta=eta, noise_gamma=gamma)
  trajectory, _ = run(optimizer, theta0=theta0, grad_fn=lambda th: jax.tree.map(jnp.zeros_like, th), steps=steps)
  previous = np.zeros(n)
  for t, params in enumerate(trajectory):
    step = params["w"] - previous
    previous = params["w"]
    want = eta / (1 + t) ** gamma
    # The sample variance of n normals has relative std sqrt(2/n) = 1%; 5 sigma.
    assert abs(step.var() / want - 1) < 5 * np.sqrt(2 / n), (t, step.var(), want)
    assert abs(step.mean()) < 5 * np.sqrt(want / n)


def test_clip_value_and_norm_known_numbers():
  """One SGD step at lr 1 from theta where the gradient is known: the clipped gradient is the step."""
  theta0 = {"w": np.array([3.0, -4.0, 0.5])}
  g = lambda th: {"w": jnp.array([3.0, -4.0, 0.5], jnp.float32)}
  sgd = base("optax.sgd", 1.0, momentum=None, nesterov=False)
  by_value, _ = run({**sgd, "clip_value": 1.0}, theta0=theta0, grad_fn=g, steps=1)
  np.testing.assert_allclose(theta0["w"] - by_value[0]["w"], [1.0, -1.0, 0.5], rtol=1e-6)
  by_norm, _ = run({**sgd, "clip_norm": 1.0}, theta0=theta0, grad_fn=g, steps=1)
  np.testing.assert_allclose(theta0["w"] - by_norm[0]["w"], np.array([3.0, -4.0, 0.5]) / np.sqrt(25.25), rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=momentum", "optimizer.momentum=1.0"], r"^optimizer\.momentum=1\.0 is not allowed: it must be in \[0, 1\)$"),
    (["optimizer=nesterov", "optimizer.momentum=-0.5"], r"^optimizer\.momentum=-0\.5 is not allowed"),
    (["optimizer=rmsprop", "optimizer.momentum=1.5"], r"^optimizer\.momentum=1\.5 is not allowed"),
    (["optimizer=rmsprop", "optimizer.decay=1.0"], r"^optimizer\.decay=1\.0 is not allowed"),
    (["optimizer.clip_value=-1"], r"^optimizer\.clip_value=-1\.0 is not allowed: it must be > 0$"),
    (["optimizer.clip_norm=0"], r"^optimizer\.clip_norm=0\.0 is not allowed: it must be > 0$"),
    (["optimizer.noise_eta=-0.1"], r"^optimizer\.noise_eta=-0\.1 is not allowed: it must be >= 0$"),
    (["optimizer=adam_then_sgd", "optimizer.then.lr=0"], r"^optimizer\.then\.lr=0\.0 is not allowed"),
    (["schedule=step", "schedule.step_size=0"], r"^schedule\.step_size=0 is not allowed"),
    (["schedule=cosine", "schedule.end_factor=2"], r"^schedule\.end_factor=2\.0 is not allowed"),
    (["regularizer=[dropout]", "regularizer.dropout.rate=1"], r"^regularizer\.dropout\.rate=1\.0 is not allowed"),
    (["regularizer=[label_smoothing]", "regularizer.label_smoothing.eps=1"], r"label_smoothing\.eps=1\.0 is not"),
    (["regularizer=[max_norm]", "regularizer.max_norm.r=0"], r"^regularizer\.max_norm\.r=0\.0 is not allowed"),
    (["regularizer=[early_stopping]", "regularizer.early_stopping.metric=f1"], r"metric=f1 is not allowed"),
    (["init=sparse", "init.k=0"], r"^init\.k=0 is not allowed: it must be >= 1$"),
    (["init=orthogonal", "init.gain=-1"], r"^init\.gain=-1\.0 is not allowed"),
    (["init.output_bias=uniform"], r"^init\.output_bias=uniform is not allowed: it must be one of marginal$"),
    (["model.activation=swish"], r"^model\.activation=swish is not allowed"),
    (["model.norm=group"], r"^model\.norm=group is not allowed: it must be one of none, batch, layer$"),
    (["model.batch_momentum=1.0"], r"^model\.batch_momentum=1\.0 is not allowed"),
])
def test_bad_values_get_one_line_naming_the_key(overrides, message):
  from conftest import compose_config
  from trainlab import config

  from omegaconf import open_dict

  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  with pytest.raises(config.ConfigError, match=message):
    config.check_ranges(cfg)


def test_switch_needs_a_step():
  from trainlab import config

  then = base("optax.sgd", 0.2, momentum=None, nesterov=False)
  with pytest.raises(config.ConfigError, match="optimizer.switch_step"):
    run({**CASES["adam"][0], "then": then})


def test_every_new_float_is_a_traced_value(tmp_path, write_npz):
  """Changing every float of the catalogue's options reuses the compiled program, and changes the result."""
  from conftest import train_in_process

  structure = ["data=npz", f"data.path={write_npz()}", "batch_size=20", "model.widths=[8]", "steps=6",
               "eval_every=3", "optimizer=rmsprop", "optimizer.momentum=0.5", "optimizer.clip_value=1.0",
               "optimizer.clip_norm=1.0", "optimizer.noise_eta=0.01", "schedule=exponential", "init=orthogonal",
               "model.activation=rrelu", "model.norm=batch",
               "regularizer=[l1,weight_decay,max_norm,label_smoothing,confidence_penalty,augment]"]
  first = train_in_process(structure, tmp_path / "a")
  compiled = compilation.count()
  changed = ["optimizer.momentum=0.8", "optimizer.clip_value=0.5", "optimizer.clip_norm=2.0", "optimizer.eps=1e-6",
             "optimizer.noise_eta=0.3", "optimizer.noise_gamma=0.3", "optimizer.decay=0.8",
             "schedule.decay_rate=0.5", "init.gain=0.5", "init.bias=0.1", "model.rrelu_lower=0.2",
             "model.rrelu_upper=0.4", "model.batch_momentum=0.5", "regularizer.l1.weight=0.01",
             "regularizer.weight_decay.weight=0.01", "regularizer.max_norm.r=1.0",
             "regularizer.label_smoothing.eps=0.3", "regularizer.confidence_penalty.beta=0.5",
             "regularizer.augment.noise=0.5"]
  second = train_in_process(structure + changed, tmp_path / "b")
  assert compilation.count() == compiled
  assert first["test/loss"] != second["test/loss"]


def test_stale_gradients_are_the_ones_from_k_steps_ago():
  optimizer = {**CASES["momentum"][0], "staleness": 2}
  trajectory, _ = run(optimizer)
  history = [jax.tree.map(np.float64, THETA0)]
  v = jax.tree.map(np.zeros_like, history[0])
  for k in range(STEPS):
    g = grad(history[k - 2]) if k >= 2 else jax.tree.map(np.zeros_like, history[0])
    v = jax.tree.map(lambda v, g: 0.9 * v + g, v, g)
    history.append(jax.tree.map(lambda t, v: t - 0.1 * v, history[-1], v))
  check(trajectory, history[1:])
