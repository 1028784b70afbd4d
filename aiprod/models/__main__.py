"""Parameter table per component, counted on the meta device (no memory, no init time).

    python -m aiprod.models --preset gtx1070 [key.path=value ...]

The last line is JSON: {"vae": N, "text": N, "denoiser": N}.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from aiprod.config import ConfigError, ModelConfig, available_presets, load_config
from aiprod.models import build_model
from aiprod.models.layers import count_parameters

COMPONENTS = ("vae", "text", "denoiser")


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = build_model(cfg)
    return {name: count_parameters(getattr(model, name)) for name in COMPONENTS}


def _rows(module: nn.Module, prefix: str, depth: int) -> list[tuple[str, int]]:
    rows = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}"
        n = count_parameters(child)
        if n == 0:
            continue
        rows.append((path, n))
        if depth > 1 and not isinstance(child, nn.ModuleList):
            rows.extend(_rows(child, path, depth - 1))
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if own:
        rows.append((f"{prefix}.<own>", own))
    return rows


def parameter_table(cfg: ModelConfig, depth: int = 2) -> str:
    with torch.device("meta"):
        model = build_model(cfg)
    lines = [f"{'module':<44} {'params':>14} {'share':>7}"]
    for name in COMPONENTS:
        component = getattr(model, name)
        total = count_parameters(component)
        lines.append("-" * 67)
        lines.append(f"{name:<44} {total:>14,} {'100%':>7}")
        for path, n in _rows(component, "  " + name, depth):
            lines.append(f"{path:<44} {n:>14,} {n / total:>7.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.models", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--preset", default="tiny", help=f"one of {available_presets()} or a YAML path")
    parser.add_argument("--depth", type=int, default=2, help="submodule levels in the breakdown")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        table = parameter_table(cfg.model, args.depth)
    except ValueError as exc:
        print(f"model: {exc}", file=sys.stderr)
        return 2
    print(f"preset {cfg.preset}")
    print(table)
    print(json.dumps(parameter_counts(cfg.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
