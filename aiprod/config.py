"""One config tree for AIPROD: pydantic models, YAML presets, `key.path=value` overrides.

    cfg = load_config("tiny", ["curriculum.phases.2.lr=3e-5", "train.precision=bf16"])
    python -m aiprod.config --preset gtx1070 [overrides...]   # resolved YAML
    python -m aiprod.config --schema                           # JSON schema

Every section forbids unknown keys; errors name the full key path, the bad value and what is
allowed (`config: curriculum.phases.1.lr: input should be greater than 0, got -1`).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- models


class VAEConfig(Section):
    in_channels: int = Field(3, ge=1)
    base_channels: int = Field(64, ge=4)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = Field(2, ge=1)
    latent_channels: int = Field(16, ge=1)
    spatial_compression: int = Field(16, ge=1, description="power of two; 2**(levels) downsampling")
    temporal_compression: int = Field(4, ge=1, description="clips of 1+k*tc frames -> 1+k latents")
    attention_heads: int = Field(8, ge=1, description="temporal self-attention in the bottleneck")
    temporal_attention: bool = Field(True, description="False with temporal_kernel 1: a per-frame (image) VAE")
    decoder_res_blocks: int | None = Field(None, ge=1, description="per level; None = num_res_blocks+1")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups (largest divisor of channels <= this)")
    temporal_kernel: int = Field(3, ge=1, description="time extent of the convolutions (1 = per-frame 2D convs)")
    logvar_init: float = Field(0.0, description="initial posterior log-variance (encoder output bias)")
    tile_latent_frames: int = Field(8, ge=1, description="temporal tile for encode/decode")
    recon_loss: Literal["l1", "mse"] = Field("mse", description="pixel reconstruction loss of VAE training")
    kl_weight: float = Field(1e-6, ge=0)
    temporal_weight: float = Field(0.1, ge=0, description="temporal smoothness loss weight")
    perceptual_weight: float = Field(0.1, ge=0)
    vgg16_weights: str | None = Field(None, description="local VGG16 weights for perceptual loss")

    @model_validator(mode="before")
    @classmethod
    def _no_fixed_scaling_factor(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scaling_factor" in data:
            raise ValueError("scaling_factor was removed: the latent shift and scale are measured on data and "
                             "stored with the weights (aiprod/diffusion/latents.py); delete the key")
        return data


class TextConfig(Section):
    width: int = Field(512, ge=8)
    depth: int = Field(8, ge=1)
    heads: int = Field(8, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    max_length: int = Field(256, ge=4, description="tokens, including the two special tokens")
    on_too_long: Literal["truncate", "error"] = "truncate"
    terms_file: str | None = Field(None, description="domain-term list; None = packaged list")
    num_terms: int = Field(500, ge=0)


class DenoiserConfig(Section):
    width: int = Field(768, ge=8)
    transformer_blocks: int = Field(30, ge=1)
    cnn_blocks: int = Field(18, ge=0)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_size: list[int] = Field(default_factory=lambda: [1, 2, 2], description="(t, h, w)")
    cnn_bottleneck: int = Field(4, ge=1, description="CNN block inner width = width / this")
    cnn_kernel: int = Field(3, ge=1, description="3D conv kernel of the CNN blocks (odd)")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups in CNN blocks")
    rope_theta: float = Field(10000.0, gt=1.0, description="3D RoPE base frequency")
    pooled_text: bool = Field(True, description="the caption's mean feature conditions every block (adaLN), "
                              "beside cross-attention")
    position_embedding: Literal["sincos", "none"] = Field(
        "sincos", description="absolute (t, h, w) token embedding beside RoPE: RoPE alone gives each head only "
        "separable relative offsets, and motion is a joint one (x moves with t)")
    timestep_freq_dim: int = Field(256, ge=2, description="sinusoidal timestep embedding size")
    activation_checkpointing: bool = False


class ModelConfig(Section):
    vae: VAEConfig = Field(default_factory=VAEConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    denoiser: DenoiserConfig = Field(default_factory=DenoiserConfig)


# -------------------------------------------------------------------------- diffusion


class EmergencyPathConfig(Section):
    steps: int = Field(4, ge=1)
    guidance: float = Field(3.0, ge=1.0)
    motion: list[float] = Field(default_factory=lambda: [1.0, 0.0], description="latent px/frame (dx, dy)")
    cross_frame_attention: bool = True
    renoise: float = Field(
        0.3, ge=0.0, lt=1.0, description="fraction of the schedule the warped frames are re-noised to"
    )


class DiffusionConfig(Section):
    noise_lambda: float = Field(0.7, ge=0.0, le=1.0, description="λ: base-noise share (VideoFusion)")
    latents: Literal["mean", "sample"] = Field(
        "mean", description="what the denoiser learns: the VAE posterior's mean (measured better) or a sample")
    latent_stats_clips: int = Field(64, ge=2, description="clips per worker the latent shift/scale are measured on")
    schedule: Literal["cosine", "scaled_linear"] = "cosine"
    prediction: Literal["v", "eps"] = "v"
    train_timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(0.00085, gt=0.0, lt=1.0, description="scaled_linear: first beta")
    beta_end: float = Field(0.012, gt=0.0, lt=1.0, description="scaled_linear: last beta")
    cosine_offset: float = Field(0.008, gt=0.0, description="cosine: small offset s (Nichol & Dhariwal)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    timestep_shift: float = Field(1.0, ge=1.0, description="training timesteps u -> s·u/(1+(s-1)·u): s > 1 trains "
                                  "more at high noise (1 = uniform)")
    sample_steps: int = Field(30, ge=1)
    guidance: float = Field(5.0, ge=1.0)
    emergency: EmergencyPathConfig = Field(default_factory=EmergencyPathConfig)


# ------------------------------------------------------------------------------- data


class DataConfig(Section):
    uri: str | None = Field(None, description="shard dir or s3:// prefix holding index.json")
    decode_workers: int = Field(2, ge=1, description="parallel decode tasks in Ray Data")
    decode_threads: int = Field(1, ge=0, description="PyAV decoder threads per clip (0 = auto)")
    clip_timeout_s: float = Field(30.0, gt=0)
    shuffle_files: bool = True
    shuffle_buffer: int = Field(64, ge=0, description="local shuffle buffer (rows); 0 = off")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    untagged_all_phases: bool = Field(True, description="untagged videos eligible for every phase")
    start: Literal["random", "center"] = "random"
    shard_target_mb: float = Field(64.0, gt=0)
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    shard_workers: int = Field(0, ge=0, description="make_shards processes; 0 = all cores")
    shard_max_side: int | None = Field(None, ge=16, description="make_shards re-encodes longer sides to this")
    encode_crf: int = Field(23, ge=0, le=51, description="H.264 quality for clips make_shards encodes")
    encode_preset: str = Field("veryfast", description="x264 preset for clips make_shards encodes")
    video_extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"],
        description="files make_shards --videos picks up",
    )
    read_workers: int = Field(2, ge=1, description="concurrent shard-reading tasks in Ray Data")
    decode_batch_size: int = Field(4, ge=1, description="clips per decode call (map_batches)")
    bad_keys_reported: int = Field(5, ge=1, description="bad sample keys named in the error")
    latents: str | None = Field(None, description="latent cache dir or s3:// prefix (jobs/encode_latents.py) "
                                "that denoiser phases read instead of decoding and encoding video")
    latent_windows: int = Field(1, ge=1, description="clip windows a latent cache encodes per clip")
    latent_memory_mb: float = Field(1024.0, ge=0, description="a training worker whose share of a latent cache "
                                    "fits under this keeps it in memory after one pass (0 = always stream)")


# ------------------------------------------------------------------------- curriculum


class PhaseConfig(Section):
    name: str
    component: Literal["vae", "denoiser"]
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], description="data filter")
    frames: int = Field(9, ge=1)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    fps: float = Field(8.0, gt=0)
    steps: int | None = Field(None, ge=1, description="optimizer steps (exit rule 'steps')")
    epochs: int | None = Field(None, ge=1, description="passes over the phase data")
    minutes: float | None = Field(None, gt=0, description="wall-clock cap on the phase's training; the LR "
                                  "schedule then runs on whichever of steps and time is further along")
    lr: float = Field(1e-4, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor, fraction of lr")
    batch_size: int = Field(2, ge=1, description="per worker")
    grad_accum: int = Field(1, ge=1)
    warmup_fraction: float | None = Field(0.1, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_fraction")
    exit: Literal["steps", "epochs", "plateau"] = "steps"
    patience: int = Field(5, ge=1, description="evaluations without improvement (plateau)")
    min_delta: float = Field(1e-4, ge=0.0)
    reduce_on_plateau: bool = False
    reduce_factor: float = Field(0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _exit_rule_has_its_count(self) -> PhaseConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("a phase needs `steps` or `epochs` (the plateau rule uses them as a cap)")
        if self.exit == "steps" and self.steps is None:
            raise ValueError("exit 'steps' needs `steps`")
        if self.exit == "epochs" and self.epochs is None:
            raise ValueError("exit 'epochs' needs `epochs`")
        if any(level not in range(1, 6) for level in self.levels):
            raise ValueError(f"levels must be within 1..5, got {self.levels}")
        return self


class CurriculumConfig(Section):
    phases: list[PhaseConfig] = Field(min_length=1)
    eval_every_steps: int = Field(10, ge=1, description="plateau checks and validation cadence")
    keep_optimizer: bool = Field(
        True, description="a phase that trains the same component as the phase before starts from that "
        "phase's optimizer state (AdamW moments) instead of a fresh one; see README 'Model quality'")


# --------------------------------------------------------------------------- training


class TrainConfig(Section):
    workers: int | Literal["auto"] = "auto"
    use_gpu: bool | Literal["auto"] = "auto"
    cpu_workers: int = Field(2, ge=1, description="workers=auto on a cluster without GPUs")
    cpus_per_worker: float = Field(1.0, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the training workers; STRICT_SPREAD: one per node")
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    grad_clip: float = Field(1.0, ge=0.0)
    optimizer: Literal["adamw"] = "adamw"
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = Field(0.01, ge=0.0)
    activation_checkpointing: bool = False
    tf32: bool = True
    compile: bool = False
    seed: int = 0
    progress_every_s: float = Field(5.0, gt=0)
    max_failures: int = Field(2, ge=0)
    nan_rollback_after: int = Field(3, ge=1, description="K non-finite losses in a row -> rollback")
    nan_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    small_gpu_gib: float = Field(12.0, gt=0, description="one GPU below this -> gtx1070 profile")
    storage: str = Field("out/runs", description="run outputs root, local or s3://")
    sample_prompt: str = "a red circle moving right"
    init_from: str | None = Field(None, description="checkpoint dir whose weights start the run")
    contact_sheet_frames: int = Field(8, ge=1, description="frames per phase-end contact sheet")
    demo_clips: int = Field(200, ge=8, description="--demo: synthetic clips built when --data is not given")
    probe_draws: int = Field(4, ge=1, description="fixed noise draws averaged in the phase start/end probe loss")
    cache_latents: bool = Field(False, description="after the VAE phases, encode the denoiser phases' clips once "
                                "into RUN/latents (reused when it matches) and train the denoiser from it; a "
                                "cache named by data.latents / --latents wins")


class CheckpointConfig(Section):
    every_steps: int = Field(50, ge=1)
    num_to_keep: int = Field(3, ge=1)
    verify: bool = True
    keep_best: bool = Field(True, description="best-loss weights per phase under RUN/best/")


# ------------------------------------------------------------------------ eval / registry


class EvalConfig(Section):
    num_samples: int = Field(8, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = Field(20, ge=1)
    i3d_weights: str | None = Field(None, description="local I3D weights -> real FVD")
    gates: dict[str, float] = Field(
        default_factory=lambda: {"psnr_min": 12.0, "temporal_coherence_min": 0.5,
                                 "alignment_colour_min": 0.8, "alignment_direction_min": 0.6},
        description="release gates: '<metric>_min' / '<metric>_max' thresholds; the alignment ones fail a "
                    "model that learned nothing (chance: colour 1/7, direction 1/4)",
    )
    levels: list[int] = Field(default_factory=lambda: [1, 2], description="synthetic prompt levels judged")
    languages: list[str] | None = Field(None, description="prompt languages; None = every caption language")
    prompt_seed: int = Field(1_000_000, ge=0, description="first seed of the synthetic prompt/reference clips")
    frames: int | None = Field(None, ge=1, description="clip size; None = the last curriculum phase's")
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    fps: float | None = Field(None, gt=0)
    heldout_clips: int = Field(8, ge=1, description="held-out clips for VAE reconstruction and FD")
    psnr_cap: float = Field(100.0, gt=0, description="dB reported when frames are identical (PSNR = inf)")
    coherence_grid: int = Field(16, ge=1, description="temporal coherence: frames pooled to grid x grid")
    sheet_frames: int = Field(8, ge=1, description="frames per contact-sheet row")
    sheet_frame_px: int = Field(96, ge=8, description="contact-sheet frame height in pixels")

    @model_validator(mode="after")
    def _known_levels(self) -> EvalConfig:
        if not self.levels or any(level not in range(1, 6) for level in self.levels):
            raise ValueError(f"levels must be a non-empty list within 1..5, got {self.levels}")
        if not self.seeds:
            raise ValueError("seeds must list at least one sampling seed")
        return self


class RegistryConfig(Section):
    root: str = Field("out/registry", description="local dir or s3:// prefix")
    model_types: list[str] = Field(default_factory=lambda: ["standard", "emergency"])
    specializations: list[str] = Field(
        default_factory=lambda: ["general", "emergency", "regional-*"], description="fnmatch patterns"
    )
    cache_dir: str = Field("~/.cache/aiprod/registry", description="local copies of s3:// versions")
    lock_timeout_s: float = Field(60.0, gt=0, description="wait for the registry lock before failing")


# ------------------------------------------------------------------------------- tune


class SearchDim(Section):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SearchDim:
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low} high={self.high}")
        return self


class TuneConfig(Section):
    num_samples: int = Field(8, ge=1)
    max_concurrent: int | Literal["auto"] = "auto"
    seed: int = 0
    phase: int = Field(1, ge=0, description="curriculum phase index a trial trains")
    end_phase: int | None = Field(None, ge=0)
    space: dict[str, SearchDim] = Field(
        default_factory=lambda: {
            "lr": SearchDim(low=1e-5, high=1e-3, log=True),
            "diffusion.noise_lambda": SearchDim(low=0.6, high=0.85),
        },
        description="'lr': the tuned phase's lr (later tuned phases keep their ratio); other keys are config paths",
    )
    metric: str = "val_objective"
    mode: Literal["min", "max"] = "min"
    report_every_steps: int = Field(5, ge=1, description="a checkpoint + validation figure every N steps")
    trial_steps: int | None = Field(None, ge=1, description="cap each tuned phase's steps in a trial")
    grace_period: int = Field(1, ge=1, description="ASHA: reports before a trial may stop")
    reduction_factor: float = Field(2.0, gt=1.0)
    workers_per_trial: int = Field(1, ge=1)
    importance_min_trials: int = Field(4, ge=2, description="finished trials needed for param importances")
    val_clips: int = Field(4, ge=2, description="held-out clips the objective compares generated ones with")
    val_seeds: list[int] | None = Field(None, description="sampling seeds per held-out caption; None = eval.seeds")
    driver_cpus: float = Field(0.1, gt=0, description="CPUs held by each trial's driver (Tune needs > 0)")
    tpe_startup_trials: int | None = Field(None, ge=1, description="random trials before TPE; None = half, <= 10")


# ------------------------------------------------------------------------------ serve


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


class ABConfig(Section):
    version: str = Field(description="arm b: registry version, 'production', or checkpoint dir")
    fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of requests (by request hash) sent to arm b")


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


# ------------------------------------------------------------------------------- root


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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """Stable sha256 (16 hex) of the resolved values; any changed value changes it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------- loading / errors


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _source(preset_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text = str(preset_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config: file {path} does not exist")
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:  # a file may extend a preset: `base: tiny`
            parent, _ = _source(base)
            return deep_merge(parent, data), path.stem
        return data, path.stem
    if text in available_presets():
        return _read_yaml(PRESET_DIR / f"{text}.yaml"), text
    close = difflib.get_close_matches(text, available_presets(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config: no preset named '{text}' (presets: {', '.join(available_presets())}){hint}"
    )


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.2.c=value` in a nested dict/list tree; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"config: override '{override}' must look like key.path=value")
    path, raw = override.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"config: override '{override}' has an empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path}: value '{raw}' is not valid YAML: {exc}") from exc
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.lstrip("-").isdigit():
                raise ConfigError(f"config: {where}: '{key}' is not a list index")
            index = int(key)
            if not -len(node) <= index < len(node):
                raise ConfigError(
                    f"config: {where}: index {index} is out of range (list has {len(node)} items)"
                )
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            parent = ".".join(keys[:depth])
            raise ConfigError(f"config: {parent} is a value, not a section; cannot set {where}")


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the model that lives at `loc` (for 'did you mean')."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:  # list[Model] / dict[str, Model]
            inner = [a for c in args for a in getattr(c, "__args__", ())] + list(args)
            model = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


_UNION_TAG_PREFIXES = ("literal[", "function-", "list[", "dict[", "nullable[", "union[")


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch tags (`int`, `literal['auto']`) so paths are config keys."""
    models = {cls.__name__ for cls in Section.__subclasses__()}
    return tuple(
        part
        for part in loc
        if not (
            isinstance(part, str)
            and (part in {"int", "float", "str", "bool", "none"} or part in models
                 or part.startswith(_UNION_TAG_PREFIXES))
        )
    )


def _format_error(err: dict[str, Any]) -> tuple[str, str]:
    loc = _clean_loc(tuple(err["loc"]))
    path = ".".join(str(p) for p in loc) or "(top)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, _field_names_at(loc), n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return path, f"is not a known key{hint}"
    if kind == "missing":
        return path, "is required"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if kind == "value_error":  # our own validators already say what was given
        return path, msg
    return path, f"{msg}, got {json.dumps(value, default=str)}"


def validate(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        by_path: dict[str, list[str]] = {}
        for err in exc.errors():
            path, msg = _format_error(err)
            by_path.setdefault(path, []).append(msg)
        lines = [f"config: {path}: {' or '.join(msgs)}" for path, msgs in by_path.items()]
        lines = [line.replace(": is ", " is ", 1) for line in lines]
        raise ConfigError("\n".join(lines)) from None


def load_config(
    preset_or_path: str | Path = "tiny", overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a preset name or YAML path, apply `key.path=value` overrides, validate."""
    tree, name = _source(preset_or_path)
    tree.setdefault("preset", name)
    for override in overrides:
        apply_override(tree, override)
    return validate(tree)


def load_overrides_file(path: str | Path) -> list[str]:
    """An overrides file: a YAML mapping of `key.path: value` (as tune/search.py writes best.yaml)."""
    data = _read_yaml(Path(path))
    return [f"{key}={json.dumps(value)}" for key, value in data.items()]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config, --overrides-file and trailing key.path=value overrides (the job CLIs)."""
    parser.add_argument("--preset", help=f"preset name ({', '.join(available_presets())})")
    parser.add_argument("--config", help="YAML config file (may say `base: PRESET`)")
    parser.add_argument("--overrides-file", help="YAML mapping of key.path: value")
    parser.add_argument("overrides", nargs="*", help="key.path=value")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The overrides file's entries, then the command line's (later wins)."""
    return (load_overrides_file(args.overrides_file) if args.overrides_file else []) + list(args.overrides)


def schema() -> dict[str, Any]:
    return Config.model_json_schema()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.config", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--preset", default="tiny", help=f"one of {available_presets()} or a YAML path")
    parser.add_argument("--config", help="YAML file (may say `base: PRESET`)")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema and exit")
    parser.add_argument("--hash", action="store_true", help="print the config hash only")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.config or args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(cfg.hash() if args.hash else cfg.to_yaml(), end="\n" if args.hash else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
