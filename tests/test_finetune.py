"""The continuous fine-tuning cycle (jobs/finetune.py, aiprod.finetune) on a real local Ray cluster:
a tiny production version in a registry, tiny synthetic shards, one short fine-tune per store.

- local registry and storage, LoRA (the default mode): the candidate is published as the next minor
  version with a side-by-side report; a margin it cannot meet keeps production; a rerun trains and
  publishes nothing and prints the same line; a rerun with a margin it meets promotes the same
  candidate, still without training; the rerun after that prints the same line again.
- registry, storage and data on moto S3, a full fine-tune with --ab: the A/B pointer, not
  production, goes to the candidate; a rerun changes nothing.
- planning (no training): the denoiser phases by default, bad input named (exit 2), a run left by
  a crash is resumed, version numbering.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiprod import adapter_dir, storage
from aiprod.config import load_config
from aiprod.finetune import CycleInputError, CycleOptions, next_version, plan_cycle, run_cycle
from aiprod.registry import Registry
from tests.conftest import load_job

BASE = "pib-videogen-standard-v1.0.0-general"
NEXT = "pib-videogen-standard-v1.1.0-general"
# One short denoiser phase and a small evaluation: what the cycle does, not what it learns.
TINY = ["curriculum.phases.1.steps=2", "checkpoint.every_steps=100", "train.workers=1", "eval.num_samples=2",
        "eval.seeds=[0]", "eval.languages=[en]", "eval.steps=2", "eval.heldout_clips=2", "eval.gates={psnr_min: 0.0}"]
UNREACHABLE = ["finetune.margin=-1.0"]  # beat production by 1 on every judge figure (0..1): no tiny model can
LENIENT = ["finetune.margin=1.0"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    cfg = load_config("tiny")
    out = str(tmp_path_factory.mktemp("new-shards"))
    build_synthetic_shards(out, 16, levels=(1, 2), size=(32, 32), frames=9, fps=8, seed=5, data=cfg.data,
                           heldout_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def production_weights(tmp_path_factory) -> Path:
    """A tiny model directory (untrained weights) to publish as production."""
    import torch

    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    cfg = load_config("tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("production") / "model"
    VideoPipeline(cfg, build_model(cfg.model), version=BASE).save_pretrained(path)
    return path


def registry_with_production(root: str, weights: Path) -> Registry:
    registry = Registry(root)
    registry.publish(weights, BASE)
    registry.promote(BASE, gates={}, force=True, reason="test production")
    return registry


def cycle(registry: str, data: str, runs: str, *overrides: str, mode: str | None = None,
          ab: float | None = None) -> dict:
    plan = plan_cycle(CycleOptions(registry=registry, data=data, storage=runs, mode=mode, end_phase=1, ab=ab,
                                   overrides=[*TINY, *overrides]))
    return run_cycle(plan)


def step_lines(run: str) -> int:
    return len(storage.read_text(storage.join(run, "metrics.jsonl")).splitlines())


def test_a_local_cycle_publishes_a_compared_candidate_keeps_production_when_worse_and_reruns_change_nothing(
        ray_cluster, shards, production_weights, tmp_path, capsys):
    root, runs = str(tmp_path / "registry"), str(tmp_path / "runs")
    registry = registry_with_production(root, production_weights)

    kept = cycle(root, shards, runs, *UNREACHABLE)  # finetune.mode: lora, the default
    assert kept["status"] == "kept" and kept["candidate"] == NEXT and kept["base"] == BASE
    assert kept["mode"] == "lora" and adapter_dir.read_meta(registry.resolve(NEXT))["base"]["ref"] == BASE
    assert registry.pointer("production") == BASE and kept["production"] == BASE
    assert kept["gates_passed"] and any("alignment_colour" in r and "margin -1" in r for r in kept["reasons"])
    report = registry.report(NEXT)
    side = report["compared_to"]
    assert side["version"] == BASE and report["compare"]["label"] == BASE
    for metric in ("alignment_colour", "alignment_direction", "psnr"):
        assert side["deltas"][metric] == pytest.approx(report["metrics"][metric] - side["metrics"][metric])
    assert report["compare"]["metrics"] == side["metrics"] and report["settings"]["seeds"] == [0]
    assert report["finetune"]["base"] == BASE and report["finetune"]["run"] == kept["run"]
    assert Path(kept["run"], "report", "report.html").is_file()
    assert json.loads(Path(kept["run"], "cycle.json").read_text()) == kept

    history, steps = registry.history(), step_lines(kept["run"])
    assert [e["action"] for e in history] == ["publish", "promote", "publish"]
    assert cycle(root, shards, runs, *UNREACHABLE) == kept  # the same decision, nothing trained or published
    assert registry.history() == history and step_lines(kept["run"]) == steps

    # the same data and production with a margin it meets: the same candidate is promoted, untrained again
    cli = load_job("finetune")
    args = ["--registry", root, "--data", shards, "--storage", runs, "--mode", "lora", "--end-phase", "1",
            *TINY, *LENIENT]
    capsys.readouterr()
    assert cli.main(args) == 0
    promoted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert promoted["status"] == "promoted" and promoted["candidate"] == NEXT
    assert registry.pointer("production") == NEXT and promoted["production"] == NEXT
    assert [e["action"] for e in registry.history()] == ["publish", "promote", "publish", "promote"]
    assert registry.versions() == [BASE, NEXT] and step_lines(kept["run"]) == steps

    # rerun once production is the candidate: the cycle is found, the same line comes out
    history = registry.history()
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == promoted
    assert registry.history() == history and registry.versions() == [BASE, NEXT]


def test_a_cycle_on_moto_s3_with_ab_points_the_ab_share_at_the_candidate_not_production(
        ray_cluster, shards, production_weights, s3_uri):
    root, runs, data = f"{s3_uri}/registry", f"{s3_uri}/runs", f"{s3_uri}/shards"
    storage.upload_dir(shards, data)
    registry = registry_with_production(root, production_weights)

    result = cycle(root, data, runs, *LENIENT, mode="full", ab=0.25)
    assert result["status"] == "ab" and result["candidate"] == NEXT and result["mode"] == "full"
    assert not adapter_dir.is_adapter_dir(storage.join(root, NEXT))
    assert registry.pointer("production") == BASE == result["production"]
    assert registry.ab()["version"] == NEXT and registry.ab()["fraction"] == 0.25
    assert result["ab"] == {"version": NEXT, "fraction": 0.25}
    report = registry.report(NEXT)
    assert report["compared_to"]["version"] == BASE and report["finetune"]["run"] == result["run"]
    assert result["run"].startswith(runs) and storage.exists(storage.join(result["run"], "report", "report.json"))
    assert storage.exists(storage.join(result["run"], "final", "MANIFEST.sha256"))

    history = registry.history()
    assert cycle(root, data, runs, *LENIENT, mode="full", ab=0.25) == result
    assert registry.history() == history  # no second publish, no second A/B event


def test_planning_takes_the_denoiser_phases_names_bad_input_and_resumes_a_crashed_run(
        shards, production_weights, tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "registry")
    cli = load_job("finetune")
    assert cli.main(["--registry", root, "--data", shards]) == 2
    assert "has no production version" in capsys.readouterr().err

    registry_with_production(root, production_weights)
    assert cli.main(["--registry", root, "--data", str(tmp_path / "nowhere")]) == 2
    assert "no index.json" in capsys.readouterr().err
    assert cli.main(["--registry", root, "--data", shards, "--preset", "learn"]) == 2
    err = capsys.readouterr().err
    assert f"the config's model is not production {BASE}'s (model." in err

    plan = plan_cycle(CycleOptions(registry=root, data=shards, storage=str(tmp_path / "runs"), mode="full"))
    cfg = plan.cfg
    assert (plan.start_phase, plan.end_phase) == (1, len(cfg.curriculum.phases) - 1)
    assert cfg.train.mode == "full" and cfg.train.init_from == plan.registry.store.entry_uri(BASE)
    with pytest.raises(CycleInputError, match="--ab must be"):
        plan_cycle(CycleOptions(registry=root, data=shards, ab=1.5))

    # a run a crash left behind (config written, not finished) is resumed under the same name
    storage.write_text_atomic(storage.join(plan.run_uri, "config.yaml"), cfg.to_yaml())
    seen = {}

    def fake_run(cfg, opts):
        seen.update(resume=opts.resume, run_name=opts.run_name, phases=(opts.start_phase, opts.end_phase))
        raise RuntimeError("stop here")

    monkeypatch.setattr("aiprod.training.runner.run_curriculum", fake_run)
    with pytest.raises(RuntimeError, match="stop here"):
        run_cycle(plan)
    assert seen == {"resume": True, "run_name": plan.key.run_name, "phases": (1, len(cfg.curriculum.phases) - 1)}


def test_the_next_version_is_one_minor_past_the_highest_of_its_kind():
    taken = [BASE, "pib-videogen-standard-v1.3.2-general", "pib-videogen-standard-v2.0.0-general",
             "pib-videogen-standard-v1.7.0-regional-in", "pib-videogen-emergency-v1.9.0-emergency"]
    cfg = load_config("tiny").registry
    assert next_version(BASE, taken, "minor", cfg) == "pib-videogen-standard-v1.4.0-general"
    assert next_version(BASE, taken, "patch", cfg) == "pib-videogen-standard-v1.0.1-general"
