"""One config tree for AIPROD: pydantic models, YAML presets, `key.path=value` overrides.

    cfg = load_config("tiny", ["curriculum.phases.2.lr=3e-5", "train.precision=bf16"])
    python -m aiprod.config --preset gtx1070 [overrides...]   # resolved YAML
    python -m aiprod.config --schema                           # JSON schema

Every section forbids unknown keys; errors name the full key path, the bad value and what is
allowed (`config: curriculum.phases.1.lr: input should be greater than 0, got -1`).

Modules: `section` (the base and ConfigError), `training`, `serving`, `provenance` and `finetune` (the sections),
`schema` (the root `Config`), `loading` (presets, overrides, validation, CLI arguments); `python -m aiprod.config`.
"""

from aiprod.config.loading import (PRESET_DIR, add_config_arguments, apply_override, available_presets,
                                   load_config, load_overrides_file, overrides_from_args, schema, validate)
from aiprod.config.finetune import FinetuneConfig
from aiprod.config.provenance import ProvenanceConfig
from aiprod.config.schema import Config
from aiprod.config.section import ConfigError, Section, deep_merge
from aiprod.config.serving import (ABConfig, AutoscalingConfig, DeploymentConfig, FaultConfig, ServeConfig,
                                   TemplateConfig)
from aiprod.config.training import (AdapterConfig, CheckpointConfig, CurriculumConfig, DataConfig, DenoiserConfig,
                                    DiffusionConfig, EmergencyPathConfig, EvalConfig, ModelConfig, PhaseConfig,
                                    RegistryConfig, SearchDim, TextConfig, TrainConfig, TuneConfig, VAEConfig)

__all__ = [
    "ABConfig", "AdapterConfig", "AutoscalingConfig", "CheckpointConfig", "Config", "ConfigError", "CurriculumConfig", "DataConfig",
    "DenoiserConfig", "DeploymentConfig", "DiffusionConfig", "EmergencyPathConfig", "EvalConfig", "FaultConfig", "FinetuneConfig",
    "ModelConfig", "PRESET_DIR", "PhaseConfig", "ProvenanceConfig", "RegistryConfig", "SearchDim", "Section",
    "ServeConfig", "TemplateConfig", "TextConfig", "TrainConfig", "TuneConfig", "VAEConfig", "add_config_arguments",
    "apply_override", "available_presets", "deep_merge", "load_config", "load_overrides_file",
    "overrides_from_args", "schema", "validate",
]
