"""The sweep report: a table over seeds and plots, from the run directories of a multirun.

`trainlab report DIR` (and the callback at the end of every multirun) writes into the sweep directory:
- `report.md`, `report.csv`: one row per configuration (the job's overrides without `seed`), with the number
  of runs, how many diverged or failed, mean ± sample standard deviation over seeds of the best validation
  metrics (and, in report.csv, the final test metrics), and, when `report.target` is set, the steps to reach
  it; ranked by the best validation metric. Configurations are selected by validation: report.md gives the test
  metrics of the selected (best) configuration only, on its "best configuration" line, and links the plots;
- `best.csv`, with `report.best_per=KEY` (a swept key, such as `optimizer`): for each value of KEY, the best
  configuration among those with that value, by the same ranking (each optimizer at its best learning rate);
  report.md shows them, with their test metrics, in a "Best per KEY" table;
- `curves.png`: train and validation loss and task metric against steps, a line per configuration (the mean
  over seeds) in a band of ± one standard deviation;
- `sensitivity_<key>.png` for each swept numeric hyperparameter: the best validation metric against its value,
  a line per setting of the other swept keys, on a log axis when the values span a decade or more;
- `init_layers.png`: per-layer activation and backward gradient standard deviation at step 0 (from the
  diagnostics' `step0/<layer>/act_var` and `grad_var`), a line per configuration; configurations whose step-0
  statistics are identical (they differ only in what acts later, such as the optimizer) share one line;
- `trajectories.png`, for analytic problems in the plane (models.analytic): each run's path of θ over the
  contours of f, a colour per configuration.
It reads only the run directories' files (summary.json, metrics.jsonl, .hydra/config.yaml), and the training code
only to draw an analytic problem's f. The metric beside the loss is the task's: accuracy (higher is better), or
mse for a sweep of regressions, or distance for one of analytic problems (lower is better).
"""

from __future__ import annotations

import csv
import io
import math
import pathlib
import re
import sys
from typing import Any, NamedTuple

import numpy as np

from trainlab import metrics
from trainlab.rundir import atomic, jobs, writers


class Run(NamedTuple):
  job: str
  dir: pathlib.Path
  overrides: dict[str, str]  # key -> value as written on the command line, seed included
  summary: dict


class Group(NamedTuple):
  config: tuple[tuple[str, str], ...]  # the swept overrides that are not the seed
  runs: list[Run]

  @property
  def label(self) -> str:
    return ", ".join(f"{k}={v}" for k, v in self.config) or "all runs"


# --- reading a sweep -----------------------------------------------------------------------------------------
def find_sweep(path: pathlib.Path) -> pathlib.Path:
  """`path` itself when it holds job directories, else the newest sweep below it (by its multirun.yaml)."""
  path = pathlib.Path(path)
  if any((p / writers.SUMMARY_FILE).is_file() for p in jobs.job_dirs(path)):
    return path
  marks = list(path.rglob("multirun.yaml")) + list(path.rglob("results.csv"))
  if not marks:
    raise FileNotFoundError(f"no sweep under {path}: no job directories with {writers.SUMMARY_FILE}")
  return max(marks, key=lambda p: p.stat().st_mtime).parent


def load_runs(sweep_dir: pathlib.Path) -> list[Run]:
  return [Run(job_dir.name, job_dir, jobs.parse_overrides(summary.get("overrides", [])), summary)
          for job_dir, summary in writers.job_summaries(sweep_dir)]


def swept_keys(runs: list[Run]) -> list[str]:
  """Override keys (not the seed) whose value differs between runs, or that only some runs set."""
  keys = {k: None for r in runs for k in r.overrides if k != "seed"}
  return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def group_runs(runs: list[Run]) -> list[Group]:
  """Runs grouped by configuration: equal swept overrides; what differs within a group is the seed."""
  keys = swept_keys(runs)
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    config = tuple((k, run.overrides[k]) for k in keys if k in run.overrides)
    groups.setdefault(config, []).append(run)
  return [Group(config, members) for config, members in groups.items()]


