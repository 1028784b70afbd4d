"""Quality report of a model (thin CLI over aiprod.eval.report).

    python jobs/evaluate.py --checkpoint out/runs/demo/final --data out/shards/demo --out out/report
    python jobs/evaluate.py --version production --registry s3://bucket/registry --out out/report \
        --compare pib-videogen-standard-v0.1.0-general eval.num_samples=16 eval.seeds=[0,1]

Writes OUT/report.json, OUT/report.html, OUT/contact_sheet.png, OUT/sheets/*.png and, when the
checkpoint's run left a metrics.jsonl, OUT/loss_curves.png. `--version` / `--compare` take a
registry version name (or `production` / `latest`) or a weights directory. Overrides
(`eval.num_samples=16`) apply to the evaluated model's config. VAE reconstruction (PSNR/SSIM) of the
held-out clips of `--data` (real footage too: no ground truth needed) is printed per bucket and is
in report.json per clip (`vae.per_clip`) and per bucket (`vae.per_bucket`). The last line printed
is JSON: {"out", "passed", "metrics", "vae_per_bucket"}. Exit 0 whether or not the gates pass (see
`passed`), 1 on errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod.config import ConfigError, RegistryConfig  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="weights dir or s3:// prefix (model.safetensors + config.yaml)")
    which.add_argument("--version", help="registry version name, 'production' or 'latest'")
    p.add_argument("--registry", help="registry root for --version / --compare (default: registry.root)")
    p.add_argument("--data", help="shard dir or s3:// prefix; its held-out split is the reference set")
    p.add_argument("--out", required=True, help="output directory for report.json / report.html")
    p.add_argument("--compare", help="a second model (dir or registry version) evaluated side by side")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--fail-on-gates", action="store_true", help="exit 3 when the release gates fail")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. eval.num_samples=16")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from aiprod.eval.report import evaluate, json_safe
    from aiprod.model_dir import CheckpointError, locate
    from aiprod.registry import RegistryError

    registry = args.registry or RegistryConfig().root
    try:
        checkpoint, label = locate(args.checkpoint or args.version, registry)
        compare, compare_label = locate(args.compare, registry) if args.compare else (None, None)
        report = evaluate(checkpoint, args.out, data_uri=args.data, compare=compare, overrides=args.overrides,
                          device=args.device, label=label, compare_label=compare_label)
    except (CheckpointError, RegistryError, ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    gates = report["gates"]
    print(f"report: {Path(args.out) / 'report.html'}  gates {'PASSED' if gates['passed'] else 'FAILED'}"
          + "".join(f"\n  {r}" for r in gates["reasons"]))
    metrics = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report["metrics"].items()}
    per_bucket = report["vae"]["per_bucket"]
    for bucket, v in per_bucket.items():
        print(f"  VAE reconstruction, bucket {bucket}: {v['clips']} clips, PSNR {v['psnr']:.2f} dB, "
              f"SSIM {v['ssim']:.3f}")
    print(json.dumps({"out": str(args.out), "passed": gates["passed"], "metrics": metrics,
                      "vae_per_bucket": json_safe(per_bucket)}))
    return 3 if args.fail_on_gates and not gates["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
