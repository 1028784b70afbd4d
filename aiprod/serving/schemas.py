"""HTTP request bodies, their config-dependent limits, and the app / user_config arguments.

The static pydantic models give the OpenAPI schema and type errors; limits that depend on the
served config (sizes, durations, languages, emergency types) are checked by `limit_errors`, whose
errors have FastAPI's shape so they come back as 422 naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiprod.config import ABConfig, Config, FaultConfig
from aiprod.config.serving import AB_FROM_REGISTRY
from aiprod.registry.names import NAME_FORMAT, NAME_RE

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
EXCERPT_CHARS = 60
ADAPTER_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+){0,7}")  # a specialization, e.g. regional-hi


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, always-encodable rendering of a rejected value (never the whole of a huge field)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unencodable(text: str) -> bool:
    """True for text with lone UTF-16 surrogates (valid JSON, not valid Unicode text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_unicode(cls, value: Any) -> Any:
        if isinstance(value, str) and unencodable(value):
            raise ValueError("text contains a lone UTF-16 surrogate (not valid Unicode)")
        return value


class VideoRequest(_Body):
    prompt: str = Field(min_length=1, description="what to show; at most serve.max_prompt_chars characters")
    language: str = Field("en", description="language code, one of serve.languages")
    duration_s: float | None = Field(None, gt=0, description="default serve.default_duration_s, at most serve.max_duration_s")
    fps: int | None = Field(None, ge=1, description="default serve.default_fps, at most serve.max_fps")
    width: int | None = Field(None, ge=8, description="default serve.default_width, at most serve.max_width")
    height: int | None = Field(None, ge=8, description="default serve.default_height, at most serve.max_height")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, description="sampler steps; default diffusion.sample_steps, at most "
                              "serve.max_steps and diffusion.train_timesteps")
    guidance: float | None = Field(None, ge=1.0, description="classifier-free guidance; default diffusion.guidance, "
                                   "at most serve.max_guidance")
    deadline_s: float | None = Field(None, gt=0, description="answer 504 after this; default serve.standard_deadline_s")
    adapter: str | None = Field(None, description="a fine-tuned adapter on the served model: a specialization "
                                "(e.g. regional-hi: the newest registry adapter of that specialization whose base "
                                "is the version serving this request) or a full adapter version name")


class EmergencyRequest(_Body):
    emergency_type: str = Field(description="e.g. flood, cyclone, earthquake (GET /v1/models lists them)")
    variation: int | None = Field(None, ge=0, description="template variation 0..4; default 0")
    headline: str | None = Field(None, min_length=1, description="default: the template's, in `language`")
    instructions: str | None = Field(None, min_length=1, description="default: the template's, in `language`")
    language: str = Field("en", description="language code, one of serve.languages")
    region: str = Field("", description="area the alert is for")
    motion: str | None = Field(None, description="camera motion of the model's video: right, left, up, down, towards, "
                               "away or still, optionally :FACTOR (e.g. left:2); default: read from the headline, "
                               "else still")
    deadline_s: float | None = Field(None, gt=0, description="default and maximum serve.emergency_deadline_s")


def _error(field: str, message: str, value: Any) -> dict[str, Any]:
    return {"type": "value_error", "loc": ["body", field], "msg": message, "input": excerpt(value)}


def _too_long(field: str, value: str | None, limit: int) -> list[dict[str, Any]]:
    if value is not None and len(value) > limit:
        return [_error(field, f"{field} is {len(value)} characters; at most {limit} allowed", value)]
    return []


def _language(value: str, cfg: Config) -> list[dict[str, Any]]:
    if value not in cfg.serve.languages:
        return [_error("language", f"unknown language {excerpt(value)!r}; one of {', '.join(cfg.serve.languages)}",
                       value)]
    return []


def video_errors(req: VideoRequest, cfg: Config) -> list[dict[str, Any]]:
    s = cfg.serve
    errors = _language(req.language, cfg) + _too_long("prompt", req.prompt, s.max_prompt_chars)
    if not req.prompt.strip():
        errors.append(_error("prompt", "prompt is empty", req.prompt))
    compression = cfg.model.vae.spatial_compression
    limits = (
        ("duration_s", req.duration_s, s.max_duration_s),
        ("fps", req.fps, s.max_fps),
        ("width", req.width, s.max_width),
        ("height", req.height, s.max_height),
        ("steps", req.steps, min(s.max_steps, cfg.diffusion.train_timesteps)),
        ("guidance", req.guidance, s.max_guidance),
        ("deadline_s", req.deadline_s, s.standard_deadline_s),
    )
    for name, value, limit in limits:
        if value is not None and value > limit:
            errors.append(_error(name, f"{name} must be <= {limit}, got {value}", value))
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is not None and value % compression:
            errors.append(_error(name, f"{name} must be a multiple of {compression}, got {value}", value))
    if req.adapter is not None and not (ADAPTER_RE.fullmatch(req.adapter) or NAME_RE.fullmatch(req.adapter)):
        errors.append(_error("adapter", f"adapter {excerpt(req.adapter)!r} is neither a specialization (e.g. "
                                        f"regional-hi) nor a version name ({NAME_FORMAT})", req.adapter))
    return errors


def emergency_errors(req: EmergencyRequest, cfg: Config, types: dict[str, int]) -> list[dict[str, Any]]:
    """`types` maps each emergency type to its number of variations."""
    s = cfg.serve
    errors = _language(req.language, cfg)
    if req.emergency_type not in types:
        errors.append(_error("emergency_type", f"unknown emergency_type {excerpt(req.emergency_type)!r}; one of "
                                               f"{', '.join(sorted(types))}", req.emergency_type))
    elif req.variation is not None and req.variation >= types[req.emergency_type]:
        errors.append(_error("variation", f"variation must be < {types[req.emergency_type]}", req.variation))
    errors += _too_long("headline", req.headline, s.max_headline_chars)
    errors += _too_long("instructions", req.instructions, s.max_instructions_chars)
    errors += _too_long("region", req.region, s.max_region_chars)
    for name in ("headline", "instructions"):
        value = getattr(req, name)
        if value is not None and not value.strip():
            errors.append(_error(name, f"{name} is empty (leave it out for the template's)", value))
    if req.deadline_s is not None and req.deadline_s > s.emergency_deadline_s:
        errors.append(_error("deadline_s", f"deadline_s must be <= {s.emergency_deadline_s}", req.deadline_s))
    if req.motion is not None:
        from aiprod.diffusion.motion import parse_motion

        try:
            parse_motion(req.motion)
        except ValueError as exc:
            errors.append(_error("motion", str(exc), req.motion))
    return errors


class UserConfig(BaseModel):
    """The live part of a generator deployment (Serve `user_config`, applied by reconfigure())."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="registry version, 'production', or checkpoint dir; None = no model")
    ab: ABConfig | None = None
    fault: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("model")
    @classmethod
    def _model_is_not_the_ab_pointer(cls, value: str | None) -> str | None:
        if value == AB_FROM_REGISTRY:
            raise ValueError(f"model {AB_FROM_REGISTRY!r} names no model: only ab.version may be "
                             f"{AB_FROM_REGISTRY!r} (follow the registry's A/B pointer as arm b)")
        return value


class AppArgs(BaseModel):
    """Arguments of serve.app:build_app (the `args:` of an application in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("tiny", description="config preset name or YAML path")
    overrides: list[str] = Field(default_factory=list, description="key.path=value config overrides")
    model: str | None = Field(None, description="overrides serve.model")
    registry_root: str | None = Field(None, description="overrides registry.root")
    api_key_env: str | None = Field(None, description="overrides serve.api_key_env")
