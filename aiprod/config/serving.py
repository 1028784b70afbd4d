"""Config sections of Ray Serve: limits and defaults of requests, deployments, the emergency path."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from aiprod.config.section import Section, deep_merge


class AutoscalingConfig(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(10.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="how often replicas report load")
    look_back_period_s: float = Field(10.0, gt=0, description="window the load is averaged over")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self


class DeploymentConfig(Section):
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(8, ge=-1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0, description="drain time before a replica stops")


AB_FROM_REGISTRY = "registry"  # ab.version that follows the registry's A/B pointer (Registry.set_ab)


class ABConfig(Section):
    version: str = Field(description="arm b: registry version, 'production', or checkpoint dir; or 'registry': "
                         "follow the registry's A/B pointer (jobs/registry.py ab VERSION --fraction F), which "
                         "names arm b and its share, re-read every serve.follow_registry_s")
    fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of requests (by request hash) sent to arm b; "
                            "left out with version 'registry' (the pointer's fraction applies)")

    @model_validator(mode="after")
    def _registry_sets_its_own_share(self) -> ABConfig:
        if self.follows_registry and self.fraction:
            raise ValueError(f"ab.fraction must be left out with ab.version '{AB_FROM_REGISTRY}': the registry's "
                             f"A/B pointer sets the share (jobs/registry.py ab VERSION --fraction F)")
        return self

    @property
    def follows_registry(self) -> bool:
        return self.version == AB_FROM_REGISTRY


class FaultConfig(Section):
    """Faults injected on purpose (drills, tests); read live by the generator replicas."""

    emergency_model_delay_s: float = Field(0.0, ge=0, description="sleep before each emergency model call")
    emergency_model_fail: bool = Field(False, description="every emergency model call raises")
    standard_model_delay_s: float = Field(0.0, ge=0, description="sleep before each standard model call")
    standard_model_fail: bool = Field(False, description="every standard model call raises")
    standard_step_delay_s: float = Field(0.0, ge=0, description="sleep at every sampler step of a standard "
                                         "model call (a slow accelerator)")


class TemplateConfig(Section):
    """The no-model alert renderer (aiprod.emergency)."""

    width: int = Field(640, ge=64)
    height: int = Field(360, ge=64)
    fps: int = Field(12, ge=1)
    font_dir: str = Field("/usr/share/fonts/truetype/noto", description="Noto fonts (scripts/system_deps.sh)")
    templates_dir: str | None = Field(None, description="template data files; None = aiprod/emergency/templates")
    min_font_px: int = Field(10, ge=4, description="text shrinks to fit its box down to this size")
    crf: int = Field(26, ge=0, le=51, description="H.264 quality (lower = better, bigger)")
    preset: str = Field("veryfast", description="x264 preset: speed of the encode")


def _ingress_defaults() -> DeploymentConfig:
    # The ingress only routes and renders fallback cards: many requests per replica, no queue limit,
    # so that an emergency request is never turned away at the door.
    return DeploymentConfig(max_ongoing_requests=100, max_queued_requests=-1, num_cpus=0.5,
                            autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=20))


class ServeConfig(Section):
    model: str | None = Field(None, description="registry version, 'production', or checkpoint dir")
    follow_registry_s: float = Field(
        30.0, ge=0, description="how often replicas serving 'production' or 'latest' re-read that registry "
        "pointer and swap in the version it names (0 = only when the replica loads)")
    languages: list[str] = Field(default_factory=lambda: ["en", "hi", "bn", "ta", "te", "mr"])
    max_prompt_chars: int = Field(500, ge=1)
    max_duration_s: float = Field(10.0, gt=0)
    max_width: int = Field(1024, ge=8)
    max_height: int = Field(1024, ge=8)
    max_fps: int = Field(30, ge=1)
    max_steps: int = Field(100, ge=1, description="also at most diffusion.train_timesteps")
    max_guidance: float = Field(20.0, ge=1, description="largest classifier-free guidance a request may ask")
    max_body_bytes: int = Field(65536, ge=1024, description="larger request bodies are refused with 413 "
                                "before they are parsed")
    load_retry_s: float = Field(5.0, gt=0, description="a followed registry pointer whose version failed to "
                                "load is retried after this, doubling per failure up to load_retry_max_s")
    load_retry_max_s: float = Field(300.0, gt=0)
    alert_margin_s: float = Field(1.0, gt=0, description="the ingress's own alert-card render must end this "
                                  "long before the deadline; past that, the type's pre-rendered card answers")
    alert_cache_size: int = Field(256, ge=0, description="rendered alert cards the ingress keeps (identical "
                                  "alerts in a storm are rendered once)")
    alert_render_threads: int = Field(2, ge=1, description="threads the ingress renders its own alert cards on")
    standard_deadline_s: float = Field(120.0, gt=0)
    emergency_deadline_s: float = Field(60.0, gt=0)
    emergency_seconds: float = Field(5.0, ge=5.0, description="template video length")
    api_key_env: str | None = Field(None, description="env var holding the bearer key; None = off")
    batch_max_size: int = Field(4, ge=1)
    adapter_cache_size: int = Field(
        3, ge=1, description="adapters (POST /v1/videos `adapter`) each standard replica keeps loaded, the least "
        "recently used evicted first. An adapter is loaded as its base's weights with the adapter folded in "
        "(merged): each cached adapter costs one model's memory but samples at the base's speed")
    batch_wait_s: float = Field(0.05, ge=0)
    default_duration_s: float = Field(2.0, gt=0, description="POST /v1/videos when duration_s is omitted")
    default_fps: int = Field(8, ge=1)
    default_width: int = Field(256, ge=8)
    default_height: int = Field(256, ge=8)
    max_headline_chars: int = Field(120, ge=1)
    max_instructions_chars: int = Field(400, ge=1)
    max_region_chars: int = Field(120, ge=1)
    emergency_reserve_s: float = Field(2.0, gt=0, description="kept back from the deadline for the template fallback")
    emergency_width: int = Field(128, ge=8, description="emergency model video size (shown inside the alert card)")
    emergency_height: int = Field(128, ge=8)
    breaker_failures: int = Field(3, ge=1, description="model failures in a row before the emergency model is skipped")
    breaker_cooldown_s: float = Field(30.0, ge=0, description="how long it is skipped before being tried again")
    retry_after_s: int = Field(5, ge=1, description="Retry-After on 503")
    video_crf: int = Field(23, ge=0, le=51, description="H.264 quality of generated videos")
    video_preset: str = Field("veryfast", description="x264 preset for generated videos")
    disclosure_label: bool = Field(False, description="burn a short 'AI-generated' label, in the request's "
                                   "language, into a corner of standard-mode videos (aiprod.provenance.disclosure)")
    ab: ABConfig | None = Field(None, description="optional A/B split: arm b and its share")
    fault: FaultConfig = Field(default_factory=FaultConfig)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    ingress: DeploymentConfig = Field(default_factory=_ingress_defaults)
    standard: DeploymentConfig = Field(default_factory=DeploymentConfig)
    emergency: DeploymentConfig = Field(default_factory=DeploymentConfig)

    @model_validator(mode="before")
    @classmethod
    def _ingress_keeps_its_defaults(cls, data: Any) -> Any:
        # Overriding one ingress key (serve.ingress.num_cpus=1) must not replace the ingress's own
        # defaults (100 ongoing, no queue limit: alerts are never turned away) with a generator's.
        if isinstance(data, dict) and isinstance(data.get("ingress"), dict):
            data = {**data, "ingress": deep_merge(_ingress_defaults().model_dump(), data["ingress"])}
        return data

    @model_validator(mode="after")
    def _emergency_always_answers(self) -> ServeConfig:
        if self.emergency.autoscaling.min_replicas < 1:
            raise ValueError("emergency.autoscaling.min_replicas must be >= 1 (one warm emergency replica)")
        if self.batch_max_size > self.standard.max_ongoing_requests:
            raise ValueError(
                f"batch_max_size ({self.batch_max_size}) must be <= standard.max_ongoing_requests "
                f"({self.standard.max_ongoing_requests}): a replica never holds more requests than that"
            )
        if self.emergency_reserve_s >= self.emergency_deadline_s:
            raise ValueError(
                f"emergency_reserve_s ({self.emergency_reserve_s}) must be < emergency_deadline_s "
                f"({self.emergency_deadline_s})"
            )
        return self
