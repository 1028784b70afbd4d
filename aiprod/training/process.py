"""Set-up of a training worker process, before any model exists: how it allocates and collects.

Both are process-wide and cheap, and both matter most on CPU, where a small phase's step takes tens
of milliseconds and per-step overheads in the kernel or the collector are a visible share of it.
"""

from __future__ import annotations

import ctypes
import gc
import platform

# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for this parameter on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees, for the next step to reuse.

    Every step frees and re-allocates the same activations and gradients. By default glibc hands
    blocks of 128 KiB and up back to the kernel (each is its own mmap, and the heap top is trimmed),
    so the next step faults fresh zeroed pages in again: up to ~3k page faults a step on the tiny
    denoiser phase, worst in a Ray Train worker (its loop runs in a thread, with a malloc arena of its
    own), whose step then ran ~10 % slower than the same step in a plain process. Fixed thresholds
    (blocks under 32 MiB come from the heap, which keeps up to 1 GiB of free top) bring that to a
    handful; larger tensors are mmapped as before.
    Returns False where the C library is not glibc (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def freeze_imported_objects() -> None:
    """Move what the imports made (torch, DeepSpeed, Ray: ~200k objects) out of the collector's sight.

    Each phase end frees the old engine's reference cycles with gc.collect(); a full collection
    scanning every import-time object took 1-2 s a phase on a busy 2-core worker. Frozen objects
    are never freed, so this runs before any model or engine exists."""
    import deepspeed  # noqa: F401 - imported here so its objects are frozen too (the engine needs it anyway)

    from aiprod.diffusion import pipeline  # noqa: F401 - phase-end samples
    from aiprod.models import build_model  # noqa: F401

    gc.collect()
    gc.freeze()


def prepare_training_process() -> None:
    """What every training process (a curriculum worker, each contender of bench/train_step.py) runs first."""
    keep_freed_memory()
    freeze_imported_objects()
