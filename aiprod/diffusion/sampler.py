"""DDIM sampling (eta = 0) with classifier-free guidance, and the emergency fast path.

A `denoise` function has the HybridBackbone signature
`denoise(x [B,C,t,h,w], timesteps [B] float, text [B,L,D], text_mask [B,L], cross_frame=False)`
and returns the model output (v or eps, as the schedule says); pass `model.denoiser` itself.

Emergency path (Text2Video-Zero style): sample the first frame alone in a few steps (the denoiser
phases train on one-frame clips too), move it in pixels as the request says (aiprod.diffusion.motion:
a direction from the prompt or the request's `motion`, else a still camera), encode the moved clip
with the VAE, re-noise it lightly and denoise it with cross-frame attention to frame 1. Same weights
throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aiprod.config import DiffusionConfig
from aiprod.diffusion.motion import Motion, warp_frames
from aiprod.diffusion.noise import decomposed_noise
from aiprod.diffusion.schedule import NoiseSchedule

DenoiseFn = Callable[..., torch.Tensor]
# on_step(i, n): called before step i of n and once more with i == n after the last; may raise
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class TextCondition:
    """Encoded text for the denoiser: features [B, L, D] and mask [B, L] (True = token)."""

    features: torch.Tensor
    mask: torch.Tensor

    def expand(self, batch: int) -> TextCondition:
        if self.features.shape[0] == batch:
            return self
        if self.features.shape[0] != 1:
            raise ValueError(f"text condition has batch {self.features.shape[0]}, cannot match batch {batch}")
        return TextCondition(
            self.features.expand(batch, -1, -1), self.mask.expand(batch, -1)
        )


def _pad_to(cond: TextCondition, length: int) -> TextCondition:
    extra = length - cond.features.shape[1]
    if extra == 0:
        return cond
    return TextCondition(F.pad(cond.features, (0, 0, 0, extra)), F.pad(cond.mask, (0, extra), value=False))


def guided_prediction(
    denoise: DenoiseFn,
    x: torch.Tensor,
    t: int,
    cond: TextCondition,
    uncond: TextCondition | None,
    guidance: float,
    cross_frame: bool = False,
) -> torch.Tensor:
    """out_u + g·(out_c - out_u). With g == 1 (or no uncond) this is one conditional forward pass."""
    batch = x.shape[0]
    cond = cond.expand(batch)
    if guidance == 1.0 or uncond is None:
        timesteps = torch.full((batch,), float(t), device=x.device)
        return denoise(x, timesteps, cond.features, cond.mask, cross_frame=cross_frame).to(x.dtype)
    uncond = uncond.expand(batch)
    length = max(cond.features.shape[1], uncond.features.shape[1])
    cond, uncond = _pad_to(cond, length), _pad_to(uncond, length)
    timesteps = torch.full((2 * batch,), float(t), device=x.device)
    out = denoise(
        torch.cat([x, x]),
        timesteps,
        torch.cat([uncond.features, cond.features]),
        torch.cat([uncond.mask, cond.mask]),
        cross_frame=cross_frame,
    ).to(x.dtype)
    out_uncond, out_cond = out.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


def ddim_sample(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: TextCondition,
    uncond: TextCondition | None = None,
    guidance: float = 1.0,
    steps: int = 30,
    start: int | None = None,
    cross_frame: bool = False,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from x at timestep `start` (default the noisiest) down to a clean x0.
    `on_step` runs before every step (and after the last): raising there abandons the sampling
    within one step."""
    timesteps = schedule.ddim_timesteps(steps, start)
    for i, t in enumerate(timesteps):
        if on_step is not None:
            on_step(i, len(timesteps))
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        out = guided_prediction(denoise, x, t, cond, uncond, guidance, cross_frame)
        x0, eps = schedule.predict_x0_eps(out, x, t)
        a_prev = schedule.alpha_bar(t_prev, x).to(x.dtype)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    if on_step is not None:
        on_step(len(timesteps), len(timesteps))  # after the last step: it can be timed too
    return x


def sample(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    cond: TextCondition,
    uncond: TextCondition | None,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: torch.device | str | None = None,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """The standard path: decomposed starting noise (λ = cfg.noise_lambda), then DDIM."""
    noise = decomposed_noise(shape, cfg.noise_lambda, generator, device)
    return ddim_sample(
        denoise,
        schedule,
        noise,
        cond,
        uncond,
        cfg.guidance if guidance is None else guidance,
        cfg.sample_steps if steps is None else steps,
        on_step=on_step,
    )


# ---------------------------------------------------------------------------- emergency


@dataclass(frozen=True)
class PixelCodec:
    """The VAE as the fast path needs it: latents -> pixels [B,3,T,H,W] and back (normalised latents)."""

    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]


def emergency_sample(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    cond: TextCondition,
    uncond: TextCondition | None,
    cfg: DiffusionConfig,
    codec: PixelCodec,
    frames: int,
    fps: float,
    motion: Motion = Motion(),
    generator: torch.Generator | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: torch.device | str | None = None,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """Pixels [B,3,frames,H,W] in [-1, 1] from the fast path, for latents of `shape`:

    1. `steps` model calls for the first frame: with `first_frame: clip` the first frame of a whole
       clip (the shape every denoiser phase trains on), with `image` a one-frame clip (trained only
       with diffusion.image_fraction > 0);
    2. that frame decoded and moved by `motion` in pixels (frame k: k/fps seconds of it);
    3. with `renoise` > 0, the moved clip encoded (so each latent frame encodes the frames a VAE
       latent of it would: with a causal VAE latent 0 is one frame, the later ones four), re-noised
       to `renoise` of the schedule, denoised in at most `steps` calls with cross-frame attention to
       the first frame and decoded; with `renoise` 0 the moved frames are the clip (no second
       decode: the fast path's cost is then the first frame's)."""
    fast = cfg.emergency
    steps = fast.steps if steps is None else steps
    guidance = fast.guidance if guidance is None else guidance
    batch, channels, latent_frames, height, width = (int(n) for n in shape)
    sampled = 1 if fast.first_frame == "image" else latent_frames
    first_noise = decomposed_noise((batch, channels, sampled, height, width), cfg.noise_lambda, generator, device)
    first = ddim_sample(denoise, schedule, first_noise, cond, uncond, guidance, steps, on_step=on_step)[:, :, :1]
    moved = warp_frames(codec.decode(first), frames, motion, fps, fast.speed)
    if latent_frames == 1 or fast.renoise == 0:
        return moved
    clip = codec.encode(moved).to(first.dtype)
    if tuple(clip.shape) != (batch, channels, latent_frames, height, width):
        raise ValueError(f"emergency_sample: the moved clip encodes to {tuple(clip.shape)}, expected {tuple(shape)}")
    start = round(fast.renoise * (schedule.train_timesteps - 1))
    noise = decomposed_noise(tuple(clip.shape), cfg.noise_lambda, generator, device)
    t = torch.full((batch,), start, dtype=torch.long)
    noisy = schedule.add_noise(clip, noise, t)
    refined = ddim_sample(denoise, schedule, noisy, cond, uncond, guidance, steps, start=start,
                          cross_frame=fast.cross_frame_attention, on_step=on_step)
    return codec.decode(refined)
