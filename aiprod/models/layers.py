"""Building blocks shared by the text encoder and the denoiser: attention, MLP, RoPE, embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def num_groups(channels: int, max_groups: int) -> int:
    """The largest divisor of `channels` that is <= `max_groups` (GroupNorm needs a divisor)."""
    for groups in range(min(channels, max_groups), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B], computed in float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def grid_position_embedding(grid: tuple[int, int, int], dim: int, device=None) -> torch.Tensor:
    """Fixed sin-cos embedding [t*h*w, dim] of each token's absolute (t, h, w) index on the token
    grid (split over (t, h, w) as 3D RoPE splits a head: `rope_axis_dims`), tokens in (t, h, w) order."""
    parts = []
    for size, width in zip(grid, rope_axis_dims(dim)):
        positions = torch.arange(size, device=device, dtype=torch.float32)
        parts.append(timestep_embedding(positions, width, max_period=100.0))
    t, h, w = grid
    axes = [p.view(*(size if i == j else 1 for j in range(3)), -1).expand(t, h, w, -1)
            for i, (p, size) in enumerate(zip(parts, grid))]
    return torch.cat(axes, dim=-1).reshape(t * h * w, dim)


# ------------------------------------------------------------------------------ RoPE


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head dimension over (t, h, w): h and w get equal even shares, t the (even) rest."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head dimension >= 6, got {head_dim}")
    spatial = (head_dim // 3) // 2 * 2
    return head_dim - 2 * spatial, spatial, spatial


def rope_3d(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float,
    device: torch.device | None = None,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim/2] for tokens ordered (t, h, w) on `grid`, or at explicit `positions` [N, 3]."""
    if positions is None:
        axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
        positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    positions = positions.float()
    angles = []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
        angles.append(positions[:, axis : axis + 1] * freqs[None])
    angle = torch.cat(angles, dim=-1)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last dim of x [..., N, head_dim] by cos/sin [N, head_dim/2]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# ------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention through scaled_dot_product_attention; self- or cross- (`context_dim`)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_tokens: int | None = None,
    ) -> torch.Tensor:
        """x [B,N,D]; context [B,L,Dc] (None = self); attn_mask bool, True = attend;
        kv_tokens: keys/values from the first `kv_tokens` tokens only (cross-frame attention)."""
        B, N, _ = x.shape
        q = self.q(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        source = x if context is None else context
        k, v = self.kv(source).view(B, source.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_tokens is not None:
            k, v = k[:, :, :kv_tokens], v[:, :, :kv_tokens]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, N, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
