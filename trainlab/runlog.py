"""The host side of one run, between compiled chunks: plain calls in the loop's order.

  record, state = open_run(...)      writers, diagnostics, checkpoints, early stopping; with resume=true,
                                     the latest checkpoint's state and records
  diagnose(record, state)            the diagnostics due at the starting point
  per chunk:
    record_chunk(record, ...)        the per-step metrics: divergence, the log windows   -> True: diverged
    record_evaluation(record, ...)   validation, best point, diagnostics, early stopping,
                                     checkpoint, interruption                            -> True: stop here
  summary = summarize(record, state, evaluate_test)
  close(record)

The single-run loop (trainlab.train) and the vectorized launcher's loop (one RunRecord per member) make the
same calls; the state is always passed as a value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from trainlab import diagnostics, distributed, losses, metrics, regularizers
from trainlab.rundir import checkpoint, writers
from trainlab.signals import StopRequest


@dataclasses.dataclass
class Window:
  """The sums of the per-step training metrics over the current `log_every` window."""
  sums: dict = dataclasses.field(default_factory=dict)
  count: int = 0

  def add(self, step_metrics: dict[str, float]) -> None:
    for k, v in step_metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.count += 1

  def pop(self) -> dict[str, float]:
    means = {f"train/{k}": v / self.count for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    return means


@dataclasses.dataclass
class RunRecord:
  """What the host keeps of one run: its files, its progress, and how it ended so far."""
  cfg: DictConfig
  workdir: pathlib.Path
  log: logging.Logger
  stop: StopRequest
  steps: int  # the run's total
  chunk_steps: int
  metric: str  # the task's validation metric: val/accuracy or val/mse
  writer: writers.RunWriter
  monitor: diagnostics.Monitor
  checkpointer: checkpoint.Checkpointer
  stopper: regularizers.EarlyStopping | None
  started: float  # perf_counter at the job's start
  startup_seconds: float  # from the job's start to the first state
  data_fingerprint: dict  # what identifies the data (checkpoint.data_fingerprint): a resume must train on the same
  step: int = 0
  first_step: int = 0  # where this session started (a resumed run's checkpoint)
  window: Window = dataclasses.field(default_factory=Window)
  best: dict | None = None  # the best validation point: {"step", "val/loss", metric}
  status: str = "completed"
  diverged_at: int | None = None
  train_seconds: float = 0.0  # in the chunks, compilation excluded
  earlier_seconds: float = 0.0  # wall time of the sessions before a resume
  last_loss: float = math.nan
  last_val: dict | None = None  # the latest validation point
  last_train: dict | None = None  # the latest logged training point (a log_every window's means)
  stage: int | None = None  # a staged run's current stage, from 1 (trainlab.stages); None for other runs
  stage_results: list = dataclasses.field(default_factory=list)  # what each finished stage reached


def open_run(cfg: DictConfig, workdir: pathlib.Path, run: Any, state: Any, stop: StopRequest,
             logger: logging.Logger, started: float) -> tuple[RunRecord, Any]:
  """Opens a run's record (run: the train.Setup) and returns it with the state to start from: with resume=true,
  the latest sound checkpoint's. Its config and data are checked first, so that a refused resume leaves the
  directory as it was; a checkpoint that does not restore is set aside with a warning, for the one before."""
  workdir = pathlib.Path(workdir)
  fingerprint = checkpoint.data_fingerprint(_container(cfg)["data"])
  checkpointer = checkpoint.Checkpointer(workdir, cfg.checkpoint.keep)
  stopping = regularizers.hooks(cfg.regularizer, "between_chunks")
  stopper = stopping[0][0](stopping[0][1]) if stopping else None
  try:
    step, host, state, checkpointer = _latest_sound(cfg, workdir, checkpointer, state, stopper, fingerprint, logger)
  except Exception:
    checkpointer.close()
    raise
  # Resumed, the logs past the checkpoint go: they are about to be written again (all of them, without one).
  writer = writers.RunWriter(workdir, purge_step=(step + 1 if host else 0) if cfg.resume else None,
                            silent=not distributed.is_leader())  # a distributed run's records: process 0's
  writer.config(OmegaConf.to_yaml(cfg, resolve=True))
  monitor = diagnostics.Monitor(cfg.diagnostics, run.program.diagnostics, run.dataset.x_train, run.dataset.y_train,
                                writer, resumed_at=step if host else None, final_step=run.spec.total_steps)
  record = RunRecord(cfg, workdir, logger, stop, run.spec.total_steps, run.spec.chunk_steps,
                     f"val/{losses.TASKS[run.dataset.task].metric_name}", writer, monitor, checkpointer, stopper,
                     started, time.perf_counter() - started, fingerprint)
  if host:
    record.step = record.first_step = int(state.step)
    record.best, record.train_seconds = host["best"], host["train_seconds"]
    record.window = Window(host["window_sums"], host["window_count"])
    record.earlier_seconds = host.get("wall_seconds", 0.0)
    record.last_val, record.last_train = host.get("last_val"), host.get("last_train")  # older checkpoints: none
    if "stage" in host:
      record.stage, record.stage_results = host["stage"], host["stage_results"]
    logger.info("resuming from the checkpoint at step %d", record.step)
  elif cfg.resume:
    logger.info("no checkpoint to resume from in %s: the run starts from step 0", workdir)
  return record, state


def _latest_sound(cfg: DictConfig, workdir: pathlib.Path, checkpointer: checkpoint.Checkpointer, state: Any,
                  stopper: regularizers.EarlyStopping | None, fingerprint: dict, logger: logging.Logger):
  """(step, host record, state, checkpointer) of the newest checkpoint that restores and matches its checksums,
  early stopping's state restored into `stopper`; (0, None, state, checkpointer) when the run has none.

  Raises:
    checkpoint.ResumeError: the run's config or data differ from this one's, or it has checkpoints and none of
      them restores (they are all set aside: starting over would drop the run's logs).
  """
  for step in reversed(checkpointer.all_steps() if cfg.resume else []):
    try:
      host = checkpointer.restore_host(step)
    except Exception as e:  # noqa: BLE001 - an unreadable record is a corrupt checkpoint
      host, error = None, checkpoint.CorruptCheckpoint(f"its host record does not read: {_first_line(e)}")
    if host is not None:
      checkpoint.check_same_config(host["config"], checkpoint.run_config(_container(cfg)), workdir)
      checkpoint.check_same_data(host.get("data_fingerprint"), fingerprint, workdir)
      try:
        restored = _restore(checkpointer, state, step, workdir, "checksums" in host)
        trees = {"state": restored}
        if "early_stopping" in host:
          trees["best"] = _restore(checkpointer, (state.params, state.model_state), step, workdir, True, "best")
        checkpoint.verify(host, trees, step)
        if stopper is not None and "early_stopping" in host:
          stopper.load(host["early_stopping"], trees["best"])
        return step, host, restored, checkpointer
      except checkpoint.CorruptCheckpoint as e:
        error = e
    checkpointer.close()
    aside = checkpoint.set_aside(workdir, step)
    logger.warning("the checkpoint at step %d in %s is corrupt (%s): set aside as %s; trying the one before", step,
                   workdir, error, aside.relative_to(workdir))
    checkpointer = checkpoint.Checkpointer(workdir, cfg.checkpoint.keep)
  aside = checkpoint.set_aside_ones(workdir)
  if cfg.resume and aside:
    raise checkpoint.ResumeError(
        f"cannot resume the run in {workdir}: none of its checkpoints restores (set aside in "
        f"{workdir / checkpoint.CHECKPOINT_DIR}: {', '.join(aside)}); the same command with resume=false and "
        "another hydra.run.dir trains the run again from step 0 in a fresh directory")
  return 0, None, state, checkpointer


def _first_line(e: Exception) -> str:
  """The gist of a library's error: its first line, without TensorStore's pointer to its details."""
  return str(e).splitlines()[0].split(". See full TensorStore details")[0][:200] if str(e) else type(e).__name__


def _restore(checkpointer: checkpoint.Checkpointer, target: Any, step: int, workdir: pathlib.Path,
             checksummed: bool, name: str = "state") -> Any:
  """A tree of a checkpoint; a checksummed checkpoint that fails to restore is corrupt, an older one is another
  version's (ResumeError)."""
  try:
    return checkpointer.restore(target, step, name)
  except Exception as e:  # noqa: BLE001 - orbax raises many kinds; the message says which
    if checksummed:
      raise checkpoint.CorruptCheckpoint(f"its {name} does not restore: {_first_line(e)}") from None
    raise checkpoint.ResumeError(
        f"cannot resume the run in {workdir}: its checkpoint at step {step} does not hold this program's state "
        f"(written by another version of trainlab?): {str(e).splitlines()[0][:200]}. Start a new run in "
        "another directory") from None


def diagnose(record: RunRecord, state: Any) -> None:
  """The diagnostics due at this step, if any."""
  if record.monitor.is_due(record.step):
    record.monitor(record.step, state)


def record_chunk(record: RunRecord, chunk_metrics: dict[str, np.ndarray], run_now: int, seconds: float) -> bool:
  """Walks a chunk's per-step metrics (on the host); returns True when the run diverged in it."""
  record.train_seconds += seconds
  log_every = int(record.cfg.log_every)  # a plain int: read at every step
  for i in range(run_now):
    record.step += 1
    if not math.isfinite(chunk_metrics["loss"][i]):
      record.status, record.diverged_at = "diverged", record.step
      if record.window.count:  # the finite steps of the last window: the curve runs up to the divergence
        record.writer.write(record.step - 1, record.window.pop())
      record.log.warning("diverged: the training loss became %s at step %d", chunk_metrics["loss"][i], record.step)
      return True
    record.window.add({k: float(v[i]) for k, v in chunk_metrics.items()})
    if record.step % log_every == 0 or record.step == record.steps:
      record.last_train = record.window.pop()
      record.writer.write(record.step, record.last_train)
  record.last_loss = float(chunk_metrics["loss"][run_now - 1])
  return False


def record_evaluation(record: RunRecord, val: dict, run_now: int, state: Any) -> bool:
  """Records the validation metrics after a chunk; returns True when the run stops here (early stopping, or a
  signal: then the run is `interrupted`), after the checkpoint it takes then."""
  step, metric = record.step, record.metric
  record.stop.poll()
  record.stop.signal_name = distributed.agree_on_stop(record.stop.signal_name)  # all processes stop together
  val = {f"val/{k}": float(v) for k, v in val.items()}
  record.writer.write(step, val)
  record.last_val = val
  if metrics.is_better(val[metric], record.best and record.best[metric], metric):
    record.best = {"step": step, **val}
  # The best point so far as a curve beside the validation curves (a single point would hide in TensorBoard).
  record.writer.plot(step, {"best_val/loss": record.best["val/loss"], f"best_{metric}": record.best[metric]})
  diagnose(record, state)
  rate = (step - record.first_step) / max(record.train_seconds, 1e-9)  # steps per second in the chunks
  record.log.info("step %d/%d  train/loss %.4f  val/loss %.4f  %s %.4f  (%.0f steps/s, about %s left)", step,
                  record.steps, record.last_loss, val["val/loss"], metric, val[metric], rate,
                  _duration((record.steps - step) / max(rate, 1e-9)))
  stop_early = record.stopper is not None and record.stopper.update(step, val, state)
  every = record.cfg.checkpoint.every
  passed_a_multiple = bool(every) and step // every > (step - run_now) // every
  if step == record.steps or record.stop.signal_name or stop_early or passed_a_multiple:
    save_checkpoint(record, state)
  if stop_early:
    record.log.info("early stopping at step %d: no better val/%s in %d evaluations since step %d", step,
                    record.stopper.metric, record.stopper.patience, record.stopper.best_step)
    return True
  if record.stop.signal_name and step < record.steps:
    record.status = "interrupted"
    return True
  return False


def save_checkpoint(record: RunRecord, state: Any) -> None:
  record.writer.flush()  # the logs first: a checkpoint must never be ahead of them
  host = {"best": record.best, "train_seconds": record.train_seconds, "window_sums": record.window.sums,
          "window_count": record.window.count, "config": checkpoint.run_config(_container(record.cfg)),
          "wall_seconds": wall_seconds(record), "data_fingerprint": record.data_fingerprint,
          "last_val": record.last_val, "last_train": record.last_train}  # the gap of a run resumed at its end
  if record.stage is not None:
    host.update(stage=record.stage, stage_results=record.stage_results)
  best = None
  if record.stopper is not None and record.stopper.best_state is not None:
    host["early_stopping"], best = record.stopper.saved(), record.stopper.best_state
  record.checkpointer.save(record.step, state, host, best)


def wall_seconds(record: RunRecord) -> float:
  """The run's wall time so far, over all its sessions."""
  return record.earlier_seconds + time.perf_counter() - record.started


def summarize(record: RunRecord, state: Any, evaluate_test: Callable[[Any], dict]) -> dict:
  """The test metrics of a completed run (the best parameters' under early stopping) and the summary."""
  test = {}
  if record.stopper:
    state = record.stopper.restore(state)  # the reported test metrics are the best parameters'
  if record.status == "completed":
    test = {f"test/{k}": float(v) for k, v in jax.device_get(evaluate_test(state)).items()}
    record.writer.write(record.step, test)
  train_steps = record.step - (1 if record.status == "diverged" else 0)
  best, metric = record.best, record.metric
  return {
      "status": record.status,
      "interrupted_by": record.stop.signal_name if record.status == "interrupted" else None,
      "resumed_from_step": record.first_step or None,  # None: the run started from step 0
      "steps": record.steps,
      "steps_run": train_steps,
      "diverged_at_step": record.diverged_at,
      **test,
      "best_val/step": best and best["step"],
      "best_val/loss": best and best["val/loss"],
      f"best_{metric}": best and best[metric],
      **generalization_gap(record),
      **({"early_stopping/restored_step": record.stopper.best_step} if record.stopper else {}),
      writers.ZERO_FRACTION: float(regularizers.zero_fraction(state.params)),
      "wall_time_s": wall_seconds(record),  # every session of the run, resumed ones included
      "startup_time_s": record.startup_seconds,
      "steps_per_second": train_steps / max(record.train_seconds, 1e-9),
      "diagnostics_time_s": record.monitor.seconds,
      "data_fingerprint": record.data_fingerprint,
  }


def generalization_gap(record: RunRecord) -> dict:
  """{gap/<task metric>: the last logged train value - the last validation value} of a completed run, both at its
  last step when log_every and eval_every divide it. The train value is the mean over the last log_every steps,
  in training mode (dropout on), so a regularized net's gap can be negative. {} for a run that did not complete:
  a diverged run's last points are from before the blow-up, and not from the same step."""
  name = record.metric.split("/", 1)[1]
  train, val = (record.last_train or {}).get(f"train/{name}"), (record.last_val or {}).get(record.metric)
  if record.status != "completed" or train is None or val is None:
    return {}
  return {f"gap/{name}": train - val}


def close(record: RunRecord) -> None:
  record.writer.close()
  record.checkpointer.close()


def _duration(seconds: float) -> str:
  """1 h 02 min, 3 min 05 s, 12 s."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
  return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _container(cfg: DictConfig) -> dict:
  return OmegaConf.to_container(cfg, resolve=True)
