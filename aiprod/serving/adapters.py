"""Adapters on the served model (POST /v1/videos `adapter`): which registry entry a request's
adapter names, and the few adapter pipelines a replica keeps loaded.

An adapter is a registry entry (an adapter directory, aiprod.adapter_dir) whose adapter.json names
its base version. A request's `adapter` is a specialization (`regional-hi`: the newest entry of that
specialization whose base is the version serving the request's arm) or a full version name (which
must have that base). Each replica keeps an LRU of `serve.adapter_cache_size` loaded adapters, each
loaded as a plain pipeline: the base's weights with the adapter folded in. A cached adapter costs
one model's memory and samples at the base's speed. Loads run off the event loop, one per adapter
at a time, while other adapters keep serving.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiprod.config import Config
from aiprod.monitoring import serve_metrics
from aiprod.serving.model_host import LoadFailure, Served

K, V = TypeVar("K"), TypeVar("V")


class AdapterError(ValueError):
    """A request's adapter names no adapter for the model serving it (answered 422, naming it)."""


class AdapterUnavailable(RuntimeError):
    """A request's adapter names an adapter that failed to load (answered 503 with Retry-After). The
    replica backs off from it as from a failed model version (serve.load_retry_s, doubling per failure
    up to load_retry_max_s) instead of loading it again for every request that names it."""

    def __init__(self, message: str, retry_in_s: float):
        super().__init__(message)
        self.retry_in_s = retry_in_s


class LRUCache(Generic[K, V]):
    """At most `capacity` values, the least recently used evicted first; a missing value is loaded
    by `load(key)` outside the cache's lock, once per key however many callers wait for it."""

    def __init__(self, capacity: int, load: Callable[[K], V]):
        if capacity < 1:
            raise ValueError(f"LRU capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._load = load
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[K, threading.Lock] = {}
        self.loads = self.evictions = 0

    def _hit(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return True, self._items[key]
            return False, None

    def get(self, key: K) -> V:
        found, value = self._hit(key)
        if found:
            return value  # type: ignore[return-value]
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            found, value = self._hit(key)  # loaded by the caller we waited for
            if found:
                return value  # type: ignore[return-value]
            try:
                value = self._load(key)
                with self._lock:
                    self.loads += 1
                    self._items[key] = value
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
                        self.evictions += 1
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return value

    def keys(self) -> list[K]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)


def resolve_adapter(name: str, base: str, cfg: Config) -> str:
    """The adapter version `name` means on base version `base`, or AdapterError saying why none."""
    from aiprod.adapter_dir import ADAPTER_META
    from aiprod.registry import Registry
    from aiprod.registry.names import NAME_RE, parse_version

    registry = Registry(cfg.registry.root, cfg.registry)
    if NAME_RE.fullmatch(name):
        if not registry.store.complete(name):
            raise AdapterError(f"adapter {name!r}: no such version in the registry {registry.root}")
        candidates = [name]
    else:
        named = [(parse_version(v, cfg.registry), v) for v in registry.versions()]
        candidates = [v for p, v in sorted(named, key=lambda pv: pv[0].semver, reverse=True)
                      if p.specialization == name]
        if not candidates:
            raise AdapterError(f"adapter {name!r}: no version in the registry {registry.root} has the "
                               f"specialization {name!r}")
    others = []
    for version in candidates:
        meta = registry.store.read(f"{version}/{ADAPTER_META}")
        if meta is None:
            others.append(f"{version} is a full model, not an adapter")
            continue
        ref = json.loads(meta).get("base", {}).get("ref")
        if ref == base:
            return version
        others.append(f"{version} is for {ref}")
    raise AdapterError(f"adapter {name!r}: none for {base}, the model serving this request ("
                       + "; ".join(others) + ")")


def load_adapter(version: str, cfg: Config, device: str) -> Served:
    """An adapter entry as a plain pipeline: its verified base with the adapter folded in."""
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.registry import Registry

    source = str(Registry(cfg.registry.root, cfg.registry).resolve(version))
    pipeline = VideoPipeline.from_checkpoint(source, device=device, registry_root=cfg.registry.root)
    return Served(pipeline, version, version, source)


class AdapterHost:
    """A replica's adapters: names resolved against the registry (remembered for
    serve.follow_registry_s; 0 = for the replica's life), pipelines in an LRU."""

    def __init__(self, cfg: Config, device: str = "cpu", loader=load_adapter, resolver=resolve_adapter):
        self.cfg = cfg
        self._resolver = resolver
        self.cache: LRUCache[str, Served] = LRUCache(cfg.serve.adapter_cache_size,
                                                     lambda version: loader(version, cfg, device))
        self._resolved: dict[tuple[str, str], tuple[float, str | AdapterError]] = {}
        self.load_failures: dict[str, LoadFailure] = {}  # adapter version -> its last failed load
        self._lock = threading.Lock()

    def resolve(self, name: str, base: str) -> str:
        ttl = self.cfg.serve.follow_registry_s
        with self._lock:
            hit = self._resolved.get((name, base))
        if hit is None or (ttl > 0 and time.monotonic() - hit[0] > ttl):
            try:
                answer: str | AdapterError = self._resolver(name, base, self.cfg)
            except AdapterError as exc:
                answer = exc
            with self._lock:
                if len(self._resolved) >= RESOLVED_MAX:
                    self._resolved.clear()
                self._resolved[(name, base)] = hit = (time.monotonic(), answer)
        if isinstance(hit[1], AdapterError):
            raise hit[1]
        return hit[1]

    def served(self, name: str, base: Served) -> Served:
        """The loaded adapter `name` on `base` (loaded now, on the caller's thread, if not cached);
        AdapterUnavailable while a failed load of it is backed off from."""
        version = self.resolve(name, base.version)
        with self._lock:
            failure = self.load_failures.get(version)
        if failure is not None and time.monotonic() < failure.retry_at:
            raise self._unavailable(failure)
        try:
            served = self.cache.get(version)
        except Exception as exc:  # noqa: BLE001 - any load error: a corrupt entry, a missing base, S3
            failure = LoadFailure.after(version, f"{type(exc).__name__}: {exc}", failure, self.cfg.serve)
            with self._lock:
                if len(self.load_failures) >= RESOLVED_MAX:
                    self.load_failures.clear()
                self.load_failures[version] = failure
            serve_metrics.model_load_failed("adapter")
            raise self._unavailable(failure) from exc
        if failure is not None:
            with self._lock:
                self.load_failures.pop(version, None)
        return served

    @staticmethod
    def _unavailable(failure: LoadFailure) -> AdapterUnavailable:
        retry_in_s = failure.retry_in_s
        return AdapterUnavailable(f"adapter {failure.target!r} failed to load ({failure.error}); this replica "
                                  f"tries it again in {retry_in_s:.0f}s", retry_in_s)

    def info(self) -> dict[str, Any]:
        with self._lock:
            failures = {version: f.describe() for version, f in self.load_failures.items()}
        return {"cached": self.cache.keys(), "capacity": self.cache.capacity, "loads": self.cache.loads,
                "evictions": self.cache.evictions, "load_failures": failures}


RESOLVED_MAX = 1024  # remembered adapter names per replica (bounds what odd names can fill)
