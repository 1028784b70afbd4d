"""Metrics on inputs with known answers: PSNR, SSIM, temporal coherence, Fréchet distance, VAE recon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aiprod.data.synthetic import make_clip
from aiprod.eval import metrics as m


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [make_clip(1 + i % 2, i, 9, 32, 32, 8)[0] for i in range(12)]


def test_identical_clips_psnr_inf_and_ssim_one(clips):
    clip = clips[0]
    assert math.isinf(m.psnr(clip, clip))
    assert m.psnr(clip, clip, cap=100.0) == 100.0
    assert m.ssim(clip, clip) == pytest.approx(1.0, abs=1e-9)
    # one identical frame among noisy ones: the cap keeps the mean finite
    other = clip.copy()
    other[1:] = 255 - other[1:]
    assert math.isinf(m.psnr(clip, other)) and math.isfinite(m.psnr(clip, other, cap=100.0))


@pytest.mark.parametrize("sigma", [5.0, 10.0, 25.0])
def test_gaussian_noise_gives_the_expected_psnr(sigma):
    rng = np.random.default_rng(0)
    grey = np.full((9, 64, 64, 3), 128.0)  # mid-grey: noise up to 5 sigma stays inside 0..255
    noisy = grey + rng.normal(0.0, sigma, grey.shape)
    expected = 10 * math.log10(255**2 / sigma**2)
    assert m.psnr(grey, noisy) == pytest.approx(expected, abs=0.05)
    quantised = np.clip(np.round(noisy), 0, 255).astype(np.uint8)  # rounding adds 1/12 to the variance
    assert m.psnr(grey.astype(np.uint8), quantised) == pytest.approx(expected, abs=0.15)


def test_ssim_falls_with_noise_and_shapes_must_match(clips):
    rng = np.random.default_rng(1)
    clip = clips[0].astype(np.float64)
    values = [m.ssim(clip, np.clip(clip + rng.normal(0, s, clip.shape), 0, 255)) for s in (2, 10, 40)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    with pytest.raises(ValueError, match=r"videos differ in shape"):
        m.ssim(clip, clip[:, :16])
    with pytest.raises(ValueError, match=r"must be \[T, H, W, 3\]"):
        m.psnr(clip[..., 0], clip[..., 0])


def test_temporal_coherence(clips):
    rng = np.random.default_rng(2)
    static = np.repeat(clips[0][:1], 9, axis=0)
    noise = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    flat = np.zeros((9, 32, 32, 3), np.uint8)
    assert m.temporal_coherence(static) == pytest.approx(1.0)
    assert m.temporal_coherence(flat) == pytest.approx(1.0)
    assert abs(m.temporal_coherence(noise)) < 0.2
    smooth = make_clip(1, 0, 17, 64, 64, 8)[0]
    assert m.temporal_coherence(smooth) > 0.8
    shuffled = smooth[np.random.default_rng(3).permutation(17)]
    assert m.temporal_coherence(shuffled) < m.temporal_coherence(smooth)


def test_frechet_distance_is_zero_on_itself_and_grows_with_corruption(clips):
    extractor = m.make_extractor(None)
    assert (extractor.name, extractor.key) == ("FD-randproj3d", "fd_randproj3d")
    clips = clips[:8]
    feats = extractor(clips)
    assert feats.shape == (8, extractor.dim)
    np.testing.assert_array_equal(feats, m.RandomProjection3D()(clips))  # fixed: same weights every time
    assert m.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(4)
    distances = []
    for sigma in (10, 40, 100):
        corrupted = [np.clip(c + rng.normal(0, sigma, c.shape), 0, 255).astype(np.uint8) for c in clips]
        distances.append(m.frechet_distance(feats, extractor(corrupted)))
    assert 0 < distances[0] < distances[1] < distances[2]
    with pytest.raises(ValueError, match=">= 2 videos"):
        m.frechet_distance(feats[:1], feats)


def test_real_fvd_only_with_i3d_weights(tmp_path, clips):
    with pytest.raises(FileNotFoundError, match="eval.i3d_weights"):
        m.make_extractor(str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="not an InceptionI3d state dict"):
        m.make_extractor(str(wrong))
    weights = tmp_path / "i3d.pt"
    torch.manual_seed(0)
    torch.save(m.InceptionI3d(num_classes=400).state_dict(), weights)  # the pytorch-i3d key layout
    extractor = m.make_extractor(str(weights))
    assert (extractor.name, extractor.key, extractor.dim) == ("FVD", "fvd", 400)
    assert (extractor.frames, extractor.size) == (16, 224)
    extractor.size = 64  # only to keep the test fast on CPU; the architecture adapts its final pooling
    feats = extractor(clips[:2])
    assert feats.shape == (2, 400) and np.isfinite(feats).all()


def test_vae_reconstruction_metrics(tiny_config, clips):
    from aiprod.models import build_model

    torch.manual_seed(0)
    vae = build_model(tiny_config.model).vae.eval()
    ten_frames = np.concatenate([clips[0], clips[0][-1:]])  # 10 frames: trimmed to 9 = 1 + 2 * 4
    result = m.vae_reconstruction(vae, [ten_frames, clips[1]], psnr_cap=100.0)
    assert result["clips"] == 2 and result["reconstructions"][0].shape == (9, 32, 32, 3)
    assert 0 < result["psnr"] < 100 and -1 <= result["ssim"] < 1
    assert result["psnr"] == pytest.approx(np.mean(result["psnr_per_clip"]))
