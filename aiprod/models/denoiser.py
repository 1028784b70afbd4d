"""HybridBackbone: the latent-video denoiser.

Latent video [B, C, t, h, w] -> patches -> tokens (+ a fixed sin-cos embedding of their absolute
(t, h, w) place) with 3D RoPE over (t, h, w) -> transformer blocks
(self-attention, cross-attention to text, MLP; timestep and the caption's pooled feature by
adaLN-single as in PixArt-alpha)
interleaved with 3D residual convolution blocks that work on the token grid -> a small-initialised
output layer -> unpatchify -> [B, C, t, h, w].

`cross_frame=True` (Text2Video-Zero): self-attention keys/values come from the first frame's
tokens only, so every frame is generated looking at frame 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aiprod.config import DenoiserConfig
from aiprod.models.layers import (
    MLP, Attention, grid_position_embedding, modulate, num_groups, rope_3d, timestep_embedding,
)

MODULATIONS = 6  # shift/scale/gate for self-attention and for the MLP
FINAL_INIT_STD = 0.02


class TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.cross = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio)
        # adaLN-single: a per-block table added to the shared timestep modulation.
        self.modulation = nn.Parameter(torch.randn(MODULATIONS, width) / math.sqrt(width))

    def forward(
        self,
        x: torch.Tensor,
        t_mod: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_tokens: int | None = None,
    ) -> torch.Tensor:
        """x [B,N,D]; t_mod [B,6,D]; text [B,L,D]; text_mask [B,1,1,L] bool; rope cos/sin [N, head_dim/2]."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (self.modulation[None] + t_mod).unbind(1)
        h = modulate(self.norm1(x), shift_a[:, None], scale_a[:, None])
        x = x + gate_a[:, None] * self.attn(h, rope=rope, kv_tokens=kv_tokens)
        x = x + self.cross(self.norm2(x), context=text, attn_mask=text_mask)
        h = modulate(self.norm3(x), shift_m[:, None], scale_m[:, None])
        return x + gate_m[:, None] * self.mlp(h)


class ConvBlock(nn.Module):
    """3D residual bottleneck block (1x1x1 reduce, kxkxk, 1x1x1 expand) on the token grid
    [B, D, t, h, w], timestep-modulated and gated like the transformer blocks."""

    def __init__(self, width: int, bottleneck: int, kernel: int, max_groups: int):
        super().__init__()
        inner = width // bottleneck
        self.norm = nn.GroupNorm(num_groups(width, max_groups), width, affine=False, eps=1e-6)
        self.reduce = nn.Conv3d(width, inner, 1)
        self.conv = nn.Conv3d(inner, inner, kernel, padding=kernel // 2)
        self.expand = nn.Conv3d(inner, width, 1)
        self.modulation = nn.Parameter(torch.randn(3, width) / math.sqrt(width))

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor) -> torch.Tensor:
        """x [B,D,t,h,w]; t_mod [B,6,D] (its first three rows: shift, scale, gate)."""
        shift, scale, gate = (self.modulation[None] + t_mod[:, :3]).unbind(1)
        h = modulate(self.norm(x), shift[:, :, None, None, None], scale[:, :, None, None, None])
        h = self.expand(F.silu(self.conv(F.silu(self.reduce(h)))))
        return x + gate[:, :, None, None, None] * h


def interleave(transformer_blocks: int, cnn_blocks: int) -> list[str]:
    """Block order: CNN blocks spread evenly between transformer blocks ('T', 'C')."""
    order = []
    for i in range(transformer_blocks):
        order.append("T")
        due = (i + 1) * cnn_blocks // transformer_blocks - i * cnn_blocks // transformer_blocks
        order.extend("C" * due)
    return order


