"""sha256 manifests for directories: checkpoints, registry entries.

`MANIFEST.sha256` lists `<sha256>  <relative path>` per file (the format `sha256sum -c` reads),
sorted by path. Verifying reports every missing, extra or changed file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from aiprod import storage

MANIFEST = "MANIFEST.sha256"
CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    )


def write_manifest(directory: str | os.PathLike) -> Path:
    """Hash every file under a local directory into MANIFEST.sha256 (written atomically)."""
    root = Path(directory)
    lines = [f"{sha256_file(root / rel)}  {rel}" for rel in _local_files(root)]
    target = root / MANIFEST
    storage.write_text_atomic(target, "\n".join(lines) + "\n")
    return target


def parse_manifest(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            entries[rel.strip().lstrip("*")] = digest
    return entries


def verify_manifest(directory: str | os.PathLike) -> list[str]:
    """Problems found (empty when the directory matches its manifest). Local or s3://."""
    uri = str(directory)
    manifest_uri = storage.join(uri, MANIFEST)
    if not storage.exists(manifest_uri):
        return [f"{MANIFEST} is missing"]
    expected = parse_manifest(storage.read_text(manifest_uri))
    problems: list[str] = []
    if storage.is_s3(uri):
        prefix = uri.rstrip("/") + "/"
        present = {
            f[len(prefix) :]
            for f in storage.list_files(uri, recursive=True)
            if not f.endswith("/" + MANIFEST) and not Path(f).name.startswith(".")
        }
        digest_of = lambda rel: sha256_bytes(storage.read_bytes(storage.join(uri, rel)))  # noqa: E731
    else:
        root = Path(uri)
        present = set(_local_files(root))
        digest_of = lambda rel: sha256_file(root / rel)  # noqa: E731
    for rel, digest in expected.items():
        if rel not in present:
            problems.append(f"{rel}: missing")
        elif digest_of(rel) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    problems.extend(f"{rel}: not in manifest" for rel in sorted(present - expected.keys()))
    return problems
