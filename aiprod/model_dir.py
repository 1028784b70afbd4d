"""A model directory: the one home of its file names, and how one is saved, read, verified and found.

    NAME/  model.safetensors   VideoModel state_dict (metadata: version, config hash)
           config.yaml         the resolved config it was trained with
           MANIFEST.sha256     sha256 of every other file (aiprod.manifest), written last
           state.json ...      checkpoints and registry entries add their own files beside these

Checkpoints, a run's final/ and best/ models and registry versions are all model directories, on
local disk or under an s3:// prefix. `locate(ref)` turns what a user names (a directory, an s3://
prefix or a registry reference: `production`, `latest`, a version name) into one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from aiprod import storage
from aiprod.config import Config, validate
from aiprod.manifest import MANIFEST, verify_manifest, write_manifest

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
STATE = "state.json"
DEFAULT_VERSION = "unversioned"
REGISTRY_POINTERS = ("production", "latest")


class CheckpointError(RuntimeError):
    """A model directory that is missing files or fails its manifest."""


# ----------------------------------------------------------------------------- writing


def write_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None,
                  ) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def save(directory: str | os.PathLike, state: dict[str, torch.Tensor], cfg: Config,
         version: str = DEFAULT_VERSION, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> str | Path:
    """Write weights + config + manifest as one model directory, replacing any there (publish).
    `extra`: more safetensors files beside the weights, by file name (final/'s raw.safetensors)."""
    return publish(directory, lambda tmp: _write_local(tmp, state, cfg, version, extra))


def publish(directory: str | os.PathLike, fill) -> str | Path:
    """Make a model directory from `fill(local_dir)`: locally by a rename of a finished temp dir
    beside it (returns its Path); on S3 by uploading a finished local copy, manifest last (returns
    the URI)."""
    target = str(directory)
    if storage.is_s3(target):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            local.mkdir()
            fill(local)
            storage.delete(target)
            for file in sorted(local.iterdir()):
                if file.name != MANIFEST:
                    storage.put_file(file, storage.join(target, file.name))
            storage.put_file(local / MANIFEST, storage.join(target, MANIFEST))  # last: marks it complete
        return target
    replace_dir(Path(target), fill)
    return Path(target)


def _write_local(directory: Path, state: dict[str, torch.Tensor], cfg: Config, version: str,
                 extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(state, directory / WEIGHTS, metadata={"version": version, "config_hash": cfg.hash()})
    (directory / CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")
    for name, tensors in (extra or {}).items():
        write_weights(tensors, directory / name)
    for name in (WEIGHTS, CONFIG, *(extra or {})):
        _fsync(directory / name)
    write_manifest(directory)
    storage.fsync_dir(directory)


def replace_dir(target: Path, fill) -> None:
    """Fill a temp dir beside `target`, then rename it into place (an existing one is swapped aside)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        if target.exists():  # a directory cannot be renamed over a non-empty one
            os.rename(target, old)
        os.rename(tmp, target)
        storage.fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- reading


def verify(uri: str | os.PathLike) -> list[str]:
    """Problems with a model directory: a missing weights or config file, files that do not match
    its manifest (a directory without a manifest is checked for its files only)."""
    uri = str(uri)
    problems = [f"{name} is missing" for name in (Path(weights_file(uri)).name, CONFIG)
                if not storage.exists(storage.join(uri, name))]
    if not problems and storage.exists(storage.join(uri, MANIFEST)):
        problems = [f"fails {MANIFEST}: {p}" for p in verify_manifest(uri)]
    return problems


def weights_file(uri: str | os.PathLike) -> str:
    """The weights file of a model directory: model.safetensors, or an adapter directory's
    adapter.safetensors (aiprod.adapter_dir)."""
    from aiprod.adapter_dir import ADAPTER_WEIGHTS, is_adapter_dir

    return storage.join(str(uri), ADAPTER_WEIGHTS if is_adapter_dir(uri) else WEIGHTS)


def read_weights(uri: str | os.PathLike, registry_root: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of a model directory (a checkpoint, a registry entry, final/), local or s3://;
    an adapter directory's are its base's with the adapter folded in (its base registry version is
    looked up in `registry_root` first)."""
    from safetensors.torch import load

    from aiprod import adapter_dir

    if adapter_dir.is_adapter_dir(uri):
        return adapter_dir.merged_weights(uri, registry_root)
    path = storage.join(str(uri), WEIGHTS)
    if not storage.exists(path):
        raise FileNotFoundError(f"no {WEIGHTS} in {uri}")
    return load(storage.read_bytes(path))


def read_config(uri: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The resolved config a model directory holds, `key.path=value` overrides applied."""
    cfg = validate(yaml.safe_load(storage.read_text(storage.join(str(uri), CONFIG))) or {})
    return cfg.with_overrides(overrides) if overrides else cfg


ALTERNATES = ("raw.safetensors", "ema.safetensors")  # final/ of an EMA run: the weights not exported


def alternate_file(uri: str | os.PathLike) -> str | None:
    """The other weights a run's final/ keeps beside the exported ones (raw or EMA), if any."""
    return next((name for name in ALTERNATES if storage.exists(storage.join(str(uri), name))), None)


def load(uri: str | os.PathLike, check: bool = True, registry_root: str | None = None, alternate: bool = False,
         ) -> tuple[Config, dict[str, torch.Tensor], str]:
    """(config, weights, version) of a model directory; with `check`, CheckpointError unless it
    verifies. An adapter directory gives its base's weights with the adapter folded in. With
    `alternate`, the weights of alternate_file() instead (final/ of an EMA run)."""
    from safetensors.torch import load as load_safetensors

    from aiprod import adapter_dir

    uri = str(uri)
    problems = verify(uri) if check else []
    if problems:
        raise CheckpointError(f"checkpoint {uri}: " + "; ".join(problems))
    cfg = read_config(uri)
    other = alternate_file(uri) if alternate else None
    if alternate and other is None:
        raise CheckpointError(f"checkpoint {uri}: no alternate weights ({' or '.join(ALTERNATES)})")
    version = weights_metadata(weights_file(uri)).get("version", DEFAULT_VERSION)  # the header only
    if adapter_dir.is_adapter_dir(uri):
        try:
            return cfg, adapter_dir.merged_weights(uri, registry_root, other), version
        except (adapter_dir.AdapterBaseError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {uri}: {exc}") from None
    return cfg, load_safetensors(storage.read_bytes(storage.join(uri, other) if other else weights_file(uri))), version


def read_safetensors_header(stream, where: str) -> dict[str, Any]:
    """The JSON header at the start of a safetensors stream (8-byte little-endian length, then JSON),
    leaving the stream at the tensor bytes; ValueError naming `where` if it is not one."""
    head = stream.read(8)
    if len(head) != 8:
        raise ValueError(f"{where} is not a safetensors file (too short)")
    try:
        return json.loads(stream.read(int.from_bytes(head, "little")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{where} is not a safetensors file (bad header)") from None


def weights_metadata(uri: str | os.PathLike) -> dict[str, Any]:
    """The `__metadata__` of a safetensors file (its version), read without its tensors."""
    fs, path = storage.open_fs(uri)
    with fs.open_input_stream(path) as stream:
        return read_safetensors_header(stream, str(uri)).get("__metadata__") or {}


# ----------------------------------------------------------------------------- finding


def is_registry_reference(ref: str) -> bool:
    from aiprod.registry import NAME_RE

    return ref in REGISTRY_POINTERS or NAME_RE.fullmatch(ref) is not None


def locate(ref: str, registry_root: str, registry_cfg=None) -> tuple[str, str]:
    """(model directory, label) for what a user named: a registry reference (`production`,
    `latest`, a version name) that is not an existing path is resolved under `registry_root` (an
    s3:// version is downloaded to the cache and verified); anything else is a directory or s3://
    prefix, taken as it is (loading it names what is missing)."""
    if not storage.is_s3(ref) and not Path(ref).exists() and is_registry_reference(ref):
        from aiprod.registry import resolve

        path = resolve(registry_root, ref, cfg=registry_cfg)
        return str(path), Path(path).name
    return ref, ref.rstrip("/").rsplit("/", 1)[-1]
