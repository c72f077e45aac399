"""Seeing inside training: per-layer statistics on a fixed probe batch, histograms, and curvature.

Everything here runs between compiled chunks, never inside the per-step loop: `build` returns jitted
functions of the train state, and `Monitor` calls them at the chunk boundaries that pass a multiple of their
interval. Metric names are `split/layer/quantity`, so TensorBoard groups them by split and layer:

- `diag/<layer>/act_mean`, `act_std`: mean and standard deviation of the layer's output over the probe batch
  (for a Dense layer that is the pre-activation z = xW + b);
- `diag/<layer>/unit_std`: the standard deviation of the layer's output across its units, for each probe
  example, averaged over the examples: 0 when every unit computes the same function (a constant init keeps it
  0: the units get equal gradients and never become different);
- `diag/<layer>/dead_fraction` (ReLU-like activations): the fraction of the layer's units whose output is
  <= 0 on every probe example, so that the activation after it never fires;
- `diag/<layer>/saturated_fraction` (sigmoid, tanh): the fraction of outputs whose activation lies within 1%
  of a bound (sigmoid(z) <= 0.01 or >= 0.99; |tanh(z)| >= 0.99);
- `diag/<layer>/grad_norm`, `param_norm`: ‖∂L/∂θ_layer‖ of the mean probe loss, and ‖θ_layer‖;
- `diag/<layer>/zero_fraction`: the fraction of the layer's weights (its kernel) that are exactly 0;
- `diag/<layer>/update_ratio`: ‖Δθ_layer‖ / ‖θ_layer‖, where Δθ is the update the optimizer would make
  from the probe gradient in its current state (the state is not changed);
- `step0/<layer>/act_var` and `step0/<layer>/grad_var`, at step 0 only: the variance of the layer's output
  (forward) and of the per-example loss gradient with respect to that output, ∂ℓᵢ/∂zᵢ (backward), over probe
  examples and units: Glorot and Bengio's argument is that both should stay the same from layer to layer. They
  go to metrics.jsonl only, for the report's init_layers.png: in TensorBoard one point per run reads as broken;
- `hist/<layer>/<param>` and `hist_grad/<layer>/<param>`: histograms of weights and probe gradients, also at
  the run's last step, so that the Distributions tab shows the whole run;
- `curvature/top_eigenvalue`: the largest-magnitude eigenvalue of the Hessian of the mean probe loss, by the
  power method on Hessian-vector products (`jax.jvp` of `jax.grad`).

A *layer* is any flax module that owns parameters directly (Dense, Conv, a norm layer, ...), named by its
path in the params tree (`Dense_0`, `Block_1/Conv_0`); outputs are intercepted with
`flax.linen.intercept_methods`, so any linen model gets diagnostics without changes. Statistics of the
output layer's logits (dead, saturated) are skipped; layers called more than once per forward pass (the
cell of a recurrent net) are pooled for the forward statistics and have no backward variance. Layers inside a
lifted transform (the cell of a recurrent layer, which `nn.scan` runs) get their norms only: their outputs
exist only inside the scan; the recurrent layer's input projection, outside it, gets the full statistics.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax.core import tracers as flax_tracers
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from trainlab import losses
from trainlab import fast

log = logging.getLogger(__name__)

RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "silu")
SATURATION = {  # activation: (function, is this value saturated?)
    "sigmoid": (jax.nn.sigmoid, lambda a: (a <= 0.01) | (a >= 0.99)),
    "tanh": (jnp.tanh, lambda a: jnp.abs(a) >= 0.99),
}


def layer_paths(params: Any) -> list[tuple[str, ...]]:
  """Paths of the modules that own parameters directly (the dicts in `params` that hold arrays)."""
  paths = []

  def walk(tree, path):
    if any(not isinstance(v, dict) for v in tree.values()):
      paths.append(path)
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, (*path, k))

  walk(dict(params), ())
  return paths


def layer_name(path: tuple[str, ...]) -> str:
  return "/".join(path) if path else "model"


def _subtree(tree: Any, path: tuple[str, ...]) -> dict:
  for k in path:
    tree = tree[k]
  return {k: v for k, v in tree.items() if not isinstance(v, dict)}  # the layer's own arrays, not children'


# The statistics below are written with the fewest primitives: the probe runs once per structure in a fresh
# process, and its tracing, which costs per primitive, is most of what diagnostics add to a run
# (optax.global_norm and jnp.var take 3-5x more primitives for the same numbers).
def _norm(tree: Any) -> jax.Array:
  """‖tree‖, the 2-norm of all its leaves together."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def _mean_var(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  mean = jnp.mean(x)
  return mean, jnp.mean(jnp.square(x - mean))


