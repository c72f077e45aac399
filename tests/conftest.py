"""Shared fixtures: the real config composed from conf/, shrunk to a few steps on small data."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

# Tests compile hundreds of small programs and time none of them: XLA's cheapest optimization level compiles
# them in about two thirds of the time, and the CPU's classic loop emitters instead of its MLIR fusion emitters
# take a sixth off what is left (tests/test_configs.py 166 -> 138 s on 2 cores), as compilation.RUN_RARELY does
# for a run's rarely called programs. Subprocesses inherit it (set before JAX starts); a user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from trainlab import config, main

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# A few hundred steps of the default MLP on MNIST-1D: enough to learn, about a second once compiled. Tests of the
# diagnostics turn them on themselves.
QUICK = ["steps=300", "eval_every=100", "log_every=25", "model.widths=[64]", "diagnostics=off", "regularizer=[]"]

config.register_schemas()


def compose_config(overrides: list[str] = ()) -> DictConfig:
  """The config that `trainlab train OVERRIDES` would run, with Hydra's runtime fields filled in."""
  with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
    return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
  """Generated data sets go to a cache shared by the session, not the user's home."""
  cache = os.environ.get("TRAINLAB_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
  os.environ["TRAINLAB_CACHE"] = cache
  yield cache


def run_cli(*args: str, cwd: pathlib.Path, check: bool = True) -> subprocess.CompletedProcess:
  """Runs `python -m trainlab ARGS` in a fresh process, as a user would."""
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"trainlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
  return proc


def compose_job_config(overrides: list[str] = ()) -> DictConfig:
  """The config a job of `trainlab train OVERRIDES` trains on: without Hydra's own fields (as in a job's process).
  Also imported by the tests' child processes (PYTHONPATH holds tests/)."""
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def train_in_process(overrides: list[str], workdir: pathlib.Path) -> dict:
  """train_and_evaluate on the composed config, in this process (so compiled programs are shared)."""
  from trainlab import train

  return train.train_and_evaluate(compose_job_config(overrides), workdir)


@pytest.fixture
def write_npz(tmp_path):
  """Writes a small classification problem as .npz; keyword arguments replace or drop (None) arrays."""

  def write(name: str = "data.npz", **replace) -> pathlib.Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(200, 6)).astype(np.float32), "y_train": rng.integers(0, 3, 200),
        "x_test": rng.normal(size=(50, 6)).astype(np.float32), "y_test": rng.integers(0, 3, 50),
    }
    arrays.update(replace)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path

  return write
