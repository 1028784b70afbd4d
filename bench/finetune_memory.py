"""Memory of each fine-tuning mode: what trains, and what the optimizer keeps for it.

    python bench/finetune_memory.py                         # gtx1070 and cluster presets, full vs lora vs dora
    python bench/finetune_memory.py --preset gtx1070 --steps 5 --cap-gib 8   # on a GPU: peak of real steps

For every mode (train.mode full | lora | dora, train.adapter.* from the preset) it prints the
trainable and total parameters, and the bytes the trainable ones cost beyond the weights: fp32
gradients and AdamW's master copy + two moments (DeepSpeed's layout, 12 bytes per trainable parameter
in fp32 training, +2 for the 16-bit weights of bf16/fp16). Ratios are against full fine-tuning.
On a GPU (`--steps N`) it also trains N steps of the preset's first denoiser phase per mode on one
rank, under `--cap-gib` (torch.cuda.set_per_process_memory_fraction), and reports the peak allocated
memory, or OOM. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiprod.config import Config, load_config  # noqa: E402
from aiprod.models import build_model  # noqa: E402
from aiprod.models.adapters import AdapterSpec, add_adapters, parameter_counts  # noqa: E402
from aiprod.training.phase_module import PhaseModule, set_trainable  # noqa: E402

MODES = ("full", "lora", "dora")


def first_denoiser_phase(cfg: Config) -> int:
    return next(i for i, p in enumerate(cfg.curriculum.phases) if p.component == "denoiser")


def module_for(cfg: Config, mode: str, device: str = "meta") -> PhaseModule:
    """The denoiser phase's trained module in `mode` (on the meta device: sizes without memory)."""
    phase = cfg.curriculum.phases[first_denoiser_phase(cfg)]
    with torch.device(device):
        model = build_model(cfg.model)
        if mode != "full":
            model = add_adapters(model, AdapterSpec.from_config(cfg.train.model_copy(update={"mode": mode})))
    set_trainable(model, "denoiser", adapters_only=mode != "full")
    return PhaseModule(model, phase, cfg)


def counts(cfg: Config, mode: str) -> dict[str, float]:
    c = parameter_counts(module_for(cfg, mode))
    half = 2 if cfg.train.precision in ("bf16", "fp16") else 0
    return {"trainable": c["trainable"], "total": c["total"], "gradient_bytes": c["gradient_bytes"],
            "optimizer_state_bytes": c["optimizer_state_bytes"] + half * c["trainable"]}


def peak_gib(cfg: Config, mode: str, steps: int, cap_gib: float) -> float | str:
    """Peak allocated GiB of `steps` optimizer steps on one GPU under the cap (plain AdamW, one rank)."""
    from aiprod.training.engine import autocast

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory))
    torch.cuda.reset_peak_memory_stats()
    phase = cfg.curriculum.phases[first_denoiser_phase(cfg)]
    try:
        module = module_for(cfg, mode, "cpu").to(device)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=phase.lr)
        video = torch.rand(phase.batch_size, 3, phase.frames, phase.height, phase.width, device=device) * 2 - 1
        captions = ["a red circle moving right"] * phase.batch_size
        generator = torch.Generator(device=device).manual_seed(0)
        for _ in range(steps):
            with autocast(cfg.train.precision, device):
                loss, _ = module(video, captions, generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except torch.OutOfMemoryError:
        return "OOM"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", action="append", help="preset(s) to size (default: gtx1070 and cluster)")
    p.add_argument("--steps", type=int, default=0, help="GPU only: train this many steps per mode, report the peak")
    p.add_argument("--cap-gib", type=float, default=8.0, help="GPU memory cap for --steps (a GTX 1070 has 8 GiB)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out: dict[str, dict] = {}
    for preset in args.preset or ["gtx1070", "cluster"]:
        cfg = load_config(preset, args.overrides)
        rows = {mode: counts(cfg, mode) for mode in MODES}
        full = rows["full"]
        print(f"{preset} ({cfg.train.precision}): mode   trainable / total params   grads MiB   AdamW MiB   "
              f"vs full")
        for mode, r in rows.items():
            if args.steps and torch.cuda.is_available():
                r["peak_gib"] = peak_gib(cfg, mode, args.steps, args.cap_gib)
            ratio = (r["gradient_bytes"] + r["optimizer_state_bytes"]) / (full["gradient_bytes"]
                                                                           + full["optimizer_state_bytes"])
            r["ratio_vs_full"] = round(ratio, 5)
            peak = f"   peak {r['peak_gib']} GiB (cap {args.cap_gib:g})" if "peak_gib" in r else ""
            print(f"  {mode:5s} {r['trainable']:>13,} / {r['total']:>13,}   {r['gradient_bytes'] / 2**20:9.1f}   "
                  f"{r['optimizer_state_bytes'] / 2**20:9.1f}   {ratio:.4f}{peak}")
        out[preset] = rows
    if args.steps and not torch.cuda.is_available():
        print("no GPU: peak memory not measured (run with --steps on a GPU)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