def _mean_var_rows(x: jax.Array) -> jax.Array:
  """The variance of each row of x (across a layer's units, for each example)."""
  return jnp.mean(jnp.square(x - jnp.mean(x, axis=-1, keepdims=True)), axis=-1)


def forward_with_taps(apply_fn: Callable, params: Any, x: jax.Array, layers: list[tuple[str, ...]],
                      perturbations: dict[str, jax.Array], order: list[str] | None = None):
  """Runs apply_fn(params, x) while recording each layer's output and adding `perturbations[layer]` to it.

  Returns (model output, {layer name: [outputs, one per call]}); appends the layer names to `order` in the
  order of their first call (a pytree's dict keys come back sorted from jax transformations; this list is
  filled at trace time). A zero perturbation does not change the output, but the gradient with respect to
  it is the gradient with respect to the layer's output.
  """
  wanted = set(layers)
  taps: dict[str, list] = {}
  outer = flax_tracers.current_trace()

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    if context.method_name != "__call__" or path not in wanted or not isinstance(out, jax.Array):
      return out
    if context.module.scope.trace_level != outer:
      return out  # inside a lifted transform (the cell that nn.scan runs): its outputs cannot leave it
    name = layer_name(path)
    if name in perturbations:
      out = out + perturbations[name]
    taps.setdefault(name, []).append(out)
    if order is not None and name not in order:
      order.append(name)
    return out

  with nn.intercept_methods(interceptor):
    output = apply_fn(params, x)
  return output, taps


def layer_statistics(apply_fn: Callable, params: Any, x: jax.Array, y: jax.Array, *, activation: str | None,
                     loss: Callable = losses.cross_entropy) -> tuple[dict[str, dict[str, jax.Array]], Any]:
  """Per-layer statistics of one forward and backward pass on (x, y); traceable.

  Args:
    apply_fn: (params, x) -> logits, deterministic (no dropout).
    params: the model's parameters.
    x, y: the probe batch.
    activation: the model's hidden activation, which decides between dead and saturated fractions (None:
      neither).
    loss: the task's per-example loss (cross-entropy, or squared error for regression).

  Returns:
    ({layer name: {quantity: scalar}}, gradient of the mean loss with respect to params).
  """
  layers = layer_paths(params)
  batch = x.shape[0]
  # Which layers are called once, and with what output shape: only those get a perturbation (backward).
  order: list[str] = []
  _, shapes = jax.eval_shape(lambda p: forward_with_taps(apply_fn, p, x, layers, {}, order), params)
  once = {name: outs[0] for name, outs in shapes.items() if len(outs) == 1}
  perturbations = {name: jnp.zeros(s.shape, s.dtype) for name, s in once.items()}

  def summed_loss(params, perturbations):
    logits, taps = forward_with_taps(apply_fn, params, x, layers, perturbations)
    return loss(logits, y).sum(), (logits, taps)

  (_, (logits, taps)), (param_grads, output_grads) = jax.value_and_grad(
      summed_loss, argnums=(0, 1), has_aux=True)(params, perturbations)
  # The per-example gradients ∂ℓᵢ/∂zᵢ (backward variance) come from the summed loss; the training gradient
  # is that of the mean.
  param_grads = jax.tree.map(lambda g: g / batch, param_grads)

  stats = {}
  # Forward order (the order of the calls), which the params tree loses once jax has rebuilt its dicts.
  by_name = {layer_name(path): path for path in layers}
  for name in [*order, *(n for n in by_name if n not in order)]:
    path = by_name[name]
    own = _subtree(params, path)
    layer = {"param_norm": _norm(own), "grad_norm": _norm(_subtree(param_grads, path))}
    if "kernel" in own:  # sparsity: init=sparse, L1, proximal L1
      layer["zero_fraction"] = jnp.mean(own["kernel"] == 0)
    if name in taps:
      out = jnp.concatenate([o.reshape(-1, o.shape[-1]) for o in taps[name]])  # (examples x positions, units)
      layer["act_mean"], layer["act_var"] = _mean_var(out)
      layer["act_std"] = jnp.sqrt(layer["act_var"])
      # 0 exactly when every unit computes the same function: the symmetry a constant init never breaks
      layer["unit_std"] = jnp.mean(jnp.sqrt(_mean_var_rows(out)))
      hidden = not any(o is logits for o in taps[name])
      if hidden and activation in RELU_LIKE:
        layer["dead_fraction"] = jnp.all(out <= 0, axis=0).mean()
      if hidden and activation in SATURATION:
        fn, saturated = SATURATION[activation]
        layer["saturated_fraction"] = saturated(fn(out)).mean()
      if name in output_grads:
        layer["grad_var"] = _mean_var(output_grads[name])[1]
    stats[name] = layer
  return stats, param_grads


