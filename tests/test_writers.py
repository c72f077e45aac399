"""What writing a run's TensorBoard events costs a process: tensorboardX must not pull PyTorch in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT


def test_tensorboard_writers_leave_an_installed_torch_unimported(tmp_path):
  # A stand-in `torch` package on the path leaves a mark when imported. tensorboardX's writer module tries
  # `import torch` as it is imported, which would slow every run's start (docs/speed.md).
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("import pathlib\npathlib.Path(__file__).with_name('imported').touch()\n"
                                    "Tensor = object\n")
  run = tmp_path / "run"
  script = textwrap.dedent(f"""
      import pathlib, sys
      sys.path[:0] = [{str(tmp_path / 'site')!r}, {str(ROOT)!r}]
      from trainlab.rundir import writers
      writer = writers.RunWriter({str(run)!r})
      writer.write(1, {{"train/loss": 0.5}})
      writer.histogram(1, "h", [0.0, 1.0, 2.0])
      writer.close()
      writers.write_summary({str(run / "0")!r}, {{"status": "completed", "overrides": ["optimizer.lr=0.1"]}})
      writers.write_hparams_session({str(run / "0")!r}, {{"optimizer.lr": 0.1}}, {{"status": "completed"}})
      mark = pathlib.Path({str(fake / 'imported')!r})
      assert "torch" not in sys.modules and not mark.exists(), "the writers imported torch"
      import torch  # the user's own import of torch is untouched
      assert mark.exists() and torch.Tensor is object
      """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert list(run.glob("defaults/events.out.tfevents.*")), "no TensorBoard events written"
  assert list(run.glob("0/defaults/events.out.tfevents.*.session.hparams")), "no HParams session written"


def test_a_resumed_runs_hparams_session_survives_its_purge_within_one_second(tmp_path):
  """A resumed run that finishes in the second it started: its HParams session file and its own event file carry
  the same second: TensorBoard must keep both the session and the run's points after the purge."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from trainlab.rundir import writers

  first = writers.RunWriter(tmp_path)
  first.write(200, {"val/loss": 2.0})
  first.close()
  resumed = writers.RunWriter(tmp_path, purge_step=100)
  resumed.write(300, {"val/loss": 1.0})
  resumed.close()
  writers.write_hparams_session(tmp_path, {"optimizer.lr": 0.1}, {"status": "completed", "steps_run": 300})
  events = EventAccumulator(str(writers.events_dir(tmp_path)), size_guidance={"scalars": 0})
  events.Reload()
  assert set(events.PluginTagToContent("hparams")) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
  assert [(e.step, e.value) for e in events.Scalars("Val/loss")] == [(300, 1.0)]
