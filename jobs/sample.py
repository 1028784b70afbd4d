"""Generate one video from a weights directory (thin CLI over aiprod.diffusion.pipeline).

    python jobs/sample.py --checkpoint out/registry/pib-videogen-... --prompt "a red circle moving right" \
        --out out/sample.mp4 --seconds 2 --fps 8 --height 64 --width 64 --seed 0 [--mode emergency]

    python jobs/sample.py --checkpoint out/runs/ft/final --merge out/merged   # an adapter folded into its base

Prints one JSON line: {"out", "frames", "height", "width", "fps", "mode", "version", "signed_by", "seconds_taken"}.
The video carries signed C2PA content credentials (aiprod.provenance: $AIPROD_C2PA_CERT/$AIPROD_C2PA_KEY,
else this machine's development certificate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod import adapter_dir  # noqa: E402
from aiprod.diffusion.pipeline import MODES, VideoPipeline  # noqa: E402
from aiprod.model_dir import CheckpointError  # noqa: E402
from aiprod.provenance import Facts, Provenance  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--checkpoint", required=True, help="model directory (or s3:// prefix): model.safetensors or an "
                   "adapter directory (adapter.safetensors naming its base) + config.yaml")
    p.add_argument("--prompt")
    p.add_argument("--out", help="output .mp4 path")
    p.add_argument("--merge", metavar="DIR", help="instead of sampling: write the checkpoint as plain full weights "
                   "(an adapter folded into its base) to this model directory")
    p.add_argument("--language", default="en")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampler steps (default: diffusion.sample_steps / emergency.steps)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: diffusion.guidance / emergency.guidance)")
    p.add_argument("--mode", choices=MODES, default="standard")
    p.add_argument("--motion", help="emergency mode's camera: right, left, up, down, towards, away or still "
                   "(optionally :FACTOR, e.g. left:2); default: read from the prompt, else still")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = p.parse_args(argv)
    if args.merge is None and not (args.prompt and args.out):
        p.error("--prompt and --out are required (unless --merge DIR)")
    return args


def merge(args: argparse.Namespace) -> int:
    pipe = VideoPipeline.from_checkpoint(args.checkpoint)
    pipe.save_pretrained(args.merge)
    print(json.dumps({"merged": args.merge, "from": args.checkpoint, "version": pipe.version}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        if args.merge:
            return merge(args)
        provenance = Provenance()
        pipe = VideoPipeline.from_checkpoint(args.checkpoint, device=args.device)
        frames = pipe.generate(
            args.prompt, args.language, args.seconds, args.fps, args.height, args.width, args.seed,
            steps=args.steps, guidance=args.guidance, mode=args.mode, motion=args.motion,
        )
    except (CheckpointError, ValueError) as exc:  # ValueError: also a ConfigError of provenance keys
        print(f"sample: {exc}", file=sys.stderr)
        return 2
    pipe.write_mp4(frames, args.out, args.fps)
    base, adapter = pipe.version, None
    if adapter_dir.is_adapter_dir(args.checkpoint):  # its credentials name the base and the adapter on it
        meta = adapter_dir.read_meta(args.checkpoint)["base"]  # a registry version, else the weights' hash
        base, adapter = meta["ref"] if meta["registry"] else f"sha256:{meta['sha256']}", pipe.version
    provenance.sign_file(args.out, Facts("model", args.mode, args.language, args.prompt, model_version=base,
                                         adapter=adapter))
    print(json.dumps({
        "out": args.out, "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
        "width": int(frames.shape[2]), "fps": args.fps, "mode": args.mode, "version": pipe.version,
        "signed_by": provenance.keys.signer,
        **({"motion": str(pipe.motion_for(args.prompt, args.motion))} if args.mode == "emergency" else {}),
        "seconds_taken": round(time.monotonic() - started, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