def top_hessian_eigenvalue(loss_fn: Callable, params: Any, key: jax.Array, iters: int) -> jax.Array:
  """The largest-magnitude eigenvalue of the Hessian of loss_fn at params, by the power method.

  v ← Hv/‖Hv‖ from a random unit v, with Hv = jvp(grad(loss_fn), (θ,), (v,)); returns the Rayleigh quotient
  vᵀHv of the last iterate (2 gradient evaluations per iteration, no Hessian is formed).
  """
  flat, unravel = ravel_pytree(params)
  grad_flat = lambda theta: ravel_pytree(jax.grad(loss_fn)(unravel(theta)))[0]
  hvp = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]
  v = jax.random.normal(key, flat.shape, flat.dtype)
  v = v / jnp.linalg.norm(v)

  def body(_, v):
    w = hvp(v)
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

  v = jax.lax.fori_loop(0, iters, body, v)
  return jnp.vdot(v, hvp(v))


class Diagnostics(NamedTuple):
  probe: Callable  # (state, x, y) -> ({layer: {quantity: float}} in forward order, grads on the device)
  curvature: Callable  # (state, x, y) -> top eigenvalue; hessian_iters is static (argnum 3)


def build(apply: Callable, tx: optax.GradientTransformation, activation: str | None,
          loss: Callable = losses.cross_entropy, store_key: str | None = None) -> Diagnostics:
  """The jitted diagnostics of a program, given its `apply(state, params, x, train=False)`, optimizer and
  per-example loss; `store_key`: the program's key in the program store (trainlab.fast) (None: traced in every process)."""

  def forward(state):
    return lambda params, x: apply(state, params, x, train=False)[0]

  names: list[tuple[str, str]] = []  # (layer, quantity) of each probe value, in forward order; set at trace time

  def probe(state, x, y):
    stats, grads = layer_statistics(forward(state), state.params, x, y, activation=activation, loss=loss)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    for path in layer_paths(state.params):
      layer = stats[layer_name(path)]
      layer["update_ratio"] = _norm(_subtree(updates, path)) / jnp.maximum(layer["param_norm"], 1e-30)
    names[:] = [(name, q) for name, layer in stats.items() for q in layer]
    # One array of all the scalars: one transfer to the host instead of one per scalar, and the forward order
    # kept (jit hands dicts back with sorted keys: Dense_10 < Dense_2).
    return jnp.stack([stats[name][q] for name, q in names]), grads

  def curvature(state, x, y, iters):
    loss_fn = lambda params: loss(forward(state)(params, x), y).mean()
    return top_hessian_eigenvalue(loss_fn, state.params, jax.random.fold_in(state.key, 3), iters)

  jitted_probe = fast.jit(probe, "probe", store_key, run_rarely=True, record=names)

  def host_probe(state, x, y):
    values, grads = jitted_probe(state, x, y)
    stats: dict[str, dict[str, float]] = {}
    for (name, q), v in zip(names, np.asarray(values).tolist()):
      stats.setdefault(name, {})[q] = v
    return stats, grads

  curvature = jax.jit(curvature, static_argnums=3, compiler_options=fast.RUN_RARELY if fast.ENABLED else None)
  return Diagnostics(host_probe, curvature)


