"""The GPU-only figures of bench/train_step.py: the denoiser's bf16 MFU (eager and torch.compile)
and the gtx1070 preset's first denoiser phase under an 8 GiB memory cap (fp32, TF32 off)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from train_step import deepspeed_step_fn, setup, timed, warm_up  # noqa: E402

from aiprod.config import load_config  # noqa: E402

GTX1070_MEMORY_GIB = 8.0


def denoiser_mfu(preset: str, peak_tflops: float, steps: int, warmup: int) -> dict[str, float]:
    """bf16 training-step MFU of the preset's denoiser (first denoiser phase), eager and compiled."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config(preset, ["train.precision=bf16"])
    index = next(i for i, p in enumerate(cfg.curriculum.phases) if p.component == "denoiser")
    phase = cfg.curriculum.phases[index]
    device = torch.device("cuda")
    out: dict[str, float] = {}
    for mode in ("eager", "compile"):
        module, video, captions = setup(cfg, index, phase.batch_size, device)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=phase.lr, fused=True)
        forward = torch.compile(module.denoiser) if mode == "compile" else module.denoiser
        from aiprod.diffusion import NoiseSchedule, decomposed_noise, encode_latents

        schedule = NoiseSchedule(cfg.diffusion)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            latents = encode_latents(module._model.vae, video, cfg.diffusion.latents)
            text, mask = module.text.encode(captions, device)
        t = schedule.sample_timesteps(latents.shape[0], device=device)
        noise = decomposed_noise(latents.shape, cfg.diffusion.noise_lambda, device=device)
        noisy = schedule.add_noise(latents, noise, t).detach()

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = forward(noisy, t.float(), text.detach(), mask).float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as counter:
            step()
        warm_up(step, warmup)
        seconds = timed(step, steps, device)
        out[f"mfu_{mode}"] = counter.get_total_flops() / seconds / (peak_tflops * 1e12)
        out[f"denoiser_step_s_{mode}"] = seconds
    return out


def gtx1070_peak_gib(steps: int) -> float:
    """The gtx1070 preset's first denoiser phase under an 8 GiB cap, fp32, TF32 off."""
    import gc

    gc.collect()  # the earlier contenders' engines and models: their cached blocks would count against the cap
    torch.cuda.empty_cache()
    if torch.cuda.memory_allocated() > 2**28:
        raise RuntimeError(f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated before the 8 GiB check")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, GTX1070_MEMORY_GIB * 2**30 / total))
    torch.cuda.reset_peak_memory_stats()
    cfg = load_config("gtx1070")
    index = next(i for i, p in enumerate(cfg.curriculum.phases) if p.component == "denoiser")
    step = deepspeed_step_fn(cfg, index, cfg.curriculum.phases[index].batch_size, torch.device("cuda"))
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30
