"""The `Registry`: publish checkpoints as immutable versions, move the `latest` and `production`
pointers under release gates and manifest checks, roll back, and resolve a version for serving."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from aiprod import manifest
from aiprod.config import Config, RegistryConfig, validate
from aiprod.eval.gates import passes_gates
from aiprod.model_dir import CONFIG
from aiprod.registry.entry import check_checkpoint, load_report, stage_entry
from aiprod.registry.errors import (
    GateError,
    IntegrityError,
    RegistryError,
    VersionExistsError,
    VersionNotFoundError,
)
from aiprod.registry.names import (
    AB,
    ENTRY,
    HISTORY,
    LATEST,
    PRODUCTION,
    REPORT,
    parse_version,
    pointer_file,
    version_sort_key,
)
from aiprod.registry.stamps import actor, now
from aiprod.registry.store import locked, open_store


class Registry:
    def __init__(self, root: str | os.PathLike, cfg: RegistryConfig | None = None):
        self.cfg = cfg or RegistryConfig()
        self.store = open_store(str(root))
        self.root = self.store.uri

    # ------------------------------------------------------------------ reading

    def _json(self, key: str) -> dict[str, Any] | None:
        data = self.store.read(key)
        return None if data is None else json.loads(data)

    def pointer(self, which: str) -> str | None:
        """Version name behind `latest` or `production` (None when unset)."""
        record = self._json(pointer_file(which))
        return record.get("version") if record else None

    def history(self) -> list[dict[str, Any]]:
        data = self.store.read(HISTORY) or b""
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def versions(self) -> list[str]:
        """Published (complete) versions, ordered by model type, specialization and semver."""
        names = [n for n in self.store.names() if self.store.complete(n)]
        return sorted(names, key=version_sort_key)

    def report(self, name: str) -> dict[str, Any] | None:
        self._require(name)
        return self._json(f"{name}/{REPORT}")

    def entry(self, name: str) -> dict[str, Any]:
        self._require(name)
        return self._json(f"{name}/{ENTRY}") or {}

    def list_versions(self) -> list[dict[str, Any]]:
        production, latest = self.pointer("production"), self.pointer("latest")
        rows = []
        for name in self.versions():
            entry = self._json(f"{name}/{ENTRY}") or {}
            report = self._json(f"{name}/{REPORT}") or {}
            rows.append({"version": name, "published_at": entry.get("published_at"),
                         "production": name == production, "latest": name == latest,
                         "metrics": report.get("metrics", {}), "source": entry.get("source")})
        return rows

    def config(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The resolved config `name` was trained with (its config.yaml), `key.path=value` overrides applied."""
        self._require(name)
        data = self.store.read(f"{name}/{CONFIG}")
        if data is None:
            raise IntegrityError(f"registry: {name} has no {CONFIG}")
        import yaml

        return validate(yaml.safe_load(data) or {}).with_overrides(overrides)

    def verify(self, name: str) -> list[str]:
        """Problems with the entry's files against its manifest (empty = intact)."""
        self._require(name)
        return manifest.verify_manifest(self.store.entry_uri(name))

    def _require(self, name: str) -> None:
        parse_version(name, self.cfg)
        if not self.store.complete(name):
            hint = (" (its publish did not finish: no manifest; delete it to publish again)"
                    if self.store.exists(name) else "")
            raise VersionNotFoundError(f"registry: no version {name} in {self.root}{hint}")

    def _require_intact(self, name: str, refusal: str) -> None:
        problems = self.verify(name)
        if problems:
            raise IntegrityError(f"registry: {name} {refusal}: " + "; ".join(problems))

    # ------------------------------------------------------------------ changing

    def _record(self, action: str, **details: Any) -> dict[str, Any]:
        event = {"time": now(), "action": action, **details, **actor()}
        self.store.append(HISTORY, (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))
        return event

    def publish(self, checkpoint: str | os.PathLike, version: str,
                report: str | os.PathLike | dict[str, Any] | None = None) -> str:
        """Copy a checkpoint's weights + config (+ eval report) into a new, immutable entry."""
        parse_version(version, self.cfg)
        if self.store.exists(version):
            raise VersionExistsError(f"registry: version {version} already exists in {self.root}; "
                                     f"publish under a new version number")
        source = str(checkpoint)
        check_checkpoint(source)
        report_data = load_report(report)
        with self.store.staging(version) as staged:
            stage_entry(source, staged, version, report_data)
            self.store.commit(staged, version)
        with locked(self.store, "publish", self.cfg.lock_timeout_s):
            self.store.write(LATEST, json.dumps({"version": version, "updated_at": now()}).encode())
            self._record("publish", version=version, source=source, report=report_data is not None)
        return self.store.entry_uri(version)

    def promote(self, version: str, gates: dict[str, float], force: bool = False,
                reason: str | None = None) -> dict[str, Any]:
        """Point `production` at a version whose report passes the gates (or `force` with a reason)."""
        self._require(version)
        if force and not (reason or "").strip():
            raise RegistryError("registry: --force needs --reason TEXT (it is recorded in the history)")
        self._require_intact(version, "fails its manifest, refusing to promote")
        report = self._json(f"{version}/{REPORT}")
        if report is None:
            ok, failures = False, [f"{version} has no {REPORT} (publish with --report from jobs/evaluate.py)"]
        else:
            ok, failures = passes_gates(report, gates)
        if not ok and not force:
            raise GateError(f"registry: {version} fails the release gates: " + "; ".join(failures)
                            + " (use --force --reason TEXT to override)")
        with locked(self.store, "promote", self.cfg.lock_timeout_s):
            current = self._json(PRODUCTION) or {}
            if current.get("version") == version:
                raise RegistryError(f"registry: {version} is already production")
            previous = list(current.get("previous", []))
            if current.get("version"):
                previous.append(current["version"])
            record = {"version": version, "previous": previous, "updated_at": now(), "forced": bool(force and not ok)}
            if force:
                record["reason"] = reason
            self.store.write(PRODUCTION, json.dumps(record, indent=2).encode())
            return self._record("promote", version=version, replaced=current.get("version"), gates=gates,
                                gate_failures=failures, forced=bool(force and not ok),
                                reason=reason if force else None)

    def rollback(self) -> dict[str, Any]:
        """Restore the previous production version."""
        with locked(self.store, "rollback", self.cfg.lock_timeout_s):
            current = self._json(PRODUCTION) or {}
            previous = list(current.get("previous", []))
            if not previous:
                raise RegistryError(f"registry: nothing to roll back to in {self.root} "
                                    f"(production is {current.get('version')!r} with no previous version)")
            target = previous.pop()
            self._require(target)
            self._require_intact(target, f"(the production before {current.get('version')}) fails "
                                         f"its manifest, refusing to roll back to it")
            record = {"version": target, "previous": previous, "updated_at": now(), "forced": False}
            self.store.write(PRODUCTION, json.dumps(record, indent=2).encode())
            return self._record("rollback", version=target, replaced=current.get("version"))

    # ------------------------------------------------------------------ A/B pointer

    def ab(self) -> dict[str, Any] | None:
        """The A/B pointer {"version", "fraction", "updated_at"} (Serve replicas that follow it send
        that share of traffic to the version as arm b), or None when unset or cleared."""
        record = self._json(AB)
        return record if record and record.get("version") else None

    def set_ab(self, version: str, fraction: float, reason: str | None = None) -> dict[str, Any]:
        """Point A/B at an intact version with a traffic share 0 < fraction <= 1; returns the event."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                math.isfinite(fraction) and 0 < fraction <= 1):
            raise RegistryError(f"registry: A/B fraction must be > 0 and <= 1, got {fraction!r} "
                                f"(clear the A/B pointer to send no traffic to a candidate)")
        self._require(version)
        self._require_intact(version, "fails its manifest, refusing to point A/B at it")
        with locked(self.store, "ab", self.cfg.lock_timeout_s):
            current = self.ab() or {}
            record = {"version": version, "fraction": float(fraction), "updated_at": now()}
            if reason:
                record["reason"] = reason
            self.store.write(AB, json.dumps(record, indent=2).encode())
            return self._record("ab", version=version, fraction=float(fraction),
                                replaced=current.get("version"), reason=reason)

    def clear_ab(self, reason: str | None = None) -> dict[str, Any] | None:
        """Send no traffic to an A/B candidate any more; returns the event (None when none was set)."""
        with locked(self.store, "ab", self.cfg.lock_timeout_s):
            current = self.ab()
            if current is None:
                return None
            record = {"version": None, "fraction": 0.0, "updated_at": now()}
            if reason:
                record["reason"] = reason
            self.store.write(AB, json.dumps(record, indent=2).encode())  # one atomic write, no delete
            return self._record("ab", version=None, fraction=0.0, replaced=current["version"], reason=reason)

    # ------------------------------------------------------------------ serving

    def resolve(self, ref: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """`production`, `latest` or a version name -> a local directory holding it (S3 entries are
        downloaded into the cache once and verified against their manifest)."""
        name = self.pointer(ref) if ref in ("production", "latest") else ref
        if name is None:
            raise VersionNotFoundError(f"registry: the {ref} pointer is not set in {self.root}")
        self._require(name)
        return self.store.local_dir(name, Path(cache_dir or self.cfg.cache_dir).expanduser())


def resolve(root: str | os.PathLike, ref: str, cache_dir: str | os.PathLike | None = None,
            cfg: RegistryConfig | None = None) -> Path:
    """`production` | `latest` | version name under a registry root -> local directory (for serving)."""
    return Registry(root, cfg).resolve(ref, cache_dir)
