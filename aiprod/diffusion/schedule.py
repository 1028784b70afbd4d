"""The noise schedule: betas, alphas_cumprod, forward noising and the v / eps parameterisations.

x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·eps;  v = sqrt(ā_t)·eps - sqrt(1-ā_t)·x0  (Salimans & Ho).
Timesteps are integers 0 .. train_timesteps-1; the model sees them as floats.
"""

from __future__ import annotations

import math

import torch

from aiprod.config import DiffusionConfig

MAX_BETA = 0.999  # the cosine schedule's last betas tend to 1; clipping avoids a singular step


def cosine_betas(timesteps: int, offset: float) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ā(t) = cos²(((t/T + s) / (1 + s))·π/2) / ā(0)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=MAX_BETA)


def scaled_linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Linear in sqrt(beta), as in latent diffusion."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


class NoiseSchedule:
    """Built from `cfg.diffusion`; holds float64 `betas` and `alphas_cumprod` on the CPU."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.train_timesteps = cfg.train_timesteps
        self.prediction = cfg.prediction
        self.timestep_shift = cfg.timestep_shift
        if cfg.schedule == "cosine":
            self.betas = cosine_betas(cfg.train_timesteps, cfg.cosine_offset)
        elif cfg.schedule == "scaled_linear":
            if cfg.beta_start >= cfg.beta_end:
                raise ValueError(
                    f"diffusion.beta_start ({cfg.beta_start}) must be below diffusion.beta_end ({cfg.beta_end})"
                )
            self.betas = scaled_linear_betas(cfg.train_timesteps, cfg.beta_start, cfg.beta_end)
        else:
            raise ValueError(f"diffusion.schedule must be 'cosine' or 'scaled_linear', got {cfg.schedule!r}")
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)

    # ------------------------------------------------------------------------ coefficients

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ā_t broadcastable against `like` ([B] -> [B,1,1,...]); t = -1 means ā = 1 (clean)."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if t.numel() and (t.min() < -1 or t.max() >= self.train_timesteps):
            raise ValueError(
                f"timesteps must be within [0, {self.train_timesteps - 1}] (diffusion.train_timesteps), "
                f"got min {int(t.min())} max {int(t.max())}"
            )
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        a = padded[t + 1].to(device=like.device, dtype=torch.float32)
        if a.ndim == 1:
            a = a.view(-1, *([1] * (like.ndim - 1)))
        return a

    def _coefficients(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alpha_bar(t, like)
        return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)

    # ------------------------------------------------------------------------- training

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._coefficients(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model learns to output at step t: v or eps (`diffusion.prediction`)."""
        if self.prediction == "eps":
            return noise
        signal, sigma = self._coefficients(t, x0)
        return signal * noise - sigma * x0

    def predict_x0_eps(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert the parameterisation: (x0, eps) implied by the model output at x_t."""
        signal, sigma = self._coefficients(t, x_t)
        if self.prediction == "eps":
            return (x_t - sigma * model_out) / signal, model_out
        return signal * x_t - sigma * model_out, sigma * x_t + signal * model_out

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Training timesteps [batch] (long), drawn on the generator's device: uniform, or with
        `diffusion.timestep_shift` s > 1 the fraction u ~ U(0, 1) moved to s·u / (1 + (s-1)·u) (SD3's
        shift), so that more steps train at high noise, where only the caption says where things go."""
        draw_device = generator.device if generator is not None else device
        if self.timestep_shift == 1.0:
            t = torch.randint(0, self.train_timesteps, (batch,), generator=generator, device=draw_device)
            return t.to(device)
        u = torch.rand(batch, generator=generator, device=draw_device)
        u = self.timestep_shift * u / (1 + (self.timestep_shift - 1) * u)
        t = (u * self.train_timesteps).long().clamp(max=self.train_timesteps - 1)
        return t.to(device)

    # ------------------------------------------------------------------------- sampling

    def ddim_timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """`steps` descending timesteps evenly covering [0, start] ("trailing" spacing: the first
        is `start`, default the noisiest step). Fewer when the range holds fewer than `steps`."""
        start = self.train_timesteps - 1 if start is None else int(start)
        if not 0 <= start < self.train_timesteps:
            raise ValueError(f"start timestep must be within [0, {self.train_timesteps - 1}], got {start}")
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        span = start + 1
        steps = min(steps, span)
        return [round(span - i * span / steps) - 1 for i in range(steps)]
