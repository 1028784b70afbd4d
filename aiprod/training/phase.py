"""One curriculum phase on one rank: build its engine, pass over its data, take steps, end it.

    engine -> passes over the phase's data -> micro-steps (forward, NaN check, backward, step)
           -> after each optimizer step: metrics, progress line, plateau check, interval checkpoint
           -> phase end: probe loss again, checkpoint, rank 0's outputs

The run's state (model, curriculum, data, checkpoints) belongs to the RankTrainer (aiprod.training.loop);
a PhaseTrainer reads and advances it for one phase. Every decision is taken on all-reduced values.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from aiprod.models.adapters import parameter_counts
from aiprod.training import checkpoint as ckpt
from aiprod.training.batches import BAD_DATA, BATCH
from aiprod.training.collectives import all_gather, all_reduce
from aiprod.training.curriculum import is_finite, planned_steps
from aiprod.training.ema import ShardedEMA
from aiprod.training.engine import autocast, build_engine, destroy_engine, gathered_state_dict
from aiprod.training.phase_module import PhaseModule, set_trainable
from aiprod.training.progress import ProgressMeter
from aiprod.training.run_outputs import reconstruction_clip, sample_clip

if TYPE_CHECKING:
    from aiprod.training.loop import RankTrainer

PROBE_SEED_OFFSET = 7919  # the probe batch's noise/timesteps come from this fixed seed


class Rollback(Exception):
    """K non-finite losses in a row: restore the last checkpoint with a lower LR."""


class BadData(Exception):
    """Some rank's data failed (the message names shards or clips): every rank stops the run."""


