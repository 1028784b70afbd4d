"""Does the model learn? Train from scratch on this machine through the real curriculum, then judge.

    python bench/quality.py                       # the `learn` preset, 30 minutes of training
    python bench/quality.py --minutes 10 --out out/quality-10
    python bench/quality.py --judge-only --out out/quality   # judge an existing run again

1. Synthetic shards (levels 1-5, extra level-1 clips, a held-out split) in OUT/data.
2. `jobs/curriculum.py --preset learn` as a user runs it (shards -> Ray Data -> Ray Train +
   DeepSpeed), with each phase's `minutes` cap scaled so that they add up to --minutes.
3. The judge (aiprod/eval/judge.py) on held-out level-1 prompts in every caption language, for a
   few of the run's checkpoints (accuracy against training minutes) and for the final model, whose
   full report (VAE PSNR on held-out clips of levels 1-5 included) goes to OUT/report.

4. The emergency fast path on the same prompts (its direction from each prompt's words), its first
   frame from a whole clip (the default) and from a one-frame clip (`emergency_image_*`), and the
   seconds per clip of both modes at the steps Serve runs them with.

Prints a table with the chance level of each attribute beside it, writes OUT/quality.png and, last,
one JSON line (vae_psnr, alignment_*, per-language accuracies, emergency_alignment_*,
emergency_seconds, standard_seconds, chance, train_minutes, checkpoint, data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod import storage  # noqa: E402
from aiprod.config import Config, load_config  # noqa: E402

ATTRIBUTES = ("colour", "direction", "count")
# Level-1 prompts: 7 palette colours, 4 directions; a count guessed among 1-4 objects.
CHANCE = {"colour": 1 / 7, "direction": 1 / 4, "count": 1 / 4}
GOAL = {"colour": 0.9, "direction": 0.8, "vae_psnr": 28.0, "minutes": 30.0}
EMERGENCY_GOAL = {"colour": 0.8, "direction": 0.75, "time_ratio": 1 / 3}  # per language; time per clip vs standard
LEVEL_MIX = (1, 1, 1, 1, 2, 3, 4, 5)  # mostly level 1 (the judged prompts), every level for the VAE
RUN_NAME = "quality"
ENCODE_RESERVE_MIN = 1.0  # the latent cache's encode of ~1,800 level-1 clips: ~0.5 min on 2 cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes, all phases together")
    p.add_argument("--out", default="out/quality", help="output directory")
    p.add_argument("--preset", default="learn")
    p.add_argument("--clips", type=int, default=4000, help="synthetic clips to build (10%% held out)")
    p.add_argument("--scenes", type=int, default=28, help="held-out level-1 scenes judged, each in every language")
    p.add_argument("--curve-points", type=int, default=6, help="checkpoints judged for the accuracy curve")
    p.add_argument("--judge-only", action="store_true", help="judge the run already in --out")
    p.add_argument("overrides", nargs="*", help="key.path=value for the training config")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    return args


def phase_minutes(cfg: Config, minutes: float) -> list[str]:
    """Overrides that scale the phases' `minutes` caps to add up to `minutes` (less the latent cache's
    encode, which counts as training time, with train.cache_latents)."""
    capped = [(i, p.minutes) for i, p in enumerate(cfg.curriculum.phases) if p.minutes]
    if not capped:
        raise SystemExit(f"preset {cfg.preset}: no phase has a `minutes` cap; bench/quality.py needs one")
    total = sum(m for _, m in capped)
    budget = minutes - (ENCODE_RESERVE_MIN if cfg.train.cache_latents else 0.0)
    return [f"curriculum.phases.{i}.minutes={m * budget / total:.3f}" for i, m in capped]


def encode_minutes(run: str) -> float:
    """Minutes the run spent encoding its latent cache (0 without one)."""
    from aiprod.data.latent_cache import read_index
    from aiprod.training.runner import LATENT_CACHE_DIR

    index = read_index(storage.join(run, LATENT_CACHE_DIR))
    return index.get("encode_s", 0.0) / 60.0 if index else 0.0


def build_data(cfg: Config, uri: str, clips: int) -> None:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    if storage.exists(storage.join(uri, "index.json")):
        print(f"data: reusing {uri}", flush=True)
        return
    phase = cfg.curriculum.phases[-1]
    print(f"data: {clips} synthetic clips ({phase.height}x{phase.width}, {phase.frames} frames) -> {uri}", flush=True)
    build_synthetic_shards(uri, clips, levels=LEVEL_MIX, size=(phase.height, phase.width), frames=phase.frames,
                           fps=phase.fps, seed=cfg.data.seed, data=cfg.data, progress=True)


def train(args: argparse.Namespace, data: str, runs: str, overrides: list[str]) -> float:
    """jobs/curriculum.py in a child process, as a user runs it; returns its wall seconds."""
    command = [sys.executable, str(ROOT / "jobs" / "curriculum.py"), "--preset", args.preset, "--data", data,
               "--storage", runs, "--run-name", RUN_NAME, "--ray-address", "local", *overrides]
    print("train:", " ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    if storage.exists(storage.join(runs, RUN_NAME)):
        storage.delete(storage.join(runs, RUN_NAME))
    result = subprocess.run(command, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"training failed (exit {result.returncode})")
    return time.monotonic() - started


def curve_checkpoints(run: str, points: int) -> list[tuple[float, str]]:
    """(training minutes, dir) of up to `points` denoiser checkpoints spread over the run, oldest first."""
    from aiprod.training import checkpoint as ckpt

    found = []
    for name in ckpt.list_checkpoints(run):
        state = ckpt.read_state(storage.join(run, name))
        if not any(p["component"] == "denoiser" and p["step"] > 0 for p in state["curriculum"]["phases"]):
            continue  # no denoiser step yet: nothing to judge
        found.append((state["time"], storage.join(run, name)))
    if not found:
        return []
    found.sort()
    summary = json.loads(storage.read_text(storage.join(run, "summary.json")))
    start = found[-1][0] - sum(p["time_s"] for p in summary["phases"])
    found = found[:-1]  # the last phase's end: the final model, judged on its own
    step = max(1, len(found) // points)
    picked = found[::-1][::step][::-1][-points:]
    return [((t - start) / 60.0, uri) for t, uri in picked]


def judge(uri: str, cfg: Config, scenes: int) -> dict:
    """Judge accuracies on held-out level-1 prompts, overall and per language."""
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.eval import judge as judging
    from aiprod.eval.measure import generate_and_judge
    from aiprod.eval.scenes import build_cases
    from aiprod.eval.settings import clip_spec, eval_languages

    pipe = VideoPipeline.from_checkpoint(uri)
    cfg = pipe.cfg.with_overrides([f"eval.num_samples={scenes}", "eval.levels=[1]", "eval.seeds=[0]"])
    spec = clip_spec(cfg)
    samples, _ = generate_and_judge(pipe, cfg, build_cases(cfg, spec), spec, eval_languages(cfg), Path(uri).name)
    return judging.alignment([(s["scores"], s["language"]) for s in samples])


class InMode:
    """`pipe` in one mode at that mode's own steps (standard: diffusion.sample_steps, emergency:
    diffusion.emergency.steps, as Serve runs them)."""

    def __init__(self, pipe, mode: str):
        self.pipe, self.mode = pipe, mode

    def generate(self, prompt: str, language: str, **kwargs) -> object:
        kwargs.pop("steps", None)
        return self.pipe.generate(prompt, language, mode=self.mode, **kwargs)


def time_modes(pipe, prompts: list[str], spec) -> dict:
    """Median seconds per clip of each mode at its served steps, the modes interleaved prompt by prompt
    (the machine may be shared), after one warm-up clip each."""
    import statistics

    seconds: dict[str, list[float]] = {"standard": [], "emergency": []}
    for i, prompt in enumerate([prompts[0], *prompts]):
        for mode in seconds:
            started = time.perf_counter()
            pipe.generate(prompt, "en", seconds=spec.frames / spec.fps, fps=spec.fps, height=spec.height,
                          width=spec.width, seed=i, mode=mode)
            if i:
                seconds[mode].append(time.perf_counter() - started)
    return {f"{mode}_seconds": round(statistics.median(values), 4) for mode, values in seconds.items()}


def judge_modes(uri: str, scenes: int) -> dict:
    """The fast path judged on the same held-out level-1 prompts as the standard one, its first frame
    from a whole clip (the default) and from a one-frame clip; both modes timed per clip."""
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.eval import judge as judging
    from aiprod.eval.measure import generate_and_judge
    from aiprod.eval.scenes import build_cases
    from aiprod.eval.settings import clip_spec, eval_languages

    pipe = VideoPipeline.from_checkpoint(uri)
    base = pipe.cfg.with_overrides([f"eval.num_samples={scenes}", "eval.levels=[1]", "eval.seeds=[0]"])
    spec = clip_spec(base)
    cases = build_cases(base, spec)
    out: dict = {}
    for first in ("clip", "image"):
        pipe.cfg = base.with_overrides([f"diffusion.emergency.first_frame={first}"])
        samples, _ = generate_and_judge(InMode(pipe, "emergency"), pipe.cfg, cases, spec, eval_languages(base),
                                        f"emergency, first frame: {first}")
        out[first] = _accuracies(judging.alignment([(s["scores"], s["language"]) for s in samples]))
    pipe.cfg = base
    out.update(time_modes(pipe, [c.meta["captions"]["en"] for c in cases[:12]], spec))
    return out


def plot(curve: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110, sharey=True)
    languages = sorted(curve[-1]["per_language"]) if curve else []
    for ax, attribute in zip(axes, ("colour", "direction")):
        xs = [c["minutes"] for c in curve]
        for language in languages:
            ax.plot(xs, [c["per_language"][language][attribute] for c in curve], marker="o", label=language)
        ax.axhline(CHANCE[attribute], color="grey", linestyle=":", label="chance")
        ax.axhline(GOAL[attribute], color="green", linestyle="--", label="goal")
        ax.set_title(f"{attribute} accuracy (held-out level-1 prompts)")
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("judge accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.preset, args.overrides)
    data, runs = str(out / "data"), str(out / "runs")
    run = storage.join(runs, RUN_NAME)
    overrides = [*phase_minutes(cfg, args.minutes), *args.overrides]
    if not args.judge_only:
        build_data(cfg, data, args.clips)
        wall = train(args, data, runs, overrides)
        print(f"train: {wall / 60:.1f} min wall (Ray start-up, engine builds and checkpoints included)", flush=True)

    summary = json.loads(storage.read_text(storage.join(run, "summary.json")))
    train_minutes = sum(p["time_s"] for p in summary["phases"]) / 60.0 + encode_minutes(run)
    curve = []
    for minutes, uri in curve_checkpoints(run, args.curve_points - 1):
        curve.append({"minutes": round(minutes, 2), "checkpoint": uri, **_accuracies(judge(uri, cfg, args.scenes))})
        print(f"curve: {minutes:5.1f} min  " + "  ".join(f"{a} {curve[-1][a]:.2f}" for a in ATTRIBUTES), flush=True)

    from aiprod.eval.report import evaluate

    final = storage.join(run, "final")
    report = evaluate(final, out / "report", data_uri=data,
                      overrides=[f"eval.num_samples={args.scenes}", "eval.levels=[1]", "eval.seeds=[0]",
                                 "eval.heldout_clips=40"])
    final_point = {"minutes": round(train_minutes, 2), "checkpoint": final,
                   **_accuracies(report["alignment"])}
    modes = judge_modes(final, args.scenes)
    fast = modes["clip"]
    curve.append(final_point)
    plot(curve, out / "quality.png")

    result = {
        "vae_psnr": report["metrics"]["psnr"],
        **{f"alignment_{a}": final_point[a] for a in ATTRIBUTES},
        "alignment_accuracy": report["metrics"]["alignment_accuracy"],
        "per_language": final_point["per_language"],
        "chance": CHANCE,
        "goal": GOAL,
        "goal_met": _goal_met(final_point, report["metrics"]["psnr"], train_minutes),
        **{f"emergency_alignment_{a}": fast[a] for a in ATTRIBUTES},
        "emergency_per_language": fast["per_language"],
        **{f"emergency_image_alignment_{a}": modes["image"][a] for a in ATTRIBUTES},
        "emergency_seconds": modes["emergency_seconds"],
        "standard_seconds": modes["standard_seconds"],
        "emergency_goal": EMERGENCY_GOAL,
        "emergency_goal_met": _emergency_goal_met(fast, modes),
        "train_minutes": round(train_minutes, 2),
        "curve": [{k: v for k, v in c.items() if k != "checkpoint"} for c in curve],
        "gates": report["gates"],
        "checkpoint": final,
        "data": {"uri": data, "heldout_split": "heldout", "heldout_clips": report["data"]["clips"]},
        "report": str(out / "report" / "report.html"),
        "plot": str(out / "quality.png"),
    }
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _accuracies(alignment: dict) -> dict:
    per_language = {lang: {a: round(stats[a], 3) for a in ATTRIBUTES}
                    for lang, stats in alignment["per_language"].items()}
    return {**{a: round(alignment["per_attribute"][a], 3) for a in ATTRIBUTES}, "per_language": per_language}


def _goal_met(final: dict, psnr: float | None, minutes: float) -> bool:
    languages = final["per_language"].values()
    return (minutes <= GOAL["minutes"] + 0.5 and psnr is not None and psnr >= GOAL["vae_psnr"]
            and all(r["colour"] >= GOAL["colour"] and r["direction"] >= GOAL["direction"] for r in languages))


def _emergency_goal_met(fast: dict, modes: dict) -> bool:
    quick = modes["emergency_seconds"] <= EMERGENCY_GOAL["time_ratio"] * modes["standard_seconds"]
    return quick and all(r["colour"] >= EMERGENCY_GOAL["colour"] and r["direction"] >= EMERGENCY_GOAL["direction"]
                         for r in fast["per_language"].values())


def print_table(result: dict) -> None:
    languages = sorted(result["per_language"])
    print(f"\nquality after {result['train_minutes']:.1f} training minutes (held-out level-1 prompts)")
    print(f"{'attribute':<11}{'all':>7}" + "".join(f"{lang:>7}" for lang in languages) + f"{'chance':>8}{'goal':>7}")
    for a in ATTRIBUTES:
        row = f"{a:<11}{result[f'alignment_{a}']:>7.2f}"
        row += "".join(f"{result['per_language'][lang][a]:>7.2f}" for lang in languages)
        print(row + f"{CHANCE[a]:>8.2f}" + (f"{GOAL[a]:>7.2f}" if a in GOAL else f"{'':>7}"))
    row = f"{'emergency':<11}" + "  ".join(f"{a} {result[f'emergency_alignment_{a}']:.2f}" for a in ATTRIBUTES)
    print(row + "  (" + ", ".join(f"{lang} {r['colour']:.2f}/{r['direction']:.2f}"
                                  for lang, r in sorted(result["emergency_per_language"].items())) + " colour/direction)")
    ratio = result["emergency_seconds"] / max(result["standard_seconds"], 1e-9)
    print(f"seconds per clip: emergency {result['emergency_seconds']:.3f}, standard {result['standard_seconds']:.3f} "
          f"(ratio {ratio:.2f}, goal <= {EMERGENCY_GOAL['time_ratio']:.2f}); emergency goal "
          f"{'met' if result['emergency_goal_met'] else 'NOT met'}")
    psnr = result["vae_psnr"]
    print(f"VAE PSNR (held-out, levels 1-5): {psnr:.2f} dB (goal {GOAL['vae_psnr']:.0f})" if psnr is not None
          else "VAE PSNR: not measured")
    print(f"gates {'PASSED' if result['gates']['passed'] else 'FAILED'}; goal {'met' if result['goal_met'] else 'NOT met'}; "
          f"plot {result['plot']}")
    print("minutes  " + "  ".join(f"{a:>9}" for a in ATTRIBUTES))
    for point in result["curve"]:
        print(f"{point['minutes']:7.1f}  " + "  ".join(f"{point[a]:>9.2f}" for a in ATTRIBUTES))


if __name__ == "__main__":
    sys.exit(main())
