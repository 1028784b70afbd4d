"""The files rank 0 leaves in a run's directory besides checkpoints and metrics:

    phases/phaseI-NAME.json        the phase's summary (steps, losses, probe loss, exit reason)
    samples/phaseI-NAME.mp4        a clip after the phase (VAE: [input | reconstruction]; denoiser: generated), signed
    samples/phaseI-NAME-frames.png its contact sheet; samples/phaseI-NAME-loss.png its loss curve
    best/phaseI-NAME/              the weights at the phase's best evaluated loss (checkpoint.keep_best)
    summary.json                   the run so far (status: running, finished or bad_data)
    final/                         the finished model directory (aiprod.model_dir), samples/final.mp4
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aiprod import model_dir, storage
from aiprod.config import Config, PhaseConfig
from aiprod.manifest import write_manifest
from aiprod.plots import contact_sheet_png, loss_curve_png
from aiprod.training.curriculum import Curriculum, PhaseProgress
from aiprod.training.run_log import write_file

SUMMARY_FILE = "summary.json"
FINAL_DIR = "final"
BEST_DIR = "best"

log = logging.getLogger(__name__)


def sample_clip(cfg: Config, model: nn.Module, phase: PhaseConfig) -> np.ndarray:
    """A clip of train.sample_prompt at a phase's shape: the phase samples and the final one."""
    from aiprod.diffusion.pipeline import VideoPipeline

    model.eval()
    with torch.no_grad():
        return VideoPipeline(cfg, model).generate(
            cfg.train.sample_prompt, language="en", seconds=(phase.frames - 1) / phase.fps, fps=phase.fps,
            height=phase.height, width=phase.width, seed=cfg.train.seed, steps=cfg.diffusion.sample_steps,
            guidance=cfg.diffusion.guidance)


def reconstruction_clip(model: nn.Module, video: torch.Tensor) -> np.ndarray:
    """[input | VAE reconstruction] side by side, of the first clip of a batch [B, 3, T, H, W]."""
    from aiprod.diffusion.pipeline import to_uint8_frames

    model.eval()
    with torch.no_grad():
        video = video[:1].float()
        recon, _ = model.vae(video, sample=False)
    return np.concatenate([to_uint8_frames(video[0]), to_uint8_frames(recon[0])], axis=2)


