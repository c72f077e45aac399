"""The gallery: each experiment preset run at its documented size, its table and main plot in docs/gallery.md.

For each preset (conf/experiment/NAME.yaml, or the NAMEs given) this runs `trainlab train -m experiment=NAME`
into a fresh sweep directory, whose multirun ends with the sweep report (report.csv and the plots), and writes
the preset's section of docs/gallery.md: the command, what the preset shows (its YAML's leading comment), the
report's table trimmed to the columns that matter, the main plot downscaled to docs/gallery/NAME.png, and when,
where and with which trainlab it ran. Every number and plot comes from the run; none is typed in.

A preset may say more in a `gallery:` block (read here only; training ignores it):
  gallery:
    plot: trajectories.png      # the report's plot to show; default: trajectories.png when drawn, else curves.png
    checks:                     # the claim, as the table must show it; evaluated, and said when it did not show
      - metric: steps to val/distance=0.0001 mean   # a column of report.csv
        increasing:             # the column's values along this list must increase (`decreasing`: decrease);
          - {optimizer.momentum: 0.6694}   # each item picks the rows whose overrides match it (a list of such
          - {optimizer.momentum: null}     # mappings: any of them); all must be below all of the next item's
Without checks, the section shows the table as it came and says that no verdict is drawn.

Sections lie between `<!-- gallery:NAME begin -->` and `<!-- gallery:NAME end -->` markers: a run of some presets
rewrites their sections and keeps the others as they were.

Usage:  python scripts/gallery.py                       (every preset, one after another)
        python scripts/gallery.py symmetry clipping     (those two; the other sections are kept)
        python scripts/gallery.py clipping --override steps=50   (shortened: the section says so)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRESETS = ROOT / "conf" / "experiment"
MAX_PLOT_WIDTH = 720       # pixels of the gallery's PNGs: readable beside the text, a few tens of KB
MAX_PLOT_BYTES = 100_000   # the docs stay light to clone
SECTION = re.compile(r"<!-- gallery:(?P<name>[\w.-]+) begin -->\n(?P<body>.*?)<!-- gallery:(?P=name) end -->\n",
                     re.DOTALL)
HEADER = "header"  # the marker name of the page's top, rewritten on every run


# --- what a preset says ----------------------------------------------------------------------------------------
def preset_names() -> list[str]:
  return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def leading_comment(text: str) -> str:
  """The YAML's first comment block without the `# @package` line, as one paragraph per blank comment line."""
  lines = []
  for line in text.splitlines():
    if not line.startswith("#"):
      break
    if not line.startswith("# @package"):
      lines.append(line[1:].strip())
  return "\n".join(lines).strip()


def preset(name: str) -> dict:
  """The preset's leading comment and its `gallery:` block ({} when it has none)."""
  text = (PRESETS / f"{name}.yaml").read_text()
  return {"comment": leading_comment(text), "gallery": (yaml.safe_load(text) or {}).get("gallery") or {}}


# --- where and with what it ran --------------------------------------------------------------------------------
def machine() -> str:
  """The CPU model and core count (and the accelerator JAX would use, when it is not the CPU)."""
  model = platform.processor() or platform.machine()
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.is_file():
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
    model = found.group(1).strip() if found else model
  return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def version() -> str:
  """trainlab's package version, and the commit of this checkout when it is one (`+changes`: trainlab/ or conf/
  differ from it)."""
  text = f"trainlab {importlib.metadata.version('trainlab')}, jax {importlib.metadata.version('jax')}"
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", "trainlab", "conf"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return text
  return f"{text}, commit {commit}{'+changes' if changed else ''}"


# --- the table -------------------------------------------------------------------------------------------------
def read_rows(report_csv: pathlib.Path) -> tuple[list[str], list[dict]]:
  """report.csv's columns and rows, numbers as floats (counts as ints), empty cells as None; the override
  columns (those before `runs`) stay text, as written on the command line."""
  with open(report_csv, newline="") as f:
    reader = csv.DictReader(f)
    columns, rows = list(reader.fieldnames or []), list(reader)
  overrides = columns[:columns.index("runs")] if "runs" in columns else columns
  for row in rows:
    for key, cell in row.items():
      if key in overrides:
        continue
      if cell == "":
        row[key] = None
      elif key in ("runs", "diverged", "failed") or key.endswith(" reached"):
        row[key] = int(float(cell))
      else:
        row[key] = float(cell)
  return columns, rows


def table_columns(columns: list[str], rows: list[dict], checks: list[dict]) -> list[str]:
  """The columns that matter: the overrides, the run count (and diverged/failed where any did), the task
  metric's best validation and test values, the steps to the target, and whatever a check reads."""
  overrides = columns[:columns.index("runs")]
  counts = ["runs"] + [k for k in ("diverged", "failed") if any(row[k] for row in rows)]
  metric_columns = [c for c in columns if re.fullmatch(r"(best_val|test)/(?!loss ).+ (mean|std)", c)]
  steps = [c for c in columns if c.startswith("steps to ")]
  checked = {c for check in checks for c in (check["metric"], check["metric"].replace(" mean", " std"))}
  wanted = set(overrides + counts + metric_columns + steps) | checked
  return [c for c in columns if c in wanted]


