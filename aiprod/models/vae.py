"""VideoVAE: a causal 3D-convolutional VAE with a diagonal-Gaussian latent.

Causal in time: every temporal convolution looks only at the current and earlier frames (the
first frame is padded by repeating it), and temporal downsampling keeps the first frame alone, so
a clip of 1 + k*tc frames maps to 1 + k latent frames and an image is a 1-frame video. Because
everything is causal (norms are per frame, bottleneck attention is masked), encode/decode can run
in temporal tiles that carry a small cache from one tile to the next and give the same result as
one pass over the whole clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aiprod.config import VAEConfig
from aiprod.models.layers import num_groups

# Per-module state carried from one temporal tile to the next (previous frames, attention keys).
StreamCache = dict


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over latents [B, C, t, h, w]."""

    def __init__(
        self, mean: torch.Tensor, logvar: torch.Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)
    ):
        self.mean = mean
        self.logvar = logvar.clamp(*logvar_range)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements -> [B]."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


class CausalConv3d(nn.Module):
    """Conv3d padded on the left in time (by repeating the first frame), symmetrically in space."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1),
                 kernel_t: int | None = None):
        super().__init__()
        self.kernel_t, self.stride_t = kernel if kernel_t is None else kernel_t, stride[0]
        if self.stride_t > self.kernel_t:
            raise ValueError(f"temporal stride {self.stride_t} > kernel {self.kernel_t} would skip frames")
        self.conv = nn.Conv3d(cin, cout, (self.kernel_t, kernel, kernel), stride=stride,
                              padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        previous = cache.get(self)
        if previous is None:  # first tile: the first frame stands in for the frames before it
            x = torch.cat([x[:, :, :1]] * (self.kernel_t - 1) + [x], dim=2)
        else:
            x = torch.cat([previous, x], dim=2)
        if (x.shape[2] - self.kernel_t) % self.stride_t:
            raise ValueError(f"{x.shape[2]} padded frames do not fit temporal stride {self.stride_t}")
        keep = self.kernel_t - self.stride_t  # frames the next tile's first output still needs
        cache[self] = x[:, :, x.shape[2] - keep :].clone()  # a view would pin the whole tile
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame, so it never mixes frames (keeps the VAE causal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        return super().forward(frames).reshape(B, T, C, H, W).transpose(1, 2)


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, max_groups: int, kernel_t: int = 3):
        super().__init__()
        self.norm1 = FrameGroupNorm(num_groups(cin, max_groups), cin, eps=1e-6)
        self.conv1 = CausalConv3d(cin, cout, kernel_t=kernel_t)
        self.norm2 = FrameGroupNorm(num_groups(cout, max_groups), cout, eps=1e-6)
        self.conv2 = CausalConv3d(cout, cout, kernel_t=kernel_t)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class CausalTemporalAttention(nn.Module):
    """Self-attention along time at each spatial position, masked so a frame sees only the past.
    Keys/values of earlier tiles are kept in the cache, so tiled == untiled."""

    def __init__(self, channels: int, heads: int, max_groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"model.vae.attention_heads={heads} does not divide {channels} channels")
        self.heads = heads
        self.norm = FrameGroupNorm(num_groups(channels, max_groups), channels, eps=1e-6)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        B, C, T, H, W = x.shape
        tokens = self.norm(x).permute(0, 3, 4, 2, 1).reshape(B * H * W, T, C)
        q, k, v = self.qkv(tokens).view(B * H * W, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        previous = cache.get(self)
        if previous is not None:
            k, v = torch.cat([previous[0], k], dim=2), torch.cat([previous[1], v], dim=2)
        cache[self] = (k, v)
        offset = k.shape[2] - T
        query_time = torch.arange(T, device=x.device)[:, None] + offset
        mask = torch.arange(k.shape[2], device=x.device)[None, :] <= query_time
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(B * H * W, T, C))
        return x + y.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2)


class Downsample(nn.Module):
    """2x spatial (ceil for odd sizes) and, if `temporal`, 2x temporal keeping the first frame alone."""

    def __init__(self, channels: int, temporal: bool, kernel_t: int = 3):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2),
                                 kernel_t=max(kernel_t, 2) if temporal else kernel_t)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        return self.conv(x, cache)


class Upsample(nn.Module):
    """Inverse of Downsample: nearest 2x in space and, if `temporal`, 2x in time by depth-to-space
    (a causal conv makes two frames' worth of channels per frame); the clip's very first frame
    yields one frame, so 1 + k frames become 1 + 2k."""

    def __init__(self, channels: int, temporal: bool, kernel_t: int = 3):
        super().__init__()
        self.time_conv = CausalConv3d(channels, 2 * channels) if temporal else None
        self.conv = CausalConv3d(channels, channels, kernel_t=kernel_t)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if self.time_conv is not None:
            first_tile = self not in cache
            cache[self] = True
            B, C, T, H, W = x.shape
            x = self.time_conv(x, cache).view(B, C, 2, T, H, W).transpose(2, 3).reshape(B, C, 2 * T, H, W)
            if first_tile:
                x = x[:, :, 1:]
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.conv(x, cache)


class Bottleneck(nn.Module):
    def __init__(self, channels: int, heads: int, max_groups: int, kernel_t: int = 3, attention: bool = True):
        super().__init__()
        self.res1 = ResBlock3d(channels, channels, max_groups, kernel_t)
        self.attn = CausalTemporalAttention(channels, heads, max_groups) if attention else None
        self.res2 = ResBlock3d(channels, channels, max_groups, kernel_t)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.res1(x, cache)
        if self.attn is not None:
            x = self.attn(x, cache)
        return self.res2(x, cache)


class Level(nn.Module):
    """Residual blocks at one resolution, then an optional resampling step."""

    def __init__(self, blocks: list[ResBlock3d], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cache)
        return self.resample(x, cache) if self.resample is not None else x


def _levels(cfg: VAEConfig) -> tuple[int, int, list[int]]:
    """(spatial levels, temporal levels, channels per level), validating the compression settings."""
    s, tc = cfg.spatial_compression, cfg.temporal_compression
    if s & (s - 1):
        raise ValueError(f"model.vae.spatial_compression must be a power of two, got {s}")
    if tc & (tc - 1):
        raise ValueError(f"model.vae.temporal_compression must be a power of two, got {tc}")
    spatial, temporal = int(math.log2(s)), int(math.log2(tc))
    if len(cfg.channel_mults) != spatial + 1:
        raise ValueError(
            f"model.vae.channel_mults has {len(cfg.channel_mults)} entries; spatial_compression={s} "
            f"needs log2({s})+1 = {spatial + 1}"
        )
    if temporal > spatial:
        raise ValueError(
            f"model.vae.temporal_compression={tc} needs at least log2({tc})={temporal} downsampling "
            f"levels, but spatial_compression={s} gives {spatial}"
        )
    return spatial, temporal, [cfg.base_channels * m for m in cfg.channel_mults]


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        spatial, temporal, chs = _levels(cfg)
        g, kt = cfg.norm_groups, cfg.temporal_kernel
        self.conv_in = CausalConv3d(cfg.in_channels, chs[0], kernel_t=kt)
        levels, cin = [], chs[0]
        for i, ch in enumerate(chs):
            blocks = [ResBlock3d(cin if j == 0 else ch, ch, g, kt) for j in range(cfg.num_res_blocks)]
            levels.append(Level(blocks, Downsample(ch, i < temporal, kt) if i < spatial else None))
            cin = ch
        self.levels = nn.ModuleList(levels)
        self.mid = Bottleneck(chs[-1], cfg.attention_heads, g, kt, cfg.temporal_attention)
        self.norm_out = FrameGroupNorm(num_groups(chs[-1], g), chs[-1], eps=1e-6)
        self.conv_out = CausalConv3d(chs[-1], 2 * cfg.latent_channels, kernel_t=kt)
        # Start with a narrow posterior (std = exp(logvar_init / 2)): at logvar 0 the decoder sees
        # mostly sampling noise and learns to reconstruct far more slowly.
        nn.init.constant_(self.conv_out.conv.bias[cfg.latent_channels:], cfg.logvar_init)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        h = self.conv_in(x, cache)
        for level in self.levels:
            h = level(h, cache)
        h = self.mid(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        spatial, temporal, chs = _levels(cfg)
        g, kt = cfg.norm_groups, cfg.temporal_kernel
        n_blocks = cfg.decoder_res_blocks or cfg.num_res_blocks + 1
        self.conv_in = CausalConv3d(cfg.latent_channels, chs[-1], kernel_t=kt)
        self.mid = Bottleneck(chs[-1], cfg.attention_heads, g, kt, cfg.temporal_attention)
        levels, cin = [], chs[-1]
        for i in reversed(range(len(chs))):  # level i undoes the encoder's downsampling at level i-1
            blocks = [ResBlock3d(cin if j == 0 else chs[i], chs[i], g, kt) for j in range(n_blocks)]
            levels.append(Level(blocks, Upsample(chs[i], i - 1 < temporal, kt) if i > 0 else None))
            cin = chs[i]
        self.levels = nn.ModuleList(levels)
        self.norm_out = FrameGroupNorm(num_groups(chs[0], g), chs[0], eps=1e-6)
        self.conv_out = CausalConv3d(chs[0], cfg.in_channels, kernel_t=kt)

    def forward(self, z: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        h = self.mid(self.conv_in(z, cache), cache)
        for level in self.levels:
            h = level(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class VideoVAE(nn.Module):
    """encode(x [B,3,T,H,W] in [-1,1]) -> DiagonalGaussian over [B,C,1+(T-1)/tc,ceil(H/s),ceil(W/s)];
    decode(z) -> [B,3,T,h*s,w*s].

    The denoiser works in normalised latents `(z - latent_shift) * latent_scale` (per channel),
    whose statistics are measured on data once the VAE is trained (aiprod.diffusion.latents) and
    saved with the weights as buffers; `latent_calibrated` says whether that has happened."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        _levels(cfg)
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))
        self.register_buffer("latent_calibrated", torch.zeros(()))

    @property
    def calibrated(self) -> bool:
        return bool(self.latent_calibrated.item())

    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and std of the latents the denoiser will see (before normalising)."""
        if mean.shape != self.latent_shift.shape or std.shape != self.latent_scale.shape:
            raise ValueError(f"latent stats must be [{self.cfg.latent_channels}] per channel, "
                             f"got mean {tuple(mean.shape)} and std {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"latent stats must be finite with std > 0, got mean {mean.tolist()} std {std.tolist()}")
        self.latent_shift.copy_(mean)
        self.latent_scale.copy_(1.0 / std)
        self.latent_calibrated.fill_(1.0)

    @torch.no_grad()
    def reset_latent_stats(self) -> None:
        """The VAE is about to change: its measured latent statistics no longer hold."""
        self.latent_shift.zero_()
        self.latent_scale.fill_(1.0)
        self.latent_calibrated.zero_()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents [B,C,t,h,w] -> what the denoiser sees (about zero mean, unit std per channel)."""
        view = (1, -1, 1, 1, 1)
        return (z - self.latent_shift.view(view).to(z.dtype)) * self.latent_scale.view(view).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        view = (1, -1, 1, 1, 1)
        return z / self.latent_scale.view(view).to(z.dtype) + self.latent_shift.view(view).to(z.dtype)

    @property
    def temporal_compression(self) -> int:
        return self.cfg.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.cfg.spatial_compression

    def check_frames(self, frames: int) -> None:
        tc = self.cfg.temporal_compression
        if frames < 1 or (frames - 1) % tc:
            raise ValueError(
                f"VideoVAE: got {frames} frames; clips need 1 + k*{tc} frames "
                f"(1, {1 + tc}, {1 + 2 * tc}, ...) because the first frame is encoded alone"
            )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self.check_frames(frames)
        s, tc = self.cfg.spatial_compression, self.cfg.temporal_compression
        return (self.cfg.latent_channels, 1 + (frames - 1) // tc, -(-height // s), -(-width // s))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"VideoVAE.encode expects [B, {self.cfg.in_channels}, T, H, W], got {tuple(x.shape)}"
            )
        self.check_frames(x.shape[2])
        tile, tc = self.cfg.tile_latent_frames, self.cfg.temporal_compression
        cache: StreamCache = {}
        bounds = [0, min(x.shape[2], 1 + tc * (tile - 1))]  # the first tile holds the lone first frame
        while bounds[-1] < x.shape[2]:
            bounds.append(min(x.shape[2], bounds[-1] + tc * tile))
        moments = torch.cat(
            [self.encoder(x[:, :, a:b], cache) for a, b in zip(bounds[:-1], bounds[1:])], dim=2
        )
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latents [B,C,t,h,w] -> video [B,3,1+(t-1)*tc,h*s,w*s]; `size=(H, W)` crops to the input size."""
        if z.ndim != 5 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(
                f"VideoVAE.decode expects [B, {self.cfg.latent_channels}, t, h, w], got {tuple(z.shape)}"
            )
        tile = self.cfg.tile_latent_frames
        cache: StreamCache = {}
        video = torch.cat(
            [self.decoder(z[:, :, a : a + tile], cache) for a in range(0, z.shape[2], tile)], dim=2
        )
        return video if size is None else video[..., : size[0], : size[1]]

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction (cropped to x's size) and posterior, for VAE training."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z, size=tuple(x.shape[-2:])), posterior