class HybridBackbone(nn.Module):
    """forward(x [B,C,t,h,w], timesteps [B], text [B,L,Dtext], text_mask [B,L], cross_frame=False)
    -> [B,C,t,h,w]."""

    def __init__(self, cfg: DenoiserConfig, latent_channels: int, text_dim: int):
        super().__init__()
        if len(cfg.patch_size) != 3 or min(cfg.patch_size) < 1:
            raise ValueError(
                f"model.denoiser.patch_size must be three positive ints (t, h, w), got {cfg.patch_size}"
            )
        if cfg.width % cfg.heads:
            raise ValueError(f"model.denoiser.width={cfg.width} is not divisible by heads={cfg.heads}")
        if cfg.width % cfg.cnn_bottleneck:
            raise ValueError(
                f"model.denoiser.width={cfg.width} is not divisible by cnn_bottleneck={cfg.cnn_bottleneck}"
            )
        if cfg.cnn_kernel % 2 == 0:
            raise ValueError(f"model.denoiser.cnn_kernel must be odd, got {cfg.cnn_kernel}")
        self.cfg = cfg
        self.latent_channels = latent_channels
        self.patch = tuple(cfg.patch_size)
        self.head_dim = cfg.width // cfg.heads
        rope_3d((1, 1, 1), self.head_dim, cfg.rope_theta)  # validates the head dimension early
        width, patch_dim = cfg.width, latent_channels * math.prod(self.patch)
        self.activation_checkpointing = cfg.activation_checkpointing

        self.patch_embed = nn.Linear(patch_dim, width)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.timestep_freq_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, MODULATIONS * width))
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width)
        )
        # The caption's mean feature joins the timestep in every block's modulation: a clip-wide
        # property (a direction of motion, a colour) then reaches every token in one step.
        self.pooled_text = nn.Linear(text_dim, width) if cfg.pooled_text else None
        order = interleave(cfg.transformer_blocks, cfg.cnn_blocks)
        self.layout = [(kind, order[:i].count(kind)) for i, kind in enumerate(order)]  # (kind, index)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.transformer_blocks)
        )
        self.cnn_blocks = nn.ModuleList(
            ConvBlock(width, cfg.cnn_bottleneck, cfg.cnn_kernel, cfg.norm_groups)
            for _ in range(cfg.cnn_blocks)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Parameter(torch.randn(2, width) / math.sqrt(width))
        self.final_proj = nn.Linear(width, patch_dim)
        # Small, not zero (as DiT has it): behind a zero output layer no block and not the text
        # encoder gets a gradient at the first step.
        nn.init.normal_(self.final_proj.weight, std=FINAL_INIT_STD)
        nn.init.zeros_(self.final_proj.bias)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    def _run(self, block: nn.Module, *args) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        cross_frame: bool = False,
    ) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.latent_channels:
            raise ValueError(f"denoiser expects x [B, {self.latent_channels}, t, h, w], got {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        if timesteps.shape != (B,):
            raise ValueError(f"denoiser expects timesteps [{B}], got {tuple(timesteps.shape)}")
        if text.ndim != 3 or text.shape[0] != B or text_mask.shape != text.shape[:2]:
            raise ValueError(
                f"denoiser expects text [{B}, L, D] and text_mask [{B}, L], "
                f"got {tuple(text.shape)} and {tuple(text_mask.shape)}"
            )
        pt, ph, pw = self.patch
        gt, gh, gw = -(-T // pt), -(-H // ph), -(-W // pw)
        x = F.pad(x, (0, gw * pw - W, 0, gh * ph - H, 0, gt * pt - T))
        tokens = x.reshape(B, C, gt, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tokens = tokens.reshape(B, gt * gh * gw, -1)
        h = self.patch_embed(tokens)
        if self.cfg.position_embedding == "sincos":
            h = h + grid_position_embedding((gt, gh, gw), h.shape[-1], x.device).to(h.dtype)

        t_emb = self.time_embed(timestep_embedding(timesteps, self.cfg.timestep_freq_dim).to(h.dtype))
        keys = text_mask.bool()
        if self.pooled_text is not None:
            weights = keys.to(h.dtype)[..., None]
            pooled = (text.to(h.dtype) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            t_emb = t_emb + self.pooled_text(pooled)
        t_mod = self.time_modulation(t_emb).view(B, MODULATIONS, -1)
        context = self.text_proj(text.to(h.dtype))
        keys = keys | ~keys.any(dim=1, keepdim=True)  # a row without tokens attends to all (no NaN)
        text_attn_mask = keys[:, None, None, :]
        rope = rope_3d((gt, gh, gw), self.head_dim, self.cfg.rope_theta, device=x.device)
        kv_tokens = gh * gw if cross_frame else None

        for kind, index in self.layout:
            if kind == "T":
                block = self.transformer_blocks[index]
                h = self._run(block, h, t_mod, context, text_attn_mask, rope, kv_tokens)
            else:
                grid = h.transpose(1, 2).reshape(B, -1, gt, gh, gw)
                h = self._run(self.cnn_blocks[index], grid, t_mod).flatten(2).transpose(1, 2)

        shift, scale = (self.final_modulation[None] + t_emb[:, None]).unbind(1)
        h = self.final_proj(modulate(self.final_norm(h), shift[:, None], scale[:, None]))
        out = h.reshape(B, gt, gh, gw, C, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(B, C, gt * pt, gh * ph, gw * pw)[:, :, :T, :H, :W]
