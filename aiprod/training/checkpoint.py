"""Training checkpoints: save on every rank, verify on load, fall back past corrupt ones.

A checkpoint directory (`RUN/checkpoint-<global step>-p<phase>-<attempt>/`) holds
    deepspeed/state/...       every rank's DeepSpeed files (model + ZeRO optimizer shards)
    rng/rank0000.pt ...       every rank's RNG states (torch, numpy, python, data generator)
    probe/rank0000.pt ...     every rank's probe batch (mid-phase checkpoints)
    ema/rank0000.pt ...       every rank's EMA shards (mid-phase, train.ema_decay); ema.safetensors
                              the gathered EMA weights (phase ends)
    model.safetensors         the consolidated VideoModel weights (loadable without DeepSpeed)
    config.yaml, state.json   resolved config; phase, step, epoch, best loss, curriculum, seeds
    MANIFEST.sha256           sha256 of every file above, from all ranks
Each rank writes its part into its own temp dir and reports it with `ray.train.report`; Ray Train
merges the ranks' files into one directory under the run's storage and applies `num_to_keep`.

Ray Train commits a checkpoint (records it in `checkpoint_manager_snapshot.json`) only after every
rank's upload. A worker that dies in between leaves an uncommitted directory behind; such orphans
are deleted when a run (re)starts, and only committed checkpoints are resume candidates. A
candidate whose files do not match its manifest is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aiprod import manifest, model_dir, storage

log = logging.getLogger("aiprod.training")

PREFIX = "checkpoint-"
DS_DIR, DS_TAG = "deepspeed", "state"
DS_MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's own name for rank 0's module file
RNG_DIR = "rng"
PROBE_DIR = "probe"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
_NAME = re.compile(r"^checkpoint-(\d+)-p(\d+)-([0-9a-z]+)$")


def checkpoint_name(global_step: int, phase: int, attempt: str) -> str:
    """Unique per attempt, so a restart that reaches the same step never writes into an orphan."""
    return f"{PREFIX}{global_step:09d}-p{phase:02d}-{attempt}"


def parse_name(name: str) -> tuple[int, int, str] | None:
    match = _NAME.match(name)
    return (int(match[1]), int(match[2]), match[3]) if match else None


# ------------------------------------------------------------------------- weights


def model_state(model: nn.Module, trained: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The full VideoModel state: frozen parts from `model`, the trained part from `trained`
    (gathered from the engine; keys already carry the component prefix)."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    if trained:
        unknown = set(trained) - set(state)
        if unknown:
            raise KeyError(f"trained weights not in the model: {sorted(unknown)[:3]}")
        state.update(trained)
    return state


# ----------------------------------------------------------------------------- RNG


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- save


def _local_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): manifest.sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != manifest.MANIFEST}


def write_checkpoint(
    local_dir: Path, engine: Any | None, full_state: dict[str, torch.Tensor] | None, state: dict[str, Any],
    config_yaml: str, generator: torch.Generator, rank: int, probe: dict[str, Any] | None = None,
    ema: dict[str, Any] | None = None, ema_full: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write this rank's part of a checkpoint into `local_dir` (collective: every rank calls it).

    `engine` may be None (no DeepSpeed state, e.g. a checkpoint between phases); rank 0 passes the
    consolidated `full_state`. `probe` (this rank's probe batch, mid-phase) is kept as uint8 so a
    resumed phase measures its end loss on the same clips as its start loss. `ema`: this rank's EMA
    shards (mid-phase); `ema_full`: the gathered EMA (rank 0, at a phase end)."""
    import torch.distributed as dist

    from aiprod.training.ema import EMA_DIR, EMA_WEIGHTS

    if ema is not None:
        (local_dir / EMA_DIR).mkdir(parents=True, exist_ok=True)
        torch.save(ema, local_dir / EMA_DIR / f"rank{rank:04d}.pt")
    if ema_full is not None and rank == 0:
        model_dir.write_weights(ema_full, local_dir / EMA_WEIGHTS)

    if probe is not None:
        (local_dir / PROBE_DIR).mkdir(parents=True, exist_ok=True)
        torch.save(probe, local_dir / PROBE_DIR / f"rank{rank:04d}.pt")

    if engine is not None:
        # DeepSpeed creates the directory on rank 0 only; every rank has its own local dir here.
        (local_dir / DS_DIR / DS_TAG).mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(local_dir / DS_DIR), tag=DS_TAG, client_state={}, save_latest=False)
    (local_dir / RNG_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(generator), local_dir / RNG_DIR / f"rank{rank:04d}.pt")
    if rank == 0:
        if full_state is None:
            raise ValueError("rank 0 must pass the consolidated model state")
        model_dir.write_weights(full_state, local_dir / model_dir.WEIGHTS)
        (local_dir / model_dir.STATE).write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")
        (local_dir / model_dir.CONFIG).write_text(config_yaml, encoding="utf-8")
    hashes = _local_hashes(local_dir)
    if dist.is_available() and dist.is_initialized():
        gathered: list[dict[str, str]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, hashes)
    else:
        gathered = [hashes]
    if rank == 0:
        merged: dict[str, str] = {}
        for part in gathered:
            for rel, digest in part.items():
                if merged.setdefault(rel, digest) != digest:
                    raise RuntimeError(f"checkpoint: ranks wrote different contents to {rel}")
        lines = [f"{digest}  {rel}" for rel, digest in sorted(merged.items())]
        (local_dir / manifest.MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------- find/load


def committed_names(run_uri: str) -> set[str] | None:
    """Checkpoint dir names Ray Train has committed for this run (None: no snapshot yet)."""
    uri = storage.join(run_uri, RAY_SNAPSHOT)
    if not storage.exists(uri):
        return None
    text = storage.read_text(uri)
    return set(re.findall(r"checkpoint-\d+-p\d+-[0-9a-z]+", text))


def list_checkpoints(run_uri: str) -> list[str]:
    """Checkpoint directory names under the run, newest (highest global step) first."""
    names = [Path(d).name for d in storage.list_dirs(run_uri)]
    parsed = [(parse_name(n), n) for n in names]
    return [n for p, n in sorted(((p, n) for p, n in parsed if p), key=lambda item: item[0][0], reverse=True)]


def cleanup_orphans(run_uri: str) -> list[str]:
    """Delete checkpoint dirs Ray Train never committed (a worker died mid-report). Call only
    when no report is in flight (at run start)."""
    committed = committed_names(run_uri) or set()
    removed = []
    for name in list_checkpoints(run_uri):
        if name not in committed:
            log.warning("checkpoint: removing uncommitted (orphan) checkpoint %s", name)
            storage.delete(storage.join(run_uri, name))
            removed.append(name)
    return removed


def read_state(checkpoint_uri: str) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(checkpoint_uri, model_dir.STATE)))


