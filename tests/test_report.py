"""The sweep report, the HParams dashboard and `trainlab tb`: numbers from the runs' own files, valid PNGs
with the expected series, and hparams that TensorBoard's own reader and server understand."""

from __future__ import annotations

import csv
import json
import pathlib
import socket
import time
import urllib.request

import numpy as np
import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from trainlab.rundir import jobs, report, sweep, writers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the table, from fake run directories in the real format ---------------------------------------------------
def fake_sweep(root: pathlib.Path) -> pathlib.Path:
  """2 learning rates x 3 seeds; one run diverged. summary.json and metrics.jsonl as train/main write them."""
  rng = np.random.default_rng(0)
  job = 0
  for lr in ("0.1", "0.01"):
    for seed in range(3):
      run = root / str(job)
      overrides = [f"optimizer.lr={lr}", f"seed={seed}", "steps=40"]
      diverged = lr == "0.1" and seed == 2
      acc = [float(x) for x in np.sort(rng.uniform(0.1, 0.9, 4))]
      writers.write_summary(run, {
          "status": "diverged" if diverged else "completed",
          **({} if diverged else {"test/accuracy": float(rng.uniform(0.5, 0.9)),
                                  "test/loss": float(rng.uniform(0.3, 1.0))}),
          "best_val/accuracy": max(acc), "best_val/loss": float(rng.uniform(0.3, 1.0)),
          "overrides": overrides, "run_dir": str(run)})
      with open(run / writers.METRICS_FILE, "w") as f:
        for i, a in enumerate(acc):
          f.write(json.dumps({"step": 10 * (i + 1), "train/loss": 2.0 - a}) + "\n")
          f.write(json.dumps({"step": 10 * (i + 1), "val/accuracy": a, "val/loss": 2.0 - a}) + "\n")
      job += 1
  return root


def test_table_equals_statistics_computed_from_the_summaries(tmp_path):
  sweep_dir = fake_sweep(tmp_path)
  out = report.write_report(sweep_dir, metric="val/accuracy", target=0.5)
  summaries = [json.loads((d / "summary.json").read_text()) for d in sorted(sweep_dir.iterdir()) if d.is_dir()]
  rows = list(csv.DictReader(open(out["report.csv"])))
  # Ranked by validation: the mean over seeds of each run's best validation accuracy.
  assert [r["optimizer.lr"] for r in rows] == sorted(
      ("0.1", "0.01"), key=lambda lr: -np.mean([s["best_val/accuracy"] for s in summaries
                                                if f"optimizer.lr={lr}" in s["overrides"]]))
  for row in rows:
    mine = [s for s in summaries if f"optimizer.lr={row['optimizer.lr']}" in s["overrides"]]
    assert int(row["runs"]) == 3
    assert int(row["diverged"]) == sum(s["status"] == "diverged" for s in mine)
    for name in writers.final_metrics("accuracy"):
      xs = [s[name] for s in mine if name in s]
      assert float(row[f"{name} mean"]) == pytest.approx(np.mean(xs), rel=1e-12)
      assert float(row[f"{name} std"]) == pytest.approx(np.std(xs, ddof=1), rel=1e-12)
    # Steps to val/accuracy >= 0.5, read directly from each run's curve.
    reached = []
    for s in mine:
      points = [json.loads(line) for line in open(pathlib.Path(s["run_dir"]) / "metrics.jsonl")]
      hits = [p["step"] for p in points if p.get("val/accuracy", 0) >= 0.5]
      if hits:
        reached.append(min(hits))
    key = "steps to val/accuracy=0.5"
    assert int(row[f"{key} reached"]) == len(reached)
    assert float(row[f"{key} mean"]) == pytest.approx(np.mean(reached))
  assert {row["optimizer.lr"]: row["diverged"] for row in rows} == {"0.1": "1", "0.01": "0"}
  text = out["report.md"].read_text()
  best = rows[0]
  stat = lambda name: f"{name} {float(best[name + ' mean']):#.3g} ± {float(best[name + ' std']):#.3g}"
  assert (f"**Best configuration** (by best_val/accuracy, the mean over seeds of each run's best validation "
          f"point; the test set is reported for it alone): optimizer.lr={best['optimizer.lr']}: "
          f"{stat('best_val/accuracy')}, {stat('test/accuracy')}, {stat('test/loss')} (3 runs)") in text
  assert text.count("test/") == 2  # on the best configuration's line only: the table is the validation's
  assert f"| 0.1 | 3 | 1 | 0 | {stat('best_val/accuracy').split(' ', 1)[1]} |" in text
  assert "| optimizer.lr |" in text and "common to all: steps=40" in text
  assert "Plots: [curves.png](curves.png), [sensitivity_optimizer.lr.png](sensitivity_optimizer.lr.png)" in text


