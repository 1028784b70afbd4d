"""The search space from `config.tune.space`, and what a sampled point means for a config.

Keys of `tune.space`:
  `lr`    the learning rate of the tuned phase (`tune.phase`); when a trial trains a run of phases
          (`tune.end_phase`) the later phases keep their lr ratio to it, as in the curriculum.
  other   a config path (`diffusion.noise_lambda`, `curriculum.phases.2.warmup_fraction`, ...)
          whose value the trial sets.
"""

from __future__ import annotations

from typing import Any

from aiprod.config import Config, ConfigError, SearchDim

LR_KEY = "lr"


def tuned_phases(cfg: Config) -> range:
    last = len(cfg.curriculum.phases) - 1
    start = cfg.tune.phase
    end = start if cfg.tune.end_phase is None else cfg.tune.end_phase
    if not 0 <= start <= last:
        raise ConfigError(f"config: tune.phase {start} is out of range 0..{last}")
    if not start <= end <= last:
        raise ConfigError(f"config: tune.end_phase {end} is out of range {start}..{last}")
    return range(start, end + 1)


def best_overrides(cfg: Config, params: dict[str, float]) -> dict[str, Any]:
    """`key.path -> value` that apply a sampled point to the config (what best.yaml holds)."""
    phases = tuned_phases(cfg)
    out: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if key == LR_KEY:
            base = cfg.curriculum.phases[phases.start].lr
            for i in phases:
                out[f"curriculum.phases.{i}.lr"] = float(value) * cfg.curriculum.phases[i].lr / base
        else:
            out[key] = float(value)
    return out


def trial_overrides(cfg: Config, params: dict[str, float]) -> list[str]:
    """Overrides for one trial: the sampled point, the trial's step cap, and a checkpoint at
    every report (the validation figure is computed on each reported checkpoint)."""
    tree = {**best_overrides(cfg, params), "checkpoint.every_steps": cfg.tune.report_every_steps}
    if cfg.tune.trial_steps is not None:
        for i in tuned_phases(cfg):
            tree[f"curriculum.phases.{i}.steps"] = cfg.tune.trial_steps
            tree[f"curriculum.phases.{i}.exit"] = "steps"
    return [f"{key}={value!r}" for key, value in tree.items()]


def check_space(cfg: Config) -> None:
    """Every key is `lr` or a numeric config path, and both ends of its range validate."""
    if not cfg.tune.space:
        raise ConfigError("config: tune.space is empty; give at least one dimension (e.g. lr)")
    tuned_phases(cfg)
    for key, dim in cfg.tune.space.items():
        if key != LR_KEY:
            node: Any = cfg.to_dict()
            for part in key.split("."):
                node = node[int(part)] if isinstance(node, list) and part.isdigit() else (
                    node.get(part) if isinstance(node, dict) else None)
                if node is None:
                    raise ConfigError(f"config: tune.space.{key}: '{key}' is not a config key")
            if isinstance(node, bool) or not isinstance(node, (int, float)):
                raise ConfigError(f"config: tune.space.{key}: '{key}' holds {node!r}, not a number")
        for end in (dim.low, dim.high):
            try:
                cfg.with_overrides(trial_overrides(cfg, {key: end}))
            except ConfigError as exc:
                raise ConfigError(f"config: tune.space.{key}: {end} is not allowed there:\n{exc}") from None


def tune_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    """The Ray Tune param_space (OptunaSearch converts it to Optuna distributions)."""
    from ray import tune

    return {key: (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high) for key, dim in space.items()}