def curve(points: list[dict], name: str) -> dict[int, float]:
  """step -> value of one metric (the last one written at that step)."""
  return {p["step"]: p[name] for p in points if p.get(name) is not None}


def steps_to_target(points: list[dict], metric: str, target: float) -> int | None:
  """The first step at which `metric` reaches `target` (>= where higher is better, else <=); None if never."""
  higher = metrics.higher_is_better(metric)
  for step, x in sorted(curve(points, metric).items()):
    if (x >= target) if higher else (x <= target):
      return step
  return None


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
  xs = [x for x in xs if x is not None and math.isfinite(x)]
  if not xs:
    return None, None
  return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None


# --- the table -----------------------------------------------------------------------------------------------
def table(groups: list[Group], metric: str = "val/accuracy", target: float | None = None,
          task_metric: str = "accuracy") -> list[dict]:
  """One row per configuration, best first by the best validation metric (mean over seeds): its overrides, run
  counts, and mean/std of each metric."""
  rows = []
  names = writers.final_metrics(task_metric)
  if any(r.summary.get(writers.ZERO_FRACTION) for g in groups for r in g.runs):  # sparse weights: show how sparse
    names += (writers.ZERO_FRACTION,)
  if any(r.summary.get("test/ece") is not None for g in groups for r in g.runs):  # a classification's calibration
    names += ("test/ece",)
  if any(r.summary.get(f"gap/{task_metric}") is not None for g in groups for r in g.runs):  # runlog: train - val
    names += (f"gap/{task_metric}",)
  for group in groups:
    row = {**dict(group.config), "runs": len(group.runs),
           "diverged": sum(r.summary.get("status") == "diverged" for r in group.runs),
           "failed": sum(r.summary.get("status") == "failed" for r in group.runs)}
    for name in names:
      row[f"{name} mean"], row[f"{name} std"] = _mean_std([r.summary.get(name) for r in group.runs])
    if target is not None:
      steps = [steps_to_target(writers.read_metrics(r.dir), metric, target) for r in group.runs]
      key = f"steps to {metric}={target:g}"
      row[f"{key} mean"], row[f"{key} std"] = _mean_std([s for s in steps if s is not None])
      row[f"{key} reached"] = sum(s is not None for s in steps)
    rows.append(row)
  sort, sign = f"best_val/{task_metric} mean", -1.0 if metrics.higher_is_better(task_metric) else 1.0
  rows.sort(key=lambda r: (r[sort] is None, sign * (r[sort] or 0.0)))
  return rows


def best_rows_per(rows: list[dict], key: str) -> list[dict]:
  """For each value of the swept `key`, the first of the ranked rows (table()) that has it: the best
  configuration among those with that value, by the same rule; in the table's order, so the best value first."""
  picked: dict[Any, dict] = {}
  for row in rows:
    picked.setdefault(row.get(key), row)
  return list(picked.values())


def check_best_per(key: str | None, runs: list[Run]) -> None:
  """report.best_per must name a key that the sweep varies (not the seed: runs differing only in it are averaged)."""
  keys = swept_keys(runs)
  if key is not None and key not in keys:
    raise ValueError(f"report.best_per={key} is not a swept key of this sweep; its swept keys (the seed aside) are: "
                     f"{', '.join(keys) or 'none'}")


SIGNIFICANT_DIGITS = 3  # of every number in report.md


def _fmt(x: Any) -> str:
  """A number for people: floats to SIGNIFICANT_DIGITS significant digits, trailing zeros kept (0.400), and
  whole numbers of that many digits or more as integers (1250, not 1.25e+03)."""
  if not isinstance(x, float):
    return "" if x is None else str(x)
  if math.isfinite(x) and abs(x) >= 10 ** SIGNIFICANT_DIGITS:
    return f"{x:.0f}"
  return f"{x:#.{SIGNIFICANT_DIGITS}g}".rstrip(".")


def _csv_value(x: Any) -> Any:
  """A float that a float32 holds exactly (the metrics, computed in float32) as float32's shortest form: 0.406,
  not 0.4059999883174896; any other float in full."""
  if isinstance(x, float) and math.isfinite(x) and float(np.float32(x)) == x:
    return str(np.float32(x))
  return x


