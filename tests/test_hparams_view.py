"""TensorBoard's HParams view of the folders a user is told to open (outputs/, one sweep, one run), read through
the plugin's own handlers as `tensorboard --logdir` serves them: every run's overrides and its task's metric,
integers shown as integers, rows in job order."""

from __future__ import annotations

import json
import pathlib

import pytest

from conftest import run_cli
from trainlab.rundir import jobs, writers

TINY = ["steps=20", "eval_every=10", "log_every=10", "diagnostics=off"]
CLASSIFICATION_SWEEP = "sweeps/2026-01-01/10-00-00"  # eleven seeds: job 10 must follow job 2
REGRESSION_SWEEP = "sweeps/2026-01-01/11-00-00"
RNN_RUN = "runs/2026-01-01/12-00-00"
MLP_RUN = "runs/2026-01-01/13-00-00"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("project")
  run_cli("train", "-m", f"seed={','.join(map(str, range(11)))}", "model.widths=[8]", *TINY,
          f"hydra.sweep.dir=outputs/{CLASSIFICATION_SWEEP}", cwd=root)
  run_cli("train", "-m", "data=teacher", "optimizer.lr=0.01,0.1", "model.widths=[8]", *TINY,
          f"hydra.sweep.dir=outputs/{REGRESSION_SWEEP}", cwd=root)
  run_cli("train", "model=rnn", "data=adding", "model.hidden=8", *TINY, f"hydra.run.dir=outputs/{RNN_RUN}",
          cwd=root)
  run_cli("train", "optimizer.lr=0.05", "model.widths=[8]", *TINY, f"hydra.run.dir=outputs/{MLP_RUN}", cwd=root)
  return root / "outputs"


def hparams_view(logdir: pathlib.Path):
  """The plugin's experiment (its columns) and session groups (its rows, in the order it serves them)."""
  from tensorboard import context
  from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
  from tensorboard.plugins import base_plugin
  from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

  mux = plugin_event_multiplexer.EventMultiplexer()  # TensorBoard's own
  mux.AddRunsFromDirectory(str(logdir))
  mux.Reload()
  tb_context = base_plugin.TBContext(data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)),
                                     logdir=str(logdir), multiplexer=mux)
  plugin_context, request_context = backend_context.Context(tb_context), context.RequestContext()
  experiment = get_experiment.Handler(request_context, plugin_context, "", api_pb2.GetExperimentRequest()).run()
  request = api_pb2.ListSessionGroupsRequest(
      allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_UNKNOWN,
                        api_pb2.STATUS_RUNNING], start_index=0, slice_size=1000)
  groups = list_session_groups.Handler(request_context, plugin_context, "", request).run().session_groups
  return experiment, groups


def run_dirs(logdir: pathlib.Path) -> list[pathlib.Path]:
  """The run directories under `logdir` in the order a user expects: single runs, then each sweep's jobs."""
  found = sorted({p.parent for p in logdir.rglob(writers.SUMMARY_FILE)})
  sweeps = sorted({p.parent for p in found if p.name.isdigit()})
  singles = [p for p in found if not p.name.isdigit()]
  return singles + [job for sweep in sweeps for job in jobs.job_dirs(sweep) if job in found]


def shown(value) -> str | float | bool:
  kind = value.WhichOneof("kind")
  return {"string_value": value.string_value, "number_value": value.number_value,
          "bool_value": value.bool_value}[kind]


def expected_value(text: str) -> str | float:
  """An override as the table shows it: integers and words as written, other numbers as numbers."""
  try:
    int(text)
    return text
  except ValueError:
    try:
      return float(text)
    except ValueError:
      return text


@pytest.mark.parametrize("logdir", [".", CLASSIFICATION_SWEEP, REGRESSION_SWEEP, RNN_RUN, MLP_RUN])
def test_the_hparams_view_lists_every_runs_overrides_and_task_metric_in_job_order(outputs, logdir):
  logdir = outputs / logdir
  experiment, groups = hparams_view(logdir)
  dirs = run_dirs(logdir)
  summaries = [json.loads((d / writers.SUMMARY_FILE).read_text()) for d in dirs]

  # One row per run, in job order (single runs, then each sweep's jobs: 2 before 10).
  names = [str(writers.events_dir(d).relative_to(logdir)) for d in dirs]
  assert [session.name for group in groups for session in group.sessions] == names
  assert all(len(group.sessions) == 1 for group in groups)

  # The columns: every override any run set, and each run's task metric among the metrics.
  overrides = [jobs.parse_overrides(s["overrides"]) for s in summaries]
  assert {h.name for h in experiment.hparam_infos} == {key for o in overrides for key in o}
  task_metrics = [writers.task_metric([s]) for s in summaries]
  metric_tags = {m.name.tag for m in experiment.metric_infos}
  assert {f"Val/best_{m}" for m in task_metrics} | {f"test/{m}" for m in task_metrics} <= metric_tags

  for group, summary, override, metric in zip(groups, summaries, overrides, task_metrics):
    assert summary["status"] == "completed"
    assert {key: shown(value) for key, value in group.hparams.items()} == {
        key: expected_value(text) for key, text in override.items()}
    values = {m.name.tag: m.value for m in group.metric_values}
    assert values[f"Val/best_{metric}"] == pytest.approx(summary[f"best_val/{metric}"], rel=1e-6)
    assert values[f"test/{metric}"] == pytest.approx(summary[f"test/{metric}"], rel=1e-6)


def test_outputs_holds_both_tasks_and_integers_show_as_integers(outputs):
  experiment, groups = hparams_view(outputs)
  assert len(groups) == 11 + 2 + 1 + 1
  assert {"Val/best_accuracy", "Val/best_mse", "test/accuracy", "test/mse"} <= {
      m.name.tag for m in experiment.metric_infos}
  seeds = [group.hparams["seed"].string_value for group in groups if "seed" in group.hparams]
  assert seeds == [str(seed) for seed in range(11)]
  lrs = [group.hparams["optimizer.lr"].number_value for group in groups if "optimizer.lr" in group.hparams]
  assert lrs == [0.05, 0.01, 0.1]  # the single run's, then the regression sweep's jobs
  steps = {group.hparams["steps"].string_value for group in groups}
  assert steps == {"20"}
