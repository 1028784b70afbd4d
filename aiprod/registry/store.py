"""Where a registry's files live: the `Store` protocol, a local directory and an s3:// prefix.

Both give the registry the same guarantees: `write` replaces a file atomically (the pointer swap),
`create` is create-only (the lock and the S3 publish claim), `commit` makes a staged entry visible
at once or refuses because the version exists, and `local_dir` hands serving a verified local copy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from aiprod import manifest, storage
from aiprod.registry.errors import IntegrityError, RegistryError, RegistryLockedError, VersionExistsError
from aiprod.registry.names import CLAIM, LOCK, STAGING, is_version_name
from aiprod.registry.stamps import actor, now

LOCK_POLL_S = 0.05


class Store(Protocol):
    """Registry files under one root; keys are paths relative to it."""

    uri: str

    def read(self, key: str) -> bytes | None: ...

    def write(self, key: str, data: bytes) -> None:
        """Replace atomically: readers see the old content or the new."""

    def create(self, key: str, data: bytes) -> Any:
        """Create-only write: a token for `delete_created`, or None when the key exists."""

    def delete_created(self, key: str, token: Any) -> None:
        """Delete `key` only if it is still what `create` wrote."""

    def append(self, key: str, line: bytes) -> None:
        """Add a line (callers hold the registry lock)."""

    def exists(self, name: str) -> bool:
        """Anything is stored under entry `name` (complete or not)."""

    def complete(self, name: str) -> bool:
        """Entry `name` has its manifest: its publish finished."""

    def names(self) -> list[str]:
        """Entries whose names have the version-name format, sorted."""

    def entry_uri(self, name: str) -> str: ...

    def staging(self, name: str) -> AbstractContextManager[Path]:
        """A local directory to build entry `name` in, removed afterwards."""

    def commit(self, staged: Path, name: str) -> None:
        """Make a staged entry visible as `name`; VersionExistsError when another publish has it."""

    def local_dir(self, name: str, cache_root: Path) -> Path:
        """A local directory holding entry `name`, verified against its manifest."""


def open_store(root: str) -> Store:
    return S3Store(root) if storage.is_s3(root) else LocalStore(root)


@contextmanager
def locked(store: Store, action: str, timeout_s: float) -> Iterator[None]:
    """Hold the registry's `.lock` (created create-only) while pointers and history change."""
    holder = json.dumps({"action": action, "since": now(), "id": uuid.uuid4().hex, **actor()}).encode()
    deadline = time.monotonic() + timeout_s
    while (token := store.create(LOCK, holder)) is None:
        if time.monotonic() > deadline:
            current = (store.read(LOCK) or b"?").decode("utf-8", "replace")
            raise RegistryLockedError(
                f"registry: {store.uri}/{LOCK} is held by {current} for over {timeout_s:g}s; "
                f"if no registry command is running, delete that lock"
            )
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        store.delete_created(LOCK, token)


def _require_intact(name: str, directory: Path, what: str = "") -> None:
    problems = manifest.verify_manifest(directory)
    if problems:
        raise IntegrityError(f"registry: {what}{name} fails its manifest: " + "; ".join(problems))


class LocalStore:
    """Registry files in a local directory; an entry is staged beside the root and renamed into place."""

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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_version_name(p.name))

    def entry_uri(self, name: str) -> str:
        return str(self.path(name))

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix="entry-", dir=staging))
        try:
            yield staged
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)

    def commit(self, staged: Path, name: str) -> None:
        try:
            os.rename(staged, self.path(name))  # fails onto an existing, non-empty directory
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VersionExistsError(f"registry: version {name} already exists in {self.uri}") from None
            raise
        storage.fsync_dir(self.root)

    def local_dir(self, name: str, cache_root: Path) -> Path:
        _require_intact(name, self.path(name))
        return self.path(name)


class S3Store:
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
        self.s3.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)  # one PUT: atomic

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
        self.write(key, (self.read(key) or b"") + line)

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
                if is_version_name(name):
                    found.append(name)
        return sorted(found)

    def entry_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="aiprod-publish-") as scratch:
            staged = Path(scratch) / name
            staged.mkdir(parents=True, exist_ok=True)
            yield staged

    def commit(self, staged: Path, name: str) -> None:
        """Claim the name with a conditional PUT (exactly one publisher wins), upload, manifest last:
        a version without a manifest is an unfinished publish."""
        claim = json.dumps({"claimed_at": now(), **actor()}).encode()
        if self.create(f"{name}/{CLAIM}", claim) is None:
            raise VersionExistsError(f"registry: version {name} already exists in {self.uri} "
                                     f"(another publisher claimed it first)")
        files = sorted(p for p in staged.rglob("*") if p.is_file() and p.name != manifest.MANIFEST)
        for file in files:
            self._upload(file, f"{name}/{file.relative_to(staged).as_posix()}")
        self._upload(staged / manifest.MANIFEST, f"{name}/{manifest.MANIFEST}")  # last: marks it complete

    def _upload(self, local: Path, key: str) -> None:
        self.s3.upload_file(str(local), self.bucket, self.key(key))

    def local_dir(self, name: str, cache_root: Path) -> Path:
        """Downloaded into the cache once, verified; a stale or corrupt cached copy is replaced."""
        cache = cache_root / _cache_key(self.uri) / name
        if cache.is_dir() and not manifest.verify_manifest(cache):
            return cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache.parent))
        try:
            storage.download_dir(self.entry_uri(name), tmp)
            (tmp / CLAIM).unlink(missing_ok=True)
            _require_intact(name, tmp, what="download of ")
            if cache.exists():
                shutil.rmtree(cache)
            try:
                os.rename(tmp, cache)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else a concurrent resolver won
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cache


def _cache_key(root: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", root.replace("s3://", "s3_")).strip("_")