def to_csv(rows: list[dict], columns: list[str] | None = None) -> str:
  """The rows as CSV (None as an empty cell): `columns`, or every key of the rows in their order."""
  text = io.StringIO()
  out = csv.DictWriter(text, fieldnames=columns or list({k: None for row in rows for k in row}),
                       lineterminator="\n", extrasaction="ignore")
  out.writeheader()
  out.writerows({k: _csv_value(x) for k, x in row.items()} for row in rows)
  return text.getvalue()


def to_markdown(rows: list[dict]) -> str:
  """The table with `mean ± std` cells, for people."""
  if not rows:
    return "(no runs)\n"
  header, cells = [], []
  for row in rows:
    line = {}
    for key, x in row.items():
      if key.endswith(" std"):
        continue
      if key.endswith(" mean"):
        name, std = key[:-5], row[key[:-5] + " std"]
        line[name] = _fmt(x) + (f" ± {_fmt(std)}" if std is not None else "")
      elif key.endswith(" reached"):
        line[key] = f"{x}/{row['runs']}"
      else:
        line[key] = _fmt(x)
    header += [k for k in line if k not in header]
    cells.append(line)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(line.get(k, "") for k in header) + " |" for line in cells]
  return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------------------------
def _figure(ncols: int, nrows: int = 1):
  from matplotlib.figure import Figure  # the object API: no pyplot, no display, no global state

  fig = Figure(figsize=(6 * ncols, 4.5 * nrows), layout="constrained")
  return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]


def _legend(ax) -> None:
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")


