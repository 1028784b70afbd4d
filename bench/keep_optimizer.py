"""Should a phase keep the optimizer state of the phase before it? The same curriculum twice.

    python bench/keep_optimizer.py [--preset tiny] [--data out/shards/demo] [key.path=value ...]

Runs `jobs/curriculum.py` with `curriculum.keep_optimizer=false` (the baseline: a fresh AdamW per
phase) and `=true` (denoiser phases after the first start from the previous phase's AdamW moments,
with their own LR schedule), same data and seeds, and prints per phase the loss on the phase's fixed
probe batch at its end and the mean loss of its first steps, with the ratio kept / fresh (< 1: keeping
helps). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod import storage  # noqa: E402

FIRST_STEPS = 4  # steps averaged for a phase's opening loss


def run(preset: str, data: str, out: Path, keep: bool, overrides: list[str]) -> dict:
    name = f"keep-{str(keep).lower()}"
    command = [sys.executable, str(ROOT / "jobs" / "curriculum.py"), "--preset", preset, "--data", data,
               "--storage", str(out), "--run-name", name, "--ray-address", "local",
               f"curriculum.keep_optimizer={str(keep).lower()}", *overrides]
    if storage.exists(storage.join(str(out), name)):
        storage.delete(storage.join(str(out), name))
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{name}: training failed (exit {result.returncode}); run the command by hand: {command}")
    run_dir = out / name
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    phases = {}
    for p in summary["phases"]:
        losses = [r["loss"] for r in steps if "event" not in r and r.get("phase") == p["index"] and "loss" in r]
        phases[p["name"]] = {"component": p["component"], "probe_end": p["probe_loss_end"],
                             "opening": sum(losses[:FIRST_STEPS]) / max(1, len(losses[:FIRST_STEPS]))}
    return phases


def main() -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--data", default="out/shards/demo", help="shards (jobs/curriculum.py --demo builds these)")
    p.add_argument("--out", default="out/bench-keep-optimizer")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not storage.exists(storage.join(args.data, "index.json")):
        from aiprod.config import load_config
        from jobs.curriculum import build_demo_shards

        build_demo_shards(load_config(args.preset, args.overrides), args.data)  # as `make run` builds them
    out = Path(args.out).resolve()
    fresh = run(args.preset, args.data, out, False, args.overrides)
    kept = run(args.preset, args.data, out, True, args.overrides)
    print(f"{'phase':<18}{'probe fresh':>12}{'probe kept':>12}{'ratio':>8}{'open fresh':>12}{'open kept':>11}{'ratio':>8}")
    ratios = []
    for name, a in fresh.items():
        b = kept[name]
        probe = b["probe_end"] / a["probe_end"] if a["probe_end"] else None
        opening = b["opening"] / a["opening"] if a["opening"] else None
        carried = b["component"] == "denoiser" and list(fresh).index(name) > 1
        if carried and probe is not None:
            ratios.append(probe)
        print(f"{name:<18}{a['probe_end']:>12.4f}{b['probe_end']:>12.4f}{probe:>8.3f}{a['opening']:>12.4f}"
              f"{b['opening']:>11.4f}{opening:>8.3f}" + ("" if carried else "   (fresh in both)"))
    mean = sum(ratios) / len(ratios) if ratios else None
    print(json.dumps({"fresh": fresh, "kept": kept, "mean_probe_ratio_carried_phases": mean}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
