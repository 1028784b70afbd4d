"""Decomposed diffusion: noise, schedule, sampler, training loss, pipeline (plain PyTorch).

`pipeline` is not imported here so that `import aiprod.diffusion` stays light.
"""

from aiprod.diffusion.latents import decode_latents, encode_latents
from aiprod.diffusion.loss import diffusion_loss, drop_captions, latent_diffusion_loss
from aiprod.diffusion.noise import decomposed_noise
from aiprod.diffusion.sampler import TextCondition, ddim_sample, emergency_sample, sample
from aiprod.diffusion.schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "TextCondition",
    "ddim_sample",
    "decode_latents",
    "decomposed_noise",
    "diffusion_loss",
    "latent_diffusion_loss",
    "drop_captions",
    "emergency_sample",
    "encode_latents",
    "sample",
]
