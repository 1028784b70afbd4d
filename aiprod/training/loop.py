"""The per-worker training loop Ray Train runs on every rank: the whole curriculum, phase by phase.

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

import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from aiprod import model_dir, storage
from aiprod.config import Config, PhaseConfig, validate
from aiprod.training import checkpoint as ckpt
from aiprod.training.batches import BAD_DATA, BATCH, PhaseBatches
from aiprod.training.curriculum import Curriculum, PhaseProgress, is_finite, planned_steps
from aiprod.training.engine import (
    PhaseEngine, autocast, build_engine, destroy_engine, gathered_state_dict, worker_device,
)
from aiprod.training.logging import (
    Progress, RunLogger, contact_sheet_png, loss_curve_png, to_uint8_frames, write_file,
)
from aiprod.training.losses import VAELoss
from aiprod.training.process import prepare_training_process

SUMMARY_FILE = "summary.json"
FINAL_DIR = "final"
PROBE_SEED_OFFSET = 7919  # the probe batch's noise/timesteps come from this fixed seed


class Rollback(Exception):
    """K non-finite losses in a row: restore the last checkpoint with a lower LR."""


class BadData(Exception):
    """Some rank's data failed (the message names shards or clips): every rank stops the run."""


class PhaseModule(nn.Module):
    """What the engine trains in one phase; forward(inputs, captions, generator) -> (loss, parts),
    inputs: video, or with `from_latents` a latent cache's normalised latents.

    Children are named as in VideoModel, so its state_dict keys are VideoModel keys. The full
    model and the loss helpers are hidden from nn.Module so ZeRO never sees the frozen parts."""

    def __init__(self, model: nn.Module, phase: PhaseConfig, cfg: Config, from_latents: bool = False):
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.component = phase.component
        self.from_latents = from_latents
        self._diffusion_cfg = cfg.diffusion
        if phase.component == "vae":
            self.vae = model.vae
            object.__setattr__(self, "_vae_loss", VAELoss(cfg.model.vae))
        else:
            from aiprod.diffusion.schedule import NoiseSchedule

            self.denoiser = model.denoiser
            self.text = model.text
            object.__setattr__(self, "_schedule", NoiseSchedule(cfg.diffusion))

    def forward(self, inputs: torch.Tensor, captions: list[str], generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.component == "vae":
            return self._vae_loss(self.vae, inputs, generator)
        from aiprod.diffusion import diffusion_loss, latent_diffusion_loss

        loss_fn = latent_diffusion_loss if self.from_latents else diffusion_loss
        return loss_fn(self._model, inputs, captions, self._schedule, self._diffusion_cfg, generator), {}


def set_trainable(model: nn.Module, component: str) -> None:
    model.requires_grad_(False)
    trained = [model.vae] if component == "vae" else [model.denoiser, model.text]
    for module in trained:
        module.requires_grad_(True)
        module.train()
    if component != "vae":
        model.vae.eval()


def _write_line(message: str) -> None:
    # Not print(): Ray Train patches print into its logger, which shows every line twice.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _all_gather(obj: Any) -> list[Any]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Worker:
    def __init__(self, config: dict[str, Any]):
        import ray.train

        self.cfg: Config = validate(config["config"])
        self.run_uri: str = config["run_uri"]
        self.session: str = config["session"]
        self.steps_per_epoch: dict[int, int | None] = {int(k): v for k, v in config["steps_per_epoch"].items()}
        self.start_phase, self.end_phase = config["start_phase"], config["end_phase"]
        self.resume_phase: int | None = config.get("resume_phase")
        self.faults: dict[str, Any] = config.get("faults") or {}
        self._nan_injected = 0
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = worker_device(self.cfg.train.use_gpu is True)
        self.precision = self.cfg.train.precision
        torch.set_num_threads(max(1, int(self.cfg.train.cpus_per_worker)))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.train.tf32
        # A new id per worker-group start: a restart never reuses a checkpoint dir name.
        self.attempt = _broadcast(uuid.uuid4().hex[:8])
        self.nodes = _all_gather(ray.get_runtime_context().get_node_id())  # each rank's Ray node
        self.reported: set[str] = set()  # checkpoints this worker group has fully reported
        self.rollbacks = 0
        self.generator = torch.Generator(device=self.device)
        self.logger = RunLogger(self.run_uri) if self.rank == 0 else None
        self.config_yaml = self.cfg.to_yaml()
        self.phase_engine: PhaseEngine | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.model: nn.Module
        self.cur: Curriculum
        self.resume_uri: str | None = None
        self.carry_uri: str | None = None  # the phase-end checkpoint whose optimizer state the next phase keeps
        self.probe: dict[str, Any] | None = None  # the phase's probe batch (its first)
        self.latents: dict[str, Any] | None = config.get("latents")
        self.data = PhaseBatches(self.cfg, self.rank, self.world, self.latents)

    # ------------------------------------------------------------------ model / state

    def fresh_model(self, weights: dict[str, torch.Tensor] | None) -> nn.Module:
        from aiprod.models import build_model

        torch.manual_seed(self.cfg.train.seed)  # the same initial weights on every rank
        model = build_model(self.cfg.model)
        if weights is not None:
            from aiprod.diffusion.latents import STAT_KEYS

            missing = [k for k in STAT_KEYS if k not in weights]
            if missing:  # weights from before latent statistics were stored: measure them again
                self._say(f"weights without {', '.join(missing)}: the next denoiser phase measures them")
                weights = {**weights, **{k: v for k, v in model.state_dict().items() if k in missing}}
            model.load_state_dict(weights, strict=True)
        model.denoiser.set_activation_checkpointing(
            self.cfg.train.activation_checkpointing or self.cfg.model.denoiser.activation_checkpointing)
        return model.to(self.device)

    def seed_rng(self) -> None:
        seed = self.cfg.train.seed * 1000 + self.rank
        torch.manual_seed(seed)
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % 2**32)
        self.generator.manual_seed(seed + 1)

    def restore(self) -> None:
        """Model + curriculum from the newest good checkpoint of this run (or a fresh start)."""
        found = None
        if self.rank == 0:
            found = ckpt.find_latest_good(self.run_uri, verify=self.cfg.checkpoint.verify,
                                          reported=self.reported)
            for name, problems in found.skipped if found else []:
                self._say(f"WARNING: checkpoint {name} is corrupt or partial ({problems}); using the one before")
                self._log({"event": "checkpoint_skipped", "name": name, "problems": problems})
        found = _broadcast(found)
        self.resume_uri = self.carry_uri = None
        self.probe = None
        self.seed_rng()
        if found is None:
            self.cur = Curriculum(self.cfg.curriculum, self.start_phase, self.end_phase)
            weights = None
            if self.cfg.train.init_from:
                weights = model_dir.read_weights(self.cfg.train.init_from)
                self._say(f"initial weights from {self.cfg.train.init_from}")
            self.model = self.fresh_model(weights)
            return
        uri, state = found.uri, found.state
        self.cur = Curriculum.from_dict(self.cfg.curriculum, state["curriculum"])
        self.cur.end = self.end_phase  # a resumed run may extend or shorten the curriculum
        self.model = self.fresh_model(model_dir.read_weights(uri))
        if self.resume_phase is not None and state.get("session") != self.session:
            self.cur.restart_at(self.resume_phase)
            self._say(f"resuming {uri} at the start of phase {self.resume_phase}")
            return
        mid_phase = not self.cur.finished and self.cur.progress.step > 0
        if mid_phase:
            self.resume_uri = uri  # DeepSpeed state is loaded with the phase engine
        elif not self.cur.finished and ckpt.has_engine_state(uri):
            self.carry_uri = uri  # a phase-end checkpoint: the next phase may keep its optimizer state
        with ckpt.local_copy(uri) as local:
            ckpt.load_rng(local, self.rank, self.generator)
            record = ckpt.load_probe(local, self.rank) if mid_phase else None
        if record is not None:
            self.probe = ({"latents": record["latents"].float(), "caption": record["caption"]} if "latents" in record
                          else {"video": record["video_u8"].float().div(127.5).sub(1.0), "caption": record["caption"]})
        self._say(f"resuming from {uri} (phase {self.cur.current}, global step {self.cur.global_step})")
        self._log({"event": "resumed", "from": uri.rstrip("/").rsplit("/", 1)[-1], "phase": self.cur.current})

    # ------------------------------------------------------------------------ logging

    def _say(self, message: str) -> None:
        """A progress message from rank 0 (Ray forwards worker stdout to the driver)."""
        if self.rank == 0:
            _write_line(message)

    def _log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            cur = getattr(self, "cur", None)  # not set yet while restoring
            self.logger.log(record, cur.global_step if cur is not None else 0)

    # ------------------------------------------------------------------------ batches

    def measure_latent_stats(self, phase_index: int) -> None:
        """The latent shift/scale of the frozen VAE, measured on `diffusion.latent_stats_clips` clips per
        rank of this phase's data (the batches are then trained on as usual) and merged over ranks."""
        from aiprod.diffusion.latents import LatentStats, raw_latents

        batches, taken = self.data.new_pass(phase_index), []
        stats = LatentStats(self.cfg.model.vae.latent_channels)
        self.model.vae.eval()
        with torch.no_grad():
            while stats.count == 0 or len(taken) * taken[0]["video"].shape[0] < self.cfg.diffusion.latent_stats_clips:
                batch = next(batches, None)
                if batch is None:
                    break
                taken.append(batch)
                stats.add(raw_latents(self.model.vae, self._video(batch), self.cfg.diffusion.latents, self.generator))
        self._data_goes_on(ended=False)
        stats.sums = torch.tensor(_all_reduce(stats.sums.flatten().tolist()), dtype=torch.float64).view_as(stats.sums)
        measured = stats.apply(self.model.vae)
        clips = _all_reduce([float(sum(b["video"].shape[0] for b in taken))])[0]
        self.data.put_back(phase_index, taken, batches)
        self._say(f"latent statistics of the VAE measured on {int(clips)} clips ({self.cfg.diffusion.latents}s): "
                  f"mean {measured['latent_mean']}, std {measured['latent_std']}")
        self._log({"event": "latent_stats", "phase": phase_index, "clips": int(clips), **measured})

    def _data_goes_on(self, ended: bool) -> bool:
        """Whether no rank's pass has ended (all-reduced); raises BadData on every rank when any
        rank's data failed, with every rank's message."""
        state = _all_reduce([self.data.status(None if ended else {})], "max")[0]
        if state == BAD_DATA:
            raise BadData("; ".join(dict.fromkeys(m for m in _all_gather(self.data.error) if m)))
        return state == BATCH

    def _video(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["video"].to(self.device, non_blocking=True)

    def _inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.data.inputs(batch, self.device)

    def from_cache(self, phase_index: int) -> bool:
        return self.data.from_cache(phase_index)

    def use_latent_cache(self) -> None:
        """Check that the run's VAE made the cache, then take the statistics it was normalised with."""
        from aiprod.data import latent_cache as lc

        uri, index = self.latents["uri"], self.latents["index"]
        sha = lc.vae_fingerprint(self.model.vae.state_dict())
        if sha != index["vae_sha256"]:
            raise lc.LatentCacheMismatch(lc.mismatch_message(uri, index["vae_sha256"], sha))
        lc.apply_stats(self.model.vae, index, uri)
        self._say(f"denoiser phases train from the latent cache {uri} ({index['counts']['clips']} clips)")

    # ----------------------------------------------------------------------- the loop

    def run(self) -> None:
        if self.rank == 0:
            ckpt.cleanup_orphans(self.run_uri)
        self.restore()
        if not self.cur.finished:  # the data's cold start overlaps the DeepSpeed import and engine build
            self.data.prefetch(self.cur.current)
        while not self.cur.finished:
            try:
                self.train_phase()
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
        self._say(f"stopping in phase {phase} at global step {self.cur.global_step}: bad training data: {message}")
        self._log({"event": "bad_data", "phase": phase, "message": message})
        if self.rank == 0:
            self.write_summary(finished=False, status="bad_data", error=message)
            self.logger.close()

    def probe_loss(self, module: PhaseModule, batch: dict[str, Any]) -> float:
        """Loss on this rank's probe batch (the phase's first) under `train.probe_draws` fixed noise
        draws, averaged over draws and ranks: the same measurement at phase start and end."""
        draws = self.cfg.train.probe_draws
        total = 0.0
        video, captions = self._inputs(batch), list(batch["caption"])
        with torch.no_grad(), autocast(self.precision, self.device):
            for draw in range(draws):
                seed = self.cfg.train.seed + PROBE_SEED_OFFSET + draw
                loss, _ = module(video, captions, torch.Generator(device=self.device).manual_seed(seed))
                total += float(loss)
        return _all_reduce([total / draws])[0] / self.world

    def train_phase(self) -> None:
        i, phase, prog = self.cur.current, self.cur.phase_cfg, self.cur.progress
        started = time.monotonic()
        prog.planned_steps = planned_steps(phase, self.steps_per_epoch.get(i))
        set_trainable(self.model, phase.component)
        if phase.component == "vae" and prog.step == 0:
            self.model.vae.reset_latent_stats()  # measured again once this VAE is trained
        elif self.from_cache(i):
            self.use_latent_cache()
        elif phase.component == "denoiser" and not self.model.vae.calibrated:
            self.measure_latent_stats(i)
        module = PhaseModule(self.model, phase, self.cfg, from_latents=self.from_cache(i))
        self.phase_engine = build_engine(module, self.cfg.train, phase, self.world, prog.planned_steps, prog.lr_scale)
        engine = self.phase_engine.engine
        if self.resume_uri is not None:
            with ckpt.local_copy(self.resume_uri) as local:
                ckpt.load_engine_state(engine, local)
            self.resume_uri = None
        elif self.carry_uri is not None and self.keeps_optimizer(i):
            with ckpt.local_copy(self.carry_uri) as local:
                ckpt.load_engine_state(engine, local, lr_scheduler=False)  # this phase's own LR schedule
            self._say(f"phase {i}: optimizer state carried over from phase {i - 1}")
        self.carry_uri = None
        self.phase_engine.set_lr_scale(prog.lr_scale)
        self._say(f"phase {i} '{phase.name}' ({phase.component}): up to {prog.planned_steps} steps, "
                  f"from step {prog.step}, lr {phase.lr:g} x {prog.lr_scale:g}, {self.world} workers, "
                  f"ZeRO-{self.cfg.train.zero_stage}, {self.precision}")
        progress = Progress(self.cfg.train.progress_every_s, prog.planned_steps, prog.step)
        samples_per_micro = phase.batch_size * self.world
        self.cur.restart_clock()
        reason = self.cur.exit_reason()
        step_losses: list[float] = []
        step_parts: dict[str, float] = {}
        while reason is None:
            batches = self.data.new_pass(i)
            took_step_this_pass = False
            while reason is None:
                t0 = time.monotonic()
                batch = next(batches, None)
                wait = time.monotonic() - t0
                if not self._data_goes_on(ended=batch is None):
                    break  # some rank's shard is exhausted: the pass ends for all
                if self.probe is None:
                    self.probe = batch
                    prog.probe_start = self.probe_loss(module, batch)
                video, captions = self._inputs(batch), list(batch["caption"])
                with autocast(self.precision, self.device):
                    loss, parts = engine(video, captions, self.generator)
                value, prog.running_s = (v / self.world for v in _all_reduce([float(loss.detach()),
                                                                             time.monotonic() - started]))
                if self._inject_nan(self.cur.global_step + 1):
                    value = float("nan")
                if not is_finite(value):
                    self._nonfinite(value)
                    continue
                before = engine.global_steps
                engine.backward(loss)
                engine.step()
                progress.add(samples_per_micro, wait)
                step_losses.append(value)
                for key, part in parts.items():
                    step_parts[key] = step_parts.get(key, 0.0) + part
                if engine.global_steps == before:
                    continue  # inside a gradient-accumulation window
                took_step_this_pass = True
                mean_loss = sum(step_losses) / len(step_losses)
                self.cur.record_step(mean_loss, samples_per_micro * len(step_losses))
                self.phase_engine.schedule.time_fraction = self.cur.time_fraction()
                self._after_step(mean_loss, {k: v / len(step_losses) for k, v in step_parts.items()}, progress)
                step_losses.clear()
                step_parts.clear()
                reason = self._check_plateau() or self.cur.exit_reason()
                if reason is None and self.cur.global_step % self.cfg.checkpoint.every_steps == 0:
                    self.save("interval")
            if reason is None:  # the pass over the data ended
                if not took_step_this_pass and prog.step == 0:
                    raise RuntimeError(
                        f"phase {i} '{phase.name}': no full batch of {phase.batch_size} clips per worker in its "
                        f"data (levels {phase.levels}, {self.world} workers); add data or lower batch_size")
                self.cur.end_epoch()
                self._log({"event": "epoch_end", "phase": i, "epoch": prog.epoch})
                reason = self.cur.exit_reason()
        probe, self.probe = self.probe, None
        if probe is not None:
            prog.probe_end = self.probe_loss(module, probe)
        self.complete_phase(reason, started, probe)

    def _inject_nan(self, step: int) -> bool:
        """Test hook (AIPROD_FAULT_NAN_AT_STEP / _COUNT): that many non-finite losses in a row, once."""
        if self.faults.get("nan_at_step") != step or self._nan_injected >= self.faults.get("nan_count", 1):
            return False
        self._nan_injected += 1
        return True

    def _nonfinite(self, value: float) -> None:
        rollback = self.cur.record_nonfinite(self.cfg.train.nan_rollback_after)
        prog = self.cur.progress
        self._say(f"non-finite loss ({value}) at phase {self.cur.current} step {prog.step + 1}: step skipped "
                  f"({prog.nan_streak} in a row)")
        self._log({"event": "nonfinite_loss", "phase": self.cur.current, "nan_skipped": prog.nan_skipped,
                   "nan_streak": prog.nan_streak})
        if rollback:
            raise Rollback()

    def _after_step(self, loss: float, parts: dict[str, float], progress: Progress) -> None:
        prog, engine = self.cur.progress, self.phase_engine
        stats = progress.stats(prog.step)
        record = {"phase": self.cur.current, "phase_name": prog.name, "step": prog.step, "loss": loss,
                  "lr": engine.lr, **{f"loss_{k}": v for k, v in parts.items()},
                  "samples_per_s": stats["samples_per_s"], "data_wait_share": stats["data_wait_share"],
                  "nan_skipped": prog.nan_skipped, "nan_rollbacks": prog.nan_rollbacks}
        self._log(record)
        if progress.due():
            self._say(progress.line(self.cur.current, prog.name, prog.step, loss, engine.lr,
                                    engine.schedule.time_fraction))
        self._maybe_kill()

    def _maybe_kill(self) -> None:
        """Test hook (AIPROD_FAULT_KILL_AT_STEP): SIGKILL this worker once, at a global step."""
        at = self.faults.get("kill_at_step")
        if at is None or self.cur.global_step != at or self.rank != self.faults.get("kill_rank", self.world - 1):
            return
        marker = storage.join(self.run_uri, ".fault-kill-done")
        if storage.exists(marker):
            return
        storage.write_text_atomic(marker, f"killed rank {self.rank} at global step {at}\n")
        _write_line(f"fault injection: SIGKILL rank {self.rank} at global step {at}")
        os.kill(os.getpid(), signal.SIGKILL)

    def _check_plateau(self) -> str | None:
        if not self.cur.eval_due():
            return None
        decision = self.cur.evaluate()
        prog = self.cur.progress
        self._log({"event": "evaluate", "phase": self.cur.current, "decision": decision,
                   "best_loss": prog.best_loss, "lr_scale": prog.lr_scale})
        if decision == "improved" and self.cfg.checkpoint.keep_best:
            trained = gathered_state_dict(self.phase_engine)  # collective under ZeRO-3
            self.best_state = trained if self.rank == 0 else None
        elif decision == "reduce_lr":
            self.phase_engine.set_lr_scale(prog.lr_scale)
            self._say(f"loss plateau: lr x {self.cur.phase_cfg.reduce_factor} (now x {prog.lr_scale:g})")
        return "plateau" if decision == "stop" else None

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

    def keeps_optimizer(self, phase_index: int) -> bool:
        """curriculum.keep_optimizer, for a phase that trains what the phase before it trained."""
        phases = self.cfg.curriculum.phases
        return (self.cfg.curriculum.keep_optimizer and phase_index > 0
                and phases[phase_index].component == phases[phase_index - 1].component)

    def save(self, why: str, full_state: dict[str, torch.Tensor] | None = None) -> str:
        """A checkpoint of the current state, reported through Ray Train (collective); its URI."""
        import ray.train

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
            probe = None
            if why == "interval" and self.probe is not None and "latents" in self.probe:
                probe = {"latents": self.probe["latents"].float().cpu(), "caption": list(self.probe["caption"])}
            elif why == "interval" and self.probe is not None:
                video_u8 = (self.probe["video"].float() + 1).mul(127.5).round().to(torch.uint8).cpu()
                probe = {"video_u8": video_u8, "caption": list(self.probe["caption"])}
            ckpt.write_checkpoint(Path(tmp), engine, full_state, self.state(), self.config_yaml, self.generator,
                                  self.rank, probe)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
        self.reported.add(name)
        self._log({"event": "checkpoint", "name": name, "why": why})
        if self.logger is not None:
            self.logger.sync()
        return storage.join(self.run_uri, name)

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
            self._say(f"rolled back to global step {self.cur.global_step} after "
                      f"{self.cfg.train.nan_rollback_after} non-finite losses; lr x {prog.lr_scale:g}")
            self._log({"event": "rollback", "phase": failed, "nan_rollbacks": prog.nan_rollbacks,
                       "lr_scale": prog.lr_scale})

    # ---------------------------------------------------------------------- phase end

    def complete_phase(self, reason: str, started: float, probe: dict[str, Any] | None) -> None:
        i, phase = self.cur.current, self.cur.phase_cfg
        trained = gathered_state_dict(self.phase_engine)  # collective under ZeRO-3
        full = ckpt.model_state(self.model, trained)
        prog = self.cur.finish_phase(reason, self.cur.progress.trained_s + time.monotonic() - started)
        if not self.cur.finished:
            self.data.prefetch(self.cur.current)
        # every rank passes the state: no second (collective) gather
        self.carry_uri = self.save("phase_end", full_state=full)
        destroy_engine(self.phase_engine)
        self.phase_engine = None
        self.model = self.fresh_model(full)  # plain modules again, full weights on every rank
        if self.rank == 0:
            self.write_phase_outputs(i, phase, prog, probe)
        self._say(f"phase {i} '{phase.name}' done ({reason}): {prog.step} steps, loss "
                  f"{prog.summary()['first_loss']:.4f} -> {prog.summary()['last_loss']:.4f}, probe "
                  f"{prog.probe_start} -> {prog.probe_end}")
        self.best_state = None

    def write_phase_outputs(self, i: int, phase: PhaseConfig, prog: PhaseProgress, probe: dict | None) -> None:
        import json

        stem = f"phase{i}-{phase.name}"
        write_file(self.run_uri, f"phases/{stem}.json", json.dumps(prog.summary(), indent=1).encode())
        if prog.losses:
            write_file(self.run_uri, f"samples/{stem}-loss.png", loss_curve_png(prog.losses, f"phase {i}: {phase.name}"))
        if self.best_state is not None:
            best = ckpt.model_state(self.model, self.best_state)
            with tempfile.TemporaryDirectory() as tmp:
                model_dir.write_weights(best, Path(tmp) / model_dir.WEIGHTS)
                (Path(tmp) / "best.json").write_text(json.dumps(
                    {"phase": i, "name": phase.name, "best_loss": prog.best_loss, "best_step": prog.best_step}))
                from aiprod.manifest import write_manifest

                write_manifest(tmp)
                storage.upload_dir(tmp, storage.join(self.run_uri, "best", stem))
        frames = self.sample_frames(phase, probe)
        self.write_video(frames, f"samples/{stem}", phase.fps)
        self.write_summary(finished=False)
        self.logger.sync()

    def sample_frames(self, phase: PhaseConfig, probe: dict | None):
        """VAE phases: [input | reconstruction] of a probe clip; denoiser phases: a generated clip."""
        import numpy as np

        self.model.eval()
        with torch.no_grad():
            if phase.component == "vae":
                if probe is None:
                    return None
                video = self._video(probe)[:1].float()
                recon, _ = self.model.vae(video, sample=False)
                return np.concatenate([to_uint8_frames(video[0]), to_uint8_frames(recon[0])], axis=2)
            from aiprod.diffusion.pipeline import VideoPipeline

            pipeline = VideoPipeline(self.cfg, self.model)
            return pipeline.generate(
                self.cfg.train.sample_prompt, language="en", seconds=(phase.frames - 1) / phase.fps, fps=phase.fps,
                height=phase.height, width=phase.width, seed=self.cfg.train.seed,
                steps=self.cfg.diffusion.sample_steps, guidance=self.cfg.diffusion.guidance)

    def write_video(self, frames, stem: str, fps: float) -> None:
        if frames is None:
            return
        from aiprod.data.video_encode import write_mp4

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sample.mp4"
            write_mp4(frames, path, fps)
            storage.put_file(path, storage.join(self.run_uri, f"{stem}.mp4"))
        write_file(self.run_uri, f"{stem}-frames.png", contact_sheet_png(frames, self.cfg.train.contact_sheet_frames))

    def write_summary(self, finished: bool, status: str | None = None, error: str | None = None) -> None:
        import json

        summary = {"run": self.run_uri, "session": self.session,
                   "status": status or ("finished" if finished else "running"), **({"error": error} if error else {}),
                   "config_hash": self.cfg.hash(), "preset": self.cfg.preset, "workers": self.world,
                   "worker_nodes": self.nodes,
                   "zero_stage": self.cfg.train.zero_stage, "precision": self.precision, **self.cur.summary()}
        write_file(self.run_uri, SUMMARY_FILE, json.dumps(summary, indent=1, default=float).encode())

    def finalize(self) -> None:
        """The final consolidated model dir RUN/final/ (+ a sample MP4) and summary.json."""
        import ray.train

        if self.rank == 0:
            from aiprod.diffusion.pipeline import VideoPipeline

            # the sample takes the shape of the last denoiser phase run; a run that trained no denoiser has none
            trained = [i for i in range(self.cur.start, self.cur.end + 1)
                       if self.cur.phases[i].component == "denoiser" and self.cur.phases[i].step > 0]
            last = self.cfg.curriculum.phases[trained[-1]] if trained else None
            self.model.eval()
            pipeline = VideoPipeline(self.cfg, self.model)
            final = storage.join(self.run_uri, FINAL_DIR)
            if storage.is_s3(final):
                with tempfile.TemporaryDirectory() as tmp:
                    pipeline.save_pretrained(Path(tmp) / FINAL_DIR)
                    storage.delete(final)
                    storage.upload_dir(Path(tmp) / FINAL_DIR, final)
            else:
                pipeline.save_pretrained(final)  # written beside it, renamed into place
            if last is not None:
                with torch.no_grad():
                    frames = pipeline.generate(
                        self.cfg.train.sample_prompt, language="en", seconds=(last.frames - 1) / last.fps,
                        fps=last.fps, height=last.height, width=last.width, seed=self.cfg.train.seed,
                        steps=self.cfg.diffusion.sample_steps, guidance=self.cfg.diffusion.guidance)
                self.write_video(frames, "samples/final", last.fps)
            self.write_summary(finished=True)
            self._say(f"final model: {storage.join(self.run_uri, FINAL_DIR)}")
            self.logger.close()
        ray.train.report({"global_step": self.cur.global_step, "finished": True})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (config built by aiprod.training.runner)."""
    prepare_training_process()
    Worker(config).run()
