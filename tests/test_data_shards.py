"""jobs/make_shards.py on real encoded files: counts, rejects with reasons, --check, resume, S3."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from aiprod.data import shards
from aiprod.data.ingest import build_video_shards
from aiprod.data.synthetic import make_clip
from aiprod.data.synthetic_shards import build_synthetic_shards
from aiprod.data.video_encode import encode_mp4, write_mp4

ROOT = Path(__file__).resolve().parents[1]
T, H, W, FPS = 9, 32, 32, 8.0
CAPTIONS = {  # one per language, written as given and expected back byte for byte
    "v0": ("a red circle moving right", "en"),
    "v1": ("एक लाल वृत्त दाईं ओर जा रहा है", "hi"),
    "v2": ("একটি লাল বৃত্ত ডান দিকে যাচ্ছে", "bn"),
    "v3": ("ஒரு சிவப்பு வட்டம் வலது பக்கம் நகர்கிறது", "ta"),
    "v4": ("two objects: a blue star and a green square", "en"),
}


def make_shards(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "jobs" / "make_shards.py"), "--no-progress", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and result.returncode != 0:
        raise AssertionError(f"make_shards {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def tar_samples(path: Path) -> dict[str, dict]:
    with open(path, "rb") as f:
        return {key: json.loads(parts["json"]) for key, parts in shards.iter_tar_samples(f)}


@pytest.fixture
def video_dir(tmp_path) -> Path:
    """Five good videos with captions in four languages, plus three bad ones."""
    videos = tmp_path / "videos"
    for i, key in enumerate(CAPTIONS):
        clip, _ = make_clip(1 + i % 5, i, 12, 40, 56, FPS)
        write_mp4(clip, videos / f"{key}.mp4", FPS)
    good = encode_mp4(make_clip(1, 9, 30, 40, 56, FPS)[0], FPS)
    (videos / "truncated.mp4").write_bytes(good[: len(good) * 2 // 3])
    (videos / "notes.mp4").write_text("just text in a file named .mp4\n")
    write_mp4(make_clip(1, 10, 4, 40, 56, FPS)[0], videos / "short.mp4", FPS)  # 4 frames < a 9-frame clip
    rows = [{"path": f"{k}.mp4", "caption": c, "language": lang, "phase": str(1 + i % 5)}
            for i, (k, (c, lang)) in enumerate(CAPTIONS.items())]
    rows += [{"path": name, "caption": "bad"} for name in ("truncated.mp4", "notes.mp4", "short.mp4")]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
    return videos


def test_real_files_n_in_n_out_rejects_with_reasons_and_check(video_dir, tmp_path):
    out = tmp_path / "shards"
    result = make_shards("--videos", str(video_dir), "--captions", str(tmp_path / "captions.jsonl"),
                         "--out", str(out), "--clip-frames", "9", "--clip-fps", "8", "--heldout-fraction", "0",
                         "--workers", "2")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["samples"] == len(CAPTIONS) and summary["rejected"] == 3
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        samples.update(tar_samples(shard))
    assert sorted(samples) == sorted(CAPTIONS)
    for key, (caption, language) in CAPTIONS.items():
        # byte-exact captions in every language
        assert samples[key]["caption"].encode("utf-8") == caption.encode("utf-8")
        assert samples[key]["language"] == language
        assert (samples[key]["frames"], samples[key]["width"], samples[key]["height"]) == (12, 56, 40)
        assert samples[key]["fps"] == FPS and samples[key]["levels"] == [1 + list(CAPTIONS).index(key) % 5]
    rejected = {Path(r["source"]).name: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert rejected["truncated.mp4"]["reason"] == "truncated"
    assert rejected["notes.mp4"]["reason"] == "unreadable" and "not a readable video" in rejected["notes.mp4"]["error"]
    assert rejected["short.mp4"]["reason"] == "too_short" and "4 frames" in rejected["short.mp4"]["error"]

    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and sum(r["samples"] for r in index["shards"]) == len(CAPTIONS)
    assert make_shards("--check", str(out)).returncode == 0

    # re-running skips the complete shards and leaves them untouched
    shard = sorted(out.glob("shard-*.tar"))[0]
    before = (shard.stat().st_mtime_ns, shard.read_bytes())
    again = make_shards("--videos", str(video_dir), "--captions", str(tmp_path / "captions.jsonl"),
                        "--out", str(out), "--clip-frames", "9", "--clip-fps", "8", "--heldout-fraction", "0")
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == summary["shards"] >= 1
    assert (shard.stat().st_mtime_ns, shard.read_bytes()) == before

    # one flipped byte makes --check fail and name the shard
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    failed = make_shards("--check", str(out), check=False)
    assert failed.returncode == 1 and f"{shard.name}: sha256 mismatch" in failed.stderr


def test_csv_and_sidecar_captions_and_nothing_usable(tmp_path):
    videos = tmp_path / "videos"
    write_mp4(make_clip(1, 0, 10, 32, 32, FPS)[0], videos / "a clip.mp4", FPS)
    write_mp4(make_clip(2, 1, 10, 32, 32, FPS)[0], videos / "nested" / "b.mp4", FPS)
    (videos / "nested" / "b.txt").write_text("তিনটি বস্তু\n", encoding="utf-8")
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["path", "caption", "phase", "emergency_type"])
        writer.writeheader()
        writer.writerow({"path": "a clip.mp4", "caption": "a red circle", "phase": "1,2", "emergency_type": "flood"})
    out = tmp_path / "shards"
    make_shards("--videos", str(videos), "--captions", str(tmp_path / "captions.csv"), "--out", str(out),
                "--heldout-fraction", "0")
    samples = tar_samples(out / "shard-000000.tar")
    assert samples["a_clip"]["levels"] == [1, 2] and samples["a_clip"]["emergency_type"] == "flood"
    assert samples["nested_b"]["caption"] == "তিনটি বস্তু" and samples["nested_b"]["language"] == "bn"
    assert samples["nested_b"]["levels"] == []  # untagged

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.mp4").write_text("not a video")
    (junk / "x.txt").write_text("caption")
    nothing = make_shards("--videos", str(junk), "--out", str(tmp_path / "none"), check=False)
    assert nothing.returncode == 1 and "nothing usable" in nothing.stderr

    (tmp_path / "bad.csv").write_text("file,text\nx.mp4,hello\n")
    bad = make_shards("--videos", str(videos), "--captions", str(tmp_path / "bad.csv"), "--out", str(out),
                      check=False)
    assert bad.returncode == 2 and "'path' column" in bad.stderr


def test_synthetic_shards_with_heldout_split_round_trip_captions(tmp_path):
    out = tmp_path / "syn"
    make_shards("--synthetic", "10", "--levels", "1,2", "--size", f"{H}x{W}", "--frames", str(T),
                "--fps", str(FPS), "--seed", "5", "--heldout-fraction", "0.2", "--out", str(out))
    index = json.loads((out / "index.json").read_text())
    assert index["samples"] == 8 and index["heldout_samples"] == 2
    assert [r["name"] for r in index["heldout"]] == ["heldout-000000.tar"]
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        samples.update(tar_samples(shard))
    assert len(samples) == 10
    assert {s["language"] for s in samples.values()} == {"en", "hi", "bn", "ta"}
    for meta in samples.values():
        truth = meta["truth"]
        _, expected = make_clip(meta["level"], truth["seed"], T, H, W, FPS, meta["language"])
        assert meta["caption"].encode("utf-8") == expected["caption"].encode("utf-8")
        assert meta["level"] in (1, 2) and (meta["frames"], meta["width"], meta["height"]) == (T, W, H)
    assert shards.check_shards(str(out)) == []
    bad = make_shards("--synthetic", "3", "--levels", "1,7", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "levels" in bad.stderr


def test_shards_on_s3_build_and_check(s3_uri):
    summary = build_synthetic_shards(s3_uri, 6, levels=[1, 3], size=(H, W), frames=T, fps=FPS,
                                     heldout_fraction=0.0, workers=1)
    assert summary["samples"] == 6
    assert shards.check_shards(s3_uri) == []
    assert make_shards("--check", s3_uri).returncode == 0
    again = build_synthetic_shards(s3_uri, 6, levels=[1, 3], size=(H, W), frames=T, fps=FPS,
                                   heldout_fraction=0.0, workers=1)
    assert again["shards_skipped"] == again["shards"]
    # write_mp4 publishes to S3 as well
    write_mp4(make_clip(1, 0, 3, 16, 16, FPS)[0], f"{s3_uri}/one.mp4", FPS)
    from aiprod import storage
    from aiprod.data.video import probe

    assert probe(f"{s3_uri}/one.mp4").frames == 3
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(f"{s3_uri}/shard-000000.tar"))) as tar:
        assert len(tar.getnames()) == 12


def test_videos_and_captions_read_from_s3(s3_uri, tmp_path):
    from aiprod import storage

    for key in ("v0", "v1"):
        write_mp4(make_clip(1, 0, 10, 32, 32, FPS)[0], f"{s3_uri}/videos/{key}.mp4", FPS)
    storage.write_text_atomic(f"{s3_uri}/videos/v1.txt", CAPTIONS["v1"][0])
    storage.write_text_atomic(f"{s3_uri}/captions.jsonl", json.dumps({"path": "v0.mp4", "caption": "from s3"}) + "\n")
    summary = build_video_shards(str(tmp_path / "out"), f"{s3_uri}/videos", f"{s3_uri}/captions.jsonl",
                                 heldout_fraction=0.0, workers=1)
    assert summary["samples"] == 2 and summary["rejected"] == 0
    samples = tar_samples(tmp_path / "out" / "shard-000000.tar")
    assert samples["v0"]["caption"] == "from s3" and samples["v1"]["caption"] == CAPTIONS["v1"][0]
    assert samples["v1"]["source"] == f"{s3_uri}/videos/v1.mp4"
