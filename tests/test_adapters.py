"""Fine-tuning modes: LoRA/DoRA adapters (PEFT) on the tiny model, adapter directories that name
their base, the EMA of trained weights under real DeepSpeed engines, and a LoRA + EMA run on the
real local Ray cluster that is SIGKILLed mid-phase and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aiprod import adapter_dir, model_dir
from aiprod.config import load_config
from aiprod.models import build_model
from aiprod.models.adapters import (AdapterSpec, adapter_state, add_adapters, is_adapter_key, merged_state,
                                    parameter_counts)
from tests.conftest import load_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")



SPEC = AdapterSpec(rank=4)


def adapted_model(mode: str = "lora", seed: int = 0):
    """A tiny model with adapters whose lora_B is non-zero (a fresh adapter is an identity)."""
    cfg = load_config("tiny")
    torch.manual_seed(seed)
    model = add_adapters(build_model(cfg.model), AdapterSpec(mode=mode, rank=4), seed=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return cfg, model


def denoise(model, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    text = torch.randn(1, 5, 64, generator=g)
    model.eval()
    with torch.no_grad():
        return model.denoiser(x, torch.tensor([500]), text, torch.ones(1, 5, dtype=torch.bool))


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_only_adapter_parameters_train_and_merging_keeps_the_output(mode):
    cfg, model = adapted_model(mode)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_key(n) for n in trainable)
    counts = parameter_counts(model)
    assert counts["trainable"] < 0.05 * counts["total"]
    merged = build_model(cfg.model)
    merged.load_state_dict(merged_state(model))
    assert not any(is_adapter_key(k) for k in merged.state_dict())
    assert torch.allclose(denoise(model), denoise(merged), atol=1e-5)
    torch.manual_seed(0)
    base = build_model(cfg.model)  # the same seed: the weights under the adapter
    assert not torch.allclose(denoise(model), denoise(base), atol=1e-3)  # the adapter does something


def test_an_adapter_directory_is_small_and_loads_as_its_base_plus_the_adapter(tmp_path):
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.model_dir import CheckpointError

    cfg, model = adapted_model()
    torch.manual_seed(0)
    model_dir.save(tmp_path / "base", build_model(cfg.model).state_dict(), cfg)
    base = adapter_dir.base_reference(str(tmp_path / "base"))
    adapter_dir.save(tmp_path / "adapter", adapter_state(model), SPEC.to_dict(), base, cfg, "unversioned")
    small = Path(model_dir.weights_file(tmp_path / "adapter")).stat().st_size
    assert small < 0.05 * (tmp_path / "base" / model_dir.WEIGHTS).stat().st_size
    pipe = VideoPipeline.from_checkpoint(tmp_path / "adapter")
    assert torch.allclose(denoise(pipe.model), denoise(model), atol=1e-5)
    sample_cli = load_job("sample")
    assert sample_cli.main(["--checkpoint", str(tmp_path / "adapter"), "--merge", str(tmp_path / "merged")]) == 0
    merged = model_dir.read_weights(tmp_path / "merged")  # plain full weights, no adapter directory
    assert not adapter_dir.is_adapter_dir(tmp_path / "merged")
    assert all(torch.equal(merged[k], v.float()) for k, v in pipe.model.state_dict().items())
    out = tmp_path / "tuned.mp4"
    assert sample_cli.main(["--checkpoint", str(tmp_path / "adapter"), "--prompt", "a red circle", "--out", str(out),
                            "--seconds", "0.5", "--height", "32", "--width", "32", "--steps", "2"]) == 0
    from aiprod.provenance import verify_file

    credentials = verify_file(out)  # a base outside a registry is named by its weights' hash
    assert (credentials["model_version"], credentials["adapter"]) == (f"sha256:{base['sha256']}", "unversioned")

    model_dir.save(tmp_path / "base", build_model(cfg.model).state_dict(), cfg)  # another base, same path
    with pytest.raises(CheckpointError, match="adapter base .*base.*sha256"):
        VideoPipeline.from_checkpoint(tmp_path / "adapter")


def test_an_adapter_in_a_registry_names_its_base_version_and_is_published_small(tmp_path):
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.registry import Registry

    cfg, model = adapted_model()
    torch.manual_seed(0)
    model_dir.save(tmp_path / "base", build_model(cfg.model).state_dict(), cfg)
    registry = Registry(str(tmp_path / "reg"))
    v1, hi = "pib-videogen-standard-v1.0.0-general", "pib-videogen-standard-v1.1.0-regional-hi"
    registry.publish(tmp_path / "base", v1)
    registry.promote(v1, gates={}, force=True, reason="test")
    pinned = adapter_dir.pin_reference("production", registry.root)
    base = adapter_dir.base_reference(pinned)
    assert base["ref"] == v1 and base["registry"] == str(registry.root).rstrip("/")
    adapter_dir.save(tmp_path / "adapter", adapter_state(model), SPEC.to_dict(), base, cfg, "unversioned")
    registry.publish(tmp_path / "adapter", hi)
    assert registry.verify(hi) == []
    pipe = VideoPipeline.from_checkpoint(registry.resolve(hi))
    assert pipe.version == hi
    assert torch.allclose(denoise(pipe.model), denoise(model), atol=1e-5)


# --------------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("stage", [2, 3])
def test_an_ema_resumed_from_a_checkpoint_equals_an_uninterrupted_one(stage, single_process_group, tmp_path):
    """Real DeepSpeed engines (one rank): 3 steps, checkpoint, 2 more steps; a second engine restored
    from the checkpoint takes the same 2 steps and ends with the same weights and EMA, bit for bit."""
    from safetensors.torch import load_file

    from aiprod.training import checkpoint as ckpt
    from aiprod.training.ema import ShardedEMA
    from aiprod.training.engine import build_engine, destroy_engine, gathered_state_dict
    from aiprod.training.phase_module import PhaseModule, set_trainable

    cfg = load_config("tiny", [f"train.zero_stage={stage}"])
    phase = cfg.curriculum.phases[1]
    base = build_model(cfg.model).state_dict()

    def engine_for(weights: dict):
        model = build_model(cfg.model)
        if any(is_adapter_key(k) for k in weights):
            model = add_adapters(model, SPEC)
            model.load_state_dict(weights)
        else:
            model.load_state_dict(weights)
            model = add_adapters(model, SPEC, seed=1)
        set_trainable(model, phase.component, adapters_only=True)
        pe = build_engine(PhaseModule(model, phase, cfg), cfg.train, phase, 1, total_steps=10)
        return model, pe, ShardedEMA(pe.engine, decay=0.8)

    video = torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def steps(pe, ema, generator, n):
        for _ in range(n):
            loss, _ = pe.engine(video, ["a red circle", "two blue squares"], generator)
            pe.engine.backward(loss)
            pe.engine.step()
            ema.update()

    model, pe, ema = engine_for(base)
    generator = torch.Generator().manual_seed(0)
    steps(pe, ema, generator, 3)
    full = ckpt.model_state(model, gathered_state_dict(pe))
    (tmp_path / "ck").mkdir()
    ckpt.write_checkpoint(tmp_path / "ck", pe.engine, full, {"global_step": 3}, cfg.to_yaml(), generator, rank=0,
                          ema=ema.state_dict())
    steps(pe, ema, generator, 2)

    model2, pe2, ema2 = engine_for(load_file(tmp_path / "ck" / model_dir.WEIGHTS))
    ckpt.load_engine_state(pe2.engine, tmp_path / "ck")
    ema2.load_state_dict(ckpt.load_ema_shards(tmp_path / "ck", 0))
    generator2 = torch.Generator()
    ckpt.load_rng(tmp_path / "ck", 0, generator2)
    steps(pe2, ema2, generator2, 2)

    a, b = ema.full_state(), ema2.full_state()
    assert a.keys() == b.keys() and all(is_adapter_key(k) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw = gathered_state_dict(pe)
    assert any(not torch.equal(a[k], raw[k]) for k in a)  # the EMA is not the weights
    destroy_engine(pe)
    destroy_engine(pe2)


# ------------------------------------------------------------------ a run on Ray Train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    cfg = load_config("tiny")
    out = str(tmp_path_factory.mktemp("shards"))
    phase = cfg.curriculum.phases[1]
    build_synthetic_shards(out, 48, size=(phase.height, phase.width), frames=phase.frames, fps=phase.fps, seed=0,
                           data=cfg.data)
    return out


def test_a_lora_run_with_ema_killed_mid_phase_resumes_and_leaves_an_adapter(ray_cluster, shards, tmp_path,
                                                                             monkeypatch):
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.training import checkpoint as ckpt
    from aiprod.training.runner import RunOptions, run_curriculum

    cfg = load_config("tiny")
    torch.manual_seed(0)
    model_dir.save(tmp_path / "base", build_model(cfg.model).state_dict(), cfg)
    cfg = load_config("tiny", ["train.mode=lora", f"train.init_from={tmp_path / 'base'}", "train.ema_decay=0.9",
                               "train.adapter.rank=4", "curriculum.phases.1.steps=12", "checkpoint.every_steps=4"])
    monkeypatch.setenv("AIPROD_FAULT_KILL_AT_STEP", "10")  # Ray Train has committed step 4's checkpoint by then
    summary = run_curriculum(cfg, RunOptions(data=shards, storage=str(tmp_path / "runs"), run_name="lora",
                                             start_phase=1, end_phase=1))
    run = tmp_path / "runs" / "lora"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / ".fault-kill-done").exists()  # a worker really was SIGKILLed
    resumed = [r for r in metrics if r.get("event") == "resumed"]
    assert resumed and ckpt.parse_name(resumed[0]["from"])[0] in (4, 8)  # mid-phase, adapter + EMA shards
    assert summary["status"] == "finished" and summary["global_step"] == 12
    assert summary["mode"] == "lora" and summary["ema_decay"] == 0.9 and summary["final_weights"] == "ema"
    final = run / "final"
    assert adapter_dir.is_adapter_dir(final) and (final / "raw.safetensors").exists()
    assert json.loads((final / adapter_dir.ADAPTER_META).read_text())["base"]["ref"] == str(tmp_path / "base")
    merged = VideoPipeline.from_checkpoint(final).model.state_dict()
    base = model_dir.read_weights(tmp_path / "base")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.startswith("denoiser.transformer_blocks.") for k in changed)

    from aiprod.eval.report import evaluate

    report = evaluate(str(final), tmp_path / "report", overrides=["eval.num_samples=1", "eval.seeds=[0]"])
    assert report["compare"]["model"]["weights"] == "raw.safetensors"  # the EMA judged beside the raw weights
    assert report["compare"]["label"].endswith("(raw.safetensors)") and "alignment_colour" in report["compare"]["metrics"]
