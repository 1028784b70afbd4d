"""Model registry: versioned weights under a local dir or s3:// root, with release gates.

    reg = Registry("s3://bucket/registry", cfg.registry)
    reg.publish("out/runs/demo/final", "pib-videogen-standard-v1.0.0-general", report="report.json")
    reg.promote("pib-videogen-standard-v1.0.0-general", gates=cfg.eval.gates)
    local_dir = resolve("s3://bucket/registry", "production")      # for serving

Layout under the root:
    NAME/                 model.safetensors (version stamped in its metadata), config.yaml,
                          state.json, report.json (when given), entry.json, MANIFEST.sha256
    latest.json           {"version": ...}: the last published version
    production.json       {"version": ..., "previous": [...]}: what serves; `previous` is the rollback stack
    history.jsonl         one JSON line per change (publish, promote, rollback)
    .lock                 held while pointers and history change

Publishing is create-only: locally the entry is staged beside the root and renamed into place
(a rename onto an existing, non-empty directory fails); on S3 the publisher first creates
`NAME/.claim` with `IfNoneMatch="*"` (a conditional PUT: exactly one creator wins) and writes the
manifest last, so a version without a manifest is an unfinished publish. Pointer files are
replaced atomically (temp + rename locally; a single PUT on S3), and every pointer change plus its
history line happens under the `.lock` object (created the same create-only way).
"""

from __future__ import annotations

import errno
import fnmatch
import getpass
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiprod import manifest, storage
from aiprod.config import Config, RegistryConfig, apply_override, validate
from aiprod.eval.gates import passes_gates

WEIGHTS, CONFIG, STATE, REPORT, ENTRY = "model.safetensors", "config.yaml", "state.json", "report.json", "entry.json"
LATEST, PRODUCTION, HISTORY, LOCK, CLAIM = "latest.json", "production.json", "history.jsonl", ".lock", ".claim"
STAGING = ".staging"
LOCK_POLL_S = 0.05
COPY_CHUNK = 8 << 20

# Always used with fullmatch: `$` would also accept a name ending in a newline.
NAME_RE = re.compile(
    r"pib-videogen-(?P<model_type>[a-z0-9]+)"
    r"-v(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"-(?P<specialization>[a-z0-9]+(?:-[a-z0-9]+)*)"
)
NAME_FORMAT = "pib-videogen-{model_type}-v{major}.{minor}.{patch}-{specialization}"


class RegistryError(RuntimeError):
    """Anything the registry refuses, with a message that says what and why."""


class VersionNameError(RegistryError, ValueError):
    pass


class VersionExistsError(RegistryError):
    pass


class VersionNotFoundError(RegistryError):
    pass


class GateError(RegistryError):
    """Promotion refused: the version's eval report fails the release gates."""


class IntegrityError(RegistryError):
    """Files do not match their manifest."""


class RegistryLockedError(RegistryError):
    pass


# ---------------------------------------------------------------------------- names


@dataclass(frozen=True)
class VersionName:
    model_type: str
    major: int
    minor: int
    patch: int
    specialization: str

    def __str__(self) -> str:
        return NAME_FORMAT.format(**self.__dict__)

    @property
    def semver(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch


def parse_version(name: str, cfg: RegistryConfig | None = None) -> VersionName:
    """Validate a version name against the format and the configured types and specializations."""
    cfg = cfg or RegistryConfig()
    match = NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match:
        raise VersionNameError(
            f"registry: bad version name {name!r}: expected {NAME_FORMAT} "
            f"(lowercase, e.g. pib-videogen-standard-v1.0.0-general)"
        )
    parts = match.groupdict()
    if parts["model_type"] not in cfg.model_types:
        raise VersionNameError(
            f"registry: bad version name {name!r}: model_type '{parts['model_type']}' is not one of "
            f"{cfg.model_types} (registry.model_types)"
        )
    if not any(fnmatch.fnmatchcase(parts["specialization"], p) for p in cfg.specializations):
        raise VersionNameError(
            f"registry: bad version name {name!r}: specialization '{parts['specialization']}' matches none of "
            f"{cfg.specializations} (registry.specializations)"
        )
    return VersionName(parts["model_type"], int(parts["major"]), int(parts["minor"]), int(parts["patch"]),
                       parts["specialization"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _actor() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


# -------------------------------------------------------------------------- stores


class _LocalStore:
    """Registry files in a local directory."""

    def __init__(self, root: str):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.path(key), data)

    def create(self, key: str, data: bytes) -> Any:
        """Create-only write: a token for `delete_created`, or None when the key exists."""
        target = self.path(key)
        tmp = storage.write_temp_beside(target, data)
        try:
            try:
                os.link(tmp, target)  # link fails if the target exists: create-only with full content
            except FileExistsError:
                return None
            except OSError:  # a filesystem without hard links: exclusive create, then the content
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return None
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            storage.fsync_dir(target.parent)
            return data
        finally:
            os.unlink(tmp)

    def delete_created(self, key: str, token: Any) -> None:
        if self.read(key) == token:
            self.path(key).unlink(missing_ok=True)

    def append(self, key: str, line: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def complete(self, name: str) -> bool:
        return (self.path(name) / manifest.MANIFEST).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name))

    def staging_dir(self) -> Path:
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="entry-", dir=staging))

    def commit(self, staged: Path, name: str) -> None:
        try:
            os.rename(staged, self.path(name))
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VersionExistsError(f"registry: version {name} already exists in {self.uri}") from None
            raise
        storage.fsync_dir(self.root)

    def entry_uri(self, name: str) -> str:
        return str(self.path(name))


