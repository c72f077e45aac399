"""Every expected failure is one line, with no Python traceback (issue 30's list): values out of range or not
finite, a model too large for the memory, a full disk, an output directory that cannot be made; and a data set
whose test labels never occur in training gets a warning line.

Each case runs the real command in a fresh process, as a user would.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import subprocess
import sys

import dataclasses

import numpy as np
import pytest
from omegaconf import open_dict

from conftest import ROOT, compose_config, run_cli
from trainlab import config
from trainlab.rundir import atomic, writers

TINY = ["steps=40", "eval_every=20", "log_every=10", "diagnostics=off"]


def only_line(proc: subprocess.CompletedProcess) -> str:
  """The one `error:` line of a failed command, after checking that nothing printed a traceback."""
  output = proc.stdout + proc.stderr
  assert "Traceback" not in output, output[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


# --- values out of range ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["model.widths=[0]"], "model.widths=[0] is not allowed: each of its numbers must be >= 1"),
    (["model.widths=[16,-5]"], "model.widths=[16,-5] is not allowed: each of its numbers must be >= 1"),
    (["model=cnn", "data=digits", "model.features=[0]"],
     "model.features=[0] is not allowed: each of its numbers must be >= 1"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: it must be a finite number > 0"),
    (["regularizer=[l2]", "regularizer.l2.weight=inf"],
     "regularizer.l2.weight=inf is not allowed: it must be a finite number >= 0"),
    (["init=normal", "init.stddev=inf"], "init.stddev=inf is not allowed: it must be a finite number > 0"),
    (["init.bias=-inf"], "init.bias=-inf is not allowed: it must be a finite number"),
    (["init.bias=nan"], "init.bias=nan is not allowed: it must be a finite number"),
])
def test_structure_out_of_range_and_non_finite_floats_are_refused(overrides, message):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  with pytest.raises(config.ConfigError) as caught:
    config.check(cfg)
  assert str(caught.value) == message


def test_every_float_of_every_schema_must_be_finite_unless_it_says_so():
  for name, schema in config.SCHEMAS.items():
    for field in dataclasses.fields(schema):
      allowed = field.metadata.get("allowed")
      if isinstance(allowed, config.Interval) and allowed.finite:
        assert math.inf not in allowed and -math.inf not in allowed and math.nan not in allowed, f"{name}.{field.name}"


# --- the same through the command, with the other expected failures ----------------------------------------------
def test_a_width_of_zero_is_one_line_through_the_command(tmp_path):
  proc = run_cli("train", "model.widths=[0]", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
  assert proc.returncode == 2
  assert only_line(proc) == "error: model.widths=[0] is not allowed: each of its numbers must be >= 1"
  assert not (tmp_path / "run").exists()


def test_a_model_too_large_for_the_memory_is_one_line_before_it_compiles(tmp_path):
  proc = run_cli("train", "model.widths=[100000000]", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                 check=False)
  assert proc.returncode == 2
  line = only_line(proc)
  assert line.startswith("error: the model does not fit in memory: its 5,100,000,010 parameters, their gradients and "
                         "the optimizer's state need at least 76.0 GiB, and cpu has "), line
  assert line.endswith(" GiB available; choose a smaller model (model.widths, model.features, model.hidden, ...)")
  assert not (tmp_path / "run").exists()


def test_an_output_directory_under_a_file_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("not a folder")
  for where in (f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", f"hydra.sweep.dir={tmp_path / 'a_file' / 'sweep'}"):
    multirun = ["-m", "seed=0,1"] if where.startswith("hydra.sweep") else []
    proc = run_cli("train", *multirun, *TINY, where, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    path = where.split("=", 1)[1]
    assert only_line(proc) == (f"error: cannot write {path}: Not a directory; choose another output directory "
                               "(hydra.run.dir=... or hydra.sweep.dir=...)")
  assert (tmp_path / "a_file").read_text() == "not a folder"


FULL_DISK_BY_INJECTION = """
import errno, os, sys
from trainlab import main
from trainlab.rundir import atomic, writers
write_jsonl, written = writers.RunWriter.write_jsonl, []
def full_after_a_few(self, step, metrics):  # the disk fills up while the run writes its metrics
  written.append(step)
  if len(written) > 3:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  write_jsonl(self, step, metrics)
writers.RunWriter.write_jsonl = full_after_a_few
main.main(sys.argv[1:])
"""


def _small_filesystem_available() -> bool:
  """Whether this machine lets an unprivileged test mount a tmpfs of its own (a user and mount namespace)."""
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                         capture_output=True)
  return probe.returncode == 0


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(write_npz, tmp_path):
  """The run directory on a 64 KiB filesystem (a tmpfs in a mount namespace of the test's own), or, where the
  machine allows none, an OSError(ENOSPC) at the write of metrics.jsonl: one line, exit 1, no temporary
  folder of orbax or atomic writes, every line of metrics.jsonl whole."""
  run = tmp_path / "small" / "run"
  run.parent.mkdir()
  args = ["train", "data=npz", f"data.path={write_npz()}", "steps=3000", "eval_every=50", "log_every=1",
          "model.widths=[64]", "checkpoint.every=1000", "diagnostics=off", f"hydra.run.dir={run}"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  if _small_filesystem_available():
    script = 'mount -t tmpfs -o size=64k tmpfs "$0" && "$@"; code=$?; find "$0" > "$LEFT"; exit $code'
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, str(run.parent), sys.executable, "-m",
                           "trainlab", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**env, "LEFT": str(tmp_path / "left")})
    left = (tmp_path / "left").read_text().splitlines()  # the tmpfs is gone with its namespace
    metrics = None
  else:
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_BY_INJECTION, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    left = [str(p) for p in run.parent.rglob("*")]
    metrics = (run / writers.METRICS_FILE).read_text()
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = only_line(proc)
  assert "No space left on device" in line, line
  assert not [p for p in left if "orbax-checkpoint-tmp" in p or p.endswith(".tmp")], left
  if metrics is not None:
    assert metrics.endswith("\n") and all(line.startswith("{") for line in metrics.splitlines())


# --- a warning, not a failure ------------------------------------------------------------------------------------
def test_test_labels_never_seen_in_training_get_a_warning_naming_them(write_npz, tmp_path):
  rng = np.random.default_rng(1)
  data = write_npz(y_test=np.where(rng.random(50) < 0.5, 3, 4))  # training labels are 0, 1, 2
  proc = run_cli("train", "data=npz", f"data.path={data}", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
  warnings = [line.split(" - ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines()
              if "never occur in the training split" in line]
  assert warnings == ["the test split holds labels that never occur in the training split: 3, 4 (50 of its 50 "
                      "examples); the model cannot learn them, so those examples count as errors"]
  summary = writers.read_summary(tmp_path / "run")
  assert summary["status"] == "completed" and summary["test/accuracy"] == 0


def test_a_full_disk_is_recognized_through_a_chain_of_errors_that_loops():
  """An error re-raised from its own handler (a loader's error unwrapped from Hydra's) chains back to itself."""
  try:
    try:
      raise RuntimeError("wrapper")
    except RuntimeError as wrapper:
      cause = ValueError("the loader's own error")
      wrapper.__cause__ = cause
      raise cause from None
  except ValueError as e:
    assert atomic.disk_full(e) is None
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert atomic.disk_full(ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")) == \
      "No space left on device"
  try:
    raise RuntimeError("a library's wrapper") from full
  except RuntimeError as e:
    assert atomic.disk_full(e) == "No space left on device"
