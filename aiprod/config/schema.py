"""The root of the config tree: one `Config` of all sections."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import Field

from aiprod.config.finetune import FinetuneConfig
from aiprod.config.provenance import ProvenanceConfig
from aiprod.config.section import Section
from aiprod.config.serving import ServeConfig
from aiprod.config.training import (CheckpointConfig, CurriculumConfig, DataConfig, DiffusionConfig, EvalConfig,
                                    ModelConfig, RegistryConfig, TrainConfig, TuneConfig)


class Config(Section):
    preset: str = "custom"
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    curriculum: CurriculumConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """Stable sha256 (16 hex) of the resolved values; any changed value changes it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: Sequence[str]) -> Config:
        """A new, validated Config with `key.path=value` overrides applied (ConfigError names the key)."""
        from aiprod.config.loading import apply_override, validate

        tree = self.to_dict()
        for override in overrides:
            apply_override(tree, override)
        return validate(tree)