def markdown_table(columns: list[str], rows: list[dict]) -> str:
  from trainlab.rundir import report  # the report's own `mean ± std` cells and number format

  return report.to_markdown([{c: row[c] for c in columns} for row in rows])


# --- the checks ------------------------------------------------------------------------------------------------
def _same(cell: str, wanted) -> bool:
  """A table cell (an override as written on the command line) against a YAML value: numbers by value."""
  wanted = "null" if wanted is None else str(wanted).lower() if isinstance(wanted, bool) else str(wanted)
  try:
    return float(cell) == float(wanted)
  except ValueError:
    return cell == wanted


def _label(selector: dict | list[dict]) -> str:
  if isinstance(selector, list):
    return " or ".join(f"({_label(s)})" for s in selector)
  return ", ".join(f"{k}={'null' if v is None else v}" for k, v in selector.items())


def _matches(row: dict, selector: dict | list[dict]) -> bool:
  """Whether the row's overrides match the mapping (or any mapping of the list)."""
  if isinstance(selector, list):
    return any(_matches(row, s) for s in selector)
  return all(k in row and _same(row[k], v) for k, v in selector.items())


def malformed(check: dict, columns: list[str]) -> str | None:
  """What is wrong with a check as the preset wrote it, against report.csv's columns; None when nothing."""
  if not isinstance(check, dict) or sorted(check) not in (["increasing", "metric"], ["decreasing", "metric"]):
    return f"a check has keys metric and increasing (or decreasing), got {check}"
  if check["metric"] not in columns:
    return f"report.csv has no column {check['metric']!r} (it has: {', '.join(columns)})"
  return None


def evaluate(check: dict, rows: list[dict]) -> tuple[bool, str]:
  """Whether the table shows the check's order, and a sentence with the values it read."""
  metric = check["metric"]
  direction = "increasing" if "increasing" in check else "decreasing"
  groups = [(selector, [row.get(metric) for row in rows if _matches(row, selector)]) for selector in check[direction]]
  described = "; ".join(f"{', '.join(_number(v) for v in vs) or 'no row'} for {_label(s)}" for s, vs in groups)
  if any(not vs or any(v is None or not math.isfinite(v) for v in vs) for _, vs in groups):
    return False, f"{metric} was declared {direction} along the list, but a row is missing or has no value: {described}"
  sign = 1 if direction == "increasing" else -1
  shown = all(max(sign * v for v in a) < min(sign * v for v in b) for (_, a), (_, b) in zip(groups, groups[1:]))
  return shown, f"{metric} {'is' if shown else 'was declared'} {direction} along the list: {described}"


def _number(x) -> str:
  from trainlab.rundir import report

  return "none" if x is None else report._fmt(x)


# --- one preset ----------------------------------------------------------------------------------------------
def run_sweep(name: str, overrides: list[str], out: pathlib.Path) -> tuple[pathlib.Path, int, float, str]:
  """`trainlab train -m experiment=NAME` into a fresh sweep directory: (the directory, exit code, seconds, the
  last lines of its output)."""
  sweep_dir = out / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
  command = [sys.executable, "-m", "trainlab", "train", "-m", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}",
             *overrides]
  print(f"gallery: {name}: {' '.join(command[2:])}", flush=True)
  out.mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  with open(f"{sweep_dir}.log", "w") as log:
    code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
  seconds = time.monotonic() - start
  lines = [line for line in pathlib.Path(f"{sweep_dir}.log").read_text().splitlines()
           if line.strip() and "HYDRA_FULL_ERROR" not in line]  # Hydra's hint, not the error
  return sweep_dir, code, seconds, "\n".join(lines[-5:])


def main_plot(sweep_dir: pathlib.Path, settings: dict) -> pathlib.Path | None:
  """The preset's named plot, else trajectories.png where the report drew one, else curves.png."""
  for name in ([settings["plot"]] if settings.get("plot") else []) + ["trajectories.png", "curves.png"]:
    if (sweep_dir / name).is_file():
      return sweep_dir / name
  return None


