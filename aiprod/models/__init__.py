"""The AIPROD models: plain PyTorch, no Ray, no DeepSpeed.

    model = build_model(load_config("tiny").model)
    model.vae: VideoVAE   model.text: MultilingualTextEncoder   model.denoiser: HybridBackbone
"""

from __future__ import annotations

from torch import nn

from aiprod.config import ModelConfig
from aiprod.models.denoiser import HybridBackbone
from aiprod.models.text import MultilingualTextEncoder
from aiprod.models.vae import DiagonalGaussian, VideoVAE

__all__ = [
    "DiagonalGaussian",
    "HybridBackbone",
    "MultilingualTextEncoder",
    "VideoModel",
    "VideoVAE",
    "build_model",
]


class VideoModel(nn.Module):
    """The three components; state_dict keys start with `vae.`, `text.`, `denoiser.`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = VideoVAE(cfg.vae)
        self.text = MultilingualTextEncoder(cfg.text)
        self.denoiser = HybridBackbone(
            cfg.denoiser, latent_channels=cfg.vae.latent_channels, text_dim=cfg.text.width
        )


def build_model(cfg: ModelConfig) -> VideoModel:
    """Build the model from `cfg.model`; wrap in `torch.device("meta")` to size it without memory."""
    return VideoModel(cfg)
