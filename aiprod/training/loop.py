"""The per-worker training loop Ray Train runs on every rank: the whole curriculum, phase by phase.

    train_loop_per_worker(config)  ->  RankTrainer(config).run():
        restore (newest good checkpoint, or a fresh model) -> PhaseTrainer(...).train() per phase
        (aiprod.training.phase) -> final model; NaN rollbacks and bad-data stops on the way

Every rank builds the same VideoModel, then per phase a DeepSpeed engine around the trained
component (the VAE in `vae` phases; the denoiser and the text encoder in `denoiser` phases - the
text encoder has no other training signal, so it learns with the denoiser - while the VAE stays
frozen, in eval mode, outside the engine). Weights carry into the next phase through a freshly
built model, which also drops the previous engine's ZeRO hooks and partitions.

Every decision (end of epoch, NaN skip, rollback, plateau, stop) is taken on all-reduced values,
so the ranks stay in lock-step and call `ray.train.report` the same number of times. Bad data on
any rank stops every rank at the same step, with summary.json's status `bad_data` (the driver
raises TrainingDataError): an error in one worker would be retried by Ray Train on the same bytes.

Data resumes at an epoch boundary: a run restored mid-epoch starts a new pass over the phase's
data, with the step counter, optimizer, LR schedule and RNG states of its checkpoint.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aiprod import model_dir, storage
from aiprod.config import Config, validate
from aiprod.models.adapters import AdapterSpec, add_adapters, is_adapted_state
from aiprod.training import checkpoint as ckpt
from aiprod.training.batches import PhaseBatches
from aiprod.training.collectives import all_gather, broadcast
from aiprod.training.curriculum import Curriculum
from aiprod.training.ema import ShardedEMA
from aiprod.training.engine import PhaseEngine, destroy_engine, gathered_state_dict, worker_device
from aiprod.training.faults import FaultInjector
from aiprod.training.phase import PROBE_SEED_OFFSET, BadData, PhaseTrainer, Rollback
from aiprod.training.process import prepare_training_process
from aiprod.training.run_log import RunLogger
from aiprod.training.run_outputs import RunOutputs


class RankTrainer:
    """One rank's run: its model, curriculum, data and checkpoints, from restore to the final model."""

    def __init__(self, config: dict[str, Any]):
        import ray
        import ray.train

        self.cfg: Config = validate(config["config"])
        self.run_uri: str = config["run_uri"]
        self.session: str = config["session"]
        self.steps_per_epoch: dict[int, int | None] = {int(k): v for k, v in config["steps_per_epoch"].items()}
        self.start_phase, self.end_phase = config["start_phase"], config["end_phase"]
        self.resume_phase: int | None = config.get("resume_phase")
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = worker_device(self.cfg.train.use_gpu is True)
        torch.set_num_threads(max(1, int(self.cfg.train.cpus_per_worker)))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.train.tf32
        # A new id per worker-group start: a restart never reuses a checkpoint dir name.
        self.attempt = broadcast(uuid.uuid4().hex[:8])
        nodes = all_gather(ray.get_runtime_context().get_node_id())  # each rank's Ray node
        self.faults = FaultInjector(config.get("faults") or {}, self.run_uri, self.rank, self.world)
        self.reported: set[str] = set()  # checkpoints this worker group has fully reported
        self.rollbacks = 0
        self.generator = torch.Generator(device=self.device)
        self.logger = RunLogger(self.run_uri, self.cfg.train.anomaly) if self.rank == 0 else None
        self.outputs = RunOutputs(self.cfg, self.run_uri, self.session, self.world, nodes)
        self.config_yaml = self.cfg.to_yaml()
        self.phase_engine: PhaseEngine | None = None
        self.ema: ShardedEMA | None = None  # the denoiser phase's EMA (train.ema_decay)
        self.ema_full: dict[str, torch.Tensor] | None = None  # the last phase end's gathered EMA
        self.best_state: dict[str, torch.Tensor] | None = None
        self.model: nn.Module
        self.cur: Curriculum
        self.resume_uri: str | None = None
        self.carry_uri: str | None = None  # the phase-end checkpoint whose optimizer state the next phase keeps
        self.probe: dict[str, Any] | None = None  # the phase's probe batch (its first)
        self.latents: dict[str, Any] | None = config.get("latents")
        self.data = PhaseBatches(self.cfg, self.rank, self.world, self.latents)

    def say(self, message: str) -> None:
        """A progress message from rank 0 (Ray forwards worker stdout to the driver)."""
        if self.rank == 0:  # not print(): Ray Train patches print into its logger, which shows every line twice
            sys.stdout.write(message + "\n")
            sys.stdout.flush()

    def log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            cur = getattr(self, "cur", None)  # not set yet while restoring
            self.logger.log(record, cur.global_step if cur is not None else 0)

    # ----------------------------------------------------------------------------- run

    def run(self) -> None:
        if self.rank == 0:
            ckpt.cleanup_orphans(self.run_uri)
        self.restore()
        if not self.cur.finished:  # the data's cold start overlaps the DeepSpeed import and engine build
            self.data.prefetch(self.cur.current)
        while not self.cur.finished:
            try:
                PhaseTrainer(self).train()
            except Rollback:
                self.rollback()
            except BadData as stop:
                self.stop_on_bad_data(str(stop))
                return
        self.finalize()

    def stop_on_bad_data(self, message: str) -> None:
        """End the run without a new checkpoint: fix or remove the named data, then --resume. The
        driver learns of it from summary.json (Ray Train's result keeps only checkpointed metrics)."""
        phase = self.cur.current
        self.say(f"stopping in phase {phase} at global step {self.cur.global_step}: bad training data: {message}")
        self.log({"event": "bad_data", "phase": phase, "message": message})
        if self.rank == 0:
            self.outputs.write_summary(self.cur, "bad_data", error=message)
            self.logger.close()

    def finalize(self) -> None:
        """The final model directory RUN/final/ (+ a sample MP4) and summary.json, then the last report."""
        import ray.train

        if self.rank == 0:
            final = self.outputs.write_final(self.model, self.cur, self.ema_full)
            self.say(f"final model: {final}")
            self.logger.close()
        ray.train.report({"global_step": self.cur.global_step, "finished": True})

    # ------------------------------------------------------------------- model / state

    def fresh_model(self, weights: dict[str, torch.Tensor] | None) -> nn.Module:
        """The VideoModel on this rank's device from `weights` (None: the seeded initial weights). In
        adapter modes it carries LoRA/DoRA layers: plain weights (the base) get freshly initialised
        adapters, adapted weights (a checkpoint of this run) are loaded into them."""
        from aiprod.models import build_model

        torch.manual_seed(self.cfg.train.seed)  # the same initial weights on every rank
        model = build_model(self.cfg.model)
        adapted = weights is not None and is_adapted_state(weights)
        if self.cfg.train.mode != "full" and adapted:
            model = add_adapters(model, self.adapter_spec, seed=self.cfg.train.seed)
        if weights is not None:
            from aiprod.diffusion.latents import STAT_KEYS

            missing = [k for k in STAT_KEYS if k not in weights]
            if missing:  # weights from before latent statistics were stored: measure them again
                self.say(f"weights without {', '.join(missing)}: the next denoiser phase measures them")
                weights = {**weights, **{k: v for k, v in model.state_dict().items() if k in missing}}
            from aiprod.models.text import state_for_terms

            try:
                weights = state_for_terms(weights, model.text.tokenizer.terms)
            except ValueError as exc:
                raise ValueError(f"train.init_from / resumed weights: {exc}") from None
            model.load_state_dict(weights, strict=True)
        if self.cfg.train.mode != "full" and not adapted:
            model = add_adapters(model, self.adapter_spec, seed=self.cfg.train.seed)
        model.denoiser.set_activation_checkpointing(
            self.cfg.train.activation_checkpointing or self.cfg.model.denoiser.activation_checkpointing)
        return model.to(self.device)

    @property
    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec.from_config(self.cfg.train)

    def seed_rng(self) -> None:
        seed = self.cfg.train.seed * 1000 + self.rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self.generator.manual_seed(seed + 1)

    def keeps_optimizer(self, phase_index: int) -> bool:
        """curriculum.keep_optimizer, for a phase that trains what the phase before it trained."""
        phases = self.cfg.curriculum.phases
        return (self.cfg.curriculum.keep_optimizer and phase_index > 0
                and phases[phase_index].component == phases[phase_index - 1].component)

    def restore(self) -> None:
        """Model + curriculum from the newest good checkpoint of this run (or a fresh start)."""
        found = None
        if self.rank == 0:
            found = ckpt.find_latest_good(self.run_uri, verify=self.cfg.checkpoint.verify, reported=self.reported)
            for name, problems in found.skipped if found else []:
                self.say(f"WARNING: checkpoint {name} is corrupt or partial ({problems}); using the one before")
                self.log({"event": "checkpoint_skipped", "name": name, "problems": problems})
        found = broadcast(found)
        self.resume_uri = self.carry_uri = None
        self.probe = None
        self.ema = self.ema_full = None
        self.seed_rng()
        if found is None:
            self.cur = Curriculum(self.cfg.curriculum, self.start_phase, self.end_phase)
            weights = None
            if self.cfg.train.init_from:
                weights = model_dir.read_weights(self.cfg.train.init_from)
                self.say(f"initial weights from {self.cfg.train.init_from}")
            self.model = self.fresh_model(weights)
            return
        uri, state = found.uri, found.state
        self.cur = Curriculum.from_dict(self.cfg.curriculum, state["curriculum"])
        self.cur.end = self.end_phase  # a resumed run may extend or shorten the curriculum
        self.model = self.fresh_model(model_dir.read_weights(uri))
        if self.resume_phase is not None and state.get("session") != self.session:
            self.cur.restart_at(self.resume_phase)
            self.say(f"resuming {uri} at the start of phase {self.resume_phase}")
            return
        mid_phase = not self.cur.finished and self.cur.progress.step > 0
        if mid_phase:
            self.resume_uri = uri  # DeepSpeed state is loaded with the phase engine
        elif not self.cur.finished and ckpt.has_engine_state(uri):
            self.carry_uri = uri  # a phase-end checkpoint: the next phase may keep its optimizer state
        if not mid_phase:  # mid-phase, every rank's EMA shards are loaded with the phase engine
            self.ema_full = ckpt.read_ema_full(uri)
        with ckpt.local_copy(uri) as local:
            ckpt.load_rng(local, self.rank, self.generator)
            record = ckpt.load_probe(local, self.rank) if mid_phase else None
        if record is not None:
            self.probe = ({"latents": record["latents"].float(), "caption": record["caption"]} if "latents" in record
                          else {"video": record["video_u8"].float().div(127.5).sub(1.0), "caption": record["caption"]})
        self.say(f"resuming from {uri} (phase {self.cur.current}, global step {self.cur.global_step})")
        self.log({"event": "resumed", "from": uri.rstrip("/").rsplit("/", 1)[-1], "phase": self.cur.current})

    # -------------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        prog = self.cur.phases[min(self.cur.current, len(self.cur.phases) - 1)]
        return {
            "phase": self.cur.current, "phase_name": prog.name, "step": prog.step, "epoch": prog.epoch,
            "global_step": self.cur.global_step, "best_loss": prog.best_loss, "finished": self.cur.finished,
            "curriculum": self.cur.to_dict(), "config": self.cfg.to_dict(), "session": self.session,
            "attempt": self.attempt, "world_size": self.world, "time": time.time(),
            "seeds": {"train.seed": self.cfg.train.seed, "rank_seed": "train.seed * 1000 + rank",
                      "probe_seed": self.cfg.train.seed + PROBE_SEED_OFFSET},
        }

    def save(self, why: str, full_state: dict[str, torch.Tensor] | None = None,
             ema_full: dict[str, torch.Tensor] | None = None) -> str:
        """A checkpoint of the current state, reported through Ray Train (collective); its URI."""
        import ray.train

        started = time.monotonic()
        engine = self.phase_engine.engine if self.phase_engine is not None else None
        if full_state is None:
            trained = gathered_state_dict(self.phase_engine) if self.phase_engine is not None else None
            full_state = ckpt.model_state(self.model, trained) if self.rank == 0 else None
        name = ckpt.checkpoint_name(self.cur.global_step, min(self.cur.current, self.cur.end), self.attempt)
        # the newest loss of the newest phase that has one (at a phase end the next has none yet)
        seen = self.cur.phases[:min(self.cur.current, self.cur.end) + 1]
        last_loss = next((p.losses[-1] for p in reversed(seen) if p.losses), None)
        metrics = {"global_step": self.cur.global_step, "phase": self.cur.current, "why": why, "loss": last_loss}
        with tempfile.TemporaryDirectory(prefix="aiprod-ckpt-") as tmp:
            mid_phase = why == "interval"
            ckpt.write_checkpoint(Path(tmp), engine, full_state, self.state(), self.config_yaml, self.generator,
                                  self.rank, self.probe_record() if mid_phase else None,
                                  ema=self.ema.state_dict() if mid_phase and self.ema is not None else None,
                                  ema_full=ema_full)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
        self.reported.add(name)
        self.log({"event": "checkpoint", "name": name, "why": why, "seconds": round(time.monotonic() - started, 3)})
        if self.logger is not None:
            self.logger.sync()
        return storage.join(self.run_uri, name)

    def probe_record(self) -> dict[str, Any] | None:
        """The probe batch as a checkpoint keeps it (video as uint8), so a resumed phase measures the same."""
        if self.probe is None:
            return None
        if "latents" in self.probe:
            return {"latents": self.probe["latents"].float().cpu(), "caption": list(self.probe["caption"])}
        video_u8 = (self.probe["video"].float() + 1).mul(127.5).round().to(torch.uint8).cpu()
        return {"video_u8": video_u8, "caption": list(self.probe["caption"])}

    def rollback(self) -> None:
        """Back to the last good checkpoint, keeping the NaN counters, with lr x nan_lr_factor."""
        failed = self.cur.current
        old = self.cur.progress
        # Steps after the rollback point are trained again: their checkpoints need new names,
        # or Ray Train would register (and later delete) one directory twice.
        self.rollbacks += 1
        self.attempt = f"{self.attempt.split('r')[0]}r{self.rollbacks}"
        destroy_engine(self.phase_engine)
        self.phase_engine = None
        self.restore()
        if self.cur.current == failed:
            prog = self.cur.progress
            prog.nan_skipped, prog.nan_rollbacks = old.nan_skipped, old.nan_rollbacks
            prog.lr_scale = old.lr_scale
            self.cur.record_rollback(self.cfg.train.nan_lr_factor)
            self.say(f"rolled back to global step {self.cur.global_step} after "
                     f"{self.cfg.train.nan_rollback_after} non-finite losses; lr x {prog.lr_scale:g}")
            self.log({"event": "rollback", "phase": failed, "nan_rollbacks": prog.nan_rollbacks,
                      "lr_scale": prog.lr_scale})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (config built by aiprod.training.runner)."""
    prepare_training_process()
    RankTrainer(config).run()
