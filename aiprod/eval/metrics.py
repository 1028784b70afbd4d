"""Video quality metrics: PSNR, SSIM, temporal coherence, Fréchet distance, VAE reconstruction.

Videos are uint8 `[T, H, W, 3]` arrays (what the pipeline returns) or tensors of the same layout;
values are compared on the 0..255 scale.

- PSNR and SSIM are computed per frame and averaged over frames. Identical frames have PSNR = inf;
  `psnr(..., cap=C)` caps each frame at C dB first, so reports always hold finite numbers.
- SSIM: Wang et al. 2004 — 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, per RGB channel,
  mean over the valid (unpadded) window positions.
- Temporal coherence: mean cosine similarity of consecutive frames' features. The feature of a frame
  is its RGB image in [-1, 1] average-pooled to `grid x grid` cells, minus the frame's mean per
  channel (so a flat frame is the zero vector and the measure is about structure, not brightness);
  two zero vectors count as similarity 1. A static clip scores 1, independent noise frames ~0.
- Fréchet distance between two sets of videos over a feature extractor: the real FVD (I3D logits)
  only when `eval.i3d_weights` points at a local I3D state dict; otherwise `FD-randproj3d`, a fixed
  random 3D-conv projection (documented at `RandomProjection3D`) — comparable between runs of this
  project, not with published FVD numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DATA_RANGE = 255.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
COS_EPS = 1e-8

VideoLike = np.ndarray | torch.Tensor


def as_video(video: VideoLike) -> torch.Tensor:
    """uint8/float `[T, H, W, 3]` -> float64 `[T, 3, H, W]` on the 0..255 scale."""
    tensor = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"a video must be [T, H, W, 3], got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float64).permute(0, 3, 1, 2)


def _pair(a: VideoLike, b: VideoLike) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_video(a), as_video(b)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)} ([T, 3, H, W])")
    return x, y


# ---------------------------------------------------------------------------- PSNR / SSIM


def psnr_frames(a: VideoLike, b: VideoLike, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Per-frame PSNR in dB, `inf` where the frames are identical."""
    x, y = _pair(a, b)
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf


