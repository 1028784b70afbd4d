"""VideoPipeline: text -> uint8 video frames, plus the weights directory format.

    pipe = VideoPipeline.from_checkpoint("out/registry/pib-videogen-...")   # or s3://...
    frames = pipe.generate("a red circle moving right", "en", seconds=2, fps=8, height=64, width=64, seed=0)
    pipe.write_mp4(frames, "out.mp4", fps=8)

A weights directory holds `model.safetensors` (VideoModel state_dict; metadata: version, config
hash), `config.yaml` (the resolved config) and `MANIFEST.sha256`. Checkpoints and registry
entries add their own files beside these.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from aiprod import storage
from aiprod.config import Config, validate
from aiprod.diffusion.latents import STAT_KEYS, decode_latents, missing_stats_message
from aiprod.diffusion.sampler import StepHook, TextCondition, emergency_sample, sample
from aiprod.diffusion.schedule import NoiseSchedule
from aiprod.manifest import MANIFEST, verify_manifest, write_manifest
from aiprod.models import VideoModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
MODES = ("standard", "emergency")
DEFAULT_VERSION = "unversioned"


class CheckpointError(RuntimeError):
    """A weights directory that is missing files or fails its manifest."""


class GenerationAbandoned(RuntimeError):
    """generate() stopped between sampler steps because its deadline passed."""

    def __init__(self, step: int, steps: int, late_s: float):
        self.step, self.steps, self.late_s = step, steps, late_s
        super().__init__(f"deadline passed {late_s:.2f}s ago; generation abandoned after {step} of {steps} "
                         f"sampler steps")


class NonFiniteOutput(RuntimeError):
    """The model produced NaN or infinite pixels: nothing fit to encode."""


class VideoPipeline:
    """A VideoModel in eval mode plus its config and noise schedule."""

    def __init__(
        self,
        cfg: Config,
        model: VideoModel,
        version: str = DEFAULT_VERSION,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.cfg = cfg
        self.version = version
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.schedule = NoiseSchedule(cfg.diffusion)
        self.autocast_dtype = autocast_dtype

    # --------------------------------------------------------------------------- weights

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | os.PathLike,
        device: torch.device | str | None = None,
        verify: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> VideoPipeline:
        """Load `config.yaml` + `model.safetensors` from a local dir or s3:// prefix. When
        `MANIFEST.sha256` is present (and `verify`), every listed file must match it."""
        uri = str(directory)
        for name in (WEIGHTS, CONFIG):
            if not storage.exists(storage.join(uri, name)):
                raise CheckpointError(f"checkpoint {uri}: {name} is missing")
        if verify and storage.exists(storage.join(uri, MANIFEST)):
            problems = verify_manifest(uri)
            if problems:
                raise CheckpointError(f"checkpoint {uri} fails {MANIFEST}: " + "; ".join(problems))
        cfg = validate(yaml.safe_load(storage.read_text(storage.join(uri, CONFIG))) or {})
        blob = storage.read_bytes(storage.join(uri, WEIGHTS))
        state = load_safetensors(blob)
        version = _safetensors_metadata(blob).get("version", DEFAULT_VERSION)
        if not set(STAT_KEYS) <= set(state):
            raise CheckpointError(f"checkpoint {uri}: " + missing_stats_message(WEIGHTS))
        with torch.device("meta"):
            model = build_model(cfg.model)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {uri}: {WEIGHTS} does not fit model config: {exc}") from None
        unset = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unset:
            raise CheckpointError(f"checkpoint {uri}: {WEIGHTS} does not set {', '.join(unset[:5])}")
        return cls(cfg, model, version=version, device=device or "cpu", autocast_dtype=autocast_dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write model.safetensors + config.yaml + MANIFEST.sha256 into a temp dir beside
        `directory`, then rename it into place (an existing directory is replaced)."""
        if storage.is_s3(directory):
            raise ValueError(f"save_pretrained writes a local directory, got {directory}; upload it afterwards")
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, tmp / WEIGHTS, metadata={"version": self.version, "config_hash": self.cfg.hash()})
            (tmp / CONFIG).write_text(self.cfg.to_yaml(), encoding="utf-8")
            for name in (WEIGHTS, CONFIG):
                _fsync(tmp / name)
            write_manifest(tmp)
            storage.fsync_dir(tmp)
            if target.exists():  # a directory cannot be renamed over a non-empty one: swap it aside
                os.rename(target, old)
            os.rename(tmp, target)
            storage.fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not target.exists():
                os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return target

    # -------------------------------------------------------------------------- generate

    def num_frames(self, seconds: float, fps: float) -> int:
        """1 + k·tc frames (what the causal VAE decodes) nearest to seconds·fps."""
        tc = self.model.vae.temporal_compression
        return 1 + tc * max(0, round((seconds * fps - 1) / tc))

    def encode_text(self, prompt: str, guidance: float) -> tuple[TextCondition, TextCondition | None]:
        """Conditional and (when guidance != 1) unconditional text, encoded in one batch."""
        texts = [prompt] if guidance == 1.0 else [prompt, ""]
        features, mask = self.model.text.encode(texts, self.device)
        cond = TextCondition(features[:1], mask[:1])
        uncond = TextCondition(features[1:], mask[1:]) if guidance != 1.0 else None
        return cond, uncond

    def _check_request(
        self, prompt, language, seconds, fps, height, width, seed, steps, guidance, mode
    ) -> None:
        s = self.model.vae.spatial_compression
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(language, str) or not language:
            raise ValueError(f"language must be a non-empty language code, got {language!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < s or value % s:
                raise ValueError(
                    f"{name} must be a positive multiple of {s} (the VAE's spatial compression), got {value}"
                )
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if steps is not None and not 1 <= steps <= self.schedule.train_timesteps:
            raise ValueError(f"steps must be within [1, {self.schedule.train_timesteps}], got {steps}")
        if guidance is not None and not (math.isfinite(guidance) and guidance >= 1.0):
            raise ValueError(f"guidance must be >= 1 and finite (1 = no guidance), got {guidance}")

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        language: str = "en",
        seconds: float = 2.0,
        fps: float = 8.0,
        height: int = 64,
        width: int = 64,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        mode: str = "standard",
        deadline: float | None = None,
        on_step: StepHook | None = None,
    ) -> np.ndarray:
        """uint8 frames [T, H, W, 3]. The byte-level text encoder reads any script, so `language`
        is checked but not fed to the model (training captions carry no language tag).
        `steps` / `guidance` default to diffusion.* or diffusion.emergency.* for the mode.
        `deadline` (time.time()) is checked before every sampler step and before decoding: past it,
        GenerationAbandoned is raised. `on_step(i, n)` runs before every step (progress, timing).
        A clip with non-finite values raises NonFiniteOutput instead of being returned."""
        self._check_request(prompt, language, seconds, fps, height, width, seed, steps, guidance, mode)
        diffusion = self.cfg.diffusion
        if guidance is None:
            guidance = diffusion.emergency.guidance if mode == "emergency" else diffusion.guidance
        frames = self.num_frames(seconds, fps)
        shape = (1, *self.model.vae.latent_shape(frames, height, width))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        sampler = emergency_sample if mode == "emergency" else sample
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        done = 0

        def step_hook(i: int, n: int) -> None:
            nonlocal done
            if deadline is not None and time.time() > deadline:
                raise GenerationAbandoned(done, done + n - i, time.time() - deadline)
            if on_step is not None:
                on_step(i, n)
            done += i < n

        with autocast:
            cond, uncond = self.encode_text(prompt, guidance)
            latents = sampler(
                self.model.denoiser, self.schedule, shape, cond, uncond, diffusion, generator,
                steps=steps, guidance=guidance, device=self.device, on_step=step_hook,
            )
            if deadline is not None and time.time() > deadline:
                raise GenerationAbandoned(done, done, time.time() - deadline)
            video = decode_latents(self.model.vae, latents, size=(height, width))
        if not torch.isfinite(video).all():
            bad = int((~torch.isfinite(video)).sum())
            raise NonFiniteOutput(f"model {self.version} produced {bad} non-finite values of {video.numel()} "
                                  f"(NaN or infinity); the clip is not encoded")
        return to_uint8_frames(video[0])

    @staticmethod
    def write_mp4(frames: np.ndarray, path: str | os.PathLike | BinaryIO, fps: float) -> None:
        """H.264 yuv420p MP4 through the project's one writer (aiprod.data.video): a local path or
        s3:// URI (written atomically) or a writable binary file."""
        from aiprod.data.video import write_mp4

        write_mp4(frames, path, fps)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (8-byte little-endian header length, JSON header)."""
    header_len = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