class _S3Store:
    """Registry objects under an s3:// prefix, through boto3 (conditional writes for create-only)."""

    def __init__(self, root: str):
        import boto3

        bucket, _, prefix = root[len("s3://") :].partition("/")
        if not bucket:
            raise RegistryError(f"registry: root {root!r} names no bucket (expected s3://BUCKET/PREFIX)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.s3 = boto3.client("s3")  # honours AWS_ENDPOINT_URL and the usual credential chain

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def read(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def write(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)

    def create(self, key: str, data: bytes) -> Any:
        from botocore.exceptions import ClientError

        try:
            response = self.s3.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return None
            raise
        return response["ETag"]

    def delete_created(self, key: str, token: Any) -> None:
        from botocore.exceptions import ClientError

        try:  # IfMatch: never delete an object someone else created after ours vanished
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(key), IfMatch=token)
        except ClientError:
            pass

    def append(self, key: str, line: bytes) -> None:
        self.write(key, (self.read(key) or b"") + line)  # callers hold the registry lock

    def exists(self, name: str) -> bool:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key(name) + "/", MaxKeys=1)
        return listed.get("KeyCount", 0) > 0

    def complete(self, name: str) -> bool:
        return self.read(f"{name}/{manifest.MANIFEST}") is not None

    def names(self) -> list[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        base = self.key("") if self.prefix else ""
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(base) :].strip("/")
                if NAME_RE.fullmatch(name):
                    found.append(name)
        return sorted(found)

    def upload(self, local: Path, key: str) -> None:
        self.s3.upload_file(str(local), self.bucket, self.key(key))

    def entry_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"


def _store(root: str) -> _LocalStore | _S3Store:
    return _S3Store(root) if storage.is_s3(root) else _LocalStore(root)


# -------------------------------------------------------------------------- registry


