"""The models a generator replica serves: arm a (serve.model) and optionally arm b (serve.ab), with
live swaps. A swap loads the new pipeline first and then replaces the reference in one assignment;
requests already running keep the pipeline object they started with, so none is dropped. An arm
that names a moving registry pointer (`production`, `latest`) follows it: a promotion or rollback
in the registry is swapped in within serve.follow_registry_s, the same way. With `ab: {version:
registry}`, arm b follows the registry's A/B pointer (Registry.set_ab): its version and share are
swapped in, changed or taken out the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiprod.config import Config, FaultConfig
from aiprod.config.serving import AB_FROM_REGISTRY
from aiprod.monitoring import serve_metrics
from aiprod.serving.schemas import UserConfig

log = logging.getLogger(__name__)
BUCKETS = 2**32
MOVING_REFS = ("production", "latest")
FOLLOWED = (*MOVING_REFS, AB_FROM_REGISTRY)  # specs whose version is re-read from the registry
CURRENT = "current"  # apply_in_background(CURRENT): re-apply the config in force when the load starts


@dataclass
class LoadFailure:
    """A version that failed to load (a followed pointer's, or a request's adapter): not tried again before
    `retry_at` (monotonic)."""

    target: str | None
    error: str
    attempts: int
    retry_at: float

    @classmethod
    def after(cls, target: str | None, error: str, previous: LoadFailure | None, serve: Any) -> LoadFailure:
        """The failure to load `target` now: retried after serve.load_retry_s, doubling per failure of
        the same target in a row up to serve.load_retry_max_s (an S3 entry is a full download per try)."""
        attempts = previous.attempts + 1 if previous is not None and previous.target == target else 1
        wait_s = min(serve.load_retry_s * 2 ** (attempts - 1), serve.load_retry_max_s)
        return cls(target, error, attempts, time.monotonic() + wait_s)

    @property
    def retry_in_s(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "attempts": self.attempts, "error": self.error,
                "retry_in_s": round(self.retry_in_s, 1)}


@dataclass(frozen=True)
class Served:
    pipeline: Any  # aiprod.diffusion.pipeline.VideoPipeline
    version: str
    spec: str
    source: str  # the directory it was loaded from
    target: str | None = None  # for a moving registry pointer: the version it named at load


def request_bucket(key: str | bytes) -> float:
    """A request's A/B position in [0, 1): the same request always lands in the same arm."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big") / BUCKETS


def resolve_model_dir(spec: str, cfg: Config) -> str:
    """The model directory `spec` names: a directory or s3:// prefix, or a registry reference
    under registry.root (model_dir.locate)."""
    from aiprod.model_dir import locate

    return locate(spec, cfg.registry.root, cfg.registry)[0]


def pointer_target(spec: str, cfg: Config) -> str | None:
    """The version a moving registry pointer (`production`, `latest`, or the A/B pointer for
    AB_FROM_REGISTRY) names now (one small read of the registry); None for any other spec."""
    if spec == AB_FROM_REGISTRY:
        return (ab_pointer(cfg) or {}).get("version")
    if spec not in MOVING_REFS or Path(spec).is_dir():
        return None
    from aiprod.registry import Registry

    return Registry(cfg.registry.root, cfg.registry).pointer(spec)


def ab_pointer(cfg: Config) -> dict[str, Any] | None:
    """The registry's A/B pointer {"version", "fraction", ...}, or None when unset or cleared."""
    from aiprod.registry import Registry

    return Registry(cfg.registry.root, cfg.registry).ab()


def ab_arm(user: UserConfig, cfg: Config) -> tuple[str | None, float]:
    """The spec arm b loads and its share: the user_config's own, or the registry A/B pointer's
    (spec AB_FROM_REGISTRY); (None, 0) for no arm b."""
    if user.ab is None:
        return None, 0.0
    if user.ab.follows_registry:
        pointer = ab_pointer(cfg)
        return (AB_FROM_REGISTRY, float(pointer["fraction"])) if pointer else (None, 0.0)
    return (user.ab.version, user.ab.fraction) if user.ab.fraction > 0 else (None, 0.0)


