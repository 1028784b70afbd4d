"""The Ray Data pipeline on a real local Ray: batch shapes, phase filters, bad samples, S3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from aiprod.config import DataConfig, PhaseConfig
from aiprod.data import shards
from aiprod.data.bad_samples import BadSamplesError, bad_sample_stats, data_error_message
from aiprod.data.dataset import ModelBatchCollate, build_phase_dataset, eligible_samples, to_model_batch
from aiprod.data.synthetic import make_clip
from aiprod.data.synthetic_shards import build_synthetic_shards
from aiprod.data.video_encode import encode_mp4

T, H, W, FPS = 9, 32, 32, 8.0


def phase(levels, **kw) -> PhaseConfig:
    return PhaseConfig(name="p", component="denoiser", levels=levels, frames=T, height=H, width=W, fps=FPS,
                       steps=1, **kw)


def data_config(**kw) -> DataConfig:
    return DataConfig(decode_workers=2, read_workers=2, decode_batch_size=2, shuffle_buffer=4, **kw)


def rows(ds) -> list[dict]:
    out = []
    for batch in ds.iter_batches(batch_size=3, batch_format="numpy"):
        model = to_model_batch(batch)
        assert model["video"].dtype == torch.float32 and tuple(model["video"].shape[1:]) == (3, T, H, W)
        assert model["video"].min() >= -1.0 and model["video"].max() <= 1.0
        out += [{"key": k, "level": int(lv), "caption": c} for k, lv, c in
                zip(model["key"], model["level"], model["caption"])]
    return out


def write_custom_shard(out: Path, samples: list[tuple[str, dict, bytes]]) -> None:
    """One shard + index.json written by hand, so that it can hold broken samples."""
    out.mkdir(parents=True, exist_ok=True)
    shard = out / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, meta, mp4 in samples:
            for name, blob in ((f"{key}.json", shards.sample_json(meta)), (f"{key}.mp4", mp4)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    levels: dict[str, int] = {}
    for _, meta, _ in samples:
        tag = str(meta["levels"][0]) if meta["levels"] else "untagged"
        levels[tag] = levels.get(tag, 0) + 1
    data = shard.read_bytes()
    record = {"name": shard.name, "samples": len(samples), "bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "levels": levels}
    index = {"format": shards.FORMAT, "complete": True, "shards": [record], "heldout": []}
    (out / "index.json").write_text(json.dumps(index))


def sample(key: str, level: int | None, frames: int = 12, mp4: bytes | None = None) -> tuple[str, dict, bytes]:
    if mp4 is None:
        mp4 = encode_mp4(make_clip(level or 1, hash(key) % 1000, frames, 40, 48, FPS)[0], FPS)
    meta = {"key": key, "caption": f"caption of {key}", "language": "en", "level": level,
            "levels": [level] if level else [], "fps": FPS, "frames": frames, "width": 48, "height": 40}
    return key, meta, mp4


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("pipeline") / "shards"
    build_synthetic_shards(str(out), 20, levels=[1, 2, 3, 4, 5], size=(H, W), frames=T, fps=FPS,
                           heldout_fraction=0.0, workers=1, data=DataConfig(shard_target_mb=0.05))
    return str(out)


def test_batches_have_the_phase_shape_and_only_its_levels(ray_cluster, local_shards):
    index = json.loads((Path(local_shards) / "index.json").read_text())
    assert len(index["shards"]) > 1  # several shards: file-level shuffle and parallel reads matter
    ds = build_phase_dataset(local_shards, phase([1, 2]), data_config())
    got = rows(ds)
    assert sorted(r["level"] for r in got) == [1] * 4 + [2] * 4  # 20 clips cycle through 5 levels
    assert len({r["key"] for r in got}) == len(got) == eligible_samples(local_shards, phase([1, 2]), data_config())
    assert bad_sample_stats(ds) == {"good": 8, "bad": 0, "bad_keys": []}
    batch = next(iter(ds.iter_torch_batches(batch_size=2, collate_fn=ModelBatchCollate())))
    assert batch["video"].shape == (2, 3, T, H, W) and len(batch["caption"]) == 2


def test_bad_samples_are_dropped_and_counted_then_fail_past_the_fraction(ray_cluster, tmp_path):
    good = [sample(f"good{i}", 1) for i in range(8)]
    broken = [sample("broken0", 1, mp4=b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64),
              sample("broken1", 1, mp4=b"plain text, not a video")]
    write_custom_shard(tmp_path / "s", good[:4] + broken[:1] + good[4:] + broken[1:])
    uri = str(tmp_path / "s")

    ds = build_phase_dataset(uri, phase([1]), data_config(max_bad_fraction=0.25))
    got = rows(ds)
    assert sorted(r["key"] for r in got) == sorted(k for k, _, _ in good)
    stats = bad_sample_stats(ds)
    assert stats["good"] == 8 and stats["bad"] == 2 and sorted(stats["bad_keys"]) == ["broken0", "broken1"]

    strict = build_phase_dataset(uri, phase([1]), data_config(max_bad_fraction=0.1))
    # Ray Data wraps the UDF's error; its text carries ours, which is what a training worker sees
    with pytest.raises(Exception, match=r"max_bad_fraction=0.1.*first bad keys: broken") as failure:
        rows(strict)
    assert BadSamplesError.__name__ in str(failure.value)
    # ...and under the wrapping, the message alone, which the training loop reports
    message = data_error_message(failure.value)
    assert message.startswith("2 of ") and "first bad keys: broken" in message and "Traceback" not in message
    assert data_error_message(RuntimeError("not about data")) is None


def test_a_shard_whose_bytes_do_not_match_its_sha256_is_skipped_named_and_counted(ray_cluster, tmp_path):
    good = [sample(f"good{i}", 1) for i in range(4)]
    write_custom_shard(tmp_path / "s", good)
    shard = tmp_path / "s" / "shard-000000.tar"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF  # inside the first member's tar header
    shard.write_bytes(bytes(raw))
    uri = str(tmp_path / "s")
    tolerant = build_phase_dataset(uri, phase([1]), data_config(max_bad_fraction=1.0))
    assert rows(tolerant) == []
    stats = bad_sample_stats(tolerant)
    assert stats["bad"] == 4 and stats["bad_keys"] == ["shard-000000.tar"]
    strict = build_phase_dataset(uri, phase([1]), data_config(max_bad_fraction=0.1))
    with pytest.raises(Exception, match=r"shard-000000.tar: sha256 does not match index.json") as failure:
        rows(strict)
    assert "shard-000000.tar: sha256 does not match" in data_error_message(failure.value)


def test_untagged_and_too_short_videos_are_filtered_before_decoding(ray_cluster, tmp_path):
    clips = [sample("tagged3", 3), sample("untagged", None), sample("tagged1", 1),
             sample("short", None, frames=4, mp4=b"never decoded: filtered by length first")]
    write_custom_shard(tmp_path / "s", clips)
    uri = str(tmp_path / "s")
    ds = build_phase_dataset(uri, phase([3]), data_config())
    assert sorted(r["key"] for r in rows(ds)) == ["tagged3", "untagged"]
    assert bad_sample_stats(ds)["bad"] == 0  # the short one was never decoded
    only_tagged = build_phase_dataset(uri, phase([3]), data_config(untagged_all_phases=False))
    assert [r["key"] for r in rows(only_tagged)] == ["tagged3"]
    with pytest.raises(ValueError, match=r"no train shards .* \(levels \[5\]"):
        build_phase_dataset(uri, phase([5]), data_config(untagged_all_phases=False))


def test_pipeline_on_s3_shards(ray_cluster, s3_uri):
    build_synthetic_shards(s3_uri, 10, levels=[3, 4, 5], size=(H, W), frames=T, fps=FPS,
                           heldout_fraction=0.2, workers=1)
    train = rows(build_phase_dataset(s3_uri, phase([3, 4]), data_config()))
    assert {r["level"] for r in train} == {3, 4}
    assert len(train) == eligible_samples(s3_uri, phase([3, 4]), data_config()) >= 4
    heldout = rows(build_phase_dataset(s3_uri, phase([3, 4, 5]), data_config(), split="heldout"))
    assert len(heldout) == 2 and not {r["key"] for r in heldout} & {r["key"] for r in train}
