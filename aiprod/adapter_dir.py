"""An adapter directory: a LoRA/DoRA adapter that names the base model it was trained on.

    NAME/  adapter.safetensors   the adapter tensors only (metadata: version)
           adapter.json          {"spec": AdapterSpec, "base": {"ref", "registry", "sha256"}, "version"}
           config.yaml           the resolved config of the fine-tuning run
           MANIFEST.sha256

A run in `train.mode: lora|dora` leaves one as final/; registry entries may be adapter directories.
Loading one (model_dir.load / read_weights) loads its base (a registry version, or a directory; a
base may itself be an adapter), checks the base weights' sha256 against the one recorded, puts the
adapter on it and folds it in: sampling, evaluation and Serve all see plain VideoModel weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from aiprod import storage

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"


class AdapterBaseError(RuntimeError):
    """An adapter whose base model cannot be found or is not the one it was trained on."""


def is_adapter_dir(uri: str | os.PathLike) -> bool:
    return storage.exists(storage.join(str(uri), ADAPTER_META))


def weights_sha256(uri: str | os.PathLike) -> str:
    """sha256 of a model directory's weights file (model.safetensors, or adapter.safetensors)."""
    import hashlib

    from aiprod.model_dir import weights_file

    return hashlib.sha256(storage.read_bytes(weights_file(uri))).hexdigest()


def pin_reference(init_from: str, registry_root: str, registry_cfg=None) -> str:
    """A registry reference (`production`, `latest`, a version) as its entry's URI, the pointer read
    once: a run (and its restarts) trains on one base even if production moves meanwhile. Anything
    else is returned as it is."""
    from aiprod.model_dir import is_registry_reference

    if storage.is_s3(init_from) or Path(init_from).exists() or not is_registry_reference(init_from):
        return init_from
    from aiprod.registry import Registry
    from aiprod.registry.errors import VersionNotFoundError

    registry = Registry(registry_root, registry_cfg)
    version = registry.pointer(init_from) if init_from in ("production", "latest") else init_from
    if version is None:
        raise VersionNotFoundError(f"registry: the {init_from} pointer is not set in {registry_root}")
    registry.resolve(version)  # exists and is intact
    return registry.store.entry_uri(version)


def base_reference(base_uri: str) -> dict[str, Any]:
    """What adapter.json records of the base a run trained on: a registry entry by its version name
    and registry root, anything else by its path; and the sha256 of its weights either way."""
    from aiprod.registry.names import ENTRY, is_version_name

    uri = str(base_uri).rstrip("/")
    parent, _, name = uri.rpartition("/")
    in_registry = is_version_name(name) and storage.exists(storage.join(uri, ENTRY))
    return {"ref": name if in_registry else uri, "registry": parent if in_registry else None,
            "sha256": weights_sha256(uri), "uri": uri}


def resolve_base(meta: dict[str, Any], registry_root: str | None = None) -> str:
    """The base directory an adapter names, verified by sha256. A registry version is looked up in
    `registry_root` first (the registry serving it) and then in the registry recorded at training."""
    base = meta["base"]
    ref, tried = base["ref"], []
    if base.get("registry"):
        from aiprod.registry import Registry

        for root in dict.fromkeys(r for r in (registry_root, base.get("registry")) if r):
            try:
                candidate = str(Registry(root).resolve(ref))
            except Exception as exc:  # noqa: BLE001 - try the next registry; all failures are named below
                tried.append(f"{root}: {exc}")
                continue
            sha = weights_sha256(candidate)
            if sha == base["sha256"]:
                return candidate
            tried.append(f"{candidate}: weights sha256 {sha[:12]} != {base['sha256'][:12]}")
    for path in dict.fromkeys(p for p in (base.get("uri"), None if base.get("registry") else ref) if p):
        if not storage.exists(path):
            tried.append(f"{path}: does not exist")
            continue
        sha = weights_sha256(path)
        if sha == base["sha256"]:
            return path
        tried.append(f"{path}: weights sha256 {sha[:12]} != {base['sha256'][:12]}")
    raise AdapterBaseError(f"adapter base {ref!r} (sha256 {base['sha256'][:12]}) not found: " + "; ".join(tried))


def read_meta(uri: str | os.PathLike) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(str(uri), ADAPTER_META)))


def read_adapter(uri: str | os.PathLike, name: str = ADAPTER_WEIGHTS) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(storage.read_bytes(storage.join(str(uri), name)))


def merged_weights(uri: str | os.PathLike, registry_root: str | None = None,
                   adapter_file: str | None = None) -> dict[str, torch.Tensor]:
    """Plain VideoModel weights: the base's, with this directory's adapter (or the one in
    `adapter_file`, e.g. final/'s raw.safetensors) folded in."""
    from aiprod import model_dir
    from aiprod.models import build_model
    from aiprod.models.adapters import AdapterSpec, apply_adapter, merged_state
    from aiprod.models.text import with_saved_terms

    meta = read_meta(uri)
    base_uri = resolve_base(meta, registry_root)
    base = model_dir.read_weights(base_uri, registry_root=registry_root)
    cfg = model_dir.read_config(uri)
    cfg.model.text = with_saved_terms(cfg.model.text, base)
    model = build_model(cfg.model)
    model.load_state_dict(base, strict=True)
    apply_adapter(model, AdapterSpec.from_dict(meta["spec"]), read_adapter(uri, adapter_file or ADAPTER_WEIGHTS))
    return merged_state(model)


def save(directory: str | os.PathLike, adapter: dict[str, torch.Tensor], spec: dict[str, Any],
         base: dict[str, Any], cfg, version: str, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> str:
    """Write an adapter directory (locally by rename of a finished temp dir; on S3 manifest last).
    `extra`: more safetensors files beside the adapter, by file name (final/'s raw.safetensors)."""
    from aiprod import model_dir
    from aiprod.manifest import write_manifest

    def fill(tmp: Path) -> None:
        model_dir.write_weights(adapter, tmp / ADAPTER_WEIGHTS, metadata={"version": version,
                                                                        "config_hash": cfg.hash()})
        (tmp / ADAPTER_META).write_text(json.dumps({"spec": spec, "base": base, "version": version}, indent=1))
        (tmp / model_dir.CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")
        for name, tensors in (extra or {}).items():
            model_dir.write_weights(tensors, tmp / name)
        write_manifest(tmp)

    return str(model_dir.publish(directory, fill))