def _as_user(user: UserConfig | dict[str, Any] | str | None) -> UserConfig | str:
    """A validated user_config, or CURRENT as is."""
    if user == CURRENT or isinstance(user, UserConfig):
        return user
    return UserConfig.model_validate(user or {})


def load_served(spec: str, cfg: Config, device: str) -> Served:
    from aiprod.diffusion.pipeline import VideoPipeline

    target = pointer_target(spec, cfg)
    source = resolve_model_dir(target or spec, cfg)  # the version read, not the pointer: it may move meanwhile
    pipeline = VideoPipeline.from_checkpoint(source, device=device)
    return Served(pipeline, pipeline.version, spec, source, target)


class ModelHost:
    """Arms a/b plus the live fault settings of one replica (applied from Serve's user_config)."""

    def __init__(self, cfg: Config, device: str = "cpu", loader=load_served):
        self.cfg = cfg
        self.device = device
        self._loader = loader
        self._lock = threading.Lock()  # one reconfigure at a time
        self.a: Served | None = None
        self.b: Served | None = None
        self.fraction = 0.0
        self.fault = FaultConfig()
        self.error: str | None = None
        self.updated_at = 0.0
        self.applied_once = False
        self._desired: UserConfig | None = None
        self._loader_thread: threading.Thread | None = None
        self._desired_lock = threading.Lock()
        self.user: UserConfig | None = None  # the last config applied
        self._follower: threading.Thread | None = None
        self.load_failures: dict[str, LoadFailure] = {}  # moving pointer spec -> its failed target

    def _failed(self, spec: str, message: str) -> None:
        """Back off from a moving pointer whose version fails to load (LoadFailure.after)."""
        serve_metrics.model_load_failed(spec)
        if spec not in FOLLOWED:
            return
        try:
            target = pointer_target(spec, self.cfg)
        except Exception:  # noqa: BLE001 - the registry itself is unreadable
            target = None
        self.load_failures[spec] = LoadFailure.after(target, message, self.load_failures.get(spec), self.cfg.serve)

    def _get(self, spec: str | None, keep: list[Served | None]) -> Served | None:
        if spec is None:
            return None
        for served in keep:
            if served is not None and served.spec == spec and (
                    served.target is None or served.target == pointer_target(spec, self.cfg)):
                return served
        return self._loader(spec, self.cfg, self.device)

    def apply(self, user: UserConfig | dict[str, Any] | str) -> None:
        """Load what `user` names, then swap. A model that fails to load leaves the arm as it was
        and is reported in `error` (and /v1/models), so a bad rollout cannot take the service down.
        CURRENT re-applies the config in force (moving registry pointers then load what they name now)."""
        user = _as_user(user)
        with self._lock:
            if user == CURRENT:
                if self.user is None:
                    return
                user = self.user
            keep = [self.a, self.b]
            errors, failed = [], set()
            try:
                a = self._get(user.model, keep)
            except Exception as exc:  # noqa: BLE001 - reported, previous model keeps serving
                errors.append(f"model {user.model!r}: {type(exc).__name__}: {exc}")
                self._failed(user.model, errors[-1])
                failed.add(user.model)
                a = self.a
            b, fraction = None, 0.0
            if user.ab is not None:
                try:
                    spec, share = ab_arm(user, self.cfg)
                    if spec is not None:
                        b, fraction = self._get(spec, keep), share
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"ab.version {user.ab.version!r}: {type(exc).__name__}: {exc}")
                    self._failed(user.ab.version, errors[-1])
                    failed.add(user.ab.version)
            for spec in set(self.load_failures) - failed:
                del self.load_failures[spec]
            self.a, self.b, self.fraction = a, b, fraction
            serve_metrics.model_serving(a, b, fraction)
            self.fault = user.fault
            self.user = user
            self.error = "; ".join(errors) or None
            self.updated_at = time.time()
            self.applied_once = True
        for message in errors:
            log.error("model load failed: %s", message)

    async def reconfigure(self, user: UserConfig | dict[str, Any]) -> None:
        """Serve's reconfigure(): the first model loads before the replica takes requests; later
        ones load in the background while the current model keeps serving."""
        if self.applied_once:
            self.apply_in_background(user)
        else:
            await asyncio.to_thread(self.apply, user)

    def apply_in_background(self, user: UserConfig | dict[str, Any] | str) -> None:
        """apply() on a background thread; the latest call wins, except that CURRENT never replaces a
        config still on its way. The replica keeps serving the current model while the next one loads
        (Serve stops routing to a replica while its reconfigure() runs, so that call must return quickly)."""
        user = _as_user(user)
        with self._desired_lock:
            if user == CURRENT and self._desired is not None:
                return
            self._desired = user
            if self._loader_thread is not None and self._loader_thread.is_alive():
                return
            self._loader_thread = threading.Thread(target=self._apply_latest, name="model-loader", daemon=True)
            self._loader_thread.start()

    def _apply_latest(self) -> None:
        while True:
            with self._desired_lock:
                user, self._desired = self._desired, None
                if user is None:
                    self._loader_thread = None
                    return
            self.apply(user)

    def follow_registry(self, interval_s: float) -> None:
        """Every `interval_s`, re-read the registry pointers the arms follow; when one has moved,
        re-apply the config in force in the background (which loads what the pointer names now).
        0 turns it off. A registry that cannot be read is logged and tried again next time."""
        if interval_s <= 0 or self._follower is not None:
            return

        def follow() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    if not self.pending and self.pointers_moved():
                        self.apply_in_background(CURRENT)
                except Exception as exc:  # noqa: BLE001 - the current model keeps serving
                    log.warning("registry pointer check failed: %s: %s", type(exc).__name__, exc)

        self._follower = threading.Thread(target=follow, name="registry-follower", daemon=True)
        self._follower.start()

    def pointers_moved(self) -> bool:
        """Whether a moving pointer an arm follows now names another version than the one loaded
        (or none is loaded), unless that version failed to load and its back-off has not passed."""
        user = self.user
        if user is None:
            return False
        wanted = [(user.model, self.a)]
        if user.ab is not None and (user.ab.fraction > 0 or user.ab.follows_registry):
            wanted.append((user.ab.version, self.b))
        moved = False
        for spec, served in wanted:
            if spec not in FOLLOWED:
                continue
            if spec == AB_FROM_REGISTRY:
                pointer = ab_pointer(self.cfg)
                target = pointer["version"] if pointer else None
                if target is None:  # cleared (or never set): arm b goes, if it is there
                    moved = moved or served is not None
                    continue
                if served is not None and served.target == target and float(pointer["fraction"]) != self.fraction:
                    moved = True  # the same candidate with another share
                    continue
            else:
                target = pointer_target(spec, self.cfg)
            if served is not None and served.spec == spec and served.target == target:
                if self.load_failures.pop(spec, None) is not None and not self.load_failures:
                    self.error = None  # the pointer is back on the version being served
                continue
            failure = self.load_failures.get(spec)
            if failure is not None and failure.target == target and time.monotonic() < failure.retry_at:
                continue
            moved = True
        return moved

    @property
    def pending(self) -> bool:
        return self._desired is not None or (self._loader_thread is not None and self._loader_thread.is_alive())

    def pick(self, bucket: float) -> tuple[str, Served | None]:
        a, b, fraction = self.a, self.b, self.fraction  # one consistent snapshot
        if b is not None and bucket < fraction:
            return "b", b
        return "a", a

    def info(self) -> dict[str, Any]:
        def describe(served: Served | None) -> dict[str, Any] | None:
            return None if served is None else {"version": served.version, "spec": served.spec,
                                                "source": served.source, "pointer_target": served.target}

        return {
            "a": describe(self.a),
            "b": describe(self.b),
            "ab_fraction": self.fraction,
            "error": self.error,
            "load_failures": {spec: f.describe() for spec, f in self.load_failures.items()},
            "fault": self.fault.model_dump(),
            "updated_at": self.updated_at,
            "loading": self.pending,
            "pid": os.getpid(),  # the same pid across a version switch: reconfigured in place
        }
