"""What a phase's DeepSpeed engine trains: the VAE, or the denoiser with the text encoder."""

from __future__ import annotations

import torch
from torch import nn

from aiprod.config import Config, PhaseConfig
from aiprod.training.vae_loss import VAELoss


class PhaseModule(nn.Module):
    """What the engine trains in one phase; forward(inputs, captions, generator) -> (loss, parts),
    inputs: video, or with `from_latents` a latent cache's normalised latents.

    Children are named as in VideoModel, so its state_dict keys are VideoModel keys. The full
    model and the loss helpers are hidden from nn.Module so ZeRO never sees the frozen parts."""

    def __init__(self, model: nn.Module, phase: PhaseConfig, cfg: Config, from_latents: bool = False):
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.component = phase.component
        self.from_latents = from_latents
        self._diffusion_cfg = cfg.diffusion
        if phase.component == "vae":
            self.vae = model.vae
            object.__setattr__(self, "_vae_loss", VAELoss(cfg.model.vae))
        else:
            from aiprod.diffusion.schedule import NoiseSchedule

            self.denoiser = model.denoiser
            self.text = model.text
            object.__setattr__(self, "_schedule", NoiseSchedule(cfg.diffusion))

    def forward(self, inputs: torch.Tensor, captions: list[str], generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.component == "vae":
            return self._vae_loss(self.vae, inputs, generator)
        from aiprod.diffusion import diffusion_loss, latent_diffusion_loss

        loss_fn = latent_diffusion_loss if self.from_latents else diffusion_loss
        return loss_fn(self._model, inputs, captions, self._schedule, self._diffusion_cfg, generator), {}


def set_trainable(model: nn.Module, component: str, adapters_only: bool = False) -> None:
    """Gradients and train mode for the phase's component only (with `adapters_only`, for its
    LoRA/DoRA parameters only); a frozen VAE stays in eval mode."""
    model.requires_grad_(False)
    trained = [model.vae] if component == "vae" else [model.denoiser, model.text]
    for module in trained:
        module.requires_grad_(True)
        module.train()
    if adapters_only:
        from aiprod.models.adapters import mark_adapters_trainable

        mark_adapters_trainable(model)
    if component != "vae":
        model.vae.eval()
