"""Every option of every config group composes and runs; parametrized over conf/, so a new file is tested. Alias
files compose to exactly their real file, the keys a group shares reach each of its options, and the experiment
presets override groups and keys as the command line would, below the command line itself."""

from __future__ import annotations

import csv

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import CONF, compose_config, run_cli, train_in_process
from trainlab import config, data, train

GROUPS = ("model", "init", "optimizer", "schedule", "regularizer")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = ["steps=6", "eval_every=3", "log_every=3", "batch_size=32"]

# identity stops with a clear error on non-square weights (every MLP has some) unless told how to extend
EXTRA = {("init", "identity"): ["init.non_square=eye"]}
# The image data sets are files a user supplies (or lets trainlab download); tests never download.
NEEDS_FILES = {"mnist", "fashion_mnist", "cifar10"}
# Files that only point at the one real file of the same initializer under another name.
ALIASES = {"init": {"glorot_uniform": "glorot", "xavier": "glorot", "xavier_uniform": "glorot",
                    "xavier_normal": "glorot_normal", "he_normal": "he", "kaiming": "he", "kaiming_normal": "he",
                    "kaiming_uniform": "he_uniform", "lecun_uniform": "lecun"}}
ALIAS_CASES = [(g, alias, base) for g, aliases in ALIASES.items() for alias, base in aliases.items()]
# The keys every option of a group takes, each defined once in the file its options compose.
SHARED = {"init": "init_common.yaml", "optimizer": "optimizer_common.yaml"}


def _select(group: str, option: str) -> str:
  return f"{group}=[{option}]" if group == "regularizer" else f"{group}={option}"


def _job_config(overrides: list[str]) -> DictConfig:
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def test_every_group_has_options():
  for group in GROUPS + ("data", "experiment"):
    assert list((CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_trains(group, option, tmp_path):
  cfg = compose_config([_select(group, option)])
  assert cfg[group] if group != "regularizer" else option in cfg.regularizer
  # Diagnostics (on by default) depend on the model; with every other option they would only add compile time.
  diagnostics = [] if group == "model" else ["diagnostics=off"]
  extra = EXTRA.get((group, option), [])
  if (group, option) == ("regularizer", "distill"):  # it learns from a teacher run: a tiny one of the default MLP
    train_in_process([*TINY, "diagnostics=off"], tmp_path / "teacher")
    extra = [f"regularizer.distill.teacher={tmp_path / 'teacher'}"]
  summary = train_in_process([_select(group, option), *extra, *TINY, *diagnostics], tmp_path / "run")
  assert summary["status"] == "completed"
  assert summary["steps_run"] == 6


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_data_option_composes_and_loads(option, write_npz, tmp_path):
  overrides = [f"data={option}"] + ([f"data.path={write_npz()}"] if option == "npz" else [])
  cfg = compose_config(overrides)
  if "download" in cfg.data:  # the offline message, naming an empty folder, is the behaviour to check
    cfg.data.download = False
    cfg.data.root = str(tmp_path)
  if option in NEEDS_FILES:
    with pytest.raises(data.DataError) as caught:  # unwrapped from Hydra's InstantiationException, as in a run
      train.load_data(cfg.data)
    message = str(caught.value)
    assert message.startswith(f"data set {option}: download=false; put the file(s) ")
    assert message.endswith(f" into {tmp_path / option}/, or set data.root to the folder that holds them")
    return
  dataset = train.load_data(cfg.data)
  assert len(dataset.x_train) == len(dataset.y_train) > 0
  assert dataset.x_val.shape[1:] == dataset.x_test.shape[1:] == dataset.x_train.shape[1:]


def test_alias_files_only_point_at_their_real_file():
  found = {}
  for group in GROUPS:
    for path in sorted((CONF / group).glob("*.yaml")):
      node = OmegaConf.load(path)
      if list(node) == ["defaults"] and len(node.defaults) == 1 and str(node.defaults[0]).endswith("@_here_"):
        found.setdefault(group, {})[path.stem] = str(node.defaults[0]).removesuffix("@_here_")
  assert found == ALIASES


@pytest.mark.parametrize("group,alias,base", ALIAS_CASES, ids=[f"{g}={a}" for g, a, _ in ALIAS_CASES])
def test_alias_composes_to_exactly_its_base(group, alias, base):
  aliased, real = _job_config([f"{group}={alias}"]), _job_config([f"{group}={base}"])
  assert OmegaConf.to_yaml(aliased) == OmegaConf.to_yaml(real)  # every key, `_target_` included, in order
  assert OmegaConf.get_type(aliased[group]) is OmegaConf.get_type(real[group])  # the same schema checks it


@pytest.mark.parametrize("group", SHARED)
def test_shared_keys_reach_every_option(group):
  shared = OmegaConf.load(CONF / SHARED[group])
  for path in sorted((CONF / group).glob("*.yaml")):
    own = OmegaConf.load(path)  # an option may set a shared key itself, or fill it through its defaults list
    own_keys = set(own) | {str(d).split("@")[1] for d in own.get("defaults", []) if "@" in str(d)}
    node = _job_config([f"{group}={path.stem}"])[group]
    reaching = [k for k in shared if k not in own_keys]
    assert reaching and {k: node[k] for k in reaching} == {k: shared[k] for k in reaching}, path.stem


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_within_ranges(name):
  config.check_ranges(_job_config([f"experiment={name}"]))


def test_experiment_overrides_groups_and_keys_below_the_command_line():
  cfg = compose_config(["experiment=sgd_vs_momentum"])
  assert (cfg.optimizer._target_, cfg.optimizer.momentum, cfg.diagnostics.every) == ("optax.sgd", 0.9, 0)
  assert (cfg.steps, cfg.eval_every, list(cfg.model.widths)) == (300, 100, [64])
  assert cfg.hydra.sweeper.params == {"optimizer": "sgd,momentum", "seed": "0,1"}
  cfg = compose_config(["experiment=sgd_vs_momentum", "optimizer=adam", "steps=7"])
  assert (cfg.optimizer._target_, cfg.steps) == ("optax.adam", 7)


def test_experiment_runs_its_grid(tmp_path):
  sweep = tmp_path / "sweep"
  run_cli("train", "-m", "experiment=sgd_vs_momentum", "steps=20", "eval_every=10", "log_every=10",
          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert [(r["job"], r["optimizer"], r["seed"], r["status"], r["steps_run"]) for r in rows] == [
      ("0", "sgd", "0", "completed", "20"), ("1", "sgd", "1", "completed", "20"),
      ("2", "momentum", "0", "completed", "20"), ("3", "momentum", "1", "completed", "20")]
