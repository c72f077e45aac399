"""The schemas of the pretrain group: a run in stages (trainlab.stages), each option's keys those of the function
its `_target_` names."""

from __future__ import annotations

from dataclasses import field

from trainlab.config.schema import MISSING, schema, value


@schema("pretrain_greedy_schema")
class GreedyConfig:
  _target_: str = MISSING
  steps_per_stage: int = value(1)
  freeze_lower: bool = MISSING
  finetune_steps: int = value(0)  # 0: no final stage


@schema("pretrain_fitnets_schema")
class FitNetsConfig:
  _target_: str = MISSING
  hint_layer: str = field(default=MISSING, metadata={"example": "Dense_0"})  # a module path of the teacher
  guided_layer: str = field(default=MISSING, metadata={"example": "Dense_1"})  # a module path of the student
  hint_steps: int = value(1)
  distill_steps: int = value(1)
