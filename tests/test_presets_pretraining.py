"""The presets of pretraining and transfer (conf/experiment/): transfer, distillation, greedy and fitnets. Each
composes as `--cfg job` prints it, every arm of its grid composes, the arms that read a source run describe the
same one (so one command trains it once), and shortened runs go end to end, their sources made on demand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import CONF, compose_config, run_cli
from test_presets import grid
from trainlab import transfer
from trainlab.rundir import jobs, on_demand

PRESETS = ("transfer", "distillation", "greedy", "fitnets")
SHORT = ["steps=20", "eval_every=10", "log_every=10", "checkpoint.every=null"]
SHORT_SOURCE = ["steps=20", "eval_every=10", "diagnostics=off", "checkpoint.every=null"]


def sources_of(name: str) -> dict[str, tuple]:
  """Each arm's source: {arm: (key, overrides)} for the arms of the preset's grid (seed 0) that read one."""
  found = {}
  for job in grid(name):
    if "seed=0" not in job:
      continue
    cfg = compose_config([f"experiment={name}", *job])
    for key in on_demand.KEYS:
      overrides = on_demand._given(cfg, key)
      if overrides is not None:
        found[" ".join(job)] = (key, list(overrides))
  return found


@pytest.mark.parametrize("name", PRESETS)
def test_preset_starts_with_its_command_and_sources(name):
  text = (CONF / "experiment" / f"{name}.yaml").read_text()
  assert text.startswith("# @package _global_\n")
  comment = text.split("\ndefaults:")[0]
  assert f"`trainlab train -m experiment={name}`" in comment and "[00" in comment and "Look at" in comment
  assert "Measured" in comment, "the comment says what was measured"
  assert len(list((CONF / "experiment" / name).glob("*.yaml"))) == 3  # its arms


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_cfg_job_and_its_arms_share_one_source(name, tmp_path):
  printed = run_cli("train", f"experiment={name}", "--cfg", "job", cwd=tmp_path).stdout
  assert printed.startswith("seed: 0\n") and "\nmodel:\n  _target_: trainlab.models.MLP" in printed
  assert len(grid(name)) == 9  # three arms, three seeds
  sources = sources_of(name)
  if name == "greedy":  # its pretraining is stages of the run itself
    assert sources == {}
    return
  assert len(sources) == 2 and len({json.dumps(s) for s in sources.values()}) == 1, sources  # trained once


def test_the_transfer_arms_load_and_freeze_what_they_say():
  cfgs = {arm: compose_config(["experiment=transfer", f"+experiment/transfer={arm}"])
          for arm in ("scratch", "finetuned", "probe")}
  assert cfgs["scratch"].init.source_overrides is None and cfgs["scratch"].init.from_layers is None
  assert list(cfgs["finetuned"].init.from_layers) == ["hidden"] and list(cfgs["finetuned"].freeze) == []
  assert list(cfgs["probe"].init.from_layers) == list(cfgs["probe"].freeze) == ["hidden"]
  assert list(cfgs["probe"].data.classes) == [5, 6, 7, 8, 9]


def test_transfer_shortened_trains_its_source_once_and_loads_it(tmp_path):
  """The fine-tuned and probe arms of one seed, 20 steps each, from a 20-step source: the first job trains the
  source into sources/ of the sweep, the second reuses it; results.csv lists the two jobs, not the source."""
  sweep = tmp_path / "sweep"
  source = compose_config(["experiment=transfer"]).init.source_overrides
  shortened = [*source, *SHORT_SOURCE]
  quoted = ",".join(f'"{o}"' for o in shortened)
  run_cli("train", "-m", "experiment=transfer", "+experiment/transfer=finetuned,probe", "seed=0", *SHORT,
          f"init.source_overrides=[{quoted}]", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  rows = list(csv.DictReader((sweep / "results.csv").open()))
  assert [(r["job"], r["experiment/transfer"], r["status"]) for r in rows] == [
      ("0", "finetuned", "completed"), ("1", "probe", "completed")]
  summaries = [json.loads((sweep / str(j) / "summary.json").read_text()) for j in (0, 1)]
  source_dir = on_demand.source_dir(sweep.resolve() / jobs.SOURCES_DIR, shortened)
  made = [s["sources"]["init.source_overrides"] for s in summaries]
  assert [m["made_on_demand"] for m in made] == [True, False]
  assert {m["run"] for m in made} == {s["init_source"]["run"] for s in summaries} == {str(source_dir)}
  assert json.loads((source_dir / "summary.json").read_text())["status"] == "completed"
  assert summaries[1]["frozen_layers"] == ["Dense_0", "Dense_1"] and summaries[1]["fresh_layers"] == ["Dense_2"]
  # the probe's hidden layers are the source's, bit for bit; its output layer trained
  probe, _, _ = transfer.read_source(str(sweep / "1"), "last")
  pretrained, _, _ = transfer.read_source(str(source_dir), "last")
  for layer in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(probe[layer]["kernel"], pretrained[layer]["kernel"])


@pytest.mark.slow
def test_fitnets_shortened_trains_its_teacher_and_runs_both_stages(tmp_path):
  """The FitNets arm alone: a 20-step teacher made on demand, 10 hint steps, then 20 of distillation."""
  teacher = compose_config(["experiment=fitnets", "+experiment/fitnets=fitnets"]).regularizer.distill.teacher_overrides
  quoted = ",".join(f'"{o}"' for o in [*teacher, *SHORT_SOURCE])
  run_cli("train", "experiment=fitnets", "+experiment/fitnets=fitnets", *SHORT, "pretrain.hint_steps=10",
          f"regularizer.distill.teacher_overrides=[{quoted}]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["steps_run"] == 30
  assert [s["name"] for s in summary["stages"]] == ["hint", "distill"]
  made = summary["sources"]["regularizer.distill.teacher_overrides"]
  assert made["made_on_demand"] and summary["distill_teacher"]["run"] == made["run"]
  assert made["run"].startswith(str(tmp_path / "run" / jobs.SOURCES_DIR))
