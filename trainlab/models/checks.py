"""The start-of-run checks that the model fits its data and init, in one line each. They read the models from
the package's exports and the data options from the `layout` each loader declares: no list to keep here."""

from __future__ import annotations

import inspect

from hydra.utils import get_class

from trainlab import data
from trainlab.config import ConfigError
from trainlab.models.feedforward import Model

LAYOUT_WORDS = {"vector": "unordered vectors", "sequence": "sequences", "image": "images",  # keys: data.LAYOUTS
                "noise": "draws of gradient noise"}  # data=analytic, read by the analytic problems only


def model_classes() -> list[type[Model]]:
  """The exported models, in the order of trainlab.models.__all__, which is the order errors suggest them in."""
  from trainlab import models  # read at call time: the package imports this module

  exported = (getattr(models, name) for name in models.__all__)
  return [c for c in exported if inspect.isclass(c) and issubclass(c, Model)]


def data_options(layout: str) -> list[str]:
  """The data options whose examples have `layout`; a loader declaring None (npz) gives any of data.LAYOUTS, by
  its config."""
  loaders = (getattr(data, name) for name in data.__all__)
  either = (layout, None) if layout in data.LAYOUTS else (layout,)
  return [f.__name__ for f in loaders if inspect.isfunction(f) and getattr(f, "layout", "") in either]


def _option(model_target: str) -> str:
  """The `model=` option of a target: the class's declared option, or its name for a user's own module."""
  return getattr(get_class(model_target), "option", model_target.rsplit(".", 1)[-1])


def check_input(model_target: str, data_target: str, layout: str, example_shape: tuple[int, ...]) -> None:
  """Raises ConfigError when the model cannot read the data's layout (a user's model without `inputs` can)."""
  accepted = getattr(get_class(model_target), "inputs", None)
  if accepted is None or layout in accepted:
    return
  model, name = _option(model_target), data_target.rsplit(".", 1)[-1]
  takes = "; ".join(f"{LAYOUT_WORDS[a]} (data={', '.join(data_options(a))})" for a in accepted)
  readers = " or ".join(c.option for c in model_classes() if layout in c.inputs)
  raise ConfigError(f"model={model} cannot take data={name}, whose examples are {LAYOUT_WORDS[layout]} of shape "
                    f"{tuple(example_shape)}: {model} takes {takes}; for {LAYOUT_WORDS[layout]} use model={readers}")


def check_init(model_target: str, recurrent: str) -> None:
  """Raises ConfigError when init.recurrent asks for recurrent kernels that the model does not have."""
  if recurrent != "same" and not hasattr(get_class(model_target), "recurrent_init"):
    *others, last = [c.option for c in model_classes() if hasattr(c, "recurrent_init")]
    raise ConfigError(f"init.recurrent={recurrent} is not allowed with model={_option(model_target)}: only "
                      f"{', '.join(others)} and {last} have recurrent kernels (init.recurrent=same for the others)")