class PhaseTrainer:
    def __init__(self, run: RankTrainer):
        self.run = run
        self.cfg, self.cur, self.data = run.cfg, run.cur, run.data
        self.index, self.phase, self.prog = self.cur.current, self.cur.phase_cfg, self.cur.progress
        self.from_cache = self.data.from_cache(self.index)
        self.started = time.monotonic()
        self.step_losses: list[float] = []
        self.step_parts: dict[str, float] = {}

    # ---------------------------------------------------------------------------- setup

    def build(self) -> None:
        """Trainable parts, latent statistics, and the phase's engine (with resumed or carried state)."""
        run, i, phase, prog = self.run, self.index, self.phase, self.prog
        prog.planned_steps = planned_steps(phase, run.steps_per_epoch.get(i))
        set_trainable(run.model, phase.component, adapters_only=self.cfg.train.mode != "full")
        if phase.component == "vae" and prog.step == 0:
            run.model.vae.reset_latent_stats()  # measured again once this VAE is trained
        elif self.from_cache:
            self.use_latent_cache()
        elif phase.component == "denoiser" and not run.model.vae.calibrated:
            self.measure_latent_stats()
        self.module = PhaseModule(run.model, phase, self.cfg, from_latents=self.from_cache)
        run.phase_engine = build_engine(self.module, self.cfg.train, phase, run.world, prog.planned_steps,
                                        prog.lr_scale)
        ema_shards = None
        if run.resume_uri is not None:
            with ckpt.local_copy(run.resume_uri) as local:
                ckpt.load_engine_state(run.phase_engine.engine, local)
                ema_shards = ckpt.load_ema_shards(local, run.rank)
            run.resume_uri = None
        elif run.carry_uri is not None and run.keeps_optimizer(i):
            with ckpt.local_copy(run.carry_uri) as local:
                ckpt.load_engine_state(run.phase_engine.engine, local, lr_scheduler=False)  # its own LR schedule
            run.say(f"phase {i}: optimizer state carried over from phase {i - 1}")
        run.carry_uri = None
        self.start_ema(ema_shards)
        run.phase_engine.set_lr_scale(prog.lr_scale)
        counts = parameter_counts(self.module)
        run.say(f"phase {i}: {counts['trainable']:,} of {counts['total']:,} parameters train "
                f"({self.cfg.train.mode}); AdamW state {counts['optimizer_state_bytes'] / 2**20:.2f} MiB")
        run.say(f"phase {i} '{phase.name}' ({phase.component}): up to {prog.planned_steps} steps, "
                f"from step {prog.step}, lr {phase.lr:g} x {prog.lr_scale:g}, {run.world} workers, "
                f"ZeRO-{self.cfg.train.zero_stage}, {self.cfg.train.precision}")

    def start_ema(self, shards: dict[str, Any] | None) -> None:
        """train.ema_decay in a denoiser phase: the EMA resumed from this rank's shards, else started
        from the previous phase's EMA where it has the same weights, else from the weights now."""
        run = self.run
        run.ema = None
        if not self.cfg.train.ema_decay or self.phase.component != "denoiser":
            return
        run.ema = ShardedEMA(run.phase_engine.engine, self.cfg.train.ema_decay, offload=self.cfg.train.offload_optimizer)
        if shards is not None:
            run.ema.load_state_dict(shards)
            how = f"resumed ({run.ema.updates} updates)"
        elif run.ema_full is not None:
            how = f"from the previous phase's EMA ({run.ema.start_from(run.ema_full)} tensors)"
        else:
            how = "from the current weights"
        run.say(f"phase {self.index}: EMA of the trained weights, decay {run.ema.decay:g}, {how}")

    def use_latent_cache(self) -> None:
        """Check that the run's VAE made the cache, then take the statistics it was normalised with."""
        from aiprod.data import latent_cache as lc

        uri, index = self.run.latents["uri"], self.run.latents["index"]
        sha = lc.vae_fingerprint(self.run.model.vae.state_dict())
        if sha != index["vae_sha256"]:
            raise lc.LatentCacheMismatch(lc.mismatch_message(uri, index["vae_sha256"], sha))
        lc.apply_stats(self.run.model.vae, index, uri)
        self.run.say(f"denoiser phases train from the latent cache {uri} ({index['counts']['clips']} clips)")

    def measure_latent_stats(self) -> None:
        """The latent shift/scale of the frozen VAE, measured on `diffusion.latent_stats_clips` clips per
        rank of this phase's data (the batches are then trained on as usual) and merged over ranks."""
        from aiprod.diffusion.latents import LatentStats, raw_latents

        run = self.run
        batches, taken = self.data.new_pass(self.index), []
        stats = LatentStats(self.cfg.model.vae.latent_channels)
        run.model.vae.eval()
        with torch.no_grad():
            while stats.count == 0 or len(taken) * taken[0]["video"].shape[0] < self.cfg.diffusion.latent_stats_clips:
                batch = next(batches, None)
                if batch is None:
                    break
                taken.append(batch)
                video = batch["video"].to(run.device, non_blocking=True)
                stats.add(raw_latents(run.model.vae, video, self.cfg.diffusion.latents, run.generator))
        self.data_goes_on(ended=False)
        stats.sums = torch.tensor(all_reduce(stats.sums.flatten().tolist()), dtype=torch.float64).view_as(stats.sums)
        measured = stats.apply(run.model.vae)
        clips = all_reduce([float(sum(b["video"].shape[0] for b in taken))])[0]
        self.data.put_back(self.index, taken, batches)
        run.say(f"latent statistics of the VAE measured on {int(clips)} clips ({self.cfg.diffusion.latents}s): "
                f"mean {measured['latent_mean']}, std {measured['latent_std']}")
        run.log({"event": "latent_stats", "phase": self.index, "clips": int(clips), **measured})

    # ----------------------------------------------------------------------------- loop

    def train(self) -> None:
        """Passes over the phase's data until its exit rule says stop, then the phase end."""
        self.build()
        self.meter = ProgressMeter(self.cfg.train.progress_every_s, self.prog.planned_steps, self.prog.step)
        self.cur.restart_clock()
        reason = self.cur.exit_reason()
        while reason is None:
            reason = self.one_pass()
            if reason is None:  # the pass over the data ended
                self.cur.end_epoch()
                self.run.log({"event": "epoch_end", "phase": self.index, "epoch": self.prog.epoch})
                reason = self.cur.exit_reason()
        self.complete(reason)

    def one_pass(self) -> str | None:
        """Micro-steps over one pass of the data; the exit reason when the phase ends inside it."""
        batches = self.data.new_pass(self.index)
        stepped = False
        while True:
            t0 = time.monotonic()
            batch = next(batches, None)
            wait = time.monotonic() - t0
            if not self.data_goes_on(ended=batch is None):
                break  # some rank's shard is exhausted: the pass ends for all
            if self.run.probe is None:
                self.run.probe = batch
                self.prog.probe_start = self.probe_loss(batch)
            if not self.micro_step(batch, wait):
                continue  # a skipped non-finite loss, or inside a gradient-accumulation window
            stepped = True
            reason = self.after_step()
            if reason is not None:
                return reason
        if not stepped and self.prog.step == 0:
            raise RuntimeError(
                f"phase {self.index} '{self.phase.name}': no full batch of {self.phase.batch_size} clips per "
                f"worker in its data (levels {self.phase.levels}, {self.run.world} workers); add data or lower "
                f"batch_size")
        return None

    def micro_step(self, batch: dict[str, Any], wait: float) -> bool:
        """Forward and backward of one batch; whether it completed an optimizer step."""
        run, engine = self.run, self.run.phase_engine.engine
        video, captions = self.data.inputs(batch, run.device), list(batch["caption"])
        with autocast(self.cfg.train.precision, run.device):
            loss, parts = engine(video, captions, run.generator)
        value, self.prog.running_s = (v / run.world for v in all_reduce([float(loss.detach()),
                                                                        time.monotonic() - self.started]))
        if run.faults.nan_now(self.cur.global_step + 1):
            value = float("nan")
        if not is_finite(value):
            self.nonfinite(value)
            return False
        before = engine.global_steps
        engine.backward(loss)
        engine.step()
        if run.ema is not None and engine.global_steps != before:
            run.ema.update()
        self.meter.add(self.phase.batch_size * run.world, wait)
        self.step_losses.append(value)
        for key, part in parts.items():
            self.step_parts[key] = self.step_parts.get(key, 0.0) + part
        return engine.global_steps != before

    def after_step(self) -> str | None:
        """Record an optimizer step (metrics, progress line, plateau, interval checkpoint); the exit reason."""
        run, engine, prog = self.run, self.run.phase_engine, self.prog
        count = len(self.step_losses)
        loss = sum(self.step_losses) / count
        parts = {k: v / count for k, v in self.step_parts.items()}
        self.step_losses.clear()
        self.step_parts.clear()
        self.cur.record_step(loss, self.phase.batch_size * run.world * count)
        engine.schedule.time_fraction = self.cur.time_fraction()
        stats = self.meter.stats(prog.step, engine.schedule.time_fraction)
        run.log({"phase": self.index, "phase_name": prog.name, "step": prog.step, "loss": loss, "lr": engine.lr,
                 **{f"loss_{k}": v for k, v in parts.items()}, "samples_per_s": stats["samples_per_s"],
                 "data_wait_share": stats["data_wait_share"], "eta_s": stats["eta_s"],
                 "nan_skipped": prog.nan_skipped, "nan_rollbacks": prog.nan_rollbacks})
        if self.meter.due():
            run.say(self.meter.line(self.index, prog.name, prog.step, loss, engine.lr, engine.schedule.time_fraction))
        run.faults.maybe_kill(self.cur.global_step)
        reason = self.check_plateau() or self.cur.exit_reason()
        if reason is None and self.cur.global_step % self.cfg.checkpoint.every_steps == 0:
            run.save("interval")
        return reason

    # ---------------------------------------------------------------------- decisions

    def data_goes_on(self, ended: bool) -> bool:
        """Whether no rank's pass has ended (all-reduced); raises BadData on every rank when any
        rank's data failed, with every rank's message."""
        state = all_reduce([self.data.status(None if ended else {})], "max")[0]
        if state == BAD_DATA:
            raise BadData("; ".join(dict.fromkeys(m for m in all_gather(self.data.error) if m)))
        return state == BATCH

    def probe_loss(self, batch: dict[str, Any]) -> float:
        """Loss on this rank's probe batch (the phase's first) under `train.probe_draws` fixed noise
        draws, averaged over draws and ranks: the same measurement at phase start and end."""
        run, draws, total = self.run, self.cfg.train.probe_draws, 0.0
        video, captions = self.data.inputs(batch, run.device), list(batch["caption"])
        with torch.no_grad(), autocast(self.cfg.train.precision, run.device):
            for draw in range(draws):
                seed = self.cfg.train.seed + PROBE_SEED_OFFSET + draw
                loss, _ = self.module(video, captions, torch.Generator(device=run.device).manual_seed(seed))
                total += float(loss)
        return all_reduce([total / draws])[0] / run.world

    def nonfinite(self, value: float) -> None:
        rollback = self.cur.record_nonfinite(self.cfg.train.nan_rollback_after)
        prog = self.prog
        self.run.say(f"non-finite loss ({value}) at phase {self.index} step {prog.step + 1}: step skipped "
                     f"({prog.nan_streak} in a row)")
        self.run.log({"event": "nonfinite_loss", "phase": self.index, "nan_skipped": prog.nan_skipped,
                      "nan_streak": prog.nan_streak})
        if rollback:
            raise Rollback()

    def check_plateau(self) -> str | None:
        if not self.cur.eval_due():
            return None
        decision = self.cur.evaluate()
        run, prog = self.run, self.prog
        run.log({"event": "evaluate", "phase": self.index, "decision": decision, "best_loss": prog.best_loss,
                 "lr_scale": prog.lr_scale})
        if decision == "improved" and self.cfg.checkpoint.keep_best:
            trained = gathered_state_dict(run.phase_engine)  # collective under ZeRO-3
            run.best_state = trained if run.rank == 0 else None
        elif decision == "reduce_lr":
            run.phase_engine.set_lr_scale(prog.lr_scale)
            run.say(f"loss plateau: lr x {self.phase.reduce_factor} (now x {prog.lr_scale:g})")
        return "plateau" if decision == "stop" else None

    # ---------------------------------------------------------------------- phase end

    def complete(self, reason: str) -> None:
        run, i, phase = self.run, self.index, self.phase
        probe, run.probe = run.probe, None
        if probe is not None:
            self.prog.probe_end = self.probe_loss(probe)
        full = ckpt.model_state(run.model, gathered_state_dict(run.phase_engine))  # collective under ZeRO-3
        if run.ema is not None:
            run.ema_full = run.ema.full_state()  # collective under ZeRO-3
            run.ema = None
        prog = self.cur.finish_phase(reason, self.prog.trained_s + time.monotonic() - self.started)
        if not self.cur.finished:
            self.data.prefetch(self.cur.current)
        # every rank passes them: no second gather
        run.carry_uri = run.save("phase_end", full_state=full, ema_full=run.ema_full)
        destroy_engine(run.phase_engine)
        run.phase_engine = None
        run.model = run.fresh_model(full)  # plain modules again, full weights on every rank
        if run.rank == 0:
            best = ckpt.model_state(run.model, run.best_state) if run.best_state is not None else None
            run.outputs.phase_end(i, phase, prog, self.phase_sample(probe), best)
            run.outputs.write_summary(self.cur, "running")
            run.logger.sync()
        run.say(f"phase {i} '{phase.name}' done ({reason}): {prog.step} steps, loss "
                f"{prog.summary()['first_loss']:.4f} -> {prog.summary()['last_loss']:.4f}, probe "
                f"{prog.probe_start} -> {prog.probe_end}")
        run.best_state = None

    def phase_sample(self, probe: dict[str, Any] | None):
        """VAE phases: [input | reconstruction] of a probe clip; denoiser phases: a generated clip."""
        if self.phase.component == "vae":
            return reconstruction_clip(self.run.model, probe["video"].to(self.run.device)) if probe else None
        return sample_clip(self.cfg, self.run.model, self.phase)