class Registry:
    def __init__(self, root: str | os.PathLike, cfg: RegistryConfig | None = None):
        self.cfg = cfg or RegistryConfig()
        self.store = _store(str(root))
        self.root = self.store.uri

    # ------------------------------------------------------------------ reading

    def _json(self, key: str) -> dict[str, Any] | None:
        data = self.store.read(key)
        return None if data is None else json.loads(data)

    def pointer(self, which: str) -> str | None:
        """Version name behind `latest` or `production` (None when unset)."""
        if which not in ("latest", "production"):
            raise RegistryError(f"registry: unknown pointer {which!r} (latest or production)")
        record = self._json(LATEST if which == "latest" else PRODUCTION)
        return record.get("version") if record else None

    def history(self) -> list[dict[str, Any]]:
        data = self.store.read(HISTORY) or b""
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def versions(self) -> list[str]:
        """Published (complete) versions, ordered by model type, specialization and semver."""
        names = [n for n in self.store.names() if self.store.complete(n)]
        return sorted(names, key=lambda n: _sort_key(n))

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
        import yaml

        self._require(name)
        data = self.store.read(f"{name}/{CONFIG}")
        if data is None:
            raise IntegrityError(f"registry: {name} has no {CONFIG}")
        tree = yaml.safe_load(data) or {}
        for override in overrides:
            apply_override(tree, override)
        return validate(tree)

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

    # ------------------------------------------------------------------ changing

    @contextmanager
    def _locked(self, action: str) -> Iterator[None]:
        holder = json.dumps({"action": action, "since": _now(), "id": uuid.uuid4().hex, **_actor()}).encode()
        deadline = time.monotonic() + self.cfg.lock_timeout_s
        while (token := self.store.create(LOCK, holder)) is None:
            if time.monotonic() > deadline:
                current = (self.store.read(LOCK) or b"?").decode("utf-8", "replace")
                raise RegistryLockedError(
                    f"registry: {self.root}/{LOCK} is held by {current} for over {self.cfg.lock_timeout_s:g}s; "
                    f"if no registry command is running, delete that lock"
                )
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            self.store.delete_created(LOCK, token)

    def _record(self, action: str, **details: Any) -> dict[str, Any]:
        event = {"time": _now(), "action": action, **details, **_actor()}
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
        for required in (WEIGHTS, CONFIG):
            if not storage.exists(storage.join(source, required)):
                raise RegistryError(f"registry: checkpoint {source} has no {required}")
        if storage.exists(storage.join(source, manifest.MANIFEST)):
            problems = manifest.verify_manifest(source)
            if problems:
                raise IntegrityError(f"registry: checkpoint {source} fails its manifest: " + "; ".join(problems))
        report_data = _load_report(report)

        with tempfile.TemporaryDirectory(prefix="aiprod-publish-") as scratch:
            staged = self.store.staging_dir() if isinstance(self.store, _LocalStore) else Path(scratch) / version
            staged.mkdir(parents=True, exist_ok=True)
            try:
                _copy_stamped_weights(storage.join(source, WEIGHTS), staged / WEIGHTS, version)
                (staged / CONFIG).write_bytes(storage.read_bytes(storage.join(source, CONFIG)))
                if storage.exists(storage.join(source, STATE)):
                    (staged / STATE).write_bytes(storage.read_bytes(storage.join(source, STATE)))
                if report_data is not None:
                    (staged / REPORT).write_text(json.dumps(report_data, indent=2, ensure_ascii=False), "utf-8")
                entry = {"version": version, "published_at": _now(), "source": source, **_actor()}
                (staged / ENTRY).write_text(json.dumps(entry, indent=2), "utf-8")
                for file in staged.iterdir():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
                manifest.write_manifest(staged)
                self._commit(staged, version)
            finally:
                if staged.exists():
                    shutil.rmtree(staged, ignore_errors=True)

        with self._locked("publish"):
            self.store.write(LATEST, json.dumps({"version": version, "updated_at": _now()}).encode())
            self._record("publish", version=version, source=source, report=report_data is not None)
        return self.store.entry_uri(version)

    def _commit(self, staged: Path, version: str) -> None:
        if isinstance(self.store, _LocalStore):
            self.store.commit(staged, version)
            return
        claim = json.dumps({"claimed_at": _now(), **_actor()}).encode()
        if self.store.create(f"{version}/{CLAIM}", claim) is None:
            raise VersionExistsError(f"registry: version {version} already exists in {self.root} "
                                     f"(another publisher claimed it first)")
        files = sorted(p for p in staged.rglob("*") if p.is_file() and p.name != manifest.MANIFEST)
        for file in files:
            self.store.upload(file, f"{version}/{file.relative_to(staged).as_posix()}")
        self.store.upload(staged / manifest.MANIFEST, f"{version}/{manifest.MANIFEST}")  # last: marks it complete

    def promote(self, version: str, gates: dict[str, float], force: bool = False,
                reason: str | None = None) -> dict[str, Any]:
        """Point `production` at a version whose report passes the gates (or `force` with a reason)."""
        self._require(version)
        if force and not (reason or "").strip():
            raise RegistryError("registry: --force needs --reason TEXT (it is recorded in the history)")
        problems = self.verify(version)
        if problems:
            raise IntegrityError(f"registry: {version} fails its manifest, refusing to promote: " + "; ".join(problems))
        report = self._json(f"{version}/{REPORT}")
        if report is None:
            ok, failures = False, [f"{version} has no {REPORT} (publish with --report from jobs/evaluate.py)"]
        else:
            ok, failures = passes_gates(report, gates)
        if not ok and not force:
            raise GateError(f"registry: {version} fails the release gates: " + "; ".join(failures)
                            + " (use --force --reason TEXT to override)")
        with self._locked("promote"):
            current = self._json(PRODUCTION) or {}
            if current.get("version") == version:
                raise RegistryError(f"registry: {version} is already production")
            previous = list(current.get("previous", []))
            if current.get("version"):
                previous.append(current["version"])
            record = {"version": version, "previous": previous, "updated_at": _now(), "forced": bool(force and not ok)}
            if force:
                record["reason"] = reason
            self.store.write(PRODUCTION, json.dumps(record, indent=2).encode())
            return self._record("promote", version=version, replaced=current.get("version"), gates=gates,
                                gate_failures=failures, forced=bool(force and not ok),
                                reason=reason if force else None)

    def rollback(self) -> dict[str, Any]:
        """Restore the previous production version."""
        with self._locked("rollback"):
            current = self._json(PRODUCTION) or {}
            previous = list(current.get("previous", []))
            if not previous:
                raise RegistryError(f"registry: nothing to roll back to in {self.root} "
                                    f"(production is {current.get('version')!r} with no previous version)")
            target = previous.pop()
            self._require(target)
            problems = self.verify(target)
            if problems:
                raise IntegrityError(f"registry: {target} (the production before {current.get('version')}) fails "
                                     f"its manifest, refusing to roll back to it: " + "; ".join(problems))
            record = {"version": target, "previous": previous, "updated_at": _now(), "forced": False}
            self.store.write(PRODUCTION, json.dumps(record, indent=2).encode())
            return self._record("rollback", version=target, replaced=current.get("version"))

    # ------------------------------------------------------------------ serving

    def resolve(self, ref: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """`production`, `latest` or a version name -> a local directory holding it (S3 entries are
        downloaded into the cache once and verified against their manifest)."""
        name = self.pointer(ref) if ref in ("production", "latest") else ref
        if name is None:
            raise VersionNotFoundError(f"registry: the {ref} pointer is not set in {self.root}")
        self._require(name)
        if isinstance(self.store, _LocalStore):
            problems = manifest.verify_manifest(self.store.path(name))
            if problems:
                raise IntegrityError(f"registry: {name} fails its manifest: " + "; ".join(problems))
            return self.store.path(name)
        cache = Path(cache_dir or self.cfg.cache_dir).expanduser() / _cache_key(self.root) / name
        if cache.is_dir() and not manifest.verify_manifest(cache):
            return cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache.parent))
        try:
            storage.download_dir(self.store.entry_uri(name), tmp)
            (tmp / CLAIM).unlink(missing_ok=True)
            problems = manifest.verify_manifest(tmp)
            if problems:
                raise IntegrityError(f"registry: download of {name} fails its manifest: " + "; ".join(problems))
            if cache.exists():  # a stale or corrupt copy
                shutil.rmtree(cache)
            try:
                os.rename(tmp, cache)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else a concurrent resolver won
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cache


