"""The library side of serving: request schemas and limits, model hosting with live swaps and
A/B arms, standard batches and the emergency path. serve/app.py wraps these in Ray Serve."""

from aiprod.serving.alerts import FallbackRenderer
from aiprod.serving.deploy import deployment_options, resolve_app_config
from aiprod.serving.generation import (
    AlertResult,
    EmergencyJob,
    EmergencyResponder,
    StandardBatchRunner,
    VideoJob,
    VideoResult,
    render_template,
    run_standard_batch,
    warm_up,
)
from aiprod.serving.model_host import ModelHost, request_bucket
from aiprod.serving.schemas import AppArgs, EmergencyRequest, UserConfig, VideoRequest

__all__ = [
    "AlertResult",
    "AppArgs",
    "EmergencyJob",
    "EmergencyRequest",
    "EmergencyResponder",
    "FallbackRenderer",
    "ModelHost",
    "StandardBatchRunner",
    "UserConfig",
    "VideoJob",
    "VideoRequest",
    "VideoResult",
    "deployment_options",
    "render_template",
    "request_bucket",
    "resolve_app_config",
    "run_standard_batch",
    "warm_up",
]
