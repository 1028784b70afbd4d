"""The model learns: gradients reach every part, captions matter, the VAE reconstructs with the
posterior sampling it trains with, latent statistics travel with the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiprod.config import ConfigError, load_config
from aiprod.data.synthetic import make_clip
from aiprod.diffusion import NoiseSchedule, decomposed_noise, diffusion_loss
from aiprod.diffusion.latents import STAT_KEYS, encode_latents, measure
from aiprod.eval import metrics
from aiprod.models import build_model
from aiprod.training.vae_loss import VAELoss


def _clips(count: int, level: int = 1, seed: int = 0, frames: int = 9, language: str = "en"):
    videos, captions = [], []
    for i in range(count):
        frames_u8, meta = make_clip(level, seed + i, frames, 32, 32, 8.0, language)
        videos.append(torch.from_numpy(frames_u8).permute(3, 0, 1, 2).float() / 127.5 - 1)
        captions.append(meta["caption"])
    return torch.stack(videos), captions


def _calibrated_model(cfg, videos):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    measure(model.vae, [videos], cfg.diffusion.latents).apply(model.vae)
    return model


def test_latent_stats_make_the_denoisers_latents_unit_scale_and_ride_in_the_state_dict():
    cfg = load_config("tiny")
    videos, _ = _clips(8)
    model = _calibrated_model(cfg, videos)
    latents = encode_latents(model.vae, videos, "mean")
    per_channel = latents.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(4), atol=1e-2)
    assert model.vae.calibrated
    state = model.state_dict()
    assert all(key in state for key in STAT_KEYS) and state["vae.latent_calibrated"] == 1
    raw = model.vae.encode(videos).mean
    assert torch.allclose(model.vae.denormalize(model.vae.normalize(raw)), raw, atol=1e-5)


def test_a_fixed_scaling_factor_in_a_config_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="scaling_factor was removed: the latent shift and scale are measured"):
        load_config("tiny", ["model.vae.scaling_factor=0.18"])


def test_weights_without_latent_stats_are_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.model_dir import CheckpointError
    from aiprod.manifest import write_manifest

    cfg = load_config("tiny")
    directory = VideoPipeline(cfg, build_model(cfg.model)).save_pretrained(tmp_path / "old")
    state = load_file(directory / "model.safetensors")
    save_file({k: v for k, v in state.items() if k not in STAT_KEYS}, directory / "model.safetensors")
    write_manifest(directory)
    with pytest.raises(CheckpointError, match="no latent statistics .*vae.latent_shift"):
        VideoPipeline.from_checkpoint(directory)


def test_text_encoder_and_every_denoiser_block_get_a_gradient_at_the_first_step():
    cfg = load_config("tiny", ["diffusion.caption_dropout=0"])
    videos, captions = _clips(2)
    model = _calibrated_model(cfg, videos)
    loss = diffusion_loss(model, videos, captions, NoiseSchedule(cfg.diffusion), cfg.diffusion,
                          torch.Generator().manual_seed(0))
    loss.backward()

    def reached(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    denoiser = model.denoiser
    blocks = [*denoiser.transformer_blocks, *denoiser.cnn_blocks]
    assert blocks and all(reached(block) for block in blocks)
    assert reached(denoiser.patch_embed) and reached(denoiser.text_proj) and reached(denoiser.time_embed)
    assert reached(model.text.embed) and all(reached(block) for block in model.text.blocks)
    assert all(p.grad is None for p in model.vae.parameters())  # frozen in denoiser phases


def _loss_at_fixed_noise(model, cfg, videos, captions, draws: int = 6) -> float:
    sched = NoiseSchedule(cfg.diffusion)
    g = torch.Generator().manual_seed(123)
    shape = (len(captions), *model.vae.latent_shape(videos.shape[2], 32, 32))
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            noise = decomposed_noise(shape, cfg.diffusion.noise_lambda, g)
            timesteps = torch.randint(200, 800, (len(captions),), generator=g)
            total += float(diffusion_loss(model, videos, captions, sched, cfg.diffusion, g,
                                          timesteps=timesteps, noise=noise))
    return total / draws


def test_after_short_training_the_right_caption_beats_a_shuffled_one():
    cfg = load_config("tiny", ["diffusion.caption_dropout=0"])
    videos, captions = _clips(16)
    assert len(set(captions)) >= 8  # distinct scenes, so a shuffle changes what is asked for
    model = _calibrated_model(cfg, videos)
    sched = NoiseSchedule(cfg.diffusion)
    params = [*model.denoiser.parameters(), *model.text.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        pick = torch.randperm(len(captions), generator=g)[:8]
        loss = diffusion_loss(model, videos[pick], [captions[i] for i in pick], sched, cfg.diffusion, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    shuffled = captions[5:] + captions[:5]
    assert all(a != b for a, b in zip(captions, shuffled))
    right = _loss_at_fixed_noise(model, cfg, videos, captions)
    wrong = _loss_at_fixed_noise(model, cfg, videos, shuffled)
    print(f"fixed-noise loss: right captions {right:.4f}, shuffled {wrong:.4f}")
    assert right < 0.9 * wrong


def test_vae_learns_with_the_posterior_sampling_it_trains_with():
    """VAELoss samples the posterior (as the VAE phase does); the learn preset's VAE still
    reconstructs held-out frames far better than the best constant frame (a mean grey)."""
    cfg = load_config("learn").model.vae
    torch.manual_seed(0)
    from aiprod.models.vae import VideoVAE

    vae = VideoVAE(cfg)
    loss_fn = VAELoss(cfg)
    train, _ = _clips(200, level=1, frames=1)
    held, _ = _clips(16, level=1, seed=10_000, frames=1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(0, len(train), (8,), generator=g)]
        loss, parts = loss_fn(vae, batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    frames = ((held + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    result = metrics.vae_reconstruction(vae, list(frames), psnr_cap=100.0)
    grey = float(np.mean([metrics.psnr(f, np.full_like(f, int(frames.mean())), cap=100.0) for f in frames]))
    print(f"VAE held-out PSNR {result['psnr']:.2f} dB; mean grey {grey:.2f} dB; last losses {parts}")
    assert parts["kl"] > 0  # the posterior was sampled, not bypassed
    assert result["psnr"] > grey + 5.0


@pytest.mark.slow
def test_a_short_curriculum_run_beats_chance_on_colour(ray_cluster, tmp_path):
    """The real path (shards -> Ray Data -> Ray Train + DeepSpeed, 2 workers) on the `learn` preset
    for 400 VAE and 2,500 denoiser steps: the final model's videos take their prompts' colour far above chance (1/7)."""
    from aiprod.data.synthetic_shards import build_synthetic_shards
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.eval import judge
    from aiprod.eval.measure import generate_and_judge
    from aiprod.eval.scenes import build_cases
    from aiprod.eval.settings import clip_spec
    from aiprod.training.runner import RunOptions, run_curriculum

    # a step budget, not a time one: the outcome must not depend on the machine's speed (a CI machine 3x slower
    # than this one trained 963 denoiser steps in 4.5 min and stayed at chance); the minutes only bound a stall
    cfg = load_config("learn", ["curriculum.phases.0.steps=400", "curriculum.phases.0.minutes=8",
                                "curriculum.phases.1.steps=2500", "curriculum.phases.1.minutes=15",
                                "checkpoint.every_steps=100000", "train.progress_every_s=30"])
    data = str(tmp_path / "data")
    build_synthetic_shards(data, 480, levels=(1, 1, 1, 2, 3, 4, 5), size=(32, 32), frames=9, fps=8.0,
                           seed=0, data=cfg.data)
    summary = run_curriculum(cfg, RunOptions(data=data, storage=str(tmp_path / "runs"), run_name="learn"))
    assert [p["exit_reason"] for p in summary["phases"]] == ["steps", "steps"]
    pipe = VideoPipeline.from_checkpoint(tmp_path / "runs" / "learn" / "final")
    assert pipe.model.vae.calibrated  # measured at the denoiser phase's start, saved with the weights
    eval_cfg = pipe.cfg.with_overrides(["eval.num_samples=14", "eval.languages=[en]", "eval.seeds=[0]"])
    spec = clip_spec(eval_cfg)
    samples, _ = generate_and_judge(pipe, eval_cfg, build_cases(eval_cfg, spec), spec, ["en"], "learn")
    accuracy = judge.alignment([(s["scores"], s["language"]) for s in samples])["per_attribute"]
    print(f"after {summary['time_s']:.0f}s of training: {accuracy}")
    assert accuracy["colour"] >= 0.25  # chance is 1/7
    check_the_fast_path_follows_the_alert(pipe, samples)


def global_shift(video) -> tuple[float, float]:
    """(dx, dy) in pixels from the first to the last frame: the peak of their phase correlation."""
    first, last = (np.fft.fft2(video[k].astype(np.float64).mean(-1)) for k in (0, -1))
    cross = last * np.conj(first)
    surface = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-9)).real
    dy, dx = np.unravel_index(int(surface.argmax()), surface.shape)
    h, w = surface.shape
    return float(dx - w if dx > w // 2 else dx), float(dy - h if dy > h // 2 else dy)


def check_the_fast_path_follows_the_alert(pipe, samples) -> None:
    """On the trained model: "moving left" (and its Hindi twin) moves the emergency clip left, "moving
    right" right, and the fast path's latents have the standard path's statistics."""

    from aiprod.data.captions import caption

    def truth(direction: str) -> dict:
        return {"objects": [{"colour": "red", "shape": "circle", "size": "large", "direction": direction,
                             "spinning": False, "accelerating": False, "fast": False}], "scene": []}

    for direction, sign in (("left", -1), ("right", 1)):
        for language in ("en", "hi"):
            prompt = caption(truth(direction), language)
            video = pipe.generate(prompt, language, seconds=1.0, fps=8, height=32, width=32, seed=3, mode="emergency")
            dx, dy = global_shift(video)
            print(f"emergency {language} {prompt!r}: shift ({dx:+.0f}, {dy:+.0f}) px")
            assert sign * dx >= 2 and abs(dy) <= 1, (prompt, dx, dy)

    prompts = [s["prompt"] for s in samples[:8]]
    stats = {}
    for mode in ("standard", "emergency"):
        videos = [pipe.generate(p, "en", seconds=1.0, fps=8, height=32, width=32, seed=0, mode=mode) for p in prompts]
        pixels = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        z = encode_latents(pipe.model.vae, pixels)
        stats[mode] = (z.mean().item(), z.std().item())
    print(f"latent mean/std: {stats}")
    (mean_s, std_s), (mean_e, std_e) = stats["standard"], stats["emergency"]
    assert abs(mean_e - mean_s) < 0.25 and 0.7 < std_e / std_s < 1.4