def test_sensitivity_plot_uses_a_log_axis_across_decades(tmp_path):
  groups = report.group_runs(report.load_runs(fake_sweep(tmp_path)))
  assert report.numeric_keys(groups) == ["optimizer.lr"]
  fig = report.plot_sensitivity(groups, "optimizer.lr")
  ax = fig.axes[0]
  assert ax.get_xscale() == "log"
  (series,) = ax.containers  # one errorbar series: no other swept key
  assert series.get_label() == "test/accuracy"
  line = series.lines[0]
  means = {lr: np.mean([r.summary["test/accuracy"] for g in groups for r in g.runs
                        if r.overrides["optimizer.lr"] == lr and "test/accuracy" in r.summary]) for lr in ("0.01", "0.1")}
  np.testing.assert_allclose(line.get_xdata(), [0.01, 0.1])
  np.testing.assert_allclose(line.get_ydata(), [means["0.01"], means["0.1"]])


def test_a_failing_report_keeps_results_csv(tmp_path, monkeypatch):
  fake_sweep(tmp_path)

  def broken(*args, **kwargs):
    raise RuntimeError("plotting broke")

  monkeypatch.setattr(report, "write_report", broken)
  cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                          "report": {"metric": "val/accuracy", "target": None}})
  sweep.ResultsTable().on_multirun_end(cfg)
  rows = list(csv.DictReader(open(tmp_path / sweep.RESULTS_FILE)))
  assert len(rows) == 6 and not (tmp_path / "report.md").exists()


# Mean best validation accuracy over two seeds, chosen so that each optimizer's best lr is another one, a worse
# optimizer at its best beats a better one at its worst, and one configuration has only diverged runs.
BEST_PER_SWEEP = {("sgd", "1.0"): 0.60, ("sgd", "0.1"): 0.55, ("sgd", "0.01"): 0.30,
                  ("adam", "1.0"): None, ("adam", "0.1"): 0.50, ("adam", "0.01"): 0.65,
                  ("momentum", "1.0"): 0.20, ("momentum", "0.1"): 0.62, ("momentum", "0.01"): 0.58}


def best_per_sweep(root: pathlib.Path) -> pathlib.Path:
  """BEST_PER_SWEEP's runs: summary.json as train writes it, two seeds a configuration."""
  for job, ((optimizer, lr), accuracy) in enumerate(BEST_PER_SWEEP.items()):
    for seed, offset in enumerate((-0.01, 0.01)):  # the mean over the seeds is the accuracy above
      run = root / str(2 * job + seed)
      best = None if accuracy is None else {"best_val/accuracy": accuracy + offset, "best_val/loss": 1 - accuracy,
                                            "test/accuracy": accuracy - 0.05, "test/loss": 1.0}
      writers.write_summary(run, {"status": "diverged" if best is None else "completed", **(best or {}),
                                  "overrides": [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"seed={seed}"]})
  return root


def test_best_per_keeps_each_optimizers_best_learning_rate(tmp_path):
  best_per_sweep(tmp_path)
  out = report.write_report(tmp_path, best_per="optimizer")
  rows = list(csv.DictReader(open(out["best.csv"])))
  assert [(r["optimizer"], r["optimizer.lr"]) for r in rows] == [("adam", "0.01"), ("momentum", "0.1"),
                                                                  ("sgd", "1.0")]
  assert [float(r["best_val/accuracy mean"]) for r in rows] == pytest.approx([0.65, 0.62, 0.60])
  assert [float(r["test/accuracy mean"]) for r in rows] == pytest.approx([0.60, 0.57, 0.55])
  assert all(r["runs"] == "2" for r in rows)
  text = out["report.md"].read_text()
  section = text[text.index("## Best per optimizer"):]
  assert "| optimizer | optimizer.lr | runs |" in section and "test/accuracy" in section
  assert section.index("| adam | 0.01 |") < section.index("| momentum | 0.1 |") < section.index("| sgd | 1.0 |")
  assert "| adam | 1.0 |" not in section
  # A key the sweep does not vary is refused, naming the keys it does, before anything is written.
  (tmp_path / "report.md").unlink()
  with pytest.raises(ValueError, match=r"report.best_per=seed is not a swept key.*: optimizer, optimizer.lr"):
    report.write_report(tmp_path, best_per="seed")
  assert not (tmp_path / "report.md").exists()
  assert report.main([str(tmp_path), "report.best_per=optimiser"]) == 2


