"""aiprod.diffusion on CPU: decomposed noise statistics, schedule algebra, DDIM + CFG, the emergency
fast path, caption dropout and the diffusion loss (including a tiny denoiser overfitting one clip)."""

from __future__ import annotations

import time

import pytest
import torch

from aiprod.config import load_config
from aiprod.diffusion import (
    NoiseSchedule,
    TextCondition,
    ddim_sample,
    decomposed_noise,
    diffusion_loss,
    drop_captions,
    emergency_sample,
    sample,
)
from aiprod.diffusion.motion import Motion, motion_from_text, parse_motion, warp_frames
from aiprod.diffusion.sampler import guided_prediction
from aiprod.models import VideoModel, build_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(*overrides: str):
    return load_config("tiny", list(overrides))


@pytest.fixture(scope="module")
def model() -> VideoModel:
    torch.manual_seed(0)
    model = build_model(_config().model).eval()
    # The denoiser's output layer starts small; larger weights make its output depend clearly on x and text.
    torch.manual_seed(1)
    for p in model.denoiser.final_proj.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


class CountingDenoiser:
    """Wraps a denoise function and records every call's batch size and cross_frame flag."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, x, t, text, mask, cross_frame=False):
        self.calls.append((x.shape[0], cross_frame))
        return self.fn(x, t, text, mask, cross_frame=cross_frame)


def _text(model: VideoModel, texts: list[str]) -> TextCondition:
    with torch.no_grad():
        return TextCondition(*model.text.encode(texts))


# --------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_decomposed_noise_variance_and_frame_correlation(lam):
    n = 100_000  # per-element statistics over many videos; standard error ~0.005
    g = torch.Generator().manual_seed(0)
    eps = decomposed_noise((n, 2, 3, 2, 2), lam, generator=g).double()
    variance = eps.var(dim=0)  # one variance per (c, t, h, w) element
    assert variance.sub(1).abs().max() < 0.03, variance
    centred = eps - eps.mean(dim=0)
    std = centred.pow(2).mean(dim=0).sqrt()
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        corr = (centred[:, :, i] * centred[:, :, j]).mean(dim=0) / (std[:, i] * std[:, j])
        assert corr.sub(lam).abs().max() < 0.03, (i, j, corr)


def test_decomposed_noise_is_seeded_and_validates():
    a = decomposed_noise((1, 2, 3, 4, 4), 0.7, generator=torch.Generator().manual_seed(5))
    b = decomposed_noise((1, 2, 3, 4, 4), 0.7, generator=torch.Generator().manual_seed(5))
    c = decomposed_noise((1, 2, 3, 4, 4), 0.7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert decomposed_noise((1, 2, 3, 4, 4), 0.7, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="noise_lambda"):
        decomposed_noise((1, 2, 3, 4, 4), 1.5)
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        decomposed_noise((2, 3, 4, 4), 0.5)


# ------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize("schedule", ["cosine", "scaled_linear"])
@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_schedule_properties_and_target_inversion(schedule, prediction):
    sched = NoiseSchedule(_config(f"diffusion.schedule={schedule}", f"diffusion.prediction={prediction}").diffusion)
    a = sched.alphas_cumprod
    assert a.shape == (sched.train_timesteps,)
    assert torch.all(a[1:] < a[:-1]), "alphas_cumprod must fall strictly"
    assert 0 < a[-1] < a[0] < 1
    assert torch.all((sched.betas > 0) & (sched.betas < 1))

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 3, 5, 5, generator=g)
    noise = torch.randn(6, 4, 3, 5, 5, generator=g)
    t = torch.tensor([0, 1, 250, 500, 900, sched.train_timesteps - 1])
    x_t = sched.add_noise(x0, noise, t)
    target = sched.target(x0, noise, t)
    a_t = sched.alpha_bar(t, x0)
    expected = noise if prediction == "eps" else a_t.sqrt() * noise - (1 - a_t).sqrt() * x0
    torch.testing.assert_close(target, expected)
    # A perfect prediction gives back the clean sample and the noise.
    x0_hat, eps_hat = sched.predict_x0_eps(target, x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, noise, atol=2e-3, rtol=1e-3)

    drawn = sched.sample_timesteps(4096, generator=torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.long and 0 <= drawn.min() and drawn.max() < sched.train_timesteps
    assert drawn.float().mean().sub(sched.train_timesteps / 2).abs() < sched.train_timesteps * 0.05


def test_ddim_timesteps_and_bad_schedule():
    sched = NoiseSchedule(_config().diffusion)
    steps = sched.ddim_timesteps(30)
    assert len(steps) == 30 and steps[0] == sched.train_timesteps - 1
    assert all(a > b for a, b in zip(steps, steps[1:])) and steps[-1] >= 0
    assert sched.ddim_timesteps(4, start=299) == [299, 224, 149, 74]
    assert len(sched.ddim_timesteps(50, start=9)) == 10
    with pytest.raises(ValueError, match="timesteps must be within"):
        sched.alpha_bar(torch.tensor([sched.train_timesteps]), torch.zeros(1))
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(_config("diffusion.schedule=scaled_linear", "diffusion.beta_start=0.1").diffusion)


# ------------------------------------------------------------------------------- sampler


def test_guidance_one_is_the_conditional_prediction_in_one_pass(model):
    cond, uncond = _text(model, ["a red circle moving right"]), _text(model, [""])
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    denoise = CountingDenoiser(model.denoiser)
    with torch.no_grad():
        guided = guided_prediction(denoise, x, 500, cond, uncond, guidance=1.0)
        assert denoise.calls == [(1, False)]
        direct = model.denoiser(x, torch.tensor([500.0]), cond.features, cond.mask)
        assert torch.equal(guided, direct)
        # With guidance g: out_u + g (out_c - out_u), both branches in one batched pass.
        denoise.calls.clear()
        strong = guided_prediction(denoise, x, 500, cond, uncond, guidance=4.0)
        assert denoise.calls == [(2, False)]
        out_u = model.denoiser(x, torch.tensor([500.0]), uncond.features, uncond.mask)
        torch.testing.assert_close(strong, out_u + 4.0 * (direct - out_u), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(strong, direct, atol=1e-3)


def test_sampling_is_deterministic_for_a_seed(model):
    cfg = _config().diffusion
    sched = NoiseSchedule(cfg)
    cond, uncond = _text(model, ["flood warning"]), _text(model, [""])

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return sample(model.denoiser, sched, (1, 4, 3, 8, 8), cond, uncond, cfg,
                          torch.Generator().manual_seed(seed), steps=3)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_ddim_with_exact_model_recovers_x0():
    """A denoiser that knows x0 (returns the true target) makes DDIM land exactly on x0."""
    sched = NoiseSchedule(_config().diffusion)
    x0 = torch.randn(1, 4, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    cond = TextCondition(torch.zeros(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))

    def oracle(x, t, text, mask, cross_frame=False):
        a = sched.alpha_bar(t.long(), x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0  # v

    start = decomposed_noise(x0.shape, 0.7, torch.Generator().manual_seed(4))
    out = ddim_sample(oracle, sched, start, cond, steps=5)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- emergency


def _blob(height: int = 32, width: int = 32) -> torch.Tensor:
    image = torch.full((1, 3, 1, height, width), -1.0)
    image[:, :, :, 12:20, 12:20] = 1.0
    return image


def _centre(frame: torch.Tensor) -> tuple[float, float, float]:
    """(x, y, area) of the bright pixels of a [3, H, W] frame."""
    ys, xs = torch.nonzero(frame[0] > 0, as_tuple=True)
    return float(xs.float().mean()), float(ys.float().mean()), float(len(xs))


@pytest.mark.parametrize("direction, sign", [("right", (1, 0)), ("left", (-1, 0)), ("down", (0, 1)), ("up", (0, -1))])
def test_warped_frames_move_the_content_the_named_way(direction, sign):
    clip = warp_frames(_blob(), frames=9, motion=Motion(direction), fps=8.0, speed=0.25)
    assert clip.shape == (1, 3, 9, 32, 32)
    track = [_centre(clip[0, :, k]) for k in range(9)]
    dx, dy = track[-1][0] - track[0][0], track[-1][1] - track[0][1]
    # a quarter frame width per second: 8 frames at 8 fps move the blob by 8 px
    assert (dx, dy) == pytest.approx((8 * sign[0], 8 * sign[1]), abs=0.5)


def test_a_still_camera_repeats_the_frame_and_towards_grows_it():
    still = warp_frames(_blob(), 5, Motion(), 8.0, 1.0)
    assert all(torch.equal(still[:, :, k], still[:, :, 0]) for k in range(5))
    towards = warp_frames(_blob(), 5, Motion("towards"), 8.0, 1.0)
    areas = [_centre(towards[0, :, k])[2] for k in range(5)]
    assert areas == sorted(areas) and areas[-1] > 1.5 * areas[0]


def test_the_motion_is_read_from_the_prompt_in_every_language():
    from aiprod.data.captions import LANGUAGES, caption

    for direction in ("left", "right", "up", "down"):
        truth = {"objects": [{"colour": "red", "shape": "circle", "size": "medium", "direction": direction,
                              "spinning": False, "accelerating": False, "fast": False}], "scene": []}
        for language in LANGUAGES:
            text = caption(truth, language)
            assert motion_from_text(text).direction == direction, (language, text)
    assert motion_from_text("a red circle speeding up and moving left").direction == "left"
    assert motion_from_text("flood warning for the coastal district") == Motion()  # still camera
    assert motion_from_text("water moving left very fast").factor == 2.0
    assert parse_motion("down:2") == Motion("down", 2.0)
    with pytest.raises(ValueError, match="sideways"):
        parse_motion("sideways")


class IdentityCodec:
    """Latents are their own 'pixels' (no compression), so the fast path's moves can be checked exactly."""

    decode = staticmethod(lambda z: z)
    encode = staticmethod(lambda video: video)


