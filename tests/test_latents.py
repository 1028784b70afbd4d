"""The latent cache on a real local Ray cluster (and real S3 from moto): encode once with Ray Data,
train the denoiser from it, resume an interrupted encode, refuse another VAE's cache, skip and
count a corrupt latent shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiprod import storage
from aiprod.config import ConfigError, load_config
from aiprod.data import latent_cache as lc
from aiprod.data.bad_samples import BadSamplesError, bad_sample_stats
from aiprod.data.latent_encode import encode_cache, load_vae
from aiprod.training.runner import RunOptions, run_curriculum

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the `learn` preset (a per-frame VAE at 32x32) cut to a few steps per phase
OVERRIDES = ["curriculum.phases.0.minutes=null", "curriculum.phases.0.steps=3",
             "curriculum.phases.1.minutes=null", "curriculum.phases.1.steps=4",
             "checkpoint.every_steps=100000", "train.progress_every_s=30", "data.shard_target_mb=0.05"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("learn", OVERRIDES)


@pytest.fixture(scope="module")
def shards(cfg, tmp_path_factory) -> str:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    out = str(tmp_path_factory.mktemp("shards"))
    build_synthetic_shards(out, 96, levels=(1, 1, 2, 3), size=(32, 32), frames=9, fps=8.0, seed=0, data=cfg.data,
                           workers=1)
    return out


@pytest.fixture(scope="module")
def trained_run(ray_cluster, cfg, shards, tmp_path_factory) -> tuple[str, dict]:
    """A run with train.cache_latents: VAE phase, then RUN/latents, then the denoiser from it."""
    runs = str(tmp_path_factory.mktemp("runs"))
    run_cfg = load_config("learn", [*OVERRIDES, "train.cache_latents=true"])
    summary = run_curriculum(run_cfg, RunOptions(data=shards, storage=runs, run_name="cached"))
    return storage.join(runs, "cached"), summary


def level_one_clips(shards: str) -> int:
    index = json.loads(storage.read_text(storage.join(shards, "index.json")))
    return sum(s["levels"].get("1", 0) for s in index["shards"])  # the train split


def test_cache_latents_trains_the_vae_encodes_once_and_trains_the_denoiser_from_the_cache(trained_run, shards):
    run, summary = trained_run
    assert [p["steps"] for p in summary["phases"]] == [3, 4]
    index = lc.read_index(storage.join(run, "latents"))
    assert index is not None and index["counts"]["bad"] == 0
    assert index["counts"]["clips"] == level_one_clips(shards)  # the denoiser phase's clips, each once
    assert list(index["buckets"]) == ["9x32x32-8fps"]
    assert index["buckets"]["9x32x32-8fps"]["latent_shape"] == [4, 9, 8, 8]
    metrics = storage.read_text(storage.join(run, "metrics.jsonl"))
    assert "latent_stats" not in metrics  # the denoiser took the cache's statistics, measured nothing
    from aiprod.diffusion.pipeline import VideoPipeline

    pipe = VideoPipeline.from_checkpoint(storage.join(run, "final"))  # refuses weights without statistics
    assert lc.vae_fingerprint(pipe.model.state_dict()) == index["vae_sha256"]
    assert torch.allclose(1.0 / pipe.model.vae.latent_scale, torch.tensor(index["latent"]["std"]))


def test_cached_latents_are_the_vaes_normalised_means_of_the_decoded_clips(trained_run, cfg, shards):
    from aiprod.data.dataset import build_phase_dataset, to_model_batch
    from aiprod.diffusion.latents import encode_latents

    run, _ = trained_run
    cache = storage.join(run, "latents")
    final = storage.join(run, "final")
    _, vae, _ = load_vae(final)
    phase = cfg.curriculum.phases[1]
    cached = {}
    for batch in build_latent_rows(cache, phase, cfg):
        cached.update(zip(batch["key"], batch["latent"]))
    decoded = next(iter(build_phase_dataset(shards, phase, cfg.data).iter_batches(batch_size=4, batch_format="numpy")))
    direct = encode_latents(vae, to_model_batch(decoded)["video"])
    for key, z in zip(decoded["key"], direct):
        np.testing.assert_allclose(cached[key], z.numpy(), atol=2e-2)  # float16 storage


def build_latent_rows(cache: str, phase, cfg) -> list[dict]:
    return list(lc.build_latent_dataset(cache, phase, cfg.data).iter_batches(batch_size=None, batch_format="numpy"))


def test_a_run_with_latents_trains_from_a_given_cache_of_its_init_from_vae(trained_run, cfg, shards, tmp_path):
    run, _ = trained_run
    summary = run_curriculum(load_config("learn", [*OVERRIDES, f"train.init_from={storage.join(run, 'final')}"]),
                             RunOptions(data=shards, storage=str(tmp_path), run_name="given", start_phase=1,
                                        latents=storage.join(run, "latents")))  # wins over the preset's cache_latents
    assert [p["steps"] for p in summary["phases"]] == [4]
    assert not storage.exists(str(tmp_path / "given" / "latents"))  # nothing encoded again


def test_a_cache_made_by_another_vae_is_refused_naming_both_hashes(trained_run, shards, tmp_path):
    from aiprod.diffusion.pipeline import VideoPipeline

    run, _ = trained_run
    cache = storage.join(run, "latents")
    pipe = VideoPipeline.from_checkpoint(storage.join(run, "final"))
    with torch.no_grad():
        next(pipe.model.vae.parameters()).add_(0.01)
    other = pipe.save_pretrained(tmp_path / "other")
    other_sha = lc.vae_fingerprint(pipe.model.state_dict())
    cache_sha = lc.read_index(cache)["vae_sha256"]
    with pytest.raises(ConfigError) as refused:
        run_curriculum(load_config("learn", [*OVERRIDES, f"train.init_from={other}"]),
                       RunOptions(data=shards, storage=str(tmp_path), run_name="other", start_phase=1, latents=cache))
    assert cache_sha in str(refused.value) and other_sha in str(refused.value)
    with pytest.raises(lc.LatentCacheMismatch, match=cache_sha):
        encode_cache(shards, str(other), cache, [load_config("learn").curriculum.phases[1]],
                     load_config("learn").data, progress=False)


def test_an_interrupted_encode_resumes_keeping_the_shards_it_finished(ray_cluster, trained_run, cfg, shards, tmp_path):
    run, _ = trained_run
    final = storage.join(run, "final")
    out = str(tmp_path / "cache")
    phases = [cfg.curriculum.phases[1]]
    full = encode_cache(shards, final, out, phases, cfg.data, shards_per_pass=2, progress=False)
    # an encode killed after its first passes: no index.json yet, the later shards not written
    (tmp_path / "cache" / lc.INDEX).unlink()
    names = sorted(r["name"] for r in full["shards"])
    kept, lost = names[:2], names[2:]
    for name in lost:
        (tmp_path / "cache" / name).unlink()
        (tmp_path / "cache" / lc.PARTS / name.replace(".parquet", ".json")).unlink()
    kept_mtimes = {n: (tmp_path / "cache" / n).stat().st_mtime_ns for n in kept}
    resumed = encode_cache(shards, final, out, phases, cfg.data, shards_per_pass=2, progress=False)
    assert {n: (tmp_path / "cache" / n).stat().st_mtime_ns for n in kept} == kept_mtimes  # not encoded again
    assert all((tmp_path / "cache" / n).exists() for n in lost)
    assert resumed["counts"]["clips"] == full["counts"]["clips"]
    assert {r["name"]: r["sha256"] for r in resumed["shards"]} == {r["name"]: r["sha256"] for r in full["shards"]}


def test_a_corrupt_latent_shard_is_skipped_and_counted(ray_cluster, trained_run, cfg, tmp_path):
    run, _ = trained_run
    cache = tmp_path / "cache"
    storage.download_dir(storage.join(run, "latents"), cache)
    index = lc.read_index(str(cache))
    victim = max(index["shards"], key=lambda r: r["clips"])
    raw = bytearray((cache / victim["name"]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (cache / victim["name"]).write_bytes(bytes(raw))
    phase = cfg.curriculum.phases[1]
    tolerant = cfg.data.model_copy(update={"max_bad_fraction": 1.0})
    ds = lc.build_latent_dataset(str(cache), phase, tolerant)
    rows = sum(len(b["key"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert rows == index["counts"]["clips"] - victim["clips"]
    stats = bad_sample_stats(ds)
    assert stats["bad"] == victim["clips"] and stats["bad_keys"][0] == victim["name"]
    strict = cfg.data.model_copy(update={"max_bad_fraction": 0.0})
    with pytest.raises(Exception, match=victim["name"]) as failed:
        for _ in lc.build_latent_dataset(str(cache), phase, strict).iter_batches(batch_size=None):
            pass
    assert "BadSamplesError" in repr(failed.value) or isinstance(failed.value, BadSamplesError)


def test_a_cache_on_s3_is_encoded_and_read_back(ray_cluster, trained_run, cfg, shards, s3_uri):
    run, _ = trained_run
    phase = cfg.curriculum.phases[1]
    index = encode_cache(shards, storage.join(run, "final"), s3_uri, [phase], cfg.data, progress=False)
    assert storage.exists(storage.join(s3_uri, lc.INDEX))
    rows = sum(len(b["key"]) for b in build_latent_rows(s3_uri, phase, cfg))
    assert rows == index["counts"]["clips"] == level_one_clips(shards)


def test_encode_latents_cli_names_a_missing_vae_and_exits_2(shards, tmp_path, capsys):
    from tests.conftest import load_job

    cli = load_job("encode_latents")
    assert cli.main(["--data", shards, "--vae", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_windows_encode_several_offsets_of_each_clip(ray_cluster, cfg, tmp_path):
    """`--windows 2`: two seeded offsets of every clip longer than the phase's, each its own latent."""
    from aiprod.data.latent_cache import build_latent_dataset
    from aiprod.data.synthetic_shards import build_synthetic_shards
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    data = str(tmp_path / "long")  # 17 frames at 8 fps: the 9-frame phase has 8 frames of room
    build_synthetic_shards(data, 12, levels=(1,), size=(32, 32), frames=17, fps=8.0, seed=0, data=cfg.data,
                           heldout_fraction=0.0, workers=1)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    channels = cfg.model.vae.latent_channels
    model.vae.set_latent_stats(torch.zeros(channels), torch.ones(channels))
    weights = str(VideoPipeline(cfg, model).save_pretrained(tmp_path / "vae"))
    phase = cfg.curriculum.phases[1]
    index = encode_cache(data, weights, str(tmp_path / "cache"), [phase], cfg.data, windows=2, progress=False)
    assert index["windows"] == 2 and index["counts"]["clips"] == 2 * 12
    rows = list(build_latent_dataset(str(tmp_path / "cache"), phase, cfg.data).iter_rows())
    by_key: dict[str, list[np.ndarray]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(np.asarray(row["latent"]))
    assert len(by_key) == 12 and all(len(v) == 2 for v in by_key.values())
    # two seeded offsets among the 9 a clip has: most clips get two different ones, so two latents
    assert sum(not np.allclose(a, b) for a, b in by_key.values()) >= 6