def resolve(root: str | os.PathLike, ref: str, cache_dir: str | os.PathLike | None = None,
            cfg: RegistryConfig | None = None) -> Path:
    """`production` | `latest` | version name under a registry root -> local directory (for serving)."""
    return Registry(root, cfg).resolve(ref, cache_dir)


# --------------------------------------------------------------------------- helpers


def _sort_key(name: str) -> tuple:
    match = NAME_RE.fullmatch(name)
    assert match is not None
    g = match.groupdict()
    return g["model_type"], g["specialization"], int(g["major"]), int(g["minor"]), int(g["patch"])


def _cache_key(root: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", root.replace("s3://", "s3_")).strip("_")


def _load_report(report: str | os.PathLike | dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None or isinstance(report, dict):
        return report
    try:
        data = json.loads(storage.read_text(report))
    except FileNotFoundError:
        raise RegistryError(f"registry: report file {report} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry: report file {report} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"registry: report file {report} must hold a JSON object")
    return data


def _copy_stamped_weights(src_uri: str, dst: Path, version: str) -> None:
    """Copy a safetensors file with `version` written into its metadata, streaming the tensor bytes
    (only the JSON header changes, so the copy costs no more memory than a chunk)."""
    fs, path = storage.open_fs(src_uri)
    with fs.open_input_stream(path) as src, open(dst, "wb") as out:
        head = src.read(8)
        if len(head) != 8:
            raise RegistryError(f"registry: {src_uri} is not a safetensors file (too short)")
        header_len = int.from_bytes(head, "little")
        try:
            header = json.loads(src.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RegistryError(f"registry: {src_uri} is not a safetensors file (bad header)") from None
        header["__metadata__"] = {**(header.get("__metadata__") or {}), "version": version}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # keep the tensor data 8-byte aligned
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