def test_the_multiruns_end_writes_best_csv_for_report_best_per(tmp_path):
  best_per_sweep(tmp_path)
  cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                          "report": {"metric": None, "target": None, "best_per": "optimizer"}})
  sweep.ResultsTable().on_multirun_end(cfg)
  rows = list(csv.DictReader(open(tmp_path / "best.csv")))
  assert [(r["optimizer"], r["optimizer.lr"]) for r in rows] == [("adam", "0.01"), ("momentum", "0.1"), ("sgd", "1.0")]


def test_the_report_command_rebuilds_the_sweeps_own_report_and_drops_a_stale_best_csv(tmp_path, capsys):
  """`trainlab report DIR` starts from the report keys the sweep ran with (its multirun.yaml); a key given on the
  command line wins, and a report without best_per removes the best.csv that no longer matches it."""
  best_per_sweep(tmp_path)
  OmegaConf.save(OmegaConf.create({"report": {"metric": None, "target": None, "best_per": "optimizer"}}),
                 tmp_path / "multirun.yaml")
  assert report.main([str(tmp_path)]) == 0
  rows = list(csv.DictReader(open(tmp_path / "best.csv")))
  assert [(r["optimizer"], r["optimizer.lr"]) for r in rows] == [("adam", "0.01"), ("momentum", "0.1"), ("sgd", "1.0")]
  assert "## Best per optimizer" in (tmp_path / "report.md").read_text()
  assert report.main([str(tmp_path), "report.best_per=optimizer.lr"]) == 0
  assert [r["optimizer.lr"] for r in csv.DictReader(open(tmp_path / "best.csv"))] == ["0.01", "0.1", "1.0"]
  assert report.main([str(tmp_path), "report.best_per=null"]) == 0
  assert not (tmp_path / "best.csv").exists() and "## Best per" not in (tmp_path / "report.md").read_text()
  capsys.readouterr()


def test_a_sweep_of_regressions_is_judged_by_mse_lower_first(tmp_path):
  """Regression runs report mse: the table sorts by test/mse ascending, steps-to-target reads val/mse downwards,
  results.csv has the mse columns and no accuracy columns, and the dashboard lists the mse metrics."""
  rng = np.random.default_rng(1)
  for job, lr in enumerate(("0.1", "0.01", "0.001")):
    run = tmp_path / str(job)
    mse = [1.0, 0.5, 0.2 * (job + 1)]
    writers.write_summary(run, {"status": "completed", "test/mse": float(rng.uniform(0.1, 1.0)), "test/loss": 0.3,
                                "best_val/mse": min(mse), "best_val/loss": min(mse), "overrides": [f"optimizer.lr={lr}"],
                                "run_dir": str(run)})
    (run / writers.METRICS_FILE).write_text("".join(
        json.dumps({"step": 10 * (i + 1), "val/mse": m, "val/loss": m}) + "\n" for i, m in enumerate(mse)))
  out = report.write_report(tmp_path, target=0.3)
  rows = list(csv.DictReader(open(out["report.csv"])))
  means = [float(r["best_val/mse mean"]) for r in rows]
  assert means == sorted(means) and "test/accuracy mean" not in rows[0]
  reached = {r["optimizer.lr"]: r["steps to val/mse=0.3 reached"] for r in rows}
  assert reached == {"0.1": "1", "0.01": "0", "0.001": "0"}  # 0.2 <= 0.3 only for the first job
  cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "report": {"metric": None, "target": None}})
  sweep.ResultsTable().on_multirun_end(cfg)
  header = (tmp_path / sweep.RESULTS_FILE).read_text().splitlines()[0].split(",")
  assert {"test/mse", "best_val/mse"} <= set(header) and "test/accuracy" not in header
  assert writers.task_metric([{"best_val/mse": 0.1}]) == "mse"


