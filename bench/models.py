"""Forward+backward time of the denoiser on one clip (default: gtx1070 size, 17 frames 256x256),
and of the text encoder on batches of synthetic captions.

    python bench/models.py [--preset gtx1070] [--frames 17 --height 256 --width 256] [--repeats 3]
    python bench/models.py --text-only --preset tiny     # just the text encoder

On CPU: fp32 eager, with and without activation checkpointing. With CUDA: also bf16 autocast,
eager and torch.compile. Prints one line per setting, the ratios, and a JSON line last.

Text encoder: batches of 8 captions (levels 1-5, every language) padded to their longest, as
training sees them, against the same batches at `model.text.max_length` tokens: before the grammar's
words were terms (aiprod/models/terms.txt), a batch with any Hindi, Bengali or Tamil caption filled
max_length. `text_new_over_old` is that ratio. On CPU the text figures use one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aiprod.config import load_config
from aiprod.models import HybridBackbone
from aiprod.models.layers import count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model: HybridBackbone, inputs: tuple, dtype: torch.dtype | None, repeats: int) -> float:
    """Median seconds of forward + backward (after one warm-up step)."""
    device = inputs[0].device
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(*inputs)
        out.float().square().mean().backward()
        _sync(device)
        if i:  # the first step warms up (and compiles)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_text(cfg, device: torch.device, max_repeats: int = 20, batch: int = 8) -> dict[str, float]:
    """Text encoder forward + backward: caption batches padded to their longest vs the same batch
    size at max_length. Repeats fit about 2 s per setting (at least 1 after a warm-up step)."""
    import random

    from aiprod.data.caption_lengths import grammar_captions
    from aiprod.models.text import MultilingualTextEncoder

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # steady figures on a shared machine; restored below
    torch.manual_seed(0)
    encoder = MultilingualTextEncoder(cfg.text).to(device).train()
    texts = [t for _, t in grammar_captions(seeds=40)]
    random.Random(0).shuffle(texts)
    batches = [encoder.tokenize(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]
    tokens = statistics.mean(ids.shape[1] for ids, _ in batches)
    timed = sorted(batches, key=lambda b: abs(b[0].shape[1] - tokens))[:2]  # two batches of typical length
    full = torch.full((batch, cfg.text.max_length), 3 + ord("a"), dtype=torch.long)

    def one(ids: torch.Tensor, mask: torch.Tensor) -> float:
        encoder.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        encoder(ids, mask).square().mean().backward()
        _sync(device)
        return time.perf_counter() - start

    def step(ids: torch.Tensor, mask: torch.Tensor) -> float:
        ids, mask = ids.to(device), mask.to(device)
        warm = one(ids, mask)
        repeats = max(1, min(max_repeats, int(2.0 / max(warm, 1e-6))))
        return statistics.median(one(ids, mask) for _ in range(repeats))

    new = statistics.mean(step(ids, mask) for ids, mask in timed)
    old = step(full, full != 0)
    torch.set_num_threads(threads)
    print(f"text encoder ({cfg.text.width}x{cfg.text.depth}) batch {batch}: captions pad to {tokens:.1f} tokens "
          f"{new * 1e3:.1f} ms, at max_length {cfg.text.max_length}: {old * 1e3:.1f} ms")
    return {"text_tokens_mean": tokens, "text_max_length": cfg.text.max_length, "text_new_s": new,
            "text_at_max_length_s": old, "text_new_over_old": new / old}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--preset", default="gtx1070")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-only", action="store_true", help="time only the text encoder")
    args = parser.parse_args()

    cfg = load_config(args.preset).model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = time_text(cfg, device)
    if args.text_only:
        print(json.dumps({"bench": "models", "device": str(device), "preset": args.preset,
                          **{k: round(v, 4) for k, v in text.items()}}))
        return
    s, tc = cfg.vae.spatial_compression, cfg.vae.temporal_compression
    latent = (cfg.vae.latent_channels, 1 + (args.frames - 1) // tc, args.height // s, args.width // s)
    torch.manual_seed(0)
    model = HybridBackbone(cfg.denoiser, cfg.vae.latent_channels, cfg.text.width).to(device).train()
    inputs = (
        torch.randn(1, *latent, device=device),
        torch.tensor([500.0], device=device),
        torch.randn(1, args.text_tokens, cfg.text.width, device=device),
        torch.ones(1, args.text_tokens, dtype=torch.bool, device=device),
    )
    pt, ph, pw = cfg.denoiser.patch_size
    tokens = -(-latent[1] // pt) * -(-latent[2] // ph) * -(-latent[3] // pw)
    print(f"denoiser {count_parameters(model):,} params on {device}; "
          f"clip {args.frames}x{args.height}x{args.width} -> latent {latent} -> {tokens} tokens; "
          f"threads {torch.get_num_threads()}")

    results: dict[str, float] = {}
    model.set_activation_checkpointing(False)
    results["fp32_eager_s"] = time_step(model, inputs, None, args.repeats)
    model.set_activation_checkpointing(True)
    results["fp32_eager_ckpt_s"] = time_step(model, inputs, None, args.repeats)
    model.set_activation_checkpointing(False)
    if device.type == "cuda":
        results["bf16_eager_s"] = time_step(model, inputs, torch.bfloat16, args.repeats)
        compiled = torch.compile(model)
        results["bf16_compiled_s"] = time_step(compiled, inputs, torch.bfloat16, args.repeats)
        results["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for name, value in results.items():
        print(f"{name:>20}: {value:.3f}")
    ratios = {"ckpt_over_plain": results["fp32_eager_ckpt_s"] / results["fp32_eager_s"]}
    if device.type == "cuda":
        ratios["bf16_eager_speedup"] = results["fp32_eager_s"] / results["bf16_eager_s"]
        ratios["compiled_speedup"] = results["bf16_eager_s"] / results["bf16_compiled_s"]
    for name, value in ratios.items():
        print(f"{name:>20}: {value:.2f}x")
    print(json.dumps({"bench": "models", "device": str(device), "params": count_parameters(model),
                      "tokens": tokens, **{k: round(v, 4) for k, v in {**results, **ratios, **text}.items()}}))


if __name__ == "__main__":
    main()
