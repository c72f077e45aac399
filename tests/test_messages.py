"""What the real command says while it works and where it put its files (a new user's first minutes)."""

from __future__ import annotations

import re

from conftest import run_cli

FAST = ["steps=100", "eval_every=50", "log_every=50", "model.widths=[16]", "diagnostics=off"]


def test_a_run_says_what_it_does_and_where_its_files_are(tmp_path):
  run = tmp_path / "run"
  out = run_cli("train", *FAST, f"hydra.run.dir={run}", cwd=tmp_path)
  lines = (out.stdout + out.stderr).splitlines()
  said = lambda pattern: any(re.search(pattern, line) for line in lines)
  assert said(r"loading data=mnist1d$")
  assert said(rf"run directory {re.escape(str(run))}; 3600 training, 400 validation, 1000 test examples; "
              r"compiling the program")
  assert said(r"step 50/100 .* \(\d+ steps/s, about \d+ s left\)")
  assert said(rf"the run's files are in {re.escape(str(run))} \(summary.json, metrics.jsonl, TensorBoard: "
              rf"trainlab tb {re.escape(str(run))}\)")


def test_a_sweep_says_where_its_report_is(tmp_path):
  sweep = tmp_path / "sweep"
  out = run_cli("train", "-m", *FAST, "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
  text = out.stdout + out.stderr
  assert f"results in {sweep / 'results.csv'}" in text
  assert re.search(rf"report in {re.escape(str(sweep / 'report.md'))}, plots curves.png, .*; TensorBoard: "
                   rf"trainlab tb {re.escape(str(sweep))}", text)
