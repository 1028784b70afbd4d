"""What run, where, from what: a run's name, directory and options, resolved from the job's
arguments before Ray starts (a fresh run from a preset or file, or a resumed run's stored config)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiprod import model_dir, storage
from aiprod.config import Config, ConfigError, load_config
from aiprod.training import checkpoint as ckpt

RUN_CONFIG = model_dir.CONFIG  # a run's config.yaml, written before its first worker starts
DEMO_PRESET, DEMO_RUN = "tiny", "demo"
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunExistsError(ValueError):
    """A fresh run was asked for a run name that already has outputs."""


@dataclass
class RunOptions:
    data: str
    storage: str
    run_name: str
    start_phase: int = 0
    end_phase: int | None = None
    resume: bool = False
    resume_phase: int | None = None
    workers: str | int = "auto"
    replace: bool = False  # delete an existing run of the same name first (demo runs)
    latents: str | None = None  # a latent cache the denoiser phases read (default data.latents)


def check_run_name(name: str | None) -> str:
    """A run name is a directory and an S3 key part: letters, digits, '.', '_', '-'; 1-128 long."""
    if not name or not RUN_NAME_RE.fullmatch(name):
        raise ConfigError(f"config: --run-name {name!r} is not a plain name: use 1-128 letters, digits, '.', "
                          "'_' or '-', starting with a letter or digit")
    return name


def run_uri(opts: RunOptions) -> str:
    return storage.join(storage.absolute(opts.storage), check_run_name(opts.run_name))


def run_exists(uri: str) -> bool:
    return storage.exists(storage.join(uri, RUN_CONFIG)) or storage.exists(storage.join(uri, ckpt.RAY_SNAPSHOT))


def stored_config(uri: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The resolved config a run was started with (for --resume), plus new overrides."""
    if not storage.exists(storage.join(uri, RUN_CONFIG)):
        raise FileNotFoundError(f"--resume: no run at {uri} (no {RUN_CONFIG})")
    return model_dir.read_config(uri, overrides)


def resolve_run(base: str | None, overrides: list[str], run_name: str | None, storage_root: str | None = None,
                data: str | None = None, resume: bool = False, demo_data: str | None = None,
                **options) -> tuple[Config, RunOptions]:
    """(config, options) of the run a job asked for, checked before Ray starts: `base` is a preset or
    YAML path (None: a resumed run's stored config, else the demo preset); `demo_data` makes it a
    demo (default name, data and a fresh directory each time). ConfigError names what is wrong."""
    demo = demo_data is not None
    run_name = run_name or (DEMO_RUN if demo else None)
    if run_name is None:
        raise ConfigError("config: --run-name is required")
    check_run_name(run_name)
    if resume and base is None:
        root = storage_root or load_config(DEMO_PRESET).train.storage
        cfg = stored_config(run_uri(RunOptions(data="", storage=root, run_name=run_name)), overrides)
    else:
        cfg = load_config(base or DEMO_PRESET, overrides)
    data = data or cfg.data.uri or demo_data
    if data is None:
        raise ConfigError("config: no data: pass --data URI or set data.uri")
    return cfg, RunOptions(data=data, storage=storage_root or cfg.train.storage, run_name=run_name, resume=resume,
                           replace=demo and not resume, **options)


def cpus_needed(cfg: Config) -> float:
    """Logical CPUs a new local cluster needs: the training workers plus the data pipeline."""
    workers = cfg.train.workers if isinstance(cfg.train.workers, int) else cfg.train.cpu_workers
    return workers * cfg.train.cpus_per_worker + cfg.data.decode_workers + cfg.data.read_workers + 1
