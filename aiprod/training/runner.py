"""Driver side of a curriculum run: check everything, pick the workers, start one TorchTrainer.

    summary = run_curriculum(cfg, RunOptions(data="out/shards/demo", storage="out/runs", run_name="demo"))

One TorchTrainer runs the whole curriculum (one worker-group start-up, not one per phase); each
phase has its own Ray dataset (`phase0`, `phase1`, ...) that the workers iterate in turn. The run
lives in STORAGE/RUN_NAME/ (local or s3://): Ray Train's checkpoints and snapshot, config.yaml,
metrics.jsonl, TensorBoard files, samples/, phases/, best/, summary.json and final/.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiprod import model_dir, storage
from aiprod.config import Config, ConfigError
from aiprod.data.caption_lengths import report_truncation
from aiprod.training import checkpoint as ckpt
from aiprod.training.engine import deepspeed_config
from aiprod.training.run_options import RUN_CONFIG, RunExistsError, RunOptions, run_exists, run_uri
from aiprod.training.worker_plan import WorkerPlan, choose_workers, cluster_gpus

log = logging.getLogger("aiprod.training")

def check_config(cfg: Config, opts: RunOptions, plan: WorkerPlan) -> None:
    """Everything that can be checked before a worker starts; raises ConfigError naming the key."""
    import torch

    from aiprod.data.clips import phase_buckets
    from aiprod.models import build_model

    phases = cfg.curriculum.phases
    last = len(phases) - 1
    end = last if opts.end_phase is None else opts.end_phase
    problems = []
    if not 0 <= opts.start_phase <= last:
        problems.append(f"--start-phase {opts.start_phase} is out of range 0..{last}")
    if not opts.start_phase <= end <= last:
        problems.append(f"--end-phase {end} is out of range {opts.start_phase}..{last}")
    if opts.resume_phase is not None and not opts.start_phase <= opts.resume_phase <= end:
        problems.append(f"--resume-phase {opts.resume_phase} is out of range {opts.start_phase}..{end}")
    if cfg.train.precision == "fp16" and not plan.use_gpu:
        problems.append("train.precision=fp16 needs GPU workers (use fp32 or bf16 on CPU)")
    try:
        with torch.device("meta"):
            model = build_model(cfg.model)
    except ValueError as exc:
        problems.append(f"model: {exc}")
        model = None
    for i, phase in enumerate(phases):
        where = f"curriculum.phases.{i}"
        shapes = phase_buckets(phase)
        for shape in shapes if model is not None else ():
            try:
                model.vae.check_frames(shape.frames)
            except ValueError as exc:
                problems.append(f"{where}.{'buckets' if phase.buckets else 'frames'}: {exc}")
        caching = cfg.train.cache_latents or cfg.data.latents or opts.latents
        if len(shapes) > 1 and phase.component == "denoiser" and caching:
            problems.append(f"{where}.buckets: a latent cache holds one clip shape per phase; train this phase "
                            "from video (no train.cache_latents / --latents) or list one bucket")
        try:
            deepspeed_config(cfg.train, phase, plan.num_workers)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if cfg.model.vae.vgg16_weights and not Path(cfg.model.vae.vgg16_weights).is_file():
        problems.append(f"model.vae.vgg16_weights: no file at {cfg.model.vae.vgg16_weights}")
    if cfg.train.init_from and not storage.exists(model_dir.weights_file(cfg.train.init_from)):
        problems.append(f"train.init_from: no {model_dir.WEIGHTS} in {cfg.train.init_from}")
    if cfg.train.mode != "full":
        problems += [f"curriculum.phases.{i} '{phases[i].name}' trains the VAE: train.mode={cfg.train.mode} trains "
                     f"adapters on the denoiser only; run the denoiser phases (--start-phase)"
                     for i in range(max(0, opts.start_phase), min(end, last) + 1) if phases[i].component == "vae"]
    problems += check_data(cfg, opts, end)
    if problems:
        raise ConfigError("\n".join(p if p.startswith("config:") else f"config: {p}" for p in problems))
    warn_untrained_vae(cfg, opts)


def check_data(cfg: Config, opts: RunOptions, end: int) -> list[str]:
    """--data's index.json parses and every phase to run has clips in it."""
    from aiprod.data.dataset import phase_shards
    from aiprod.data.shards import ShardError, read_index

    try:
        index = read_index(opts.data)
    except (ShardError, OSError, UnicodeDecodeError) as exc:
        return [f"--data: {exc}"]
    if index is None:
        return [f"--data: no index.json in {opts.data} (build shards with jobs/make_shards.py)"]
    if not isinstance(index.get("shards"), list):
        return [f"--data: {opts.data}/index.json lists no shards"]
    problems = []
    for i in range(max(0, opts.start_phase), min(end, len(cfg.curriculum.phases) - 1) + 1):
        phase = cfg.curriculum.phases[i]
        try:
            found = phase_shards(opts.data, phase, cfg.data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [f"--data: {opts.data}/index.json is malformed ({type(exc).__name__}: {exc})"]
        if not found:
            problems.append(f"curriculum.phases.{i} '{phase.name}': no train shard in {opts.data} holds clips of "
                            f"levels {phase.levels}")
    return problems


def warn_untrained_vae(cfg: Config, opts: RunOptions) -> None:
    """A denoiser learns the VAE's latent space: training one on a random VAE is almost always a
    mistake (a --start-phase past the VAE phases, or a preset that expects train.init_from)."""
    phases = cfg.curriculum.phases
    first = phases[opts.start_phase] if 0 <= opts.start_phase < len(phases) else None
    if first is None or first.component != "denoiser" or cfg.train.init_from or opts.resume:
        return
    message = (f"WARNING: phase {opts.start_phase} '{first.name}' trains the denoiser, but no VAE phase runs "
               "before it and train.init_from is not set: the VAE and text encoder start untrained. "
               "Set train.init_from to a run's final/ (or a checkpoint) to start from trained ones.")
    print(message, flush=True)


def plan_workers(cfg: Config, requested: str | int) -> tuple[Config, WorkerPlan]:
    requested = cfg.train.workers if requested == "auto" and cfg.train.workers != "auto" else requested
    plan = choose_workers(cfg, requested, cluster_gpus())
    cfg = cfg.with_overrides(plan.overrides)
    log.info("workers: %s", plan.reason)
    print(f"workers: {plan.reason}", flush=True)
    return cfg, plan


def steps_per_epoch(data_uri: str, cfg: Config, world: int, active: range) -> dict[int, int | None]:
    """Optimizer steps per pass for phases whose LR schedule depends on it (epoch caps), from the
    sample counts in index.json (an upper bound: clips too short for the phase are dropped later)."""
    from aiprod.data.dataset import eligible_samples

    out: dict[int, int | None] = {}
    for i in active:
        phase = cfg.curriculum.phases[i]
        if phase.epochs is None or (phase.exit == "steps" and phase.steps is not None):
            out[i] = None
            continue
        rows = eligible_samples(data_uri, phase, cfg.data, "train")
        out[i] = rows // world // phase.batch_size // phase.grad_accum
        if out[i] == 0:
            raise ConfigError(f"config: curriculum.phases.{i}: {rows} clips give no full batch of "
                              f"{phase.batch_size} x {phase.grad_accum} per worker on {world} workers")
    return out


def run_curriculum(cfg: Config, opts: RunOptions, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run (or resume) the curriculum; returns the run's summary.json. `callbacks`: Ray Train
    callbacks for the run (the tune search judges each reported checkpoint with one).

    With a latent cache the denoiser phases read it instead of video: `--latents`/`data.latents`
    names one made before; `train.cache_latents` trains the VAE phases, encodes RUN/latents with
    that VAE (reused when it matches) and then trains the denoiser phases in a second worker group."""
    opts = replace(opts, data=storage.absolute(opts.data))
    uri = run_uri(opts)
    cfg, plan = plan_workers(cfg, opts.workers)
    if cfg.train.init_from:
        from aiprod.adapter_dir import pin_reference

        cfg.train.init_from = pin_reference(cfg.train.init_from, cfg.registry.root, cfg.registry)
    check_config(cfg, opts, plan)
    report_truncation(opts.data, cfg.model.text)  # "captions: en 0.0% truncated at max_length 64, ..."
    end = len(cfg.curriculum.phases) - 1 if opts.end_phase is None else opts.end_phase
    latents = given_cache(cfg, opts, uri, end)
    exists = run_exists(uri)
    if exists and not opts.resume:
        if not opts.replace:
            raise RunExistsError(f"run '{opts.run_name}' already exists at {uri}: pass --resume to continue it "
                                 "or choose another --run-name")
        log.warning("replacing the existing run at %s", uri)
        storage.delete(uri)
    if opts.resume and not exists:
        raise FileNotFoundError(f"--resume: no run named '{opts.run_name}' at {uri}")
    if not opts.resume or not exists:
        cfg.data.uri = opts.data  # recorded, so `--resume` finds the run's data by itself
        storage.write_text_atomic(storage.join(uri, RUN_CONFIG), cfg.to_yaml())
    if cfg.train.cache_latents and latents is None and cache_phases(cfg, opts.start_phase, end):
        vae_end = max((i for i in range(opts.start_phase, end + 1)
                       if cfg.curriculum.phases[i].component == "vae"), default=None)
        if vae_end is not None and not phase_done(uri, vae_end):
            _fit(cfg, opts, uri, plan, vae_end, None, callbacks)
            opts = replace(opts, resume=True, resume_phase=None)
        latents = build_run_cache(cfg, opts, uri, end, plan)
    return _fit(cfg, opts, uri, plan, end, latents, callbacks)


LATENT_CACHE_DIR = "latents"  # RUN/latents: the cache train.cache_latents builds


def cache_phases(cfg: Config, first: int, last: int) -> list[int]:
    return [i for i in range(first, last + 1) if cfg.curriculum.phases[i].component == "denoiser"]


def phase_done(uri: str, phase: int) -> bool:
    """Whether the run's newest good checkpoint is past `phase`."""
    found = ckpt.find_latest_good(uri, verify=False)
    return found is not None and found.state["curriculum"]["current"] > phase


def run_vae_fingerprint(cfg: Config, opts: RunOptions, uri: str) -> str | None:
    """The fingerprint of the VAE the run's denoiser phases will use, when it is known before they start:
    its newest checkpoint's (a resumed run) or train.init_from's."""
    from aiprod.data.latent_cache import vae_fingerprint

    found = ckpt.find_latest_good(uri, verify=False) if run_exists(uri) else None
    source = found.uri if found is not None else cfg.train.init_from
    return vae_fingerprint(model_dir.read_weights(source)) if source else None


def given_cache(cfg: Config, opts: RunOptions, uri: str, end: int) -> dict[str, Any] | None:
    """The `--latents`/`data.latents` cache the run's denoiser phases read, checked; None without one."""
    from aiprod.data import latent_cache as lc

    source = opts.latents or cfg.data.latents
    if source is None:
        return None
    phases = cache_phases(cfg, opts.start_phase, end)
    problems = []
    if any(cfg.curriculum.phases[i].component == "vae" for i in range(opts.start_phase, end + 1)):
        problems.append(f"data.latents={source}: a VAE phase runs in phases {opts.start_phase}..{end}, so the "
                        "cache could not match the VAE the denoiser phases get; use train.cache_latents=true, "
                        "or --start-phase past the VAE phases with train.init_from")
    sha = None if problems else run_vae_fingerprint(cfg, opts, uri)
    if not problems and sha is None:
        problems.append(f"data.latents={source}: the run has no trained VAE to check the cache against; set "
                        "train.init_from to the weights the cache was encoded with")
    problems += lc.check_cache(source, sha, [(i, cfg.curriculum.phases[i]) for i in phases], cfg.diffusion.latents)
    if problems:
        raise ConfigError("\n".join(f"config: {p}" for p in problems))
    return _cache_plan(str(source).rstrip("/"), lc.read_index(source), phases)


def build_run_cache(cfg: Config, opts: RunOptions, uri: str, end: int, plan: WorkerPlan) -> dict[str, Any]:
    """train.cache_latents: RUN/latents encoded by the VAE the denoiser phases start from."""
    from aiprod.data.latent_encode import encode_cache

    found = ckpt.find_latest_good(uri, verify=cfg.checkpoint.verify) if run_exists(uri) else None
    weights = found.uri if found is not None else cfg.train.init_from
    if weights is None:
        raise ConfigError("config: train.cache_latents: no VAE phase ran and train.init_from is not set: "
                          "there is no trained VAE to encode the cache with")
    if cfg.diffusion.latents != "mean":
        raise ConfigError(f"config: train.cache_latents: diffusion.latents={cfg.diffusion.latents!r}; a latent "
                          "cache holds posterior means (diffusion.latents=mean)")
    phases = cache_phases(cfg, opts.start_phase, end)
    target = storage.join(uri, LATENT_CACHE_DIR)
    print(f"latent cache: encoding the denoiser phases' clips with the VAE of {weights} -> {target}", flush=True)
    index = encode_cache(opts.data, weights, target, [cfg.curriculum.phases[i] for i in phases], cfg.data,
                         windows=cfg.data.latent_windows, use_gpu=plan.use_gpu)
    return _cache_plan(target, index, phases)


def _cache_plan(uri: str, index: dict[str, Any], phases: list[int]) -> dict[str, Any]:
    """What the workers get: the cache, the phases that read it, and what they check it against."""
    shape = max((b["latent_shape"] for b in index["buckets"].values()), key=math.prod)
    return {"uri": uri, "phases": phases,
            "index": {**{k: index[k] for k in ("vae_sha256", "latent", "counts")}, "latent_shape": shape}}


def _fit(cfg: Config, opts: RunOptions, uri: str, plan: WorkerPlan, end: int, latents: dict[str, Any] | None,
         callbacks: Sequence[Any]) -> dict[str, Any]:
    """One TorchTrainer over phases start..end (continuing from the run's newest checkpoint)."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from aiprod.data.bad_samples import TrainingDataError
    from aiprod.data.dataset import build_phase_dataset
    from aiprod.data.latent_cache import build_latent_dataset
    from aiprod.training.faults import faults_from_env
    from aiprod.training.loop import train_loop_per_worker
    from aiprod.training.run_outputs import SUMMARY_FILE

    active = range(opts.start_phase, end + 1)
    # Our progress line reports throughput; Ray Data's per-dataset bars would drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    cached = set(latents["phases"]) if latents else set()
    datasets = {f"phase{i}": (build_latent_dataset(latents["uri"], cfg.curriculum.phases[i], cfg.data) if i in cached
                              else build_phase_dataset(opts.data, cfg.curriculum.phases[i], cfg.data, "train"))
                for i in active}
    loop_config = {
        "config": cfg.to_dict(), "run_uri": uri, "session": uuid.uuid4().hex[:12],
        "start_phase": opts.start_phase, "end_phase": end, "resume_phase": opts.resume_phase,
        "steps_per_epoch": {str(k): v for k, v in steps_per_epoch(opts.data, cfg, plan.num_workers, active).items()},
        "faults": faults_from_env(), "latents": latents,
    }
    if storage.is_s3(uri):
        storage_path, filesystem = opts.storage[len("s3://"):].rstrip("/"), storage.s3_filesystem()
    else:
        storage_path, filesystem = storage.absolute(opts.storage), None
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.train.placement_strategy),
        run_config=ray.train.RunConfig(
            name=opts.run_name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            callbacks=list(callbacks) or None,
        ),
        datasets=datasets,
    )
    print(f"run: {uri} ({'resume' if opts.resume else 'new'}; phases {opts.start_phase}..{end})", flush=True)
    trainer.fit()
    summary = json.loads(storage.read_text(storage.join(uri, SUMMARY_FILE)))
    if summary.get("status") == "bad_data" and summary.get("session") == loop_config["session"]:
        raise TrainingDataError(f"run {uri} stopped on bad training data: {summary['error']}; fix or remove what "
                                f"it names, then continue with --resume")
    return summary
