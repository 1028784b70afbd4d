"""Training pieces without Ray: worker choice, curriculum state machine, LR schedule, VAE loss,
DeepSpeed config, and a real single-process DeepSpeed checkpoint round trip (ZeRO-1, 2 and 3)."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch

from aiprod import model_dir
from aiprod.config import PhaseConfig, load_config
from aiprod.training import checkpoint as ckpt
from aiprod.training.curriculum import Curriculum, planned_steps
from aiprod.training.engine import deepspeed_config, lr_schedule
from aiprod.training.worker_plan import choose_workers
from tests.conftest import ROOT


# ----------------------------------------------------------------------------- workers


def test_auto_workers_follow_the_cluster(tiny_config):
    cluster = load_config("cluster")
    many = choose_workers(cluster, "auto", [80.0] * 4)
    assert (many.num_workers, many.use_gpu, many.profile) == (4, True, "preset")

    small = choose_workers(cluster, "auto", [8.0])
    assert (small.num_workers, small.use_gpu, small.profile) == (1, True, "gtx1070")
    assert {"train.precision=fp32", "train.zero_stage=2", "train.offload_optimizer=true",
            "train.activation_checkpointing=true", "train.workers=1"} <= set(small.overrides)
    seed = {p.name: p.batch_size for p in load_config("gtx1070").curriculum.phases}
    names = [p.name for p in cluster.curriculum.phases]
    batch = {names[int(o.split(".")[2])]: int(o.split("=")[1]) for o in small.overrides if o.endswith(
        tuple(f"={n}" for n in range(1, 999))) and ".batch_size=" in o}
    assert batch["simple_objects"] == seed["simple_objects"] and batch["vae_256"] <= min(seed.values())
    assert "GTX 1070" in small.reason

    big_single = choose_workers(cluster, "auto", [24.0])
    assert (big_single.num_workers, big_single.profile) == (1, "preset")

    cpu = choose_workers(cluster, "auto", [])
    assert (cpu.num_workers, cpu.use_gpu, cpu.profile) == (cluster.train.cpu_workers, False, "cpu")

    explicit = choose_workers(tiny_config, "3", [])
    assert (explicit.num_workers, explicit.use_gpu) == (3, False)
    with pytest.raises(ValueError, match="needs 3 GPUs"):
        choose_workers(cluster, 3, [16.0])


# -------------------------------------------------------------------------- curriculum


def _curriculum(**phase) -> Curriculum:
    cfg = load_config("tiny", [f"curriculum.phases.0.{k}={v}" for k, v in phase.items()]
                      + ["curriculum.eval_every_steps=1"])
    return Curriculum(cfg.curriculum, 0, 1)


def test_plateau_reduces_then_stops():
    cur = _curriculum(exit="plateau", steps=100, patience=2, min_delta=0.01, reduce_on_plateau=True,
                      reduce_factor=0.5)
    decisions = []
    for loss in [1.0, 0.9, 0.895, 0.9, 0.899, 0.9, 0.9]:
        cur.record_step(loss, samples=4)
        decisions.append(cur.evaluate())
    assert decisions[:2] == ["improved", "improved"]
    assert decisions[2:] == ["no_improvement", "reduce_lr", "no_improvement", "stop", "stop"][:5]
    assert cur.progress.lr_scale == 0.5 and cur.progress.best_loss == 0.9


def test_a_minutes_cap_counts_the_time_trained_before_a_resume():
    cur = _curriculum(exit="steps", steps=1000, minutes=1.0)
    cur.restart_clock()
    cur.progress.running_s = 40.0  # 40 s into the phase when a checkpoint is written
    assert cur.exit_reason() is None and abs(cur.time_fraction() - 40 / 60) < 1e-9
    resumed = Curriculum.from_dict(cur.cfg, json.loads(json.dumps(cur.to_dict())))
    resumed.restart_clock()  # a new process: the 40 s are banked, its own clock starts at 0
    assert resumed.exit_reason() is None
    resumed.progress.running_s = 25.0
    assert resumed.exit_reason() == "minutes" and resumed.time_fraction() == 1.0
    assert _curriculum(exit="steps", steps=3).time_fraction() == 0.0  # no cap, no time schedule


def test_exit_caps_and_phase_progress_roundtrip():
    cur = _curriculum(exit="steps", steps=3)
    for _ in range(3):
        assert cur.exit_reason() is None
        cur.record_step(1.0, samples=2)
    assert cur.exit_reason() == "steps"
    cur.finish_phase("steps", 1.5)
    assert cur.current == 1 and cur.global_step == 3
    back = Curriculum.from_dict(cur.cfg, json.loads(json.dumps(cur.to_dict())))
    assert back.to_dict() == cur.to_dict()
    assert cur.record_nonfinite(rollback_after=2) is False
    assert cur.record_nonfinite(rollback_after=2) is True
    back.restart_at(0)
    assert back.current == 0 and back.global_step == 0 and back.progress.step == 0

    epochs = PhaseConfig(name="e", component="denoiser", exit="epochs", epochs=3)
    assert planned_steps(epochs, steps_per_epoch=7) == 21
    capped = PhaseConfig(name="c", component="denoiser", exit="plateau", epochs=3, steps=10)
    assert planned_steps(capped, steps_per_epoch=7) == 10
    with pytest.raises(ValueError, match="data size"):
        planned_steps(epochs, steps_per_epoch=None)


def test_lr_schedule_warms_up_then_decays_to_floor():
    phase = PhaseConfig(name="p", component="vae", steps=100, warmup_fraction=0.1, min_lr_ratio=0.1)
    sched = lr_schedule(phase, 100)
    assert sched.warmup_steps == 10
    warm = [sched(s) for s in range(10)]
    assert warm == sorted(warm) and warm[-1] < 1.0
    assert sched(10) == pytest.approx(1.0)
    assert sched(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert sched(100) == pytest.approx(0.1) and sched(500) == pytest.approx(0.1)
    sched.scale = 0.5
    assert sched(10) == pytest.approx(0.5)
    explicit = lr_schedule(PhaseConfig(name="p", component="vae", steps=100, warmup_steps=3), 100)
    assert explicit.warmup_steps == 3


def test_deepspeed_config_from_train_and_phase(tiny_config):
    phase = tiny_config.curriculum.phases[1]
    cfg = deepspeed_config(tiny_config.train, phase, world_size=2)
    assert cfg["train_batch_size"] == phase.batch_size * phase.grad_accum * 2
    assert cfg["zero_optimization"]["stage"] == tiny_config.train.zero_stage
    # The bucket copy only pays off against GPU allocator fragmentation; on CPU it is pure overhead.
    assert cfg["zero_optimization"]["contiguous_gradients"] is torch.cuda.is_available()
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["lr"] == phase.lr
    bf16 = load_config("tiny", ["train.precision=bf16", "train.zero_stage=3", "train.offload_params=true",
                                "train.offload_optimizer=true"])
    cfg = deepspeed_config(bf16.train, phase, 1)
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["optimizer"]["params"]["torch_adam"] is False
    with pytest.raises(ValueError, match="offload_params needs train.zero_stage=3"):
        deepspeed_config(load_config("tiny", ["train.offload_params=true"]).train, phase, 1)


# ------------------------------------------------------------------------------ losses


def test_vae_loss_parts_and_fallback_said_once(tiny_config, caplog, tmp_path):
    from aiprod.models import build_model
    from aiprod.training import vae_loss as losses

    losses._fallback_announced = False
    torch.manual_seed(0)
    vae = build_model(tiny_config.model).vae
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="aiprod.training.vae_loss"):
        loss_fn = losses.VAELoss(tiny_config.model.vae)
        losses.VAELoss(tiny_config.model.vae)
    assert sum("fallback" in r.message for r in caplog.records) == 1
    total, parts = loss_fn(vae, video, torch.Generator().manual_seed(0))
    assert set(parts) == {"l1", "mse", "kl", "temporal", "perceptual"}
    expected = (parts["mse"] + tiny_config.model.vae.kl_weight * parts["kl"]  # recon_loss: mse (the default)
                + tiny_config.model.vae.temporal_weight * parts["temporal"]
                + tiny_config.model.vae.perceptual_weight * parts["perceptual"])
    assert math.isclose(total.item(), expected, rel_tol=1e-4)
    assert all(math.isfinite(v) for v in parts.values()) and parts["perceptual"] > 0
    total.backward()
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)
    # identical inputs: reconstruction-type terms vanish
    assert losses.gradient_l1(video[:, :, 0], video[:, :, 0]).item() == 0.0

    # A VGG16 weights file (torchvision layout) switches the perceptual term to VGG features.
    vgg = losses.VGG16Features()
    weights = tmp_path / "vgg16.pth"
    torch.save({k: v for k, v in vgg.state_dict().items()}, weights)
    cfg = tiny_config.model.vae.model_copy(update={"vgg16_weights": str(weights)})
    with_vgg = losses.VAELoss(cfg)
    assert with_vgg.vgg is not None
    _, parts = with_vgg(vae, video, torch.Generator().manual_seed(0))
    assert parts["perceptual"] > 0
    torch.save({"classifier.0.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="torchvision vgg16 keys"):
        losses.VAELoss(cfg)


# ----------------------------------------------------------------- DeepSpeed round trip


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_checkpoint_round_trips_bit_exact(stage, single_process_group, tmp_path):
    from safetensors.torch import load_file

    from aiprod.manifest import verify_manifest
    from aiprod.models import build_model
    from aiprod.training.engine import build_engine, destroy_engine, gathered_state_dict
    from aiprod.training.phase_module import PhaseModule, set_trainable

    cfg = load_config("tiny", [f"train.zero_stage={stage}"])
    phase = cfg.curriculum.phases[1]

    def engine_for(seed: int, weights: dict | None = None):
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        if weights is not None:  # frozen parts (the VAE) live outside DeepSpeed: from model.safetensors
            model.load_state_dict(weights)
        set_trainable(model, phase.component)
        return model, build_engine(PhaseModule(model, phase, cfg), cfg.train, phase, 1, total_steps=10)

    model, pe = engine_for(0)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for _ in range(2):
        loss, _ = pe.engine(video, ["a red circle", "two blue squares"], generator)
        pe.engine.backward(loss)
        pe.engine.step()
    full = ckpt.model_state(model, gathered_state_dict(pe))
    directory = tmp_path / "ck"
    directory.mkdir()
    ckpt.write_checkpoint(directory, pe.engine, full, {"global_step": 2}, cfg.to_yaml(), generator, rank=0)
    assert verify_manifest(directory) == []

    model2, pe2 = engine_for(123, load_file(directory / model_dir.WEIGHTS))  # as a resume does
    ckpt.load_engine_state(pe2.engine, directory)
    generator2 = torch.Generator()
    assert ckpt.load_rng(directory, 0, generator2)
    a, b = gathered_state_dict(pe), gathered_state_dict(pe2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(generator.get_state(), generator2.get_state())
    assert pe2.engine.lr_scheduler.state_dict() == pe.engine.lr_scheduler.state_dict()
    saved = load_file(directory / model_dir.WEIGHTS)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], full[k]) for k in saved)
    # optimizer moments too: one more identical step keeps the two engines identical
    for engine, gen in ((pe.engine, generator), (pe2.engine, generator2)):
        loss, _ = engine(video, ["a red circle", "two blue squares"], gen)
        engine.backward(loss)
        engine.step()
    a, b = gathered_state_dict(pe), gathered_state_dict(pe2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    destroy_engine(pe)
    destroy_engine(pe2)


def test_find_latest_good_skips_corrupt_and_uncommitted(tmp_path, caplog):
    run = tmp_path / "run"
    names = [ckpt.checkpoint_name(step, 0, "a1") for step in (5, 10, 15)]
    for step, name in zip((5, 10, 15), names):
        d = run / name
        d.mkdir(parents=True)
        (d / model_dir.STATE).write_text(json.dumps({"global_step": step}))
        (d / model_dir.WEIGHTS).write_bytes(os.urandom(64))
        from aiprod.manifest import write_manifest

        write_manifest(d)
    # Ray committed 5 and 10; 15 is an orphan of a worker that died mid-report
    (run / ckpt.RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"dir": n} for n in names[:2]]}))
    blob = bytearray((run / names[1] / model_dir.WEIGHTS).read_bytes())
    blob[3] ^= 0xFF
    (run / names[1] / model_dir.WEIGHTS).write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="aiprod.training"):
        found = ckpt.find_latest_good(str(run))
    assert found is not None and found.state == {"global_step": 5}
    assert [name for name, _ in found.skipped] == [names[1]] and "sha256 mismatch" in found.skipped[0][1]
    assert any("skipping corrupt" in r.message and names[1] in r.message for r in caplog.records)
    assert ckpt.cleanup_orphans(str(run)) == [names[2]]
    assert not (run / names[2]).exists() and (run / names[0]).exists()
    assert ckpt.parse_name(names[0]) == (5, 0, "a1") and ckpt.parse_name("checkpoint_2024") is None


# ----------------------------------------------------------------------------- worker process

_STEP_PAGE_FAULTS = """
import resource, threading
import torch
from torch import nn
from aiprod.training.process import keep_freed_memory

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv3d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv3d(32, 32, 3, padding=1), nn.SiLU(),
                      nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 8))
optimizer = torch.optim.AdamW(model.parameters())
video = torch.randn(2, 3, 8, 32, 32)

def faults_per_step():
    for _ in range(2):
        model(video).square().mean().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(video).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

def measure():  # in a thread, as Ray Train runs the training function
    default = faults_per_step()
    assert keep_freed_memory(), "keep_freed_memory() changed nothing on glibc"
    print(default, faults_per_step())

thread = threading.Thread(target=measure)
thread.start()
thread.join()
"""


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc's mallopt")
def test_training_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STEP_PAGE_FAULTS], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    default, kept = map(float, done.stdout.split()[-2:])
    assert default > 1000, f"glibc's defaults no longer fault a step's memory in ({default:.0f}/step): recheck"
    assert kept < default / 5, f"page faults per step: {kept:.0f} with keep_freed_memory(), {default:.0f} without"
