"""Model registry CLI (thin, over aiprod.registry).

    python jobs/registry.py --root out/registry publish out/runs/demo/final \
        --version pib-videogen-standard-v0.1.0-general --report out/report/report.json
    python jobs/registry.py --root s3://bucket/registry list [--json]
    python jobs/registry.py promote pib-videogen-standard-v0.1.0-general [--force --reason TEXT]
    python jobs/registry.py rollback
    python jobs/registry.py verify pib-videogen-standard-v0.1.0-general
    python jobs/registry.py history | resolve production
    python jobs/registry.py ab pib-videogen-standard-v0.2.0-general --fraction 0.1 [--reason TEXT]
    python jobs/registry.py ab [--clear]      # show, or clear, the A/B pointer Serve follows

--root defaults to registry.root of the config (--preset / --config, default tiny, plus
`--set key.path=value`). `promote` checks the version against the release gates (eval.gates) of the
config it was trained with, stored in the registry, with --set applied; an explicit --preset or
--config uses that config's gates instead. Exits non-zero with a message on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod.config import Config, ConfigError, load_config  # noqa: E402
from aiprod.registry import Registry, RegistryError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--root", help="registry root: local dir or s3:// prefix (default: registry.root)")
    p.add_argument("--preset", help="preset for registry.* (default tiny); with promote, its eval.gates "
                   "instead of the version's own")
    p.add_argument("--config", help="YAML config file (overrides --preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="store a checkpoint as a new version")
    pub.add_argument("checkpoint", help="dir or s3:// prefix with model.safetensors + config.yaml")
    pub.add_argument("--version", required=True, help="pib-videogen-{type}-vX.Y.Z-{specialization}")
    pub.add_argument("--report", help="report.json from jobs/evaluate.py (needed to pass the gates)")
    ls = sub.add_parser("list", help="versions, with production/latest markers and headline metrics")
    ls.add_argument("--json", action="store_true")
    pro = sub.add_parser("promote", help="point production at a version that passes the gates")
    pro.add_argument("version")
    pro.add_argument("--force", action="store_true", help="promote despite failed gates (needs --reason)")
    pro.add_argument("--reason", help="recorded in the history with --force")
    sub.add_parser("rollback", help="restore the previous production version (refused if it fails its manifest)")
    ver = sub.add_parser("verify", help="check a version's files against its manifest")
    ver.add_argument("version")
    sub.add_parser("history", help="every change, oldest first (JSON lines)")
    res = sub.add_parser("resolve", help="local directory of production | latest | NAME, verified against its manifest")
    res.add_argument("ref")
    res.add_argument("--cache-dir")
    ab = sub.add_parser("ab", help="point A/B at a version (that share of Serve's traffic), show it, or --clear it")
    ab.add_argument("version", nargs="?", help="the candidate version (omit to show the pointer)")
    ab.add_argument("--fraction", type=float, help="share of requests for the candidate, > 0 and <= 1")
    ab.add_argument("--clear", action="store_true", help="send no traffic to a candidate any more")
    ab.add_argument("--reason", help="recorded in the history")
    return p.parse_args(argv)


def _metrics_text(metrics: dict) -> str:
    keys = ("psnr", "ssim", "temporal_coherence", "alignment_accuracy")
    return "  ".join(f"{k}={metrics[k]:.3g}" for k in keys if isinstance(metrics.get(k), (int, float)))


def _publish(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    uri = reg.publish(args.checkpoint, args.version, report=args.report)
    print(f"published {args.version} -> {uri}")
    return 0


def _list(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    rows = reg.list_versions()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no versions in {reg.root}")
    for row in rows:
        marks = ",".join(m for m in ("production", "latest") if row[m])
        print(f"{row['version']:<48} {row['published_at'] or '?':<26} {marks:<18} {_metrics_text(row['metrics'])}")
    return 0


def _promote(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    if args.config or args.preset:
        gates, source = cfg.eval.gates, f"--config {args.config}" if args.config else f"--preset {args.preset}"
    else:
        own = reg.config(args.version, args.set)
        gates, source = own.eval.gates, f"the version's own config (preset {own.preset})"
    print(f"release gates from {source}: {json.dumps(gates)}")
    event = reg.promote(args.version, gates, force=args.force, reason=args.reason)
    note = f" (forced: {args.reason}; failed gates: {'; '.join(event['gate_failures'])})" if event["forced"] else ""
    print(f"production -> {args.version} (was {event['replaced']}){note}")
    return 0


def _rollback(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    event = reg.rollback()
    print(f"production -> {event['version']} (rolled back from {event['replaced']})")
    return 0


def _verify(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    problems = reg.verify(args.version)
    if problems:
        print(f"registry: {args.version} FAILS verification:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.version}: all files match the manifest")
    return 0


def _history(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    for event in reg.history():
        print(json.dumps(event, ensure_ascii=False))
    return 0


def _resolve(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    print(reg.resolve(args.ref, args.cache_dir))
    return 0


def _ab(reg: Registry, cfg: Config, args: argparse.Namespace) -> int:
    if args.clear:
        if args.version or args.fraction is not None:
            raise RegistryError("registry: ab --clear takes no VERSION or --fraction")
        event = reg.clear_ab(args.reason)
        print("A/B pointer cleared (was " + (event["replaced"] if event else "not set") + ")")
        return 0
    if args.version is None:
        if args.fraction is not None:
            raise RegistryError("registry: ab --fraction needs a VERSION")
        print(json.dumps(reg.ab()))
        return 0
    if args.fraction is None:
        raise RegistryError(f"registry: ab {args.version} needs --fraction F (0 < F <= 1)")
    event = reg.set_ab(args.version, args.fraction, args.reason)
    print(f"A/B -> {args.version} with {args.fraction:g} of the traffic (was {event['replaced']})")
    return 0


COMMANDS = {"publish": _publish, "list": _list, "promote": _promote, "rollback": _rollback,
            "verify": _verify, "history": _history, "resolve": _resolve, "ab": _ab}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or args.preset or "tiny", args.set)
    reg = Registry(args.root or cfg.registry.root, cfg.registry)
    return COMMANDS[args.command](reg, cfg, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (RegistryError, ConfigError, ValueError) as exc:
        print(exc if str(exc).startswith(("registry:", "config:")) else f"registry: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