def small_png(source: pathlib.Path, target: pathlib.Path) -> None:
  """The plot at most MAX_PLOT_WIDTH wide, in a 256-colour palette (the plots are flat colours), under
  MAX_PLOT_BYTES."""
  from PIL import Image  # matplotlib's own image library

  image = Image.open(source).convert("RGB")
  width = MAX_PLOT_WIDTH
  while True:
    small = image.copy()
    small.thumbnail((width, width * image.height // image.width + 1), Image.Resampling.LANCZOS)
    small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    target.parent.mkdir(parents=True, exist_ok=True)
    small.save(target, format="PNG", optimize=True)
    if target.stat().st_size <= MAX_PLOT_BYTES or width <= 240:
      return
    width = width * 3 // 4


def section(name: str, overrides: list[str], docs: pathlib.Path, out: pathlib.Path,
            provenance: str) -> tuple[str, bool]:
  """Runs the preset and returns its section of the gallery (markers excluded), and whether its sweep ran
  through (exit code 0)."""
  settings = preset(name)
  checks = settings["gallery"].get("checks") or []
  command = " ".join(["trainlab train -m", f"experiment={name}", *overrides])
  sweep_dir, code, seconds, last = run_sweep(name, overrides, out)
  quoted = "\n".join(f"> {line}" if line else ">" for line in settings["comment"].splitlines())
  text = [f"## {name}\n", f"`{command}`" + (" (overridden: not the preset's documented size)" if overrides else ""),
          "", quoted, "",
          f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {provenance}; the sweep took "
          f"{seconds / 60:.1f} min.", ""]
  report_csv = sweep_dir / "report.csv"
  columns, rows = read_rows(report_csv) if report_csv.is_file() else ([], [])
  if "runs" not in columns:  # no report, or one without a run
    text += [f"**The sweep produced no table** (exit code {code}); the end of its log ({sweep_dir.name}.log):", "",
             "```", last, "```", ""]
    return "\n".join(text), False
  if code != 0:
    text += [f"**The sweep exited with code {code}**; the end of its log ({sweep_dir.name}.log):", "", "```", last,
             "```", ""]
  best_csv = sweep_dir / "best.csv"  # written where the preset sets report.best_per: the table the claim reads first
  if best_csv.is_file():
    best_columns, best_rows = read_rows(best_csv)
    key = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["report"]["best_per"]  # as the sweep ran it
    text += [f"Each {key} at its best configuration (the report's best.csv):", "",
             markdown_table(table_columns(best_columns, best_rows, []), best_rows), "All runs:", ""]
  text += [markdown_table(table_columns(columns, rows, checks), rows)]
  if checks:
    text.append("Checks of the claim, read from this table (what the comment says to look at elsewhere, in the "
                "curves or TensorBoard, is left to the reader):")
    for check in checks:
      problem = malformed(check, columns)
      if problem:
        text.append(f"- **Check not evaluated**: {problem}.")
        continue
      shown, sentence = evaluate(check, rows)
      text.append(f"- {'**Shown**' if shown else '**Not shown at this scale**'}: {sentence}.")
    text.append("")
  else:
    text += ["No check is declared for this preset: the table and plot are shown as they came, without a verdict; "
             "the comment above says what to look for.", ""]
  plot, png = main_plot(sweep_dir, settings["gallery"]), docs / "gallery" / f"{name}.png"
  if plot is not None:
    small_png(plot, png)
    text += [f"![{name}: the report's {plot.name}](gallery/{name}.png)", ""]
  else:
    png.unlink(missing_ok=True)  # an earlier run's plot would not belong to this table
  return "\n".join(text), code == 0


# --- the page --------------------------------------------------------------------------------------------------
def header(provenance: str) -> str:
  return "\n".join([
    "# Gallery: the course's claims, one command each", "",
    "Every experiment preset (`conf/experiment/`) run at its documented size by `python scripts/gallery.py`: its "
    "command, what it shows (the preset's own comment), the table of its sweep report and its main plot. Numbers "
    "and plots are the code's output, never typed in; where a preset declares a check of its claim, the section "
    "says whether the table shows it. Sections are regenerated one preset at a time "
    "(`python scripts/gallery.py NAME`), so each says when and where it ran.", "",
    f"Last updated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {provenance}.", ""])


def write_page(path: pathlib.Path, sections: dict[str, str], provenance: str) -> None:
  """Rewrites the header and the given sections, keeping every other section of the page as it was."""
  from trainlab.rundir import atomic

  kept = {m["name"]: m["body"] for m in SECTION.finditer(path.read_text())} if path.is_file() else {}
  kept.update({HEADER: header(provenance), **sections})
  order = [HEADER] + sorted(k for k in kept if k != HEADER)
  atomic.write_text(path, "".join(f"<!-- gallery:{k} begin -->\n{kept[k].rstrip()}\n<!-- gallery:{k} end -->\n"
                                  + ("" if k == order[-1] else "\n") for k in order))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", help="presets to run (default: every conf/experiment/*.yaml)")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="added to every preset's command (shortens it: the section says so)")
  parser.add_argument("--docs", type=pathlib.Path, default=ROOT / "docs", help="where gallery.md and gallery/ go")
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "outputs" / "gallery", help="the sweeps' parent")
  args = parser.parse_args(argv)
  available = preset_names()
  unknown = [n for n in args.names if n not in available]
  if unknown:
    print(f"gallery: no preset {', '.join(unknown)} in conf/experiment/; there are: {', '.join(available)}",
          file=sys.stderr)
    return 2
  provenance = f"{machine()}; {version()}"
  page = args.docs / "gallery.md"
  failed = []
  for name in args.names or available:  # one after another, the page written after each
    text, ran = section(name, args.override, args.docs, args.out.resolve(), provenance)
    write_page(page, {name: text}, provenance)
    failed += [] if ran else [name]
    print(f"gallery: {name}: written to {page}" + ("" if ran else " (its sweep failed: see its section)"), flush=True)
  if failed:
    print(f"gallery: the sweeps of {', '.join(failed)} failed; their sections say how", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
