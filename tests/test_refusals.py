"""What a user sees for a config that cannot run as written: one line naming a key left unset, a warning for a
setting that would silently do nothing, no directory left by a refused run, and the close match of a misspelling."""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import open_dict

from conftest import CONF, compose_config, run_cli
from trainlab import config
from trainlab.rundir import sweep, writers

TINY = ["steps=30", "eval_every=20", "log_every=10", "model.widths=[8]", "diagnostics=off"]


def job_config(overrides: list[str]):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def test_a_mandatory_key_left_unset_is_one_line_and_leaves_nothing(tmp_path):
  proc = run_cli("train", "data=npz", cwd=tmp_path, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
  assert proc.stderr.splitlines()[-1] == ("error: data.path is mandatory and not set: add it to the command, for "
                                          "example data.path=my_data.npz")
  assert list(tmp_path.iterdir()) == []  # not even outputs/runs/<day>/


def test_every_mandatory_key_of_conf_has_its_example():
  with pytest.raises(config.ConfigError) as info:
    config.check(job_config(["data=npz"]))
  assert str(info.value) == ("data.path is mandatory and not set: add it to the command, for example "
                             "data.path=my_data.npz")
  unset = [f"{path.relative_to(CONF)}: {line}" for path in sorted(CONF.rglob("*.yaml"))
           for line in path.read_text().splitlines() if "???" in line]
  assert unset == ["data/npz.yaml: path: ???           # required",
                   "pretrain/fitnets.yaml: guided_layer: ???         # the student's module that learns to predict it, "
                   "through the regressor",
                   "regularizer/distill.yaml: teacher: ???        # the teacher's run directory (or its checkpoints/ "
                   "or checkpoints/STEP); it never trains"]


def test_a_refused_run_leaves_no_directory_but_keeps_a_users_files(tmp_path):
  run = tmp_path / "runs" / "one"
  proc = run_cli("train", "optimizer.lr=-1", f"hydra.run.dir={run}", cwd=tmp_path, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[-1] == "error: optimizer.lr=-1.0 is not allowed: it must be > 0"
  assert list(tmp_path.iterdir()) == []
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  assert run_cli("train", "optimizer.lr=-1", f"hydra.run.dir={mine}", cwd=tmp_path, check=False).returncode == 2
  assert (mine / "notes.txt").read_text() == "mine" and not (mine / writers.SUMMARY_FILE).exists()


def test_a_refused_sweep_job_is_listed_failed_without_a_dashboard_row(tmp_path):
  """In a sweep the job's summary.json stays (results.csv lists it, resume=true runs it again); no HParams row."""
  sweep_dir = tmp_path / "sweep"
  proc = run_cli("train", "-m", *TINY, "optimizer.lr=-1,0.01", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                 check=False)
  assert proc.returncode == 1
  rows = list(csv.DictReader((sweep_dir / sweep.RESULTS_FILE).open()))
  assert [(r["optimizer.lr"], r["status"], r["error"]) for r in rows] == [
      ("-1", "failed", "optimizer.lr=-1.0 is not allowed: it must be > 0"), ("0.01", "completed", "")]
  refused = json.loads((sweep_dir / "0" / writers.SUMMARY_FILE).read_text())
  assert refused["status"] == "failed" and refused["error"] == rows[0]["error"]
  assert not list((sweep_dir / "0").rglob("*.session.hparams"))  # (the sweep's column list may land there)
  assert list(writers.events_dir(sweep_dir / "1").glob("*.session.hparams"))


def test_a_switch_that_never_happens_is_a_warning_line(tmp_path):
  run = tmp_path / "run"
  proc = run_cli("train", "optimizer=adam_then_sgd", *TINY, "diagnostics.every=25", f"hydra.run.dir={run}",
                 cwd=tmp_path)
  warnings = [line.split(" - ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines() if "[WARNING]" in line]
  assert warnings == [
      "optimizer.switch_step=1000 is not below steps=30: the run never switches to sgd and uses adam throughout",
      "diagnostics.every=25 is not a multiple of eval_every=20: it can act at chunk edges only, at steps 0, 30"]
  assert json.loads((run / writers.SUMMARY_FILE).read_text())["status"] == "completed"


@pytest.mark.parametrize("overrides,warnings", [
    ([], []),
    (["optimizer=adam_then_sgd", "steps=1000"], ["optimizer.switch_step=1000 is not below steps=1000: the run never "
                                                 "switches to sgd and uses adam throughout"]),
    (["optimizer=adam_then_sgd", "steps=1001"], []),
    (["optimizer.switch_step=5"], ["optimizer.switch_step=5 has no effect without optimizer.then (the optimizer to "
                                   "switch to): the run uses adam throughout"]),
    (["diagnostics.every=300", "diagnostics.histogram_every=500", "diagnostics.hessian_every=100", "steps=1600"], [
        "diagnostics.every=300 is not a multiple of eval_every=250: it can act at chunk edges only, at steps 0, 500, "
        "750, 1000, 1250, 1500",
        "diagnostics.hessian_every=100 is not a multiple of eval_every=250: it can act at chunk edges only, at steps "
        "0, 250, 500, 750, ..., 1600"]),
    (["diagnostics.histogram_every=300", "steps=600"], [
        "diagnostics.histogram_every=300 is not a multiple of eval_every=250: it can act at chunk edges only, at steps "
        "0, 500, 600"]),
    (["checkpoint.every=100", "steps=600"], ["checkpoint.every=100 is not a multiple of eval_every=250: it can act at "
                                             "chunk edges only, at steps 250, 500, 600"]),
    (["schedule.warmup_steps=3000"], ["schedule.warmup_steps=3000 is not below steps=3000: the learning rate is still "
                                      "warming up when the run ends and never reaches optimizer.lr"]),
    (["schedule=step", "schedule.warmup_steps=100", "steps=1100"], [
        "schedule.step_size=1000 is not below steps - warmup_steps=1000: the learning rate never decays"]),
    (["schedule=step", "steps=1001"], []),
    (["schedule=exponential", "schedule.staircase=true"], [
        "schedule.staircase=true with decay_steps=null (steps - warmup_steps): its first stair is past the last step, "
        "so the learning rate never decays"]),
    (["schedule=exponential", "schedule.staircase=true", "schedule.decay_steps=100"], []),
    (["regularizer=[early_stopping]", "steps=1500"], [
        "regularizer.early_stopping.patience=5 needs 7 evaluations or more to stop early, and the run has 6: it never "
        "stops early"]),
    (["regularizer=[early_stopping]", "steps=1750"], []),
])
def test_settings_that_cannot_take_effect_say_what_happens(overrides, warnings):
  cfg = job_config(overrides)
  assert config.warn_ineffective(cfg, cfg.steps) == warnings


@pytest.mark.parametrize("args,expected", [
    (["optimzer=adam"], "error: the config has no key optimzer: did you mean optimizer=adam?"),
    (["optimizer.lrr=0.1"], "error: the config has no key optimizer.lrr: did you mean optimizer.lr=0.1?"),
    (["optimizer=sgd", "optimizer.momentom=0.5"],
     "error: the config has no key optimizer.momentom: did you mean optimizer.momentum=0.5?"),
    (["stpes=10"], "error: the config has no key stpes: did you mean steps=10?"),
    (["regularizer=[dropot]"], "error: regularizer has no option dropot: did you mean dropout? (options: augment, "
                               "confidence_penalty, distill, dropout, early_stopping, l1, l2, label_smoothing, max_norm, "
                               "weight_decay)"),
])
def test_a_misspelling_gets_its_close_match_in_one_line(args, expected, tmp_path):
  proc = run_cli("train", *args, cwd=tmp_path, check=False)
  assert proc.returncode == 1 and proc.stderr.splitlines() == [expected] and proc.stdout == ""
  assert list(tmp_path.iterdir()) == []


def test_without_a_close_match_hydra_says_it_as_before(tmp_path):
  proc = run_cli("train", "xyzzy=1", cwd=tmp_path, check=False)
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[:2] == ["Could not override 'xyzzy'.", "To append to your config use +xyzzy=1"]
