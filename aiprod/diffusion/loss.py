"""The denoiser's training objective, shared by the training loop and tune.

Frozen VAE encode -> normalised latents (aiprod.diffusion.latents) -> decomposed noise at a uniform timestep -> MSE between the
denoiser's output and the schedule's target (v or eps). Captions are dropped with probability
`diffusion.caption_dropout` so the unconditional branch that CFG needs is learnt too, and a share
`diffusion.image_fraction` of batches trains on the clips' first latent frame alone (joint image +
video training, as Open-Sora does): the emergency path samples such a one-frame clip first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from aiprod.config import DiffusionConfig
from aiprod.diffusion.latents import encode_latents
from aiprod.diffusion.noise import decomposed_noise
from aiprod.diffusion.schedule import NoiseSchedule

if TYPE_CHECKING:
    from aiprod.models import VideoModel


def drop_captions(captions: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Each caption becomes "" (the unconditional input) with probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout (diffusion.caption_dropout) must be within [0, 1], got {p}")
    device = generator.device if generator is not None else None
    drop = torch.rand(len(captions), generator=generator, device=device)
    return ["" if d else c for c, d in zip(captions, (drop < p).tolist())]


def image_batch(fraction: float, generator: torch.Generator | None = None) -> bool:
    """Whether this batch trains on first frames alone (probability `diffusion.image_fraction`;
    no random draw at 0, so a run without it keeps its random stream)."""
    if fraction <= 0:
        return False
    device = generator.device if generator is not None else None
    return bool(torch.rand(1, generator=generator, device=device).item() < fraction)


def diffusion_loss(model: VideoModel, video: torch.Tensor, captions: list[str], schedule: NoiseSchedule,
                   cfg: DiffusionConfig, generator: torch.Generator | None = None, **fixed: torch.Tensor | None
                   ) -> torch.Tensor:
    """Scalar MSE loss for one batch of video [B, 3, T, H, W] in [-1, 1]: `latent_diffusion_loss` on its
    normalised VAE latents (`fixed`: its `timesteps` / `noise`)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"diffusion_loss: video must be [B, 3, T, H, W] in [-1, 1], got {tuple(video.shape)}")
    latents = encode_latents(model.vae, video, cfg.latents, generator)
    return latent_diffusion_loss(model, latents, captions, schedule, cfg, generator, **fixed)


def latent_diffusion_loss(
    model: VideoModel,
    latents: torch.Tensor,
    captions: list[str],
    schedule: NoiseSchedule,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    *,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar MSE loss from normalised latents [B, C, t, h, w] (a latent cache's rows, or a video's).
    `timesteps` [B] / `noise` (latent-shaped) fix the random draws (for tests and validation at fixed
    noise levels); by default both are sampled."""
    if len(captions) != latents.shape[0]:
        raise ValueError(f"diffusion_loss: {len(captions)} captions for a batch of {latents.shape[0]} clips")
    if noise is None and image_batch(cfg.image_fraction, generator):
        latents = latents[:, :, :1]  # the first frame alone: a one-frame clip, as the emergency path samples
    batch, device = latents.shape[0], latents.device
    text, mask = model.text.encode(drop_captions(captions, cfg.caption_dropout, generator), device)
    if noise is None:
        noise = decomposed_noise(latents.shape, cfg.noise_lambda, generator, device, latents.dtype)
    elif noise.shape != latents.shape:
        raise ValueError(f"diffusion_loss: noise shape {tuple(noise.shape)} != latent shape {tuple(latents.shape)}")
    if timesteps is None:
        timesteps = schedule.sample_timesteps(batch, generator, device)
    timesteps = timesteps.to(device)
    noisy = schedule.add_noise(latents, noise, timesteps)
    out = model.denoiser(noisy, timesteps.float(), text, mask)
    return F.mse_loss(out.float(), schedule.target(latents, noise, timesteps).float())
