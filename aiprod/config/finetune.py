"""Config section of the continuous fine-tuning cycle (aiprod.finetune, jobs/finetune.py): which
adapter mode it trains by default, how the next version is numbered and when a candidate may
replace production."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aiprod.config.section import Section

JUDGE_PREFIX = "alignment_"


class FinetuneConfig(Section):
    mode: Literal["full", "lora", "dora"] = Field(
        "lora", description="what the cycle trains when --mode is not given (it sets train.mode): adapters on "
        "production's weights, or every weight")
    margin: float = Field(
        0.02, ge=-1.0, le=1.0, description="promote (or A/B) only when every judge figure of the candidate is "
        ">= production's minus this margin; negative: the candidate must beat production by that much")
    judge_metrics: list[str] = Field(
        default_factory=lambda: ["alignment_colour", "alignment_direction", "alignment_count"],
        description="the judge's figures compared with production (those missing from either report are skipped)")
    bump: Literal["minor", "patch"] = Field(
        "minor", description="the candidate's version: production's, with this part one past the highest "
        "published of the same model type, specialization and major version")

    @model_validator(mode="after")
    def _judge_figures(self) -> FinetuneConfig:
        bad = [m for m in self.judge_metrics if not m.startswith(JUDGE_PREFIX)]
        if not self.judge_metrics or bad:
            raise ValueError(f"judge_metrics must list the judge's figures ({JUDGE_PREFIX}<attribute>, e.g. "
                             f"alignment_colour), got {self.judge_metrics}")
        return self
