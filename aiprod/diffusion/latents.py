"""The latent space the denoiser learns in: one home for encode -> normalise and denormalise -> decode.

The denoiser sees `(z - shift) * scale` per latent channel, where z is the VAE posterior's mean
(`diffusion.latents: mean`, the default) or a sample of it (`sample`). Measured on the tiny VAE
(issue 19): a sample carried about two thirds of its variance as posterior noise that no denoiser
can predict, which held the v-loss near 1.0; on the means scaled to unit std the same denoiser
reached 0.17 and learnt its captions.

shift/scale are measured on data once a VAE is trained or loaded (`LatentStats`, at the start of
the first denoiser phase that finds them missing) and stored with the weights as VAE buffers, so
training, sampling, the emergency path, evaluation, Tune and Serve all read the same values.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from aiprod.diffusion.noise import randn

if TYPE_CHECKING:
    from aiprod.models.vae import VideoVAE

log = logging.getLogger(__name__)
LATENT_SOURCES = ("mean", "sample")
STAT_KEYS = ("vae.latent_shift", "vae.latent_scale", "vae.latent_calibrated")
_warned_uncalibrated = False


def raw_latents(vae: VideoVAE, video: torch.Tensor, source: str = "mean",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Posterior mean (or a sample) of video [B,3,T,H,W] in [-1,1], before normalising."""
    if source not in LATENT_SOURCES:
        raise ValueError(f"diffusion.latents must be one of {LATENT_SOURCES}, got {source!r}")
    posterior = vae.encode(video)
    if source == "mean":
        return posterior.mean
    eps = randn(posterior.mean.shape, generator, posterior.mean.device, posterior.mean.dtype)
    return posterior.mean + posterior.std * eps


@torch.no_grad()
def encode_latents(vae: VideoVAE, video: torch.Tensor, source: str = "mean",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Frozen VAE: the denoiser's latents of video [B,3,T,H,W] in [-1,1]."""
    return vae.normalize(raw_latents(vae, video, source, generator))


def decode_latents(vae: VideoVAE, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The denoiser's latents -> video [B,3,T,H,W] in [-1,1] (cropped to `size`)."""
    global _warned_uncalibrated
    if not vae.calibrated and not _warned_uncalibrated:
        _warned_uncalibrated = True
        log.warning("decoding with a VAE whose latent statistics were never measured (no denoiser phase "
                    "has run on it): its videos mean nothing")
    return vae.decode(vae.denormalize(latents.float()), size=size)


class LatentStats:
    """Per-channel running sums of raw latents (ranks merge them by summing `sums`); `apply` sets the
    VAE buffers."""

    def __init__(self, channels: int):
        self.sums = torch.zeros(3, channels, dtype=torch.float64)  # count, sum, sum of squares

    def add(self, z: torch.Tensor) -> None:
        flat = z.detach().double().transpose(0, 1).reshape(z.shape[1], -1)  # [C, N]
        self.sums[0] += flat.shape[1]
        self.sums[1] += flat.sum(dim=1)
        self.sums[2] += flat.pow(2).sum(dim=1)

    @property
    def count(self) -> int:
        return int(self.sums[0, 0].item())

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.sums[0].clamp_min(1)
        mean = self.sums[1] / n
        var = (self.sums[2] / n - mean.pow(2)).clamp_min(0)
        return mean.float(), var.sqrt().clamp_min(1e-4).float()

    def apply(self, vae: VideoVAE) -> dict[str, list[float]]:
        if self.count < 2:
            raise ValueError("latent stats: no latents were measured (empty data?)")
        mean, std = self.mean_std()
        vae.set_latent_stats(mean.to(vae.latent_shift.device), std.to(vae.latent_scale.device))
        return {"latent_mean": [round(v, 5) for v in mean.tolist()], "latent_std": [round(v, 5) for v in std.tolist()],
                "latent_values": self.count}


@torch.no_grad()
def measure(vae: VideoVAE, videos, source: str = "mean", generator: torch.Generator | None = None) -> LatentStats:
    """LatentStats over an iterable of video batches [B,3,T,H,W] (one process; ranks merge sums)."""
    stats = LatentStats(vae.cfg.latent_channels)
    for video in videos:
        stats.add(raw_latents(vae, video, source, generator))
    return stats


def missing_stats_message(where: str) -> str:
    return (f"{where} has no latent statistics ({', '.join(STAT_KEYS)}): it was saved before they were "
            "stored with the weights. Train it again, or start a run from it with train.init_from (the first "
            "denoiser phase measures them)")
