"""The on-disk format of a shard directory (WebDataset tar shards) and its readers.

    problems = check_shards("out/shards/demo")          # [] when every shard matches index.json
    for uri, record in shard_uris("out/shards/demo", "train"): ...

Layout of a shard directory (local or s3://):
    shard-000000.tar ...     training samples: KEY.json then KEY.mp4
    heldout-000000.tar ...   the held-out split, for evaluation
    index.json               shards with sample counts, bytes, sha256, level histograms
    rejected.jsonl           inputs left out, with the reason

Shards are written by `aiprod.data.shard_writer`, from user videos (`aiprod.data.ingest`) or
synthetic clips (`aiprod.data.synthetic_shards`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from aiprod import storage
from aiprod.data.versioned_index import read_versioned_index

INDEX = "index.json"
REJECTED = "rejected.jsonl"
FORMAT = "aiprod-shards/1"
SPLIT_PREFIX = {"train": "shard", "heldout": "heldout"}
SHARD_NAME = re.compile(r"^(shard|heldout)-\d{6}\.tar$")


class ShardError(ValueError):
    """Bad input to the shard builder (a captions file, a directory) or an unreadable index.json,
    named in the message."""


def sample_json(meta: dict[str, Any]) -> bytes:
    """The bytes of a sample's KEY.json member."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def shard_name(split: str, number: int) -> str:
    """The file name of a split's shard number `number` (matches SHARD_NAME)."""
    return f"{SPLIT_PREFIX[split]}-{number:06d}.tar"


def add_sample(tar: tarfile.TarFile, key: str, meta: dict[str, Any], mp4: bytes) -> None:
    """Append one sample to a shard being written: KEY.json, then KEY.mp4."""
    _add_member(tar, f"{key}.json", sample_json(meta))
    _add_member(tar, f"{key}.mp4", mp4)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # deterministic bytes: the same inputs give the same shard
    tar.addfile(info, io.BytesIO(data))


def iter_tar_samples(stream: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar stream (read sequentially, never seeks).

    WebDataset convention: the key is the member name up to its first dot; a sample's members
    are adjacent.
    """
    current: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if key != current and current is not None:
                yield current, parts
                parts = {}
            current = key
            parts[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, parts


def read_index(uri: str) -> dict[str, Any] | None:
    """The index.json of a shard directory, None when it has none."""
    return read_versioned_index(storage.join(uri, INDEX), FORMAT, ShardError)


def file_sizes(uri: str) -> dict[str, int]:
    """Byte sizes of the files directly under a shard directory, by name ({} when it does not exist)."""
    fs, path = storage.open_fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    return {Path(i.path).name: i.size for i in fs.get_file_info(pafs.FileSelector(path))
            if i.type == pafs.FileType.File}


def shard_uris(uri: str, split: str = "train", index: dict[str, Any] | None = None) -> list[tuple[str, dict]]:
    """(shard URI, index record) for a split ('train' or 'heldout')."""
    index = index or read_index(uri)
    if index is None:
        raise FileNotFoundError(f"no {INDEX} in {uri} (build shards with jobs/make_shards.py)")
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    records = index["shards"] if split == "train" else index["heldout"]
    return [(storage.join(uri, r["name"]), r) for r in records]


def check_shards(uri: str) -> list[str]:
    """Re-read every shard: sha256, byte count, sample count, sample JSON. Problems, or []."""
    uri = str(uri).rstrip("/")
    try:
        index = read_index(uri)
    except ShardError as exc:
        return [str(exc)]
    if index is None:
        return [f"{storage.join(uri, INDEX)}: missing"]
    problems: list[str] = []
    if not index.get("complete"):
        problems.append(f"{INDEX}: the build did not finish (complete=false); re-run make_shards")
    listed = set()
    for split in ("train", "heldout"):
        for shard, record in shard_uris(uri, split, index):
            listed.add(record["name"])
            problems.extend(_check_one(shard, record))
    sizes = file_sizes(uri)
    problems.extend(f"{name}: shard not listed in {INDEX}" for name in sorted(sizes)
                    if SHARD_NAME.match(name) and name not in listed)
    return problems


def _check_one(shard: str, record: dict[str, Any]) -> list[str]:
    name = record["name"]
    try:
        data = storage.read_bytes(shard)
    except FileNotFoundError:
        return [f"{name}: missing"]
    problems = []
    if len(data) != record["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, index says {record['bytes']}")
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        problems.append(f"{name}: sha256 mismatch")
    count = 0
    try:
        for key, parts in iter_tar_samples(io.BytesIO(data)):
            if set(parts) != {"json", "mp4"}:
                problems.append(f"{name}: sample {key} has members {sorted(parts)}, expected json + mp4")
                continue
            meta = json.loads(parts["json"].decode("utf-8"))
            if not isinstance(meta, dict) or not meta.get("caption"):
                problems.append(f"{name}: sample {key} has no caption in its JSON")
            count += 1
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        problems.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
    if count != record["samples"]:
        problems.append(f"{name}: {count} samples, index says {record['samples']}")
    return problems
