"""FitNets' hints (Romero et al. 2015): a layer of the student (the guided layer) learns to predict, through a
learned regressor, the output of a layer of a trained teacher (the hint layer).

Layers are named by their module path (`Dense_1`, `Activation_0`, `Block_1/Conv_0`); a layer's output is what
its module returns, captured with flax's `capture_intermediates`. The regressor is a dense layer for vectors, and
for images a convolution whose kernel maps the guided layer's height and width onto the hint's (a valid
convolution of size guided - hint + 1, as in the paper). It lives in the student's params under REGRESSOR, so the
optimizer trains it with the layers it guides; the model ignores it.

The hint stage itself (which layers train, its place in a run) is trainlab.stages'; the loss is `hint_loss`,
used by trainlab.train's loss_fn when the program's structure has a `hint`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab.config import ConfigError

REGRESSOR = "hint_regressor"  # the regressor's entry in the student's params


def at(path: str):
  """A `capture_intermediates` filter: the output of the module at `path`."""
  return lambda module, method: method == "__call__" and "/".join(module.path) == path


def captured(intermediates: dict, path: str) -> jax.Array:
  """The output `capture_intermediates` kept of the module at `path`."""
  node = intermediates
  for part in path.split("/"):
    node = node[part]
  return node["__call__"][0]


def layer_output(model: nn.Module, variables: dict, x: jax.Array, path: str) -> jax.Array:
  """The output of the module at `path` of a model in evaluation mode (the teacher's hint)."""
  _, found = model.apply(variables, x, train=False, capture_intermediates=at(path), mutable=["intermediates"])
  return captured(found["intermediates"], path)


def model_params(params: dict) -> dict:
  """The model's own params: the student's without the regressor."""
  return {k: v for k, v in params.items() if k != REGRESSOR} if REGRESSOR in params else params


class Regressor(nn.Module):
  """Maps the guided layer's output onto the hint's shape: dense for (batch, features), a valid convolution for
  (batch, height, width, channels)."""

  hint_shape: Sequence[int]  # one example's hint
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, guided: jax.Array) -> jax.Array:
    if guided.ndim == 2:
      return nn.Dense(self.hint_shape[-1], kernel_init=self.kernel_init)(guided)
    window = tuple(g - h + 1 for g, h in zip(guided.shape[1:-1], self.hint_shape[:-1]))
    return nn.Conv(self.hint_shape[-1], window, padding="VALID", kernel_init=self.kernel_init)(guided)


def hint_loss(hint: jax.Array, predicted: jax.Array) -> jax.Array:
  """1/2 ||u_h(x) - r(v_g(x))||^2 per example (the paper's L_HT), averaged over the batch."""
  return 0.5 * jnp.mean(jnp.sum(jnp.square(hint - predicted).reshape(hint.shape[0], -1), axis=-1))


def shapes(student: nn.Module, teacher: nn.Module, teacher_variables: dict, input_shape: Sequence[int],
           guided_layer: str, hint_layer: str) -> tuple[tuple[int, ...], tuple[int, ...], list[str]]:
  """(guided shape, hint shape, the student's top-level modules in the order they run), one example's shapes.

  Raises:
    ConfigError: a layer path that names no module of its model, or shapes no regressor maps onto each other.
  """
  x = jnp.zeros((1, *input_shape))
  student_variables = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), x, train=False))
  guided, order = _output_shape(student, student_variables, x, guided_layer)
  hint, teacher_order = _output_shape(teacher, teacher_variables, x, hint_layer)
  for key, path, shape, modules, whose in (("guided_layer", guided_layer, guided, order, "student"),
                                           ("hint_layer", hint_layer, hint, teacher_order, "teacher")):
    if shape is None:
      raise ConfigError(f"pretrain.{key}={path} names no module of the {whose}; its modules are {', '.join(modules)}")
  if len(guided) != len(hint) or any(g < h for g, h in zip(guided[:-1], hint[:-1])):
    raise ConfigError(f"pretrain.guided_layer={guided_layer} gives {tuple(guided)} per example and "
                      f"pretrain.hint_layer={hint_layer} {tuple(hint)}: a regressor maps features onto features, or "
                      "a larger image onto a smaller one")
  return guided, hint, order


def _output_shape(model: nn.Module, variables: Any, x: jax.Array, path: str) -> tuple[tuple[int, ...] | None, list]:
  """(one example's shape of the output of the module at `path`, or None where there is none; the model's
  top-level modules in the order they run, noted as it runs: a pytree's dicts come back with their keys sorted)."""
  order = []

  def note(module, method):
    if method == "__call__" and len(module.path) == 1 and module.path[0] not in order:
      order.append(module.path[0])
    return at(path)(module, method)

  found = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=note,
                                               mutable=["intermediates"])[1], variables)
  try:
    return tuple(captured(found["intermediates"], path).shape[1:]), order
  except KeyError:
    return None, order


def layers_after(order: Sequence[str], guided_layer: str) -> list[str]:
  """The student's top-level modules that run after the guided layer's: the hint does not reach them."""
  return list(order[order.index(guided_layer.split("/")[0]) + 1:])