def _due(every: int, last: int | None, step: int) -> bool:
  """True at step 0 and at the first boundary at or past each multiple of `every` since `last`."""
  return every > 0 and (last is None or step // every > last // every)


class Monitor:
  """The host side: at chunk boundaries, calls the compiled diagnostics that are due and writes them.

  Args:
    cfg: the `diagnostics` config (every, probe_size, histogram_every, hessian_every, hessian_iters).
    diagnostics: the program's compiled Diagnostics.
    x, y: the training split on the host; its first `probe_size` examples, put on the device once, are the probe
      batch (slicing the device copy instead would compile two programs for it).
    writer: the run's RunWriter.
    resumed_at: the step a resumed run continues from, whose diagnostics the interrupted run has written;
      None for a run from the start.
    final_step: the run's last step, where the histograms are written too.
  """

  def __init__(self, cfg: Any, diagnostics: Diagnostics, x: np.ndarray, y: np.ndarray, writer: Any,
               resumed_at: int | None = None, final_step: int | None = None):
    self.cfg, self.diagnostics, self.writer, self.final_step = cfg, diagnostics, writer, final_step
    self.x, self.y = jax.device_put((x[:cfg.probe_size], y[:cfg.probe_size]))
    # Only last // interval matters, and after any boundary it equals that boundary's: a resumed run's
    # schedule goes on exactly as it would have uninterrupted.
    self.last = dict.fromkeys(("every", "histogram_every", "hessian_every"), resumed_at)
    self.seconds = 0.0  # host time spent here, compilation included

  def is_due(self, step: int) -> bool:
    """Whether any diagnostic is due at `step` (so a caller can skip producing the state when none is)."""
    return any(self._due(step).values())

  def _due(self, step: int) -> dict[str, bool]:
    due = {k: _due(self.cfg[k], last, step) for k, last in self.last.items()}
    due["histogram_every"] |= self.cfg.histogram_every > 0 and step == self.final_step
    return due

  def __call__(self, step: int, state: Any) -> None:
    due = self._due(step)
    if not any(due.values()):
      return
    tick = time.perf_counter()
    if due["every"] or due["histogram_every"]:
      stats, grads = self.diagnostics.probe(state, self.x, self.y)
      if due["every"]:
        self.writer.write(step, {f"diag/{layer}/{q}": v for layer, d in stats.items() for q, v in d.items()
                                 if q not in ("act_var", "grad_var")})
      if step == 0:
        self.writer.write_jsonl(step, {f"step0/{layer}/{q}": d[q] for layer, d in stats.items()
                                       for q in ("act_var", "grad_var") if q in d})
      if due["histogram_every"]:
        self._histograms(step, state.params, grads)
    if due["hessian_every"]:
      eigenvalue = self.diagnostics.curvature(state, self.x, self.y, self.cfg.hessian_iters)
      self.writer.write(step, {"curvature/top_eigenvalue": float(eigenvalue)})
    for k, is_due in due.items():
      if is_due:
        self.last[k] = step
    self.seconds += time.perf_counter() - tick

  def _histograms(self, step: int, params: Any, grads: Any) -> None:
    params, grads = jax.device_get((params, grads))
    for path in layer_paths(params):
      layer = layer_name(path)
      for name, values in _subtree(params, path).items():
        self.writer.histogram(step, f"hist/{layer}/{name}", np.asarray(values))
        self.writer.histogram(step, f"hist_grad/{layer}/{name}", np.asarray(_subtree(grads, path)[name]))
