"""The model batches a training worker iterates, phase by phase: one home for how they arrive.

- Each phase reads its own Ray dataset shard (`phase{i}`, see aiprod.training.runner): decoded video,
  or a latent cache's rows for denoiser phases that read one.
- A phase's first pass starts in a thread before the phase's engine is built (`prefetch`), so the
  data's cold start (a split coordinator, read and decode tasks: seconds) overlaps the engine build.
- A latent cache whose share fits in `data.latent_memory_mb` is kept in memory after one whole
  pass and reshuffled each later pass, without Ray Data.
- Bad data (a shard or latent shard that fails its sha256, too many clips that do not decode) ends
  the pass and is kept in `error`; `status` tells the loop, which stops every rank together
  instead of letting the error end one worker (which Ray Train would restart to read the same bytes).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from typing import Any

import torch

from aiprod.config import Config


BATCH, PASS_END, BAD_DATA = 0.0, 1.0, 2.0  # `status` values; ranks agree on their max


class PhaseBatches:
    def __init__(self, cfg: Config, rank: int, world: int, latents: dict[str, Any] | None):
        self.cfg, self.rank, self.world = cfg, rank, world
        # {"uri", "index", "phases"}: denoiser phases that train from a latent cache (runner._cache_plan)
        self.latents = latents
        self.prefetched: tuple[int, threading.Thread | None, dict[str, Any]] | None = None
        self.held: dict[int, tuple[torch.Tensor, list[str]]] = {}
        self.passes: dict[int, int] = {}
        self.error: str | None = None  # the bad-data error that ended a pass, kept

    def status(self, batch: dict[str, Any] | None) -> float:
        return BAD_DATA if self.error is not None else PASS_END if batch is None else BATCH

    def from_cache(self, phase_index: int) -> bool:
        return self.latents is not None and phase_index in self.latents["phases"]

    @staticmethod
    def inputs(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """What a phase module trains on: a latent cache's latents, else the decoded video."""
        return (batch["latents"] if "latents" in batch else batch["video"]).to(device, non_blocking=True)

    def batches(self, phase_index: int) -> Iterator[dict[str, Any]]:
        """Model batches of this rank's shard for one pass; a bad-data error ends it and is kept."""
        from aiprod.data.bad_samples import data_error_message

        try:
            yield from self._batches(phase_index)
        except Exception as exc:
            message = data_error_message(exc)
            if message is None:
                raise
            self.error = message

    def _batches(self, phase_index: int) -> Iterator[dict[str, Any]]:
        import ray.train

        from aiprod.data.clips import phase_buckets
        from aiprod.data.dataset import bucket_batches, to_model_batch

        phase = self.cfg.curriculum.phases[phase_index]
        if phase_index in self.held:
            yield from self._held_batches(phase_index, phase.batch_size)
            return
        shard = ray.train.get_dataset_shard(f"phase{phase_index}")
        hold = self.from_cache(phase_index) and self._fits_in_memory()
        kept = []
        bucketed = not self.from_cache(phase_index) and len(phase_buckets(phase)) > 1
        batches = shard.iter_batches(batch_size=phase.batch_size, batch_format="numpy", drop_last=not bucketed)
        if bucketed:  # rows of several shapes: batches of one bucket each
            batches = bucket_batches(batches, phase, phase.batch_size)
        for batch in batches:
            batch = to_model_batch(batch)
            if hold:
                kept.append(batch)
            yield batch
        if hold and kept:  # a whole pass: later passes reshuffle it in memory
            self.held[phase_index] = (torch.cat([b["latents"] for b in kept]), [c for b in kept for c in b["caption"]])

    def _fits_in_memory(self) -> bool:
        """Whether this rank's share of the latent cache fits under data.latent_memory_mb (float32)."""
        index = self.latents["index"]
        per_rank = index["counts"]["clips"] / self.world * 4 * math.prod(index["latent_shape"])
        return per_rank <= self.cfg.data.latent_memory_mb * 2**20

    def _held_batches(self, phase_index: int, batch_size: int) -> Iterator[dict[str, Any]]:
        latents, captions = self.held[phase_index]
        self.passes[phase_index] = self.passes.get(phase_index, 0) + 1
        seed = self.cfg.data.seed * 1_000_003 + self.rank * 1009 + self.passes[phase_index]
        order = torch.randperm(len(latents), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            take = order[start:start + batch_size]
            yield {"latents": latents[take], "caption": [captions[i] for i in take.tolist()]}

    def prefetch(self, phase_index: int) -> None:
        """Start a phase's first pass and fetch its first batch in a thread."""
        box: dict[str, Any] = {"batches": self.batches(phase_index)}

        def fetch() -> None:
            try:
                box["first"] = next(box["batches"], None)
            except BaseException as exc:  # noqa: BLE001 - raised again where the batches are used
                box["error"] = exc

        thread = threading.Thread(target=fetch, name=f"prefetch-phase{phase_index}", daemon=True)
        thread.start()
        self.prefetched = (phase_index, thread, box)

    def new_pass(self, phase_index: int) -> Iterator[dict[str, Any]]:
        """The batches of a new pass over the phase's data: the prefetched pass when there is one."""
        prefetched, self.prefetched = self.prefetched, None
        if prefetched is None or prefetched[0] != phase_index:
            return self.batches(phase_index)
        _, thread, box = prefetched
        if thread is not None:
            thread.join()
        if "error" in box:
            raise box["error"]
        return itertools.chain([box["first"]], box["batches"]) if "first" in box else box["batches"]

    def put_back(self, phase_index: int, taken: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> None:
        """Batches taken from a pass (to measure something on them) are the next pass's first."""
        self.prefetched = (phase_index, None, {"batches": itertools.chain(taken, rest)})