def test_jobs_are_read_in_job_order_10_after_2(tmp_path):
  """Twelve jobs without a test metric (their table order is their job order): the report, results.csv and
  the job listing all put job 10 after job 2, and folders that are not job numbers last."""
  for job in range(12):
    writers.write_summary(tmp_path / str(job), {"status": "failed", "overrides": [f"optimizer.lr={job}"]})
  (tmp_path / ".hydra").mkdir()
  assert [p.name for p in jobs.job_dirs(tmp_path)] == [str(job) for job in range(12)] + [".hydra"]
  assert [r.job for r in report.load_runs(tmp_path)] == [str(job) for job in range(12)]
  rows = list(csv.DictReader(open(report.write_report(tmp_path)["report.csv"])))
  assert [r["optimizer.lr"] for r in rows] == [str(job) for job in range(12)]
  sweep.write_results(tmp_path, sweep.collect(tmp_path))
  assert [r["job"] for r in csv.DictReader(open(tmp_path / sweep.RESULTS_FILE))] == [str(job) for job in range(12)]


def test_overrides_are_keyed_without_hydras_prefixes(tmp_path):
  overrides = ["+extra=1", "++optimizer.lr=0.1", "~scheduler", "model.widths=[16,16]", "name=a=b"]
  assert jobs.parse_overrides(overrides) == {"extra": "1", "optimizer.lr": "0.1", "scheduler": "",
                                             "model.widths": "[16,16]", "name": "a=b"}
  assert writers.hparam_values(overrides) == {"extra": 1, "optimizer.lr": 0.1, "scheduler": "",
                                              "model.widths": "[16,16]", "name": "a=b"}
  writers.write_summary(tmp_path / "0", {"status": "completed", "overrides": overrides})
  (row,) = sweep.collect(tmp_path)
  assert {k: row[k] for k in jobs.parse_overrides(overrides)} == jobs.parse_overrides(overrides)


# --- one small real sweep: the automatic report, its plots, and the HParams dashboard ---------------------------
SWEEP = ["init=he,glorot", "optimizer.lr=0.003,0.03", "seed=0,1", "steps=40", "eval_every=20", "log_every=10",
         "model.widths=[16,16]", "diagnostics=default", "diagnostics.every=20", "diagnostics.histogram_every=0"]


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  run_cli("train", "-m", *SWEEP, f"hydra.sweep.dir={root}/sweep", cwd=root)
  return root / "sweep"


def test_the_multirun_writes_the_report_with_valid_plots(real_sweep):
  from matplotlib.image import imread

  for name in ("results.csv", "report.md", "report.csv", "curves.png", "init_layers.png",
               "sensitivity_optimizer.lr.png"):
    assert (real_sweep / name).is_file(), name
  for png in real_sweep.glob("*.png"):
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert imread(png).shape[2] == 4  # decodes to RGBA pixels
  rows = list(csv.DictReader(open(real_sweep / "report.csv")))
  assert len(rows) == 4 and all(r["runs"] == "2" for r in rows)


def test_plots_of_the_real_sweep_have_one_series_per_configuration(real_sweep):
  groups = report.group_runs(report.load_runs(real_sweep))
  labels = sorted(g.label for g in groups)
  assert labels == sorted(f"init={i}, optimizer.lr={lr}" for i in ("he", "glorot") for lr in ("0.003", "0.03"))

  curves = report.plot_curves(groups)
  assert [ax.get_title() for ax in curves.axes] == ["train/loss", "val/loss", "train/accuracy", "val/accuracy"]
  for ax in curves.axes:
    assert sorted(line.get_label() for line in ax.get_lines()) == labels
    assert len(ax.collections) == len(labels)  # a band per configuration
  train_loss = curves.axes[0].get_lines()[0]
  group = next(g for g in groups if g.label == train_loss.get_label())
  per_seed = [report.curve(writers.read_metrics(r.dir), "train/loss") for r in group.runs]
  np.testing.assert_allclose(train_loss.get_xdata(), [10, 20, 30, 40])
  np.testing.assert_allclose(train_loss.get_ydata(), [np.mean([c[s] for c in per_seed]) for s in (10, 20, 30, 40)])

  # The learning rate does not act at step 0: the configurations of one init draw one line, named so.
  layers = report.plot_init_layers(groups)
  for ax, quantity in zip(layers.axes, ("act_var", "grad_var")):
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        f"init={i} (alike for optimizer.lr=0.003|0.03)" for i in ("glorot", "he")]
    for line in ax.get_lines():
      init = line.get_label().split(" ")[0]
      assert [t.get_text() for t in ax.get_xticklabels()] == ["Dense_0", "Dense_1", "Dense_2"]
      for group in (g for g in groups if g.label.startswith(init + ",")):
        first = [json.loads(l) for l in open(group.runs[0].dir / "metrics.jsonl")]
        want = [np.mean([np.sqrt(next(p[f"step0/Dense_{i}/{quantity}"] for p in writers.read_metrics(r.dir)
                                      if f"step0/Dense_{i}/{quantity}" in p)) for r in group.runs]) for i in range(3)]
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-6)
        assert first[0]["step"] == 0


