"""The close match for a misspelled group, option or key on the command line, where Hydra's own advice
("To append to your config use +key=value") would lead a user to add the misspelling as a new key."""

from __future__ import annotations

import difflib
import pathlib
import re

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf


def close_match(message: str, overrides: list[str], conf_dir: str) -> str | None:
  """One line naming the close match of what Hydra's error `message` could not find, or None when there is none
  (or the error is of another kind): `overrides` are the command's, `conf_dir` the config's directory."""
  option = re.search(r"Could not (?:find|load) '(\w+)/([^']+)'", message)
  if option:
    group, name = option.groups()
    names = sorted(p.stem for p in pathlib.Path(conf_dir, group).glob("*.yaml"))
    found = difflib.get_close_matches(name, names, n=1)
    return f"{group} has no option {name}: did you mean {found[0]}? (options: {', '.join(names)})" \
        if found else None
  key = re.match(r"Could not override '([^']+)'", message)
  if not key:
    return None
  found = _closest_key(key.group(1), _known_config(overrides, conf_dir))
  given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key.group(1)), "...")
  return f"the config has no key {key.group(1)}: did you mean {found}={given}?" if found else None


def _closest_key(key: str, tree: dict) -> str | None:
  """`key` with its first unknown part replaced by the closest name at that level, if one is close."""
  parts, node = key.split("."), tree
  for i, part in enumerate(parts):
    if isinstance(node, dict) and part in node:
      node = node[part]
      continue
    found = difflib.get_close_matches(part, list(node) if isinstance(node, dict) else [], n=1)
    return ".".join([*parts[:i], found[0], *parts[i + 1:]]) if found else None
  return None


def _known_config(overrides: list[str], conf_dir: str) -> dict:
  """The config with the command's single group choices (so `optimizer.x` is looked up in the optimizer it
  names), or the default config if those do not compose either."""
  groups = {p.name for p in pathlib.Path(conf_dir).iterdir() if p.is_dir()}
  choices = [o for o in overrides if o.split("=", 1)[0] in groups and "," not in o]
  GlobalHydra.instance().clear()  # the failed app's
  with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
    for chosen in (choices, []):
      try:
        return OmegaConf.to_container(compose(config_name="train", overrides=chosen))
      except HydraException:
        continue
  return {}
