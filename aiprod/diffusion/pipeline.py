"""VideoPipeline: text -> uint8 video frames from a model directory.

    pipe = VideoPipeline.from_checkpoint("out/registry/pib-videogen-...")   # or s3://...
    frames = pipe.generate("a red circle moving right", "en", seconds=2, fps=8, height=64, width=64, seed=0)
    pipe.write_mp4(frames, "out.mp4", fps=8)

Weights load from and save to a model directory (aiprod.model_dir: its files, save, load, verify).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from aiprod import model_dir
from aiprod.config import Config
from aiprod.diffusion.latents import STAT_KEYS, decode_latents, encode_latents, missing_stats_message
from aiprod.diffusion.motion import Motion, motion_from_text, parse_motion
from aiprod.diffusion.sampler import PixelCodec, StepHook, TextCondition, emergency_sample, sample
from aiprod.diffusion.schedule import NoiseSchedule
from aiprod.model_dir import DEFAULT_VERSION, WEIGHTS, CheckpointError
from aiprod.models import VideoModel, build_model
from aiprod.models.text import state_for_terms, with_saved_terms

MODES = ("standard", "emergency")
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
        registry_root: str | None = None,
        alternate: bool = False,
    ) -> VideoPipeline:
        """Load a model directory (aiprod.model_dir), local or s3://. With `verify`, every file its
        manifest lists must match. An adapter directory loads its base (a registry version is looked
        up in `registry_root` first) with the adapter folded in. `alternate`: the weights final/ keeps
        beside the exported ones (raw or EMA, model_dir.alternate_file)."""
        uri = str(directory)
        cfg, state, version = model_dir.load(uri, check=verify, registry_root=registry_root, alternate=alternate)
        if not set(STAT_KEYS) <= set(state):
            raise CheckpointError(f"checkpoint {uri}: " + missing_stats_message(WEIGHTS))
        cfg.model.text = with_saved_terms(cfg.model.text, state)
        with torch.device("meta"):
            model = build_model(cfg.model)
        try:
            state = state_for_terms(state, model.text.tokenizer.terms)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {uri}: {exc}") from None
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {uri}: {WEIGHTS} does not fit model config: {exc}") from None
        unset = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unset:
            raise CheckpointError(f"checkpoint {uri}: {WEIGHTS} does not set {', '.join(unset[:5])}")
        return cls(cfg, model, version=version, device=device or "cpu", autocast_dtype=autocast_dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> str | Path:
        """Write this pipeline's model directory (local or s3://), replacing any there (model_dir.save)."""
        return model_dir.save(directory, self.model.state_dict(), self.cfg, self.version)

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
        motion: str | Motion | None = None,
    ) -> np.ndarray:
        """uint8 frames [T, H, W, 3]. The byte-level text encoder reads any script, so `language`
        is checked but not fed to the model (training captions carry no language tag).
        `steps` / `guidance` default to diffusion.* or diffusion.emergency.* for the mode.
        `deadline` (time.time()) is checked before every sampler step and before decoding: past it,
        GenerationAbandoned is raised. `on_step(i, n)` runs before every step (progress, timing).
        A clip with non-finite values raises NonFiniteOutput instead of being returned.
        Emergency mode moves the camera as `motion` says ("left", "down:2", a Motion), else as the
        prompt says (aiprod.diffusion.motion.motion_from_text), else not at all."""
        self._check_request(prompt, language, seconds, fps, height, width, seed, steps, guidance, mode)
        diffusion = self.cfg.diffusion
        if guidance is None:
            guidance = diffusion.emergency.guidance if mode == "emergency" else diffusion.guidance
        frames = self.num_frames(seconds, fps)
        shape = (1, *self.model.vae.latent_shape(frames, height, width))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        sampler = sample
        if mode == "emergency":
            sampler = functools.partial(emergency_sample, codec=self._codec(height, width), frames=frames, fps=fps,
                                        motion=self.motion_for(prompt, motion))
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
            out = sampler(
                self.model.denoiser, self.schedule, shape, cond, uncond, diffusion, generator=generator,
                steps=steps, guidance=guidance, device=self.device, on_step=step_hook,
            )
            if deadline is not None and time.time() > deadline:
                raise GenerationAbandoned(done, done, time.time() - deadline)
            # the fast path decodes by itself (its pixels); the standard path gives latents
            video = out if mode == "emergency" else decode_latents(self.model.vae, out, size=(height, width))
        if not torch.isfinite(video).all():
            bad = int((~torch.isfinite(video)).sum())
            raise NonFiniteOutput(f"model {self.version} produced {bad} non-finite values of {video.numel()} "
                                  f"(NaN or infinity); the clip is not encoded")
        return to_uint8_frames(video[0])

    @staticmethod
    def motion_for(prompt: str, motion: str | Motion | None = None) -> Motion:
        """The emergency path's camera motion: the explicit one, else the prompt's, else still."""
        if isinstance(motion, Motion):
            return motion
        return parse_motion(motion) if motion else motion_from_text(prompt)

    def _codec(self, height: int, width: int) -> PixelCodec:
        vae = self.model.vae
        return PixelCodec(decode=lambda z: decode_latents(vae, z, size=(height, width)),
                          encode=lambda video: encode_latents(vae, video.float(), "mean"))

    @staticmethod
    def write_mp4(frames: np.ndarray, path: str | os.PathLike | BinaryIO, fps: float) -> None:
        """H.264 yuv420p MP4 through the project's one writer (aiprod.data.video_encode): a local path or
        s3:// URI (written atomically) or a writable binary file."""
        from aiprod.data.video_encode import write_mp4

        write_mp4(frames, path, fps)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()