class RunOutputs:
    """Rank 0's writer of the files above, for one run."""

    def __init__(self, cfg: Config, run_uri: str, session: str, world: int, nodes: list[str]):
        self.cfg, self.run_uri, self.session, self.world, self.nodes = cfg, run_uri, session, world, nodes
        self.final_weights: str | None = None  # which weights final/ holds: raw or ema (set once written)
        self._provenance = None  # aiprod.provenance.Provenance, made at the first sample

    def phase_end(self, i: int, phase: PhaseConfig, prog: PhaseProgress, frames: np.ndarray | None,
                  best_state: dict[str, torch.Tensor] | None) -> None:
        stem = f"phase{i}-{phase.name}"
        write_file(self.run_uri, f"phases/{stem}.json", json.dumps(prog.summary(), indent=1).encode())
        if prog.losses:
            write_file(self.run_uri, f"samples/{stem}-loss.png", loss_curve_png(prog.losses, f"phase {i}: {phase.name}"))
        if best_state is not None:
            self.write_best(stem, {"phase": i, "name": phase.name, "best_loss": prog.best_loss,
                                   "best_step": prog.best_step}, best_state)
        self.write_video(frames, f"samples/{stem}", phase.fps, phase.component)

    def write_best(self, stem: str, record: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir.write_weights(state, Path(tmp) / model_dir.WEIGHTS)
            (Path(tmp) / "best.json").write_text(json.dumps(record))
            write_manifest(tmp)
            storage.upload_dir(tmp, storage.join(self.run_uri, BEST_DIR, stem))

    def write_video(self, frames: np.ndarray | None, stem: str, fps: float, component: str = "denoiser") -> None:
        """STEM.mp4 (signed) and its contact sheet STEM-frames.png."""
        if frames is None:
            return
        from aiprod.data.video_encode import write_mp4

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sample.mp4"
            write_mp4(frames, path, fps)
            self.sign_sample(path, stem, component)
            storage.put_file(path, storage.join(self.run_uri, f"{stem}.mp4"))
        write_file(self.run_uri, f"{stem}-frames.png", contact_sheet_png(frames, self.cfg.train.contact_sheet_frames))

    def sign_sample(self, path: Path, stem: str, component: str) -> None:
        """Content credentials, as on every video AIPROD makes (`make run` hands samples/final.mp4 out
        as its sample). A sample that cannot be signed is logged and kept: it never stops a run."""
        from aiprod.provenance import Facts, Provenance

        run, stem = self.run_uri.rstrip("/").rsplit("/", 1)[-1], stem.rsplit("/", 1)[-1]
        if component == "vae":
            facts = Facts("model", "vae_reconstruction", "en", "", notes=(
                f"training sample {stem} of run {run}: a training clip beside its VAE reconstruction",))
        else:
            facts = Facts("model", "standard", "en", self.cfg.train.sample_prompt,
                          notes=(f"training sample {stem} of run {run}",))
        try:
            if self._provenance is None:
                self._provenance = Provenance(self.cfg.provenance)
            self._provenance.sign_file(path, facts)
        except Exception as exc:  # noqa: BLE001 - keys missing or refused, the native signer failing
            log.warning("training sample %s left unsigned: %s: %s", stem, type(exc).__name__, exc)

    def write_summary(self, cur: Curriculum, status: str, error: str | None = None) -> None:
        summary = {"run": self.run_uri, "session": self.session, "status": status, **({"error": error} if error else {}),
                   "config_hash": self.cfg.hash(), "preset": self.cfg.preset, "workers": self.world,
                   "worker_nodes": self.nodes, "zero_stage": self.cfg.train.zero_stage,
                   "precision": self.cfg.train.precision, "mode": self.cfg.train.mode,
                   "ema_decay": self.cfg.train.ema_decay, "final_weights": self.final_weights, **cur.summary()}
        write_file(self.run_uri, SUMMARY_FILE, json.dumps(summary, indent=1, default=float).encode())

    def write_final(self, model: nn.Module, cur: Curriculum, ema: dict[str, torch.Tensor] | None = None) -> str:
        """final/ (a model directory; an adapter directory in train.mode lora/dora), a sample at the
        last trained denoiser phase's shape (a run that trained no denoiser has none), and
        summary.json as finished. With an EMA, final/ holds the EMA weights and raw.safetensors the
        raw ones (train.export_ema), or the other way round with ema.safetensors."""
        from aiprod.training.checkpoint import model_state

        final = storage.join(self.run_uri, FINAL_DIR)
        model.eval()
        raw = model_state(model, None)
        chosen, other_name, other = raw, None, None
        if ema is not None:
            averaged = {**raw, **ema}
            chosen, other_name, other = ((averaged, "raw", raw) if self.cfg.train.export_ema
                                         else (raw, "ema", averaged))
        self.final_weights = "ema" if chosen is not raw else "raw"
        extra = {f"{other_name}.safetensors": other} if other is not None else None
        if self.cfg.train.mode == "full":
            model_dir.save(final, chosen, self.cfg, extra=extra)
        else:
            self.write_adapter(final, chosen, extra)
        trained = [i for i in range(cur.start, cur.end + 1)
                   if cur.phases[i].component == "denoiser" and cur.phases[i].step > 0]
        if trained:
            if chosen is not raw:
                model.load_state_dict(chosen)
            last = self.cfg.curriculum.phases[trained[-1]]
            self.write_video(sample_clip(self.cfg, model, last), "samples/final", last.fps)
        self.write_summary(cur, "finished")
        return final

    def write_adapter(self, final: str, state: dict[str, torch.Tensor],
                      extra: dict[str, dict[str, torch.Tensor]] | None) -> None:
        """final/ as an adapter directory: the adapter tensors only, naming the base they sit on."""
        from aiprod import adapter_dir
        from aiprod.models.adapters import AdapterSpec, adapter_state

        spec = AdapterSpec.from_config(self.cfg.train).to_dict()
        base = adapter_dir.base_reference(self.cfg.train.init_from)
        adapter_dir.save(final, adapter_state(state), spec, base, self.cfg, model_dir.DEFAULT_VERSION,
                         extra={k: adapter_state(v) for k, v in (extra or {}).items()})