def _band(points_per_run: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Steps, mean and standard deviation over the runs that have a value at each step."""
  steps = sorted({s for points in points_per_run for s in points})
  values = [[p[s] for p in points_per_run if s in p] for s in steps]
  mean = np.array([np.mean(v) for v in values])
  std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
  return np.array(steps), mean, std


def plot_curves(groups: list[Group], task_metric: str = "accuracy"):
  """Train and validation loss (top) and task metric (bottom) against steps: a line per configuration, a band
  over its seeds."""
  fig, axes = _figure(2, 2)
  names = ("train/loss", "val/loss", f"train/{task_metric}", f"val/{task_metric}")
  for ax, name in zip(axes, names):
    for group in groups:
      curves = [c for c in (curve(writers.read_metrics(r.dir), name) for r in group.runs) if c]
      if not curves:
        continue
      steps, mean, std = _band(curves)
      (line,) = ax.plot(steps, mean, label=group.label)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(title=name, xlabel="step", ylabel=name.split("/")[1])
    _legend(ax)
  return fig


def numeric_keys(groups: list[Group]) -> list[str]:
  """Swept keys whose values are all numbers, with at least two distinct values."""
  keys = []
  for key in {k: None for g in groups for k, _ in g.config}:
    values = [dict(g.config).get(key) for g in groups]
    try:
      numbers = {float(v) for v in values}
    except (TypeError, ValueError):
      continue
    if len(numbers) > 1:
      keys.append(key)
  return keys


def plot_sensitivity(groups: list[Group], key: str, metric: str = "test/accuracy"):
  """The final metric against one swept hyperparameter, a line per setting of the other swept keys."""
  fig, (ax,) = _figure(1)
  lines: dict[str, list[tuple[float, float, float]]] = {}
  for group in groups:
    config = dict(group.config)
    mean, std = _mean_std([r.summary.get(metric) for r in group.runs])
    if mean is None:
      continue
    rest = ", ".join(f"{k}={v}" for k, v in group.config if k != key) or metric
    lines.setdefault(rest, []).append((float(config[key]), mean, std or 0.0))
  xs_all = []
  for label, points in lines.items():
    x, y, err = map(np.array, zip(*sorted(points)))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    xs_all += list(x)
  if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
    ax.set_xscale("log")
  ax.set(title=f"{metric} against {key}", xlabel=key, ylabel=metric)
  _legend(ax)
  return fig


def step0_layers(points: list[dict]) -> dict[str, dict[str, float]]:
  """{layer: {"act_var", "grad_var"}} from the step-0 diagnostics, layers in forward order."""
  layers: dict[str, dict[str, float]] = {}
  for p in points:
    for name, x in p.items():
      if name.startswith("step0/") and x is not None:
        layer, quantity = name[len("step0/"):].rsplit("/", 1)
        layers.setdefault(layer, {})[quantity] = x
  return layers


def alike_label(groups: list[Group]) -> str:
  """The label of a line that several configurations draw alike: the overrides they share, then how the others
  vary (`init=he (alike for optimizer.lr=0.003|0.03)`); one configuration's own label."""
  if len(groups) == 1:
    return groups[0].label
  configs = [dict(g.config) for g in groups]
  keys = {k: None for config in configs for k in config}
  values = {k: list({config.get(k, "(unset)"): None for config in configs}) for k in keys}
  shared = ", ".join(f"{k}={v[0]}" for k, v in values.items() if len(v) == 1) or "all"
  return f"{shared} (alike for {', '.join(f'{k}=' + '|'.join(v) for k, v in values.items() if len(v) > 1)})"


def plot_init_layers(groups: list[Group]):
  """Per-layer activation and gradient standard deviation at step 0, a line per configuration (seed mean);
  configurations with identical values share a line (alike_label), which would otherwise hide the others."""
  fig, axes = _figure(2)
  drawn = False
  for ax, quantity, title in zip(axes, ("act_var", "grad_var"), ("activation std (forward)",
                                                                  "gradient std (backward)")):
    lines: dict[tuple, list[Group]] = {}  # (layers, values) -> the configurations that draw it
    for group in groups:
      per_run = [step0_layers(writers.read_metrics(r.dir)) for r in group.runs]
      per_run = [p for p in per_run if p]
      if per_run:
        layers = tuple(layer for layer in per_run[0] if quantity in per_run[0][layer])
        std = tuple(float(np.mean([math.sqrt(p[layer][quantity]) for p in per_run if quantity in p.get(layer, {})]))
                    for layer in layers)
        lines.setdefault((layers, std), []).append(group)
    for (layers, std), alike in lines.items():
      ax.plot(range(len(layers)), std, marker="o", label=alike_label(alike))
      ax.set_xticks(range(len(layers)), layers, rotation=30, fontsize="small")
      drawn = True
    ax.set(title=f"{title} at step 0", xlabel="layer", ylabel="std", yscale="log")
    _legend(ax)
  return fig if drawn else None


def plane_problem(run_dir: pathlib.Path):
  """The analytic problem in the plane (models.analytic, dim 2) that a run trained, from its .hydra/config.yaml;
  None for any other model. The one place the report reads code: to draw f's contours under the runs' paths."""
  from omegaconf import OmegaConf

  config_file = pathlib.Path(run_dir) / ".hydra" / "config.yaml"
  if not config_file.is_file():
    return None
  model_cfg = OmegaConf.load(config_file).get("model")
  if model_cfg is None or not str(model_cfg.get("_target_", "")).startswith("trainlab.models."):
    return None
  from hydra.utils import instantiate

  from trainlab.models import analytic  # JAX: only for a sweep of analytic problems

  problem = instantiate(model_cfg, num_outputs=1)
  return problem if isinstance(problem, analytic.Problem) and problem.dim == 2 else None


def trajectory(points: list[dict]) -> np.ndarray:
  """(steps, 2): θ's two coordinates at each evaluation (val/coord_0, val/coord_1) of a run in the plane."""
  return np.array([(p["val/coord_0"], p["val/coord_1"]) for p in points if "val/coord_1" in p
                   and "val/coord_2" not in p], np.float64).reshape(-1, 2)


def plot_trajectories(groups: list[Group]):
  """For analytic problems in the plane: each run's path of θ (its coordinates, from the start point, at every
  evaluation) over the contours of f, a colour per configuration (its overrides in the legend); a panel per
  distinct problem. None when no run is one."""
  import jax

  panels: dict[str, tuple[Any, list[tuple[int, Group, np.ndarray]]]] = {}
  for i, group in enumerate(groups):
    for run in group.runs:
      path = trajectory(writers.read_metrics(run.dir))
      problem = plane_problem(run.dir) if len(path) else None
      if problem is not None:
        panels.setdefault(repr(problem), (problem, []))[1].append((i, group, path))
  if not panels:
    return None
  fig, axes = _figure(len(panels))
  for ax, (problem, lines) in zip(axes, panels.values()):
    start = np.asarray(problem.coordinates(problem.start_point()), np.float64)
    best = np.asarray(problem.coordinates(problem.minimizer(problem.start_point())), np.float64)
    paths = [np.concatenate([start[None], path]) for _, _, path in lines]
    shown = np.concatenate([start[None], best[None], *paths])
    span = np.ptp(np.stack([start, best]), axis=0).max() or 1.0
    shown = shown[np.all(np.isfinite(shown) & (np.abs(shown - start) < 100 * span), axis=1)]  # not a divergence
    lo, hi = shown.min(axis=0), shown.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-3 * span)
    grid = np.stack(np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
                                np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200)), axis=-1)
    f = jax.vmap(lambda c: problem.objective(problem.from_coordinates(c)))(grid.reshape(-1, 2).astype(np.float32))
    f = np.asarray(f, np.float64).reshape(grid.shape[:2])
    floor = float(problem.objective(problem.minimizer(problem.start_point())))
    levels = floor + np.geomspace(1e-3, max(np.nanmax(f) - floor, 1e-2), 20)
    ax.contour(grid[..., 0], grid[..., 1], f, levels=levels, colors="0.75", linewidths=0.7)
    labelled = set()
    for (i, group, _), path in zip(lines, paths):
      ax.plot(path[:, 0], path[:, 1], marker=".", markersize=3, linewidth=1, color=f"C{i % 10}",
              label=None if i in labelled else group.label)
      labelled.add(i)
    ax.plot(*best, marker="*", markersize=12, color="black", linestyle="none", label="minimum")
    ax.set(title=f"model={problem.option}: θ at each evaluation over the contours of f", xlabel="coord_0",
           ylabel="coord_1", xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]))
    _legend(ax)
  return fig