def test_emergency_frames_are_the_moved_first_frame(model):
    cfg = _config("diffusion.emergency.renoise=0", "diffusion.emergency.speed=2",
                  "diffusion.emergency.first_frame=image").diffusion
    sched = NoiseSchedule(cfg)
    cond, uncond = _text(model, ["cyclone alert"]), _text(model, [""])
    denoise = CountingDenoiser(model.denoiser)
    with torch.no_grad():
        z = emergency_sample(denoise, sched, (1, 4, 3, 8, 8), cond, uncond, cfg, IdentityCodec(), frames=3, fps=8.0,
                             motion=Motion("left"), generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 4, 3, 8, 8)
    torch.testing.assert_close(z, warp_frames(z[:, :, :1], 3, Motion("left"), 8.0, 2.0))
    assert not torch.equal(z[:, :, 1], z[:, :, 0])
    # first_frame 'image': emergency.steps guided calls on one latent frame, and nothing more
    assert denoise.calls == [(2, False)] * cfg.emergency.steps


def test_the_first_frame_of_a_whole_clip_is_the_default_start(model):
    cfg = _config("diffusion.emergency.renoise=0").diffusion
    assert cfg.emergency.first_frame == "clip"
    sched = NoiseSchedule(cfg)
    cond, uncond = _text(model, ["cyclone alert"]), _text(model, [""])
    seen = []

    def denoise(x, t, text, mask, cross_frame=False):
        seen.append(x.shape[2])
        return model.denoiser(x, t, text, mask, cross_frame=cross_frame)

    with torch.no_grad():
        emergency_sample(denoise, sched, (1, 4, 3, 8, 8), cond, uncond, cfg, IdentityCodec(), frames=3, fps=8.0)
    assert seen == [3] * cfg.emergency.steps  # whole clips, the shape the denoiser trains on


