"""scripts/gallery.py: one preset run shortened gives a section with its table, its checks and a small PNG; a run of
one preset keeps the other sections; the checks read the table's numbers in the declared order."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gallery.py"
spec = importlib.util.spec_from_file_location("gallery", SCRIPT)
gallery = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gallery)

OTHER = "<!-- gallery:other begin -->\n## other\n\nkept as it was: 0.123\n<!-- gallery:other end -->\n"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  """The gallery after a shortened run of `clipping` that also picks the best per clip_norm, into a page that already
  held another preset's section."""
  docs = tmp_path_factory.mktemp("docs")
  (docs / "gallery.md").write_text(f"old header\n\n{OTHER}")
  proc = subprocess.run([sys.executable, str(SCRIPT), "clipping", "--override", "steps=50", "--override",
                         "report.best_per=optimizer.clip_norm", "--docs", str(docs),
                         "--out", str(docs.parent / "sweeps")], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return docs


def section(text: str, name: str) -> str:
  return re.search(f"<!-- gallery:{name} begin -->\n(.*?)<!-- gallery:{name} end -->", text, re.DOTALL).group(1)


def test_section_has_command_comment_table_checks_and_plot(page):
  body = section((page / "gallery.md").read_text(), "clipping")
  assert ("`trainlab train -m experiment=clipping steps=50 report.best_per=optimizer.clip_norm` (overridden: not the "
          "preset's documented size)") in body
  assert "> `trainlab train -m experiment=clipping`: gradient descent down a shallow valley" in body  # the comment
  best, _, whole = body.partition("All runs:")
  assert "Each optimizer.clip_norm at its best configuration (the report's best.csv):" in best
  best_rows = [line for line in best.splitlines() if line.startswith("| ")]
  assert best_rows[0].startswith("| optimizer.clip_value | optimizer.clip_norm | runs | test/distance |")
  assert len(best_rows) == 1 + 2  # the header and one row per clip_norm
  rows = [line for line in whole.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| optimizer.clip_value | optimizer.clip_norm | runs | test/distance |")
  assert len(rows) == 1 + 4  # the header and one row per configuration of the 2 x 2 grid
  assert body.count("**Shown**") + body.count("**Not shown at this scale**") == 2  # the preset's two checks
  assert "![clipping: the report's trajectories.png](gallery/clipping.png)" in body
  png = page / "gallery" / "clipping.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 1000 < png.stat().st_size < gallery.MAX_PLOT_BYTES


def test_rerun_keeps_other_sections_and_rewrites_the_header(page):
  text = (page / "gallery.md").read_text()
  assert OTHER in text and "old header" not in text
  assert text.startswith("<!-- gallery:header begin -->\n# Gallery")
  assert re.search(r"Last updated \d{4}-\d\d-\d\d \d\d:\d\d UTC on .+, \d+ cores.*; trainlab ", text)


def test_write_page_replaces_only_the_given_section(tmp_path):
  path = tmp_path / "gallery.md"
  gallery.write_page(path, {"a": "first a", "b": "first b"}, "here")
  gallery.write_page(path, {"b": "second b"}, "here")
  text = path.read_text()
  assert section(text, "a") == "first a\n" and section(text, "b") == "second b\n"
  assert text.index("gallery:a begin") < text.index("gallery:b begin")


def test_checks_read_the_order_of_the_table():
  rows = [{"opt": "sgd", "eta": "null", "steps": 700.0}, {"opt": "momentum", "eta": "null", "steps": 150.0},
          {"opt": "sgd", "eta": "0.01", "steps": 390.0}, {"opt": "adam", "eta": "null", "steps": None}]
  shown, _ = gallery.evaluate({"metric": "steps", "increasing": [{"opt": "momentum"}, {"opt": "sgd"}]}, rows)
  assert shown  # 150 < 390 and 700
  assert gallery.malformed({"metric": "step", "increasing": []}, ["steps"]).startswith("report.csv has no column")
  assert gallery.malformed({"metric": "steps", "order": []}, ["steps"]) is not None
  shown, _ = gallery.evaluate({"metric": "steps", "increasing": [{"opt": "sgd", "eta": 0.01},
                                                                  {"opt": "sgd", "eta": None}]}, rows)
  assert shown  # 390 < 700: 0.01 and null matched as written on the command line
  shown, _ = gallery.evaluate({"metric": "steps", "decreasing": [{"opt": "momentum"}, {"opt": "sgd"}]}, rows)
  assert not shown
  shown, sentence = gallery.evaluate({"metric": "steps", "increasing": [[{"opt": "momentum"}, {"opt": "adam"}],
                                                                         {"opt": "sgd"}]}, rows)
  assert not shown and "no value" in sentence  # adam never reached the target: not a verdict in its favour


def test_leading_comment_and_unknown_preset():
  assert gallery.leading_comment("# @package _global_\n# one\n#\n# two\ndefaults: []\n# later\n") == "one\n\ntwo"
  proc = subprocess.run([sys.executable, str(SCRIPT), "no_such_preset"], capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "clipping" in proc.stderr


def test_a_failed_sweep_says_so_in_its_section(tmp_path):
  (tmp_path / "gallery.md").write_text(OTHER)
  proc = subprocess.run([sys.executable, str(SCRIPT), "clipping", "--override", "optimizer.lr=notanumber", "--docs",
                         str(tmp_path), "--out", str(tmp_path / "sweeps")], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "the sweeps of clipping failed" in proc.stderr
  text = (tmp_path / "gallery.md").read_text()
  body = section(text, "clipping")
  assert "**The sweep produced no table** (exit code 1)" in body and "optimizer.lr=notanumber" in body
  assert "| " not in body and not (tmp_path / "gallery").exists() and OTHER in text