def test_hparams_are_readable_by_tensorboards_own_reader(real_sweep):
  from tensorboard.backend.event_processing import event_multiplexer
  from tensorboard.plugins.hparams import api_pb2, metadata

  mux = event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(str(real_sweep))
  mux.Reload()
  content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
  summaries = [json.loads((real_sweep / str(job) / "summary.json").read_text()) for job in range(8)]
  runs = [f"{job}/{','.join(s['overrides'])}" for job, s in enumerate(summaries)]
  assert sorted(mux.Runs()) == sorted(runs)  # a run per job, named by its overrides; no run of the sweep's own
  # No run names the columns: TensorBoard takes them from all sessions (tests/test_hparams_view.py reads them).
  assert not [run for run in content if metadata.EXPERIMENT_TAG in content[run]]
  for job, summary in enumerate(summaries):
    tags = content[runs[job]]
    start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
    want = dict(o.split("=", 1) for o in summary["overrides"])
    assert start.hparams["init"].string_value == want["init"]
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(float(want["optimizer.lr"]))
    assert start.hparams["seed"].string_value == want["seed"]  # an integer, shown as written
    end = metadata.parse_session_end_info_plugin_data(tags[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    # The dashboard's metric values are the runs' last scalars under those tags.
    accumulator = mux.GetAccumulator(runs[job])
    assert accumulator.Scalars("Val/best_accuracy")[-1].value == pytest.approx(summary["best_val/accuracy"])
    assert accumulator.Scalars("test/accuracy")[-1].value == pytest.approx(summary["test/accuracy"])
    text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith(f"**overrides:** {', '.join(summary['overrides'])}\n\n```\n") and "optimizer:" in text


def test_trainlab_tb_serves_the_hparams_dashboard(real_sweep):
  import subprocess
  import sys

  from conftest import ROOT

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "trainlab", "tb", str(real_sweep), "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert f"http://127.0.0.1:{port}/" in proc.stdout.readline()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups",
        data=json.dumps({"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"],
                         "colParams": [], "startIndex": 0, "sliceSize": 100}).encode(),
        headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"})
    deadline = time.time() + 90
    while True:
      try:
        groups = json.loads(urllib.request.urlopen(request, timeout=10).read())["sessionGroups"]
        if len(groups) == 8:
          break
      except OSError:
        pass
      assert time.time() < deadline, "TensorBoard did not serve the 8 sessions"
      time.sleep(1)
    lrs = sorted(g["hparams"]["optimizer.lr"] for g in groups)
    assert lrs == [0.003] * 4 + [0.03] * 4
  finally:
    proc.terminate()
    proc.wait(timeout=30)
  # Stopping `trainlab tb` stopped TensorBoard and its data server: no process still serves the sweep.
  serving = lambda: [p for p in pathlib.Path("/proc").glob("[0-9]*")
                     if str(real_sweep) in _cmdline(p)] if pathlib.Path("/proc/self").exists() else []
  deadline = time.time() + 30
  while serving() and time.time() < deadline:
    time.sleep(0.5)
  assert not serving(), "TensorBoard outlived trainlab tb"


def _cmdline(proc: pathlib.Path) -> str:
  try:
    return proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
  except OSError:  # the process ended meanwhile
    return ""
