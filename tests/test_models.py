"""aiprod.models on CPU at tiny sizes: shapes, causality, tiling, RoPE, text scripts, sizes, compile."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aiprod.config import load_config
from aiprod.models import VideoModel, build_model
from aiprod.models.__main__ import parameter_counts
from aiprod.models.denoiser import HybridBackbone, TransformerBlock, interleave
from aiprod.models.layers import apply_rope, rope_3d
from aiprod.models.text import BOS, EOS, TERM_OFFSET, MultilingualTextEncoder
from aiprod.models.vae import DiagonalGaussian, VideoVAE

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "latin": "Flood warning: move to higher ground now",
    "devanagari": "बाढ़ की चेतावनी: ऊँचे स्थान पर जाएँ",
    "bengali": "ঘূর্ণিঝড় সতর্কতা, নিরাপদ আশ্রয়ে যান",
    "tamil": "புயல் எச்சரிக்கை: பாதுகாப்பான இடத்திற்குச் செல்லுங்கள்",
    "arabic": "تحذير من الفيضانات، توجهوا إلى مكان مرتفع",
    "chinese": "洪水预警：请立即前往高处",
    "emoji": "🌊🚨 evacuate now 👨‍👩‍👧",
}


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny").model


@pytest.fixture(scope="module")
def model(cfg) -> VideoModel:
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _randomise_output(denoiser: HybridBackbone) -> None:
    """The output layer starts small; give it larger weights so outputs depend clearly on the input."""
    torch.manual_seed(1)
    for p in denoiser.final_proj.parameters():
        torch.nn.init.normal_(p, std=0.2)


# ------------------------------------------------------------------------------ VAE


@pytest.mark.parametrize("shape", [(2, 3, 9, 33, 17), (1, 3, 1, 32, 32), (1, 3, 5, 7, 9)])
def test_vae_shapes_for_odd_sizes_and_one_frame(model, shape):
    vae = model.vae
    x = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x)
        z = posterior.sample(torch.Generator().manual_seed(0))
        decoded = vae.decode(z)
        cropped = vae.decode(z, size=shape[-2:])
    B, _, T, H, W = shape
    c, t, h, w = vae.latent_shape(T, H, W)
    assert tuple(posterior.mean.shape) == (B, c, t, h, w) == tuple(posterior.logvar.shape)
    assert t == 1 + (T - 1) // 4 and h == math.ceil(H / 4) and w == math.ceil(W / 4)
    assert tuple(decoded.shape) == (B, 3, T, h * 4, w * 4)
    assert tuple(cropped.shape) == shape
    assert posterior.kl().shape == (B,)


def test_vae_rejects_bad_frame_count(model):
    with pytest.raises(ValueError, match="got 8 frames"):
        model.vae.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="got 6 frames"):
        model.vae.latent_shape(6, 64, 64)


def test_vae_config_is_validated(cfg):
    with pytest.raises(ValueError, match="channel_mults has 4 entries.*needs log2\\(4\\)\\+1 = 3"):
        VideoVAE(cfg.vae.model_copy(update={"channel_mults": [1, 2, 2, 2]}))
    with pytest.raises(ValueError, match="spatial_compression must be a power of two, got 12"):
        VideoVAE(cfg.vae.model_copy(update={"spatial_compression": 12}))
    with pytest.raises(ValueError, match="temporal_compression=8"):
        VideoVAE(cfg.vae.model_copy(update={"temporal_compression": 8}))


def test_vae_is_causal(model):
    vae = model.vae
    torch.manual_seed(0)
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    changed = x.clone()
    changed[:, :, 5:] = torch.rand_like(changed[:, :, 5:])  # latents 0, 1 see frames 0..4 only
    with torch.no_grad():
        a, b = vae.encode(x).mean, vae.encode(changed).mean
        torch.testing.assert_close(a[:, :, :2], b[:, :, :2], rtol=0, atol=1e-5)
        assert (a[:, :, 2:] - b[:, :, 2:]).abs().max() > 1e-3
        z2 = a.clone()
        z2[:, :, 2:] += 1.0  # decoded frames 0..4 come from latents 0, 1
        da, db = vae.decode(a), vae.decode(z2)
        torch.testing.assert_close(da[:, :, :5], db[:, :, :5], rtol=0, atol=1e-5)
        assert (da[:, :, 5:] - db[:, :, 5:]).abs().max() > 1e-3


def test_vae_tiled_equals_untiled(cfg):
    torch.manual_seed(0)
    whole = VideoVAE(cfg.vae.model_copy(update={"tile_latent_frames": 100})).eval()
    tiled = VideoVAE(cfg.vae.model_copy(update={"tile_latent_frames": 2})).eval()
    tiled.load_state_dict(whole.state_dict())
    x = torch.rand(1, 3, 21, 16, 16) * 2 - 1  # 6 latent frames -> tiles of 2: 3 tiles
    with torch.no_grad():
        za, zb = whole.encode(x), tiled.encode(x)
        torch.testing.assert_close(za.mean, zb.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(za.logvar, zb.logvar, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(whole.decode(za.mean), tiled.decode(za.mean), rtol=1e-4, atol=1e-5)


def test_diagonal_gaussian():
    mean, logvar = torch.zeros(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)
    standard = DiagonalGaussian(mean, logvar)
    assert torch.equal(standard.kl(), torch.zeros(2))
    shifted = DiagonalGaussian(mean + 1.0, logvar)
    torch.testing.assert_close(shifted.kl(), torch.full((2,), 0.5 * 16))
    s1 = standard.sample(torch.Generator().manual_seed(3))
    s2 = standard.sample(torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and not torch.equal(s1, standard.mode())


def test_tiny_vae_overfits_one_clip(cfg):
    torch.manual_seed(0)
    vae = VideoVAE(cfg.vae)
    T, H, W = 5, 16, 16
    t = torch.arange(T, dtype=torch.float32)[:, None, None]
    y = torch.arange(H, dtype=torch.float32)[None, :, None]
    x = torch.arange(W, dtype=torch.float32)[None, None, :]
    blob = torch.exp(-((x - 4 - 2 * t) ** 2 + (y - 8) ** 2) / 18.0)  # a blob moving right
    ramp = torch.zeros(T, H, W)
    clip = torch.stack([blob * 1.6 - 0.8, x / W - 0.5 + ramp, y / H - 0.5 + 0.5 * blob])[None]
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    psnr = []
    for _ in range(120):
        recon, _ = vae(clip, sample=False)
        loss = (recon - clip).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        psnr.append(10 * math.log10(4.0 / loss.item()))  # peak-to-peak 2 in [-1, 1]
    assert psnr[0] < 15
    assert max(psnr[-10:]) > 25, f"PSNR only reached {max(psnr):.1f} dB"


# ----------------------------------------------------------------------------- text


def test_text_encoder_handles_every_script(cfg):
    torch.manual_seed(0)
    text = MultilingualTextEncoder(cfg.text.model_copy(update={"max_length": 256})).eval()  # no truncation
    ids, mask = text.tokenize(list(SCRIPTS.values()))
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert int(ids.max()) < text.tokenizer.vocab_size and int(ids.min()) >= 0
    for row, sample in enumerate(SCRIPTS.values()):
        n = int(mask[row].sum())
        assert ids[row, 0] == BOS and ids[row, n - 1] == EOS and not mask[row, n:].any()
        # bytes and terms decode back to the (lowercased) input: nothing was lost
        assert text.tokenizer.decode(ids[row, 1 : n - 1].tolist()) == sample.lower()
    with torch.no_grad():
        features = text(ids, mask)
    assert features.shape == (len(SCRIPTS), ids.shape[1], cfg.text.width)
    assert torch.isfinite(features).all()


def test_terms_match_longest_first_at_word_boundaries(model):
    tok = model.text.tokenizer
    terms = {term: TERM_OFFSET + i for i, term in enumerate(tok.terms)}
    assert len(tok.terms) == 500
    assert tok.encode("Flood Warning")[1:-1] == [terms["flood warning"]]  # not "flood" + bytes
    assert tok.encode("flood")[1:-1] == [terms["flood"]]
    assert tok.encode("बाढ़ की चेतावनी")[1:-1] == [terms["बाढ़ की चेतावनी"]]
    assert tok.encode("வெள்ளம்")[1:-1] == [terms["வெள்ளம்"]]
    assert all(i < TERM_OFFSET for i in tok.encode("floods"))  # inside a word: bytes
    assert tok.encode("red alert!")[1:-1] == [terms["red alert"], 3 + ord("!")]


def test_text_empty_and_too_long(cfg):
    encoder = MultilingualTextEncoder(cfg.text)
    ids, mask = encoder.tokenize([""])
    assert ids.tolist() == [[BOS, EOS]] and mask.all()
    assert torch.isfinite(encoder(ids, mask)).all()

    long_text = "अ" * 200  # 3 bytes each: far beyond max_length
    ids, mask = encoder.tokenize([long_text, "short"])
    assert ids.shape[1] == cfg.text.max_length
    assert ids[0, -1] == EOS and mask[0].all() and mask[1].sum() == 7

    strict = MultilingualTextEncoder(cfg.text.model_copy(update={"on_too_long": "error"}))
    with pytest.raises(ValueError, match=r"text 1 is 602 tokens long.*max_length is 64"):
        strict.tokenize(["ok", long_text])


def test_text_padding_does_not_change_features(model):
    ids, mask = model.text.tokenize(["cyclone warning", "a much longer prompt about a flood in the city"])
    with torch.no_grad():
        batched = model.text(ids, mask)
        alone = model.text(*model.text.tokenize(["cyclone warning"]))
    n = alone.shape[1]
    torch.testing.assert_close(batched[0, :n], alone[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- denoiser


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    head_dim, theta = 24, 10000.0
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(pq, pk):
        cos, sin = rope_3d((0, 0, 0), head_dim, theta, positions=torch.tensor([pq, pk]))
        rq = apply_rope(q[None], cos[:1], sin[:1])
        rk = apply_rope(k[None], cos[1:], sin[1:])
        return float((rq * rk).sum())

    base = score((1, 2, 3), (4, 0, 5))
    assert abs(base - score((7, 9, 1), (10, 7, 3))) < 1e-4  # same offset, other absolute positions
    assert abs(base - score((1, 2, 3), (4, 1, 5))) > 1e-3  # other offset
    assert abs(score((0, 0, 0), (0, 0, 0)) - float(q @ k)) < 1e-4  # no rotation at the origin


@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 7), (1, 4, 1, 4, 4), (1, 4, 2, 1, 3)])
def test_denoiser_shapes_for_odd_sizes_and_one_frame(model, shape):
    denoiser = model.denoiser
    text, mask = model.text.encode(["flood warning", "स्कूल बंद"][: shape[0]])
    with torch.no_grad():
        out = denoiser(torch.randn(shape), torch.rand(shape[0]) * 1000, text, mask)
    assert out.shape == shape
    # a small output layer, not a zero one: every block gets a gradient from the first step
    assert 0 < out.abs().max() < 2.0


def test_denoiser_with_temporal_patches(cfg):
    d = HybridBackbone(cfg.denoiser.model_copy(update={"patch_size": [2, 2, 2]}), 4, cfg.text.width)
    _randomise_output(d)
    text, mask = torch.randn(1, 3, cfg.text.width), torch.ones(1, 3, dtype=torch.bool)
    out = d(torch.randn(1, 4, 3, 5, 5), torch.tensor([10.0]), text, mask)
    assert out.shape == (1, 4, 3, 5, 5) and torch.isfinite(out).all()


def test_denoiser_ignores_padded_text_and_uses_timestep(cfg):
    torch.manual_seed(0)
    d = HybridBackbone(cfg.denoiser, 4, cfg.text.width).eval()
    _randomise_output(d)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([300.0])
    text = torch.randn(1, 5, cfg.text.width)
    mask = torch.tensor([[True, True, True, False, False]])
    other = text.clone()
    other[:, 3:] = torch.randn(1, 2, cfg.text.width) * 10
    with torch.no_grad():
        torch.testing.assert_close(d(x, t, text, mask), d(x, t, other, mask))
        assert (d(x, t, text, mask) - d(x, t + 200, text, mask)).abs().max() > 1e-4
        assert (d(x, t, text, mask) - d(x, t, other, torch.ones_like(mask))).abs().max() > 1e-4
        empty = d(x, t, text, torch.zeros_like(mask))  # no tokens at all: finite, not NaN
    assert torch.isfinite(empty).all()


def test_cross_frame_attention(cfg):
    torch.manual_seed(0)
    d = HybridBackbone(cfg.denoiser, 4, cfg.text.width).eval()
    _randomise_output(d)
    text, mask = torch.randn(1, 3, cfg.text.width), torch.ones(1, 3, dtype=torch.bool)
    t = torch.tensor([500.0])
    video = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        assert (d(video, t, text, mask, cross_frame=True) - d(video, t, text, mask)).abs().max() > 1e-4
        image = video[:, :, :1]
        torch.testing.assert_close(d(image, t, text, mask, cross_frame=True), d(image, t, text, mask))


def test_cross_frame_keys_come_from_frame_one(cfg):
    torch.manual_seed(0)
    block = TransformerBlock(32, 2, 2.0).eval()
    tokens_per_frame, frames = 4, 3
    x = torch.randn(1, frames * tokens_per_frame, 32)
    cos, sin = rope_3d((frames, 2, 2), 16, 10000.0)
    text_mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    args = (torch.zeros(1, 6, 32), torch.randn(1, 2, 32), text_mask, (cos, sin))
    changed = x.clone()
    changed[:, tokens_per_frame:] += 1.0  # later frames change: frame 1's output must not
    with torch.no_grad():
        a = block(x, *args, kv_tokens=tokens_per_frame)
        b = block(changed, *args, kv_tokens=tokens_per_frame)
        full = block(changed, *args)
    torch.testing.assert_close(a[:, :tokens_per_frame], b[:, :tokens_per_frame])
    assert (full[:, :tokens_per_frame] - a[:, :tokens_per_frame]).abs().max() > 1e-4


def test_activation_checkpointing_gives_the_same_gradients(cfg):
    torch.manual_seed(0)
    plain = HybridBackbone(cfg.denoiser, 4, cfg.text.width)
    _randomise_output(plain)
    ckpt_cfg = cfg.denoiser.model_copy(update={"activation_checkpointing": True})
    ckpt = HybridBackbone(ckpt_cfg, 4, cfg.text.width)
    ckpt.load_state_dict(plain.state_dict())
    inputs = (torch.randn(2, 4, 2, 4, 4), torch.tensor([1.0, 900.0]), torch.randn(2, 3, cfg.text.width),
              torch.ones(2, 3, dtype=torch.bool))
    for net in (plain, ckpt):
        net.train()
        net(*inputs).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_interleave_spreads_cnn_blocks():
    order = interleave(30, 18)
    assert order.count("T") == 30 and order.count("C") == 18 and order[0] == "T"
    assert "CC" not in "".join(order)
    assert interleave(2, 1) == ["T", "T", "C"] and interleave(2, 0) == ["T", "T"]


def test_transformer_block_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = TransformerBlock(32, 2, 2.0).eval()
    cos, sin = rope_3d((2, 2, 2), 16, 10000.0)
    args = (torch.randn(2, 8, 32), torch.randn(2, 6, 32), torch.randn(2, 3, 32),
            torch.tensor([True, True, False])[None, None, None].expand(2, 1, 1, 3), (cos, sin))
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), block(*args), rtol=1e-4, atol=1e-5)
        cross_frame = compiled(*args, kv_tokens=4)
        torch.testing.assert_close(cross_frame, block(*args, kv_tokens=4), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- whole model, sizes


def test_state_dict_round_trips_through_safetensors(model, tmp_path):
    state = model.state_dict()
    assert {key.split(".")[0] for key in state} == {"vae", "text", "denoiser"}
    save_file(state, tmp_path / "model.safetensors")
    fresh = build_model(load_config("tiny").model)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


TARGETS = {"vae": 120e6, "text": 85e6, "denoiser": 280e6}


@pytest.mark.parametrize("preset", ["gtx1070", "cluster"])
def test_parameter_counts_match_the_seed(preset):
    cfg = load_config(preset).model
    counts = parameter_counts(cfg)
    for name, target in TARGETS.items():
        assert abs(counts[name] / target - 1) <= 0.15, f"{preset} {name}: {counts[name]:,} vs {target:,.0f}"
    d = cfg.denoiser
    assert (d.transformer_blocks, d.cnn_blocks, d.width) == (30, 18, 768)


def test_tiny_is_tiny(cfg):
    assert all(n < 1_000_000 for n in parameter_counts(cfg).values())


def test_cli_prints_table_and_json_last_line():
    result = subprocess.run(
        [sys.executable, "-m", "aiprod.models", "--preset", "tiny", "model.denoiser.cnn_blocks=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    counts = json.loads(lines[-1])
    assert counts == parameter_counts(load_config("tiny", ["model.denoiser.cnn_blocks=2"]).model)
    assert any(line.strip().startswith("denoiser.transformer_blocks") for line in lines)

    bad = subprocess.run(
        [sys.executable, "-m", "aiprod.models", "--preset", "tiny", "model.vae.channel_mults=[1,2]"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert bad.returncode == 2 and "channel_mults" in bad.stderr