def _slug(key: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


# --- the whole report ----------------------------------------------------------------------------------------
def write_report(sweep_dir: pathlib.Path, metric: str | None = None, target: float | None = None,
                 best_per: str | None = None) -> dict:
  """Writes report.md, report.csv, best.csv (with `best_per`) and the PNG plots into `sweep_dir`; returns
  {name: path} and the text. `metric` is the curve that steps-to-target reads; None: the task's validation metric.

  Raises:
    ValueError: `best_per` is not a swept key of the sweep (before anything is written).
  """
  sweep_dir = pathlib.Path(sweep_dir)
  groups = group_runs(load_runs(sweep_dir))
  runs = [r for g in groups for r in g.runs]
  check_best_per(best_per, runs)
  task_metric = writers.task_metric([r.summary for r in runs])
  metric = metric or f"val/{task_metric}"
  common = sorted({f"{k}={v}" for r in runs for k, v in r.overrides.items() if k != "seed"}
                  - {f"{k}={v}" for g in groups for k, v in g.config})
  rows = table(groups, metric, target, task_metric)
  out = {"report.md": sweep_dir / "report.md", "report.csv": sweep_dir / "report.csv"}
  atomic.write_text(out["report.csv"], to_csv(rows))
  best_section = ""
  if best_per is None:  # a best.csv of an earlier report would not match this one's table
    (sweep_dir / "best.csv").unlink(missing_ok=True)
  else:  # selected by validation, like the best configuration: their test metrics are shown
    out["best.csv"] = sweep_dir / "best.csv"
    best_rows = best_rows_per(rows, best_per)
    atomic.write_text(out["best.csv"], to_csv(best_rows))
    best_section = (f"\n## Best per {best_per}\n\nFor each {best_per}, its best configuration by "
                    f"best_val/{task_metric} (mean over seeds), with its test metrics ([best.csv](best.csv)):\n\n"
                    + to_markdown(best_rows))
  figures = {"curves.png": plot_curves(groups, task_metric), "init_layers.png": plot_init_layers(groups),
             "trajectories.png": plot_trajectories(groups)}
  for key in numeric_keys(groups):
    figures[f"sensitivity_{_slug(key)}.png"] = plot_sensitivity(groups, key, f"best_val/{task_metric}")
  for name, fig in figures.items():
    if fig is not None:
      with atomic.replacing(sweep_dir / name) as f:
        fig.savefig(f, format="png", dpi=100)
      out[name] = sweep_dir / name
  validation_rows = [{k: x for k, x in row.items() if not k.startswith("test/")} for row in rows]
  markdown = (f"{len(runs)} runs in {len(groups)} configurations; common to all: "
              f"{' '.join(common) or '(nothing)'}\n\n{best_line(rows, task_metric)}\n\n"
              + to_markdown(validation_rows) + best_section + "\nPlots: "
              + ", ".join(f"[{name}]({name})" for name in out if name.endswith(".png")) + "\n")
  atomic.write_text(out["report.md"], f"# Report: {sweep_dir}\n\n" + markdown)
  return {"markdown": markdown, **out}


def best_line(rows: list[dict], task_metric: str) -> str:
  """The selected configuration (the table's first row: best by validation) with its test metrics, and the
  rule that selected it."""
  selected, best = f"best_val/{task_metric}", rows[0] if rows else None
  if best is None or best[f"{selected} mean"] is None:
    return f"No configuration has a {selected}: none is selected."

  def stat(name: str) -> str:
    mean, std = best[f"{name} mean"], best[f"{name} std"]
    return f"{name} {_fmt(mean)}" + (f" ± {_fmt(std)}" if std is not None else "")

  config = ", ".join(f"{k}={best[k]}" for k in list(best)[:list(best).index("runs")])  # its overrides come first
  return (f"**Best configuration** (by {selected}, the mean over seeds of each run's best validation point; the "
          f"test set is reported for it alone): {config or 'all runs'}: {stat(selected)}, "
          f"{stat(f'test/{task_metric}')}, {stat('test/loss')} ({best['runs']} runs)")


def sweep_report_settings(sweep_dir: pathlib.Path) -> dict:
  """The `report` keys the sweep ran with (its multirun.yaml), so that `trainlab report DIR` rebuilds the report
  the sweep wrote; none where the directory has no multirun.yaml (jobs gathered by hand)."""
  from omegaconf import OmegaConf

  settings = {"metric": None, "target": None, "best_per": None}
  path = sweep_dir / "multirun.yaml"
  if path.is_file():
    ran = OmegaConf.to_container(OmegaConf.load(path).get("report") or {})
    settings.update({k: ran.get(k) for k in settings})
  return settings


def main(argv: list[str]) -> int:
  """`trainlab report [DIR] [report.target=X] [report.metric=NAME] [report.best_per=KEY]`; prints the table and
  the files. Keys not given are the sweep's own; `null` unsets one."""
  given, paths = {}, []
  for arg in argv:
    key, value = jobs.parse_override(arg)
    if "=" in arg and key in ("report.target", "report.metric", "report.best_per"):
      none = value in ("null", "None", "")
      given[key.split(".")[1]] = None if none else float(value) if key == "report.target" else value
    elif arg.startswith("-"):
      print("usage: trainlab report [DIR] [report.target=X] [report.metric=NAME] [report.best_per=KEY]",
            file=sys.stderr)
      return 0 if arg in ("-h", "--help") else 2
    else:
      paths.append(arg)
  try:
    sweep_dir = find_sweep(pathlib.Path(paths[0] if paths else "outputs"))
  except (FileNotFoundError, NotADirectoryError) as e:
    print(f"trainlab report: {e}", file=sys.stderr)
    return 2
  settings = {**sweep_report_settings(sweep_dir), **given}  # the sweep's own report, but for what the user names
  try:
    out = write_report(sweep_dir, **settings)
  except ValueError as e:  # a report.best_per that the sweep does not vary
    print(f"trainlab report: {e}", file=sys.stderr)
    return 2
  print(out.pop("markdown"), end="")
  print("\nwrote " + ", ".join(str(p) for p in out.values()))
  return 0
