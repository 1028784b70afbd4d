"""Build WebDataset tar shards (KEY.mp4 + KEY.json, index.json) from videos or synthetic clips.

    python jobs/make_shards.py --videos DIR --captions captions.jsonl --out s3://bucket/shards
    python jobs/make_shards.py --synthetic 1000 --levels 1,2,3 --size 64x64 --frames 9 --fps 8 --out out/shards/s
    python jobs/make_shards.py --check out/shards/s

The captions file is JSONL or CSV with `path` and `caption` (optional `language`, `phase`,
`emergency_type`); a sidecar VIDEO.txt next to a video also gives its caption. Re-running skips
complete shards. Bad inputs (a missing video, a duplicate path, an empty caption, a video shorter
than --clip-frames, one smaller than its bucket: --min-size / --preset) are left out, each with one
line and its reason in OUT/rejected.jsonl; stderr ends with a count of them by reason. Exit
status: 0 when something usable was written (or --check passed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod.cli import job_parser  # noqa: E402
from aiprod.config import ConfigError, load_config  # noqa: E402
from aiprod.data import shards  # noqa: E402
from aiprod.data.ingest import build_video_shards, parse_min_size, phases_min_buckets  # noqa: E402
from aiprod.data.synthetic_shards import build_synthetic_shards  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser(__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="directory of videos (local or s3://)")
    src.add_argument("--synthetic", type=int, metavar="N", help="make N synthetic clips instead")
    src.add_argument("--check", metavar="URI", help="re-read every shard under URI and verify it")
    p.add_argument("--captions", help="JSONL or CSV: path, caption[, language, phase, emergency_type]")
    p.add_argument("--out", help="output directory or s3:// prefix")
    p.add_argument("--levels", default="1,2,3,4,5", help="synthetic: comma-separated levels (1..5)")
    p.add_argument("--size", default="64x64", help="synthetic: HEIGHTxWIDTH")
    p.add_argument("--frames", type=int, default=9, help="synthetic: frames per clip")
    p.add_argument("--fps", type=float, default=8.0, help="synthetic: frames per second")
    p.add_argument("--seed", type=int, help="synthetic: first seed (default data.seed)")
    p.add_argument("--max-side", type=int, help="re-encode videos whose longer side exceeds this")
    p.add_argument("--clip-frames", type=int, help="reject videos shorter than a clip of this many frames")
    p.add_argument("--clip-fps", type=float, help="... sampled at this fps (default: the video's own)")
    p.add_argument("--min-size", metavar="HxW[,HxW...]",
                   help="reject videos (too_small) smaller, as shown (rotation applied), than the bucket they "
                        "would train in: the listed size nearest the video's aspect ratio, e.g. 64x64,48x80,80x48. "
                        "Default with --preset (or curriculum.* overrides): per phase the bucket nearest the "
                        "video's aspect ratio (its height x width without buckets); the video is rejected when "
                        "smaller than the smallest of those, i.e. upscaled in every phase. Else, or 0: no check")
    p.add_argument("--heldout-fraction", type=float,
                   help="share of samples in heldout-*.tar (default data.heldout_fraction)")
    p.add_argument("--workers", type=int, help="processes (default data.shard_workers; 0 = all cores)")
    p.add_argument("--preset", help="config preset for the data.* defaults and --min-size (default: tiny, "
                   "without a size check)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. data.shard_target_mb=256")
    args = p.parse_args(argv)
    if not args.check and not args.out:
        p.error("--out is required when building shards")
    if args.captions and not args.videos:
        p.error("--captions goes with --videos")
    if args.heldout_fraction is not None and not 0 <= args.heldout_fraction < 1:
        p.error(f"--heldout-fraction must be within [0, 1), got {args.heldout_fraction}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        problems = shards.check_shards(args.check)
        for problem in problems:
            print(f"check: {problem}", file=sys.stderr)
        print(json.dumps({"uri": args.check, "ok": not problems, "problems": len(problems)}))
        return 1 if problems else 0
    try:
        cfg = load_config(args.preset or "tiny", args.overrides)
        data = cfg.data
        if args.min_size is not None:
            min_buckets = parse_min_size(args.min_size)
        elif args.preset or any(o.startswith("curriculum.") for o in args.overrides):
            min_buckets = phases_min_buckets(cfg.curriculum.phases)
        else:
            min_buckets = ()
        workers = (os.cpu_count() or 1) if args.workers == 0 else args.workers
        if args.synthetic is not None:
            try:
                levels = [int(v) for v in args.levels.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--levels must be comma-separated levels 1..5, got {args.levels!r}") from None
            summary = build_synthetic_shards(
                args.out, args.synthetic, levels, args.size, args.frames, args.fps,
                data.seed if args.seed is None else args.seed, data=data,
                heldout_fraction=args.heldout_fraction, workers=workers, progress=not args.no_progress)
        else:
            summary = build_video_shards(
                args.out, args.videos, args.captions, data, max_side=args.max_side, clip_frames=args.clip_frames,
                clip_fps=args.clip_fps, heldout_fraction=args.heldout_fraction, workers=workers,
                progress=not args.no_progress, min_buckets=min_buckets)
    except (ConfigError, shards.ShardError, FileNotFoundError, ValueError) as exc:
        print(f"make_shards: {exc}", file=sys.stderr)
        return 2
    usable = summary["samples"] + summary["heldout_samples"]
    print(f"{summary['inputs']} inputs -> {summary['samples']} train + {summary['heldout_samples']} held-out samples "
          f"in {summary['shards']} shards ({summary['shards_written']} written, {summary['shards_skipped']} already "
          f"complete), {summary['bytes'] / 1e6:.1f} MB, {summary['rejected']} rejected"
          f"{' ' + str(summary['rejected_by_reason']) if summary['rejected'] else ''} in {summary['seconds']:.1f}s "
          f"-> {summary['out']}")
    if summary["rejected"]:
        print(f"rejected inputs and reasons: {summary['out']}/{shards.REJECTED}")
    print(json.dumps(summary, ensure_ascii=False))
    if summary["rejected"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["rejected_by_reason"].items()))
        print(f"make_shards: {summary['rejected']} of {summary['inputs']} inputs rejected ({reasons}); one line "
              f"each with its reason in {summary['out']}/{shards.REJECTED}", file=sys.stderr)
    if not usable:
        print("make_shards: nothing usable was written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