def test_emergency_renoise_refines_all_frames_with_cross_frame_attention(model):
    cfg = _config("diffusion.emergency.renoise=0.2", "diffusion.emergency.speed=2",
                  "diffusion.emergency.first_frame=image").diffusion
    sched = NoiseSchedule(cfg)
    cond, uncond = _text(model, ["cyclone alert"]), _text(model, [""])
    denoise = CountingDenoiser(model.denoiser)
    shape = (1, 4, 5, 8, 8)

    def run(fn):
        return emergency_sample(fn, sched, shape, cond, uncond, cfg, IdentityCodec(), frames=5, fps=8.0,
                                motion=Motion("right"), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        z, again = run(denoise), run(model.denoiser)
    steps = cfg.emergency.steps
    assert z.shape == shape and torch.equal(z, again)
    assert denoise.calls == [(2, False)] * steps + [(2, True)] * steps
    # Light re-noising keeps each frame close to the moved first frame, not to the unmoved one.
    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a @ b) / (a.norm() * b.norm()))

    moved = warp_frames(z[:, :, :1], 5, Motion("right"), 8.0, 2.0)
    for k in range(2, 5):
        assert corr(z[:, :, k], moved[:, :, k]) > 0.8
        assert corr(z[:, :, k], moved[:, :, k]) > corr(z[:, :, k], z[:, :, 0]) + 0.1



# ---------------------------------------------------------------------------------- loss


def test_drop_captions():
    caps = [f"caption {i}" for i in range(4000)]
    assert drop_captions(caps, 0.0) == caps
    assert drop_captions(caps, 1.0) == [""] * 4000
    dropped = drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    share = sum(c == "" for c in dropped) / len(caps)
    assert 0.08 < share < 0.12
    assert all(d in ("", c) for d, c in zip(dropped, caps))
    assert dropped == drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="caption_dropout"):
        drop_captions(caps, 1.5)


def test_diffusion_loss_trains_denoiser_not_vae():
    cfg = _config()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    sched = NoiseSchedule(cfg.diffusion)
    video = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    loss = diffusion_loss(model, video, ["a", "b"], sched, cfg.diffusion, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters())
    assert model.denoiser.final_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="captions"):
        diffusion_loss(model, video, ["only one"], sched, cfg.diffusion)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        diffusion_loss(model, video[:, :2], ["a", "b"], sched, cfg.diffusion)


def test_tiny_denoiser_overfits_one_clip():
    """Loss on one clip at fixed noise and fixed timesteps (so the target is learnable exactly)
    falls at least 10x. Random noise/timesteps each step would leave an irreducible floor."""
    cfg = _config("diffusion.caption_dropout=0")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    sched = NoiseSchedule(cfg.diffusion)
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
    video = clip.expand(4, -1, -1, -1, -1).contiguous()
    captions = ["a red circle moving right"] * 4
    timesteps = torch.tensor([50, 300, 600, 900])
    noise = decomposed_noise((4, *model.vae.latent_shape(9, 32, 32)), cfg.diffusion.noise_lambda, g)
    params = [*model.denoiser.parameters(), *model.text.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    started = time.monotonic()
    losses = []
    for step in range(300):
        loss = diffusion_loss(model, video, captions, sched, cfg.diffusion, torch.Generator().manual_seed(1),
                              timesteps=timesteps, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[0] / min(losses) >= 20:
            break
    print(f"overfit: {losses[0]:.4f} -> {min(losses):.5f} in {step + 1} steps, {time.monotonic() - started:.1f}s")
    assert losses[0] / min(losses) >= 10
