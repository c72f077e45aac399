"""Synchronous SGD with backup workers (optimizer.workers, optimizer.backup_workers): each step averages the
gradients of the N - b worker shards that arrived, against a NumPy softmax regression; b = 0 is plain SGD on the
whole batch; a config that cannot split its batch is refused in one line."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import compose_config, run_cli
from trainlab import config, train

WORKERS, BATCH, LR = 4, 8, 0.5  # shards of 2 examples


def job_config(overrides: list[str]):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def start(write_npz, workers: int, backups: int):
  """(spec, state at step 0) of softmax regression (model.widths=[]) with plain SGD on a 6-feature, 3-class set."""
  cfg = job_config([f"data.path={write_npz()}", "data=npz", "model.widths=[]", "optimizer=sgd", f"optimizer.lr={LR}",
                    f"optimizer.workers={workers}", f"optimizer.backup_workers={backups}", f"batch_size={BATCH}",
                    "regularizer=[]", "diagnostics=off", "steps=10", "eval_every=10"])
  run = train.setup(cfg)
  return run.spec, run.program.init(np.int32(cfg.seed), run.values)


def numpy_update(params: dict, x: np.ndarray, y: np.ndarray, shards: tuple[int, ...]) -> dict:
  """theta - lr * (1 / |shards|) sum over the shards of each shard's mean cross-entropy gradient (float64)."""
  w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
  size = BATCH // WORKERS
  grads = []
  for i in shards:
    xs, ys = x[i * size:(i + 1) * size].astype(np.float64), y[i * size:(i + 1) * size]
    logits = xs @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = (p - np.eye(w.shape[1])[ys]) / size  # d(mean cross-entropy) / d logits
    grads.append((xs.T @ residual, residual.sum(0)))
  gw, gb = (np.mean([g[k] for g in grads], axis=0) for k in (0, 1))
  return {"kernel": w - LR * gw, "bias": b - LR * gb}


def batch(step: int):
  rng = np.random.default_rng(step)
  return rng.normal(size=(BATCH, 6)).astype(np.float32), rng.integers(0, 3, BATCH).astype(np.int32)


def test_the_update_averages_the_shards_that_arrived(write_npz):
  """With N=4, b=1, each step's update is the NumPy average over exactly one set of 3 shards, which changes from
  step to step (drawn from the step's key) and is the same when the step is run again."""
  spec, state = start(write_npz, WORKERS, 1)
  step = jax.jit(lambda s, x, y: train.train_step(spec, s, x, y)[0])
  subsets = list(itertools.combinations(range(WORKERS), WORKERS - 1))
  arrived = []
  for k in range(8):
    x, y = batch(k)
    new = step(state, x, y)
    got = jax.tree.map(np.asarray, new.params["Dense_0"])
    matches = [s for s in subsets if all(np.allclose(got[n], numpy_update(state.params, x, y, s)[n], atol=1e-6)
                                         for n in ("kernel", "bias"))]
    assert len(matches) == 1, (k, matches)
    whole = numpy_update(state.params, x, y, tuple(range(WORKERS)))
    assert not np.allclose(got["kernel"], whole["kernel"], atol=1e-6)  # a worker was dropped: not the whole batch
    again = jax.tree.map(np.asarray, step(state, x, y).params["Dense_0"])
    np.testing.assert_array_equal(again["kernel"], got["kernel"])  # seeded: the same step drops the same worker
    arrived.append(matches[0])
    state = new
  assert len(set(arrived)) > 1, arrived


def test_without_backups_the_workers_are_plain_sgd_on_the_whole_batch(write_npz):
  spec_workers, state_workers = start(write_npz, WORKERS, 0)
  spec_plain, state_plain = start(write_npz, 1, 0)
  for k in range(3):
    x, y = batch(k)
    expected = numpy_update(state_plain.params, x, y, tuple(range(WORKERS)))
    state_workers, _ = jax.jit(lambda s, x, y: train.train_step(spec_workers, s, x, y))(state_workers, x, y)
    state_plain, _ = jax.jit(lambda s, x, y: train.train_step(spec_plain, s, x, y))(state_plain, x, y)
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(state_workers.params["Dense_0"][name], state_plain.params["Dense_0"][name],
                                 rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(state_plain.params["Dense_0"][name], expected[name], atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.workers=4", "optimizer.backup_workers=4"],
     "optimizer.backup_workers=4 is not allowed with optimizer.workers=4: it must be below the number of workers "
     "(0 to 3), so that some worker's gradient arrives"),
    (["optimizer.workers=3", "batch_size=128"],
     "optimizer.workers=3 is not allowed with batch_size=128: the workers split each batch into equal shards, so it "
     "must divide batch_size"),
    (["optimizer.workers=0"], "optimizer.workers=0 is not allowed: it must be >= 1"),
])
def test_workers_that_cannot_split_the_batch_are_refused(overrides, message):
  with pytest.raises(config.ConfigError) as info:
    config.check(job_config(overrides))
  assert str(info.value) == message


def test_the_command_line_refuses_in_one_line(tmp_path):
  proc = run_cli("train", "optimizer.workers=4", "optimizer.backup_workers=5", cwd=tmp_path, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
  assert proc.stderr.splitlines()[-1].startswith("error: optimizer.backup_workers=5 is not allowed")
