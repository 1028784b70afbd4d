"""Building a registry entry from a checkpoint: the checks before a publish, the report, and the
staged files (weights stamped with the version, config, state, report, entry.json, manifest)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aiprod import manifest, storage
from aiprod.registry.errors import IntegrityError, RegistryError
from aiprod.adapter_dir import ADAPTER_META
from aiprod.model_dir import CONFIG, STATE, read_safetensors_header, weights_file
from aiprod.registry.names import ENTRY, REPORT
from aiprod.registry.stamps import actor, now

COPY_CHUNK = 8 << 20


def check_checkpoint(source: str) -> None:
    """A checkpoint (or adapter directory) has weights and config, and matches its manifest when it has one."""
    for required in (Path(weights_file(source)).name, CONFIG):
        if not storage.exists(storage.join(source, required)):
            raise RegistryError(f"registry: checkpoint {source} has no {required}")
    if storage.exists(storage.join(source, manifest.MANIFEST)):
        problems = manifest.verify_manifest(source)
        if problems:
            raise IntegrityError(f"registry: checkpoint {source} fails its manifest: " + "; ".join(problems))


def load_report(report: str | os.PathLike | dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None or isinstance(report, dict):
        return report
    try:
        data = json.loads(storage.read_text(report))
    except FileNotFoundError:
        raise RegistryError(f"registry: report file {report} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry: report file {report} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"registry: report file {report} must hold a JSON object")
    return data


def stage_entry(source: str, staged: Path, version: str, report: dict[str, Any] | None) -> None:
    """Write entry `version`'s files into `staged`, fsynced, manifest last."""
    weights = weights_file(source)
    copy_stamped_weights(weights, staged / Path(weights).name, version)
    for name in (CONFIG, STATE, ADAPTER_META):
        if name == CONFIG or storage.exists(storage.join(source, name)):
            (staged / name).write_bytes(storage.read_bytes(storage.join(source, name)))
    if report is not None:
        (staged / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    entry = {"version": version, "published_at": now(), "source": source, **actor()}
    (staged / ENTRY).write_text(json.dumps(entry, indent=2), "utf-8")
    for file in staged.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    manifest.write_manifest(staged)


def copy_stamped_weights(src_uri: str, dst: Path, version: str) -> None:
    """Copy a safetensors file with `version` written into its metadata, streaming the tensor bytes
    (only the JSON header changes, so the copy costs no more memory than a chunk)."""
    fs, path = storage.open_fs(src_uri)
    with fs.open_input_stream(path) as src, open(dst, "wb") as out:
        try:
            header = read_safetensors_header(src, src_uri)
        except ValueError as exc:
            raise RegistryError(f"registry: {exc}") from None
        header["__metadata__"] = {**(header.get("__metadata__") or {}), "version": version}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # keep the tensor data 8-byte aligned
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
