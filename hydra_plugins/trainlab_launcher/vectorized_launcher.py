"""The `vectorized` launcher: the jobs of a multirun that share a compiled program train as one vmapped program.

For each job, in order, it composes the job's config and run directory as Hydra's basic launcher does
(`.hydra/` with the job's config, overrides and Hydra config). Then:

- a job whose run directory already holds a run (a sweep resumed with resume=true: completed, diverged,
  interrupted or failed jobs) goes through the normal path, `trainlab train`'s own job function, exactly as
  under the basic launcher: it is skipped, resumed from its checkpoint, refused or rerun there;
- a job that fails to set up (a bad config, a missing data file) is recorded `failed` and the others run;
- a run in stages (`pretrain`) goes through the normal path too: each stage is a program of its own;
- every other job is prepared (config checked, data loaded, program structure known) and grouped with the
  jobs of equal `_vectorized_loop.group_key`; each group of two or more trains as one vmapped program
  (_vectorized_loop.py), its members split over `hydra.launcher.devices` devices, a group of one trains alone
  through the single-run loop.

Every job writes its own run directory, summary.json, HParams session and a log `train.log` of its own, and
gets its row in results.csv from the sweep callback, as under the basic launcher. The working directory is
never changed (trainlab runs with hydra.job.chdir=false). On SIGTERM or SIGINT, the running group's members
checkpoint and are `interrupted`; the sweep stops as under the basic launcher, and resume=true continues the
interrupted members one by one through the normal path.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pathlib
import time
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's own job log


class _Job:
  """One job on its way through the launcher: its configs, directory, record, logger and outcome."""

  def __init__(self, idx: int, overrides: Sequence[str], sweep_config: DictConfig):
    self.idx, self.overrides, self.sweep_config = idx, list(overrides), sweep_config
    self.task_cfg = self.hydra_cfg = self.workdir = self.record = self.logger = self.handler = None
    self.run = None  # trainlab.train.Setup once prepared
    self.lock: Optional[contextlib.ExitStack] = None  # the run directory's lock, from _prepare to _close
    self.ret: Optional[JobReturn] = None


class VectorizedLauncher(Launcher):
  def __init__(self, max_members: Optional[int] = None, devices: Any = 1) -> None:
    super().__init__()
    if max_members is not None and max_members < 1:
      raise ValueError(f"hydra.launcher.max_members={max_members} is not allowed: it must be >= 1 or null")
    self.max_members = max_members
    self.devices = devices
    if devices != 1 or isinstance(devices, bool):  # checked before the sweep writes anything; JAX only then
      from trainlab import sharding

      self.devices = sharding.resolve_member_devices(devices)
    self.config: Optional[DictConfig] = None
    self.task_function: Optional[TaskFunction] = None
    self.hydra_context: Optional[HydraContext] = None

  def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
    self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

  def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    setup_globals()
    assert self.config is not None and self.hydra_context is not None and self.task_function is not None
    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
    pathlib.Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs, vectorized where they share a program")
    original_hydra_cfg = HydraConfig.instance().cfg
    jobs, groups = [], {}
    try:
      for k, overrides in enumerate(job_overrides):
        idx = initial_job_idx + k
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
          sweep_config.hydra.job.id = idx
          sweep_config.hydra.job.num = idx
        job = _Job(idx, overrides, sweep_config)
        jobs.append(job)
        if not self._open(job) or sweep_config.get("pretrain") is not None:
          # its directory holds a run: the normal path skips, resumes or refuses it; a run in stages (pretrain)
          # is a program per stage, which no group shares: it runs alone
          job.ret = self._run_alone(job)
          continue
        if self._prepare(job):
          from hydra_plugins.trainlab_launcher import _vectorized_loop as vectorized

          groups.setdefault(vectorized.group_key(job.task_cfg, job.run), []).append(job)
      for group in groups.values():
        size = self.max_members or len(group)
        for start in range(0, len(group), size):
          self._train(group[start:start + size])
    finally:
      for job in jobs:
        self._close(job)
      HydraConfig.instance().cfg = original_hydra_cfg
      configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
    return [job.ret for job in jobs]

  # --- one job's directory, config and log ---------------------------------------------------------------
  def _activate(self, job: _Job) -> None:
    HydraConfig.instance().set_config(job.sweep_config)

  def _open(self, job: _Job) -> bool:
    """Sets the job's output directory; False when it already holds a run (the normal path decides then)."""
    from trainlab.rundir import job as job_record

    config = job.sweep_config
    HydraConfig.instance().set_config(config)
    output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                              str(OmegaConf.select(config, "hydra.sweep.subdir")))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
      config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(config)
    job.workdir, job.record = job_record.job_record(HydraConfig.get())
    return not job_record.holds_run(job.workdir)

  def _run_alone(self, job: _Job) -> JobReturn:
    ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=job.sweep_config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
    return ret

  def _prepare(self, job: _Job) -> bool:
    """Writes the job's .hydra/, opens its log and sets it up; False (and `failed`) when setup fails.

    Hydra's public `run_job` runs one job's task function to its end; the members of a group must all be set
    up before any of them trains, so their directories, configs and logs are made here as run_job makes them.
    """
    from trainlab import train
    from trainlab.config import ConfigError
    from trainlab.rundir import job as job_record, lock, on_demand

    config = job.sweep_config
    self._activate(job)
    job.task_cfg = copy.deepcopy(config)
    with read_write(job.task_cfg), open_dict(job.task_cfg):
      del job.task_cfg["hydra"]
    job.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    job.workdir.mkdir(parents=True, exist_ok=True)
    job.lock = contextlib.ExitStack()
    try:  # held until the job's group has trained (_close)
      job.lock.enter_context(lock.holding(job.workdir))
    except lock.DirectoryInUse as e:
      log.error("job #%d not run: %s", job.idx, e)
      self._finish(job, None)
      return False
    job_record.write_hydra_record(job.workdir, job.hydra_cfg, job.task_cfg)
    job.logger = logging.getLogger(f"trainlab.job{job.idx}")
    job.logger.setLevel(logging.INFO)
    job.handler = logging.FileHandler(job.workdir / f"{config.hydra.job.name}.log")
    job.handler.setFormatter(logging.Formatter(LOG_FORMAT))
    job.logger.addHandler(job.handler)
    self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
    try:
      if self.devices > 1 and job.task_cfg.devices != 1:  # "all" too: this host has more than one device then
        raise ConfigError(f"devices={job.task_cfg.devices} is not allowed with hydra.launcher.devices="
                          f"{self.devices}: a job's batches split over devices (data parallel) and a group's "
                          "members split over them cannot be combined; set one of them to 1")
      sources = on_demand.sources_dir(OmegaConf.select(config, "hydra.sweep.dir"))
      job.record.update(on_demand.resolve(job.task_cfg, sources))  # the runs it reads, trained if not yet there
      job.run = train.setup(job.task_cfg)
      return True
    except Exception as e:  # as train_app does: a failed job, and the sweep goes on
      job_record.record_failure(job.workdir, job.record, e, multirun=True, logger=job.logger)
      self._finish(job, None)
      return False

  def _finish(self, job: _Job, value: Any) -> None:
    """The job's JobReturn, as Hydra's run_job makes it, and the callbacks' on_job_end."""
    self._activate(job)
    ret = JobReturn(overrides=OmegaConf.to_container(job.sweep_config.hydra.overrides.task), cfg=job.task_cfg,
                    hydra_cfg=job.hydra_cfg, working_dir=os.getcwd(), status=JobStatus.COMPLETED)
    ret.return_value = value
    ret.task_name = JobRuntime.instance().get("name")
    job.ret = ret
    self.hydra_context.callbacks.on_job_end(config=job.sweep_config, job_return=ret)

  def _close(self, job: _Job) -> None:
    if job.lock is not None:
      job.lock.close()
      job.lock = None
    if job.handler is not None:
      job.logger.removeHandler(job.handler)
      job.handler.close()
      job.handler = None

  # --- training ----------------------------------------------------------------------------------------
  def _train(self, group: list[_Job]) -> None:
    """Trains a group (one vmapped program; a group of one alone) and records each member's result."""
    from trainlab import train
    from trainlab.rundir import job as job_record
    from hydra_plugins.trainlab_launcher import _vectorized_loop as vectorized

    log.info("training jobs %s as %s", ", ".join(f"#{j.idx}" for j in group),
             "one vmapped program" if len(group) > 1 else "a single run")
    started = time.perf_counter()  # a job's wall time starts with its group, not with the sweep
    self._activate(group[0])
    # The levels of hydra.job_logging's loggers (JAX, orbax quieter); its handlers are per job, set above.
    for name, spec in (group[0].sweep_config.hydra.job_logging or {}).get("loggers", {}).items():
      if spec and spec.get("level"):
        logging.getLogger(name).setLevel(spec.level)
    try:
      if len(group) == 1:
        job = group[0]
        summaries = [train.train_and_evaluate(job.task_cfg, job.workdir, started, logger=job.logger)]
      else:
        members = [vectorized.Member(j.task_cfg, j.workdir, j.run, j.logger) for j in group]
        summaries = vectorized.train_group(members, started, self.devices)
    except Exception as e:  # the program failed: every member of it failed
      for job in group:
        self._activate(job)
        job_record.record_failure(job.workdir, job.record, e, multirun=True, logger=job.logger)
        self._finish(job, None)
      return
    interrupted = None
    for job, summary in zip(group, summaries):
      self._activate(job)
      value = job_record.record_result(job.workdir, job.record, summary, logger=job.logger)
      self._finish(job, value)
      if summary["status"] == "interrupted":
        interrupted = interrupted or (job, summary)
    if interrupted:
      job, summary = interrupted
      self._activate(job)
      job_record.stop_interrupted(summary, job.workdir, True, HydraConfig.get())