def psnr(a: VideoLike, b: VideoLike, data_range: float = DATA_RANGE, cap: float | None = None) -> float:
    """Mean over frames of the per-frame PSNR; with `cap`, each frame is capped first (finite result)."""
    values = psnr_frames(a, b, data_range)
    if cap is not None:
        values = values.clamp(max=cap)
    return float(values.mean())


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_frames(a: VideoLike, b: VideoLike, data_range: float = DATA_RANGE,
                window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-frame SSIM (mean over RGB channels and window positions). Frames smaller than the window
    use the largest odd window that fits."""
    x, y = _pair(a, b)
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    g = _gaussian_window(size, sigma)
    channels = x.shape[1]
    kx = g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)
    ky = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def ssim(a: VideoLike, b: VideoLike, data_range: float = DATA_RANGE) -> float:
    return float(ssim_frames(a, b, data_range).mean())


# ------------------------------------------------------------------------ temporal coherence


def frame_features(video: VideoLike, grid: int) -> torch.Tensor:
    """[T, 3*grid*grid]: each frame in [-1, 1], average-pooled to grid x grid, mean-centred per channel."""
    x = as_video(video) / (DATA_RANGE / 2) - 1
    pooled = F.adaptive_avg_pool2d(x, (min(grid, x.shape[-2]), min(grid, x.shape[-1])))
    return (pooled - pooled.mean(dim=(2, 3), keepdim=True)).flatten(1)


def temporal_coherence(video: VideoLike, grid: int = 16) -> float:
    """Mean cosine similarity of consecutive frames' features (1.0 for a single frame)."""
    feats = frame_features(video, grid)
    if feats.shape[0] < 2:
        return 1.0
    a, b = feats[:-1], feats[1:]
    cos = ((a * b).sum(1) + COS_EPS) / (a.norm(dim=1) * b.norm(dim=1) + COS_EPS)
    return float(cos.mean())


# --------------------------------------------------------------------------- Fréchet distance


class FeatureExtractor(Protocol):
    name: str  # reported next to the number, e.g. "FD-randproj3d" or "FVD"
    key: str  # the metric key in reports, e.g. "fd_randproj3d" or "fvd"
    dim: int

    def __call__(self, videos: Sequence[VideoLike]) -> np.ndarray: ...


def _resize_clip(video: VideoLike, frames: int, size: int) -> torch.Tensor:
    """[1, 3, frames, size, size] in [-1, 1] (trilinear resampling of time and space)."""
    x = as_video(video).to(torch.float32).permute(1, 0, 2, 3).unsqueeze(0) / (DATA_RANGE / 2) - 1
    return F.interpolate(x, size=(frames, size, size), mode="trilinear", align_corners=False)


class RandomProjection3D(nn.Module):
    """`FD-randproj3d`: a fixed, untrained 3D CNN as a video feature extractor.

    Each clip is resampled to 16 frames of 64x64 in [-1, 1] and passed through three
    Conv3d(kernel 3, stride (1,2,2)) + ReLU layers with 32, 64, 128 channels whose weights are drawn
    once from N(0, 2/fan_in) with torch.Generator seed 0 (no biases). The feature is the concatenation
    of every layer's global average (224 values), which sees colour, layout and motion at three scales.
    Not trained, so its distances compare runs of this project only; never call it FVD.
    """

    name, key = "FD-randproj3d", "fd_randproj3d"
    frames, size, channels, seed = 16, 64, (32, 64, 128), 0

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(self.seed)
        layers, cin = [], 3
        for cout in self.channels:
            conv = nn.Conv3d(cin, cout, kernel_size=3, stride=(1, 2, 2), padding=1, bias=False)
            fan_in = cin * 27
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
            layers.append(conv)
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.dim = sum(self.channels)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def __call__(self, videos: Sequence[VideoLike]) -> np.ndarray:
        rows = []
        for video in videos:
            x, parts = _resize_clip(video, self.frames, self.size), []
            for conv in self.layers:
                x = F.relu(conv(x))
                parts.append(x.mean(dim=(2, 3, 4)))
            rows.append(torch.cat(parts, 1)[0].double().numpy())
        return np.stack(rows) if rows else np.zeros((0, self.dim))


# ---- I3D (layout and parameter names of the widely used pytorch-i3d InceptionI3d, so its
# ---- Kinetics-400 state dicts load as they are)


def _same_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class _MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class _Inception(nn.Module):
    def __init__(self, cin: int, c: Sequence[int]):
        super().__init__()
        self.b0 = _Unit3D(cin, c[0])
        self.b1a, self.b1b = _Unit3D(cin, c[1]), _Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = _Unit3D(cin, c[3]), _Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = _MaxPoolSame((3, 3, 3), (1, 1, 1)), _Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017); returns the time-averaged class logits."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = _Inception(192, [64, 96, 128, 16, 32, 32])
        self.Mixed_3c = _Inception(256, [128, 128, 192, 32, 96, 64])
        self.MaxPool3d_4a_3x3 = _MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = _Inception(480, [192, 96, 208, 16, 48, 64])
        self.Mixed_4c = _Inception(512, [160, 112, 224, 24, 64, 64])
        self.Mixed_4d = _Inception(512, [128, 128, 256, 24, 64, 64])
        self.Mixed_4e = _Inception(512, [112, 144, 288, 32, 64, 64])
        self.Mixed_4f = _Inception(528, [256, 160, 320, 32, 128, 128])
        self.MaxPool3d_5a_2x2 = _MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = _Inception(832, [256, 160, 320, 32, 128, 128])
        self.Mixed_5c = _Inception(832, [384, 192, 384, 48, 128, 128])
        self.logits = _Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        x = F.avg_pool3d(x, kernel_size=(min(2, x.shape[2]), x.shape[3], x.shape[4]), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


class I3DFeatures:
    """Real FVD features: I3D logits of each clip resampled to 16 frames of 224x224 in [-1, 1].

    `weights` is a local state dict in the pytorch-i3d InceptionI3d layout (e.g. its Kinetics-400
    `rgb_imagenet.pt`), read with `torch.load(weights_only=True)`; nothing is downloaded. FVD values
    depend on the exact weights and on the sample count, so compare them at equal settings."""

    name, key = "FVD", "fvd"
    frames, size = 16, 224

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"eval.i3d_weights: no file at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"eval.i3d_weights: {path} does not hold a state dict")
        num_classes = state["logits.conv3d.bias"].shape[0] if "logits.conv3d.bias" in state else 400
        self.model = InceptionI3d(num_classes)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"eval.i3d_weights: {path} is not an InceptionI3d state dict: {exc}") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = num_classes
        self.weights = str(path)

    @torch.no_grad()
    def __call__(self, videos: Sequence[VideoLike]) -> np.ndarray:
        rows = [self.model(_resize_clip(v, self.frames, self.size).to(self.device))[0].double().cpu().numpy()
                for v in videos]
        return np.stack(rows) if rows else np.zeros((0, self.dim))


