"""Config sections of the model and everything that trains and judges it: model, diffusion, data,
curriculum, train, checkpoint, eval, registry, tune."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from aiprod.config.section import Section


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
    speed: float = Field(0.3, gt=0.0, le=5.0, description="camera motion in frame widths per second; the "
                         "direction comes from the prompt or the request's `motion` (still without either)")
    first_frame: Literal["image", "clip"] = Field(
        "clip", description="how the first frame is sampled: 'clip' the first frame of a whole clip sampled in "
        "`steps` (the shape the denoiser trains on), 'image' a one-frame clip (needs diffusion.image_fraction > 0 "
        "in training); bench/quality.py judges both")
    cross_frame_attention: bool = True
    renoise: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the schedule the moved frames are re-noised to and denoised "
        "from with cross-frame attention; 0 = the moved first frame is the clip (the judge measured no gain from "
        "0.3 at twice the cost: README 'Emergency mode')")

    @model_validator(mode="before")
    @classmethod
    def _old_fixed_motion(cls, data: Any) -> Any:
        """Configs saved before the direction came from the request hold a fixed (dx, dy): dropped, so
        that their models still load (the direction now comes from the prompt or the `motion` field)."""
        if isinstance(data, dict) and "motion" in data:
            data = {k: v for k, v in data.items() if k != "motion"}
        return data


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
    image_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of denoiser batches trained on their "
                                  "first latent frame alone (joint image + video training): the emergency path "
                                  "samples a one-frame clip first")
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
    max_windows: int = Field(0, ge=0, description="clips a video longer than a clip gives per pass: one per "
                             "whole clip span in it, at most this many (0 = no cap; 1 = one random window)")
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
    buckets: list[str] | None = Field(None, description="clip shapes FRAMESxHEIGHTxWIDTH (e.g. ['9x64x64', "
                                      "'9x48x80']): each video trains in the one nearest its aspect ratio, each "
                                      "batch is one bucket's; None = frames x height x width only")
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
        if self.buckets is not None:
            from aiprod.data.clips import parse_bucket

            if not self.buckets:
                raise ValueError("buckets: list at least one FRAMESxHEIGHTxWIDTH, or leave it out")
            shapes = [parse_bucket(b) for b in self.buckets]
            if len(set(shapes)) != len(shapes):
                raise ValueError(f"buckets: {self.buckets} lists a shape twice")
        return self


class CurriculumConfig(Section):
    phases: list[PhaseConfig] = Field(min_length=1)
    eval_every_steps: int = Field(10, ge=1, description="plateau checks and validation cadence")
    keep_optimizer: bool = Field(
        True, description="a phase that trains the same component as the phase before starts from that "
        "phase's optimizer state (AdamW moments) instead of a fresh one; see README 'Model quality'")


# --------------------------------------------------------------------------- training


class AnomalyConfig(Section):
    """The training-loss anomaly detector (aiprod.monitoring.anomaly): events in metrics.jsonl and
    the aiprod_train_anomalies metric."""

    enabled: bool = Field(True, description="watch the step loss for spikes and plateaus")
    ema_beta: float = Field(0.9, gt=0.0, lt=1.0, description="weight of the past in the loss EMA and its "
                            "mean absolute deviation (the robust scale)")
    warmup_steps: int = Field(10, ge=1, description="steps of a phase before spikes are judged")
    spike_k: float = Field(6.0, gt=0.0, description="a spike: loss > EMA + spike_k x robust scale")
    scale_floor: float = Field(0.02, ge=0.0, description="robust scale at least this fraction of the EMA, so "
                               "a near-constant loss does not make every wobble a spike")
    plateau_steps: int = Field(200, ge=2, description="a plateau: no relative improvement of the best loss by "
                               "plateau_min_improvement within this many steps")
    plateau_min_improvement: float = Field(0.01, ge=0.0, lt=1.0, description="relative improvement of the best "
                                           "loss that counts as progress")


class AdapterConfig(Section):
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: the update is B·A·alpha/rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["attn.q", "attn.kv", "attn.out", "cross.q", "cross.kv", "cross.out", "mlp.fc1",
                                 "mlp.fc2"],
        description="Linear layers inside each denoiser transformer block that get an adapter")
    text_encoder: bool = Field(False, description="also put adapters on the text encoder's blocks (else it is "
                               "frozen in adapter modes)")


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
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig, description="loss spike/plateau detector (monitoring)")
    small_gpu_gib: float = Field(12.0, gt=0, description="one GPU below this -> gtx1070 profile")
    storage: str = Field("out/runs", description="run outputs root, local or s3://")
    sample_prompt: str = "a red circle moving right"
    init_from: str | None = Field(None, description="weights that start the run: a model directory (final/, a "
                                  "checkpoint, s3://...) or a registry reference (production, latest, a version)")
    mode: Literal["full", "lora", "dora"] = Field(
        "full", description="full: denoiser phases train every denoiser and text-encoder weight; lora / dora: only "
        "adapters on train.init_from's weights (final/ is then an adapter directory naming that base)")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="denoiser phases keep an exponential "
                                    "moving average of the trained weights (e.g. 0.999); None = off")
    export_ema: bool = Field(True, description="with ema_decay: final/ holds the EMA weights (the raw ones beside "
                             "them as raw.safetensors); else the raw ones (the EMA as ema.safetensors)")
    contact_sheet_frames: int = Field(8, ge=1, description="frames per phase-end contact sheet")
    demo_clips: int = Field(200, ge=8, description="--demo: synthetic clips built when --data is not given")
    probe_draws: int = Field(4, ge=1, description="fixed noise draws averaged in the phase start/end probe loss")
    cache_latents: bool = Field(False, description="after the VAE phases, encode the denoiser phases' clips once "
                                "into RUN/latents (reused when it matches) and train the denoiser from it; a "
                                "cache named by data.latents / --latents wins")

    @model_validator(mode="after")
    def _adapters_need_a_base(self) -> TrainConfig:
        if self.mode != "full" and not self.init_from:
            raise ValueError(f"mode={self.mode} trains adapters on a base model: set train.init_from (a model "
                             f"directory or a registry reference)")
        return self


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