@dataclass
class Found:
    uri: str
    state: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, what was wrong)


def find_latest_good(run_uri: str, verify: bool = True, reported: set[str] = frozenset()) -> Found | None:
    """The newest committed checkpoint that verifies; corrupt or partial ones are skipped with a
    warning naming what is wrong (and listed in `skipped`). None: no usable checkpoint.

    `reported`: names every rank of the running group has already uploaded; Ray Train records
    them in its snapshot asynchronously, so they count as committed before the snapshot says so."""
    committed = committed_names(run_uri)
    if committed is not None or reported:
        committed = (committed or set()) | set(reported)
    skipped: list[tuple[str, str]] = []
    for name in list_checkpoints(run_uri):
        if committed is not None and name not in committed:
            continue
        uri = storage.join(run_uri, name)
        problems = manifest.verify_manifest(uri) if verify else []
        if not problems:
            try:
                return Found(uri, read_state(uri), skipped)
            except (OSError, ValueError) as exc:
                problems = [f"{model_dir.STATE}: {exc}"]
        reason = "; ".join(problems[:5])
        log.warning("checkpoint: skipping corrupt or partial checkpoint %s (%s); trying the one before", uri, reason)
        skipped.append((name, reason))
    if skipped:
        log.warning("checkpoint: no usable checkpoint left in %s", run_uri)
    return None


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local directory holding the checkpoint (downloaded when it lives on S3)."""
    if not storage.is_s3(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="aiprod-ckpt-") as tmp:
        yield storage.download_dir(uri, tmp)


def has_engine_state(checkpoint_uri: str) -> bool:
    """Whether a checkpoint holds DeepSpeed state (those written between phases may not)."""
    return storage.exists(storage.join(checkpoint_uri, DS_DIR, DS_TAG, DS_MODEL_STATES))


def load_engine_state(engine: Any, local_dir: Path, lr_scheduler: bool = True) -> None:
    """Restore DeepSpeed model, optimizer and (unless a new phase brings its own) LR-scheduler state
    (collective)."""
    path, _ = engine.load_checkpoint(str(local_dir / DS_DIR), tag=DS_TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=lr_scheduler)
    if path is None:
        raise RuntimeError(f"checkpoint: DeepSpeed could not load {local_dir / DS_DIR / DS_TAG}")


def load_rng(local_dir: Path, rank: int, generator: torch.Generator) -> bool:
    file = local_dir / RNG_DIR / f"rank{rank:04d}.pt"
    if not file.exists():  # a different world size: keep the fresh per-rank seeds
        return False
    restore_rng(torch.load(file, map_location="cpu", weights_only=False), generator)
    return True


def load_ema_shards(local_dir: Path, rank: int) -> dict[str, Any] | None:
    from aiprod.training.ema import EMA_DIR

    file = local_dir / EMA_DIR / f"rank{rank:04d}.pt"
    return torch.load(file, map_location="cpu", weights_only=True) if file.exists() else None


def read_ema_full(checkpoint_uri: str) -> dict[str, torch.Tensor] | None:
    """A phase-end checkpoint's gathered EMA weights (None when it has none)."""
    from safetensors.torch import load

    from aiprod.training.ema import EMA_WEIGHTS

    path = storage.join(checkpoint_uri, EMA_WEIGHTS)
    return load(storage.read_bytes(path)) if storage.exists(path) else None


def load_probe(local_dir: Path, rank: int) -> dict[str, Any] | None:
    file = local_dir / PROBE_DIR / f"rank{rank:04d}.pt"
    return torch.load(file, map_location="cpu", weights_only=True) if file.exists() else None
