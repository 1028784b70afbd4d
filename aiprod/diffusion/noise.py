"""Decomposed video noise (VideoFusion): a base noise shared by all frames plus per-frame residuals.

    eps_i = sqrt(λ)·b + sqrt(1-λ)·r_i,   b, r_i ~ N(0, I)

Each eps_i stays unit-variance and two frames' noise correlate with coefficient λ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal drawn on the generator's device, then moved: a seed gives the same
    numbers whatever device the result lives on."""
    draw_device = generator.device if generator is not None else device
    sample = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=torch.float32)
    return sample.to(device=device, dtype=dtype or torch.float32)


def decomposed_noise(
    shape: Sequence[int],
    lam: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Noise [B, C, T, H, W] whose frames (dim 2) share a fraction λ of their variance."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"decomposed_noise: shape must be [B, C, T, H, W] with positive sizes, got {shape}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"decomposed_noise: lam (diffusion.noise_lambda) must be within [0, 1], got {lam}")
    batch, channels, _, height, width = shape
    base = randn((batch, channels, 1, height, width), generator, device, dtype)
    residual = randn(shape, generator, device, dtype)
    return math.sqrt(lam) * base + math.sqrt(1.0 - lam) * residual