def make_extractor(i3d_weights: str | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Real FVD when `i3d_weights` is set, else the documented FD-randproj3d extractor."""
    return I3DFeatures(i3d_weights, device) if i3d_weights else RandomProjection3D()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets [N, D].

    Tr((S_a S_b)^1/2) is computed as the sum of square roots of the eigenvalues of
    S_a^1/2 S_b S_a^1/2 (symmetric PSD), in float64 — stable for the rank-deficient covariances
    of small sample sets."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Fréchet distance needs >= 2 videos per set, got {len(a)} and {len(b)}")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    mu_a, mu_b = ta.mean(0), tb.mean(0)
    cov_a, cov_b = torch.cov(ta.T).reshape(a.shape[1], -1), torch.cov(tb.T).reshape(b.shape[1], -1)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return max(float(value), 0.0)


# --------------------------------------------------------------------------- VAE reconstruction


@torch.no_grad()
def vae_reconstruction(vae: nn.Module, clips: Sequence[VideoLike], psnr_cap: float,
                       device: str | torch.device = "cpu") -> dict[str, float | int | list[float]]:
    """Encode (posterior mode) and decode each clip; PSNR / SSIM of the reconstructions. Clips are
    trimmed to the longest frame count the causal VAE takes (1 + k * temporal_compression)."""
    tc = vae.temporal_compression
    psnrs, ssims, recons = [], [], []
    for clip in clips:
        frames = torch.as_tensor(np.asarray(clip))
        usable = 1 + tc * ((frames.shape[0] - 1) // tc)
        frames = frames[:usable]
        x = (frames.permute(3, 0, 1, 2).unsqueeze(0).to(device, torch.float32) / (DATA_RANGE / 2)) - 1
        recon = vae.decode(vae.encode(x).mode(), size=tuple(frames.shape[1:3]))[0]
        pixels = ((recon.float().clamp(-1, 1) + 1) * (DATA_RANGE / 2)).round().to(torch.uint8)
        recon_frames = pixels.permute(1, 2, 3, 0).cpu().numpy()
        psnrs.append(psnr(frames, recon_frames, cap=psnr_cap))
        ssims.append(ssim(frames, recon_frames))
        recons.append(recon_frames)
    return {"psnr": float(np.mean(psnrs)) if psnrs else None, "ssim": float(np.mean(ssims)) if ssims else None,
            "clips": len(psnrs), "psnr_per_clip": psnrs, "ssim_per_clip": ssims, "reconstructions": recons}
