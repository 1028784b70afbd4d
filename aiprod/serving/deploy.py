"""From config to Ray Serve deployment options (plain dicts; serve/app.py applies them)."""

from __future__ import annotations

from typing import Any

from aiprod.config import Config, DeploymentConfig, load_config
from aiprod.serving.schemas import AppArgs, UserConfig


def deployment_options(dep: DeploymentConfig, retry_after_s: float) -> dict[str, Any]:
    """`Deployment.options(**...)` for one deployment section of serve: (ingress/standard/emergency).
    A request Serve itself turns away (a full queue) gets 503 with Retry-After, like our own 503s."""
    a = dep.autoscaling
    return {
        "max_ongoing_requests": dep.max_ongoing_requests,
        "max_queued_requests": dep.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
        "graceful_shutdown_timeout_s": dep.graceful_shutdown_timeout_s,
        "ray_actor_options": {"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "initial_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "metrics_interval_s": a.metrics_interval_s,
            "look_back_period_s": a.look_back_period_s,
        },
    }


def resolve_app_config(args: AppArgs | dict[str, Any] | None) -> tuple[Config, dict[str, Any]]:
    """The resolved config and the generators' initial user_config for `build_app(args)`."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    overrides = list(a.overrides)
    if a.model is not None:
        overrides.append(f"serve.model={a.model}")
    if a.registry_root is not None:
        overrides.append(f"registry.root={a.registry_root}")
    if a.api_key_env is not None:
        overrides.append(f"serve.api_key_env={a.api_key_env}")
    cfg = load_config(a.preset, overrides)
    user = UserConfig(model=cfg.serve.model, ab=cfg.serve.ab, fault=cfg.serve.fault)
    return cfg, user.model_dump(mode="json")
