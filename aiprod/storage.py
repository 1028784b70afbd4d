"""Local paths and `s3://` URIs behind one small API (pyarrow.fs underneath).

S3 honours the usual AWS environment (credentials, `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL`
for S3-compatible endpoints such as moto or MinIO. Local writes are atomic (temp + fsync +
rename); an S3 PUT is atomic by nature (readers see the old object or the new one).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str | os.PathLike, *parts: str) -> str:
    base = str(uri).rstrip("/")
    tail = "/".join(str(p).strip("/") for p in parts if str(p))
    return f"{base}/{tail}" if tail else base


def absolute(uri: str | os.PathLike) -> str:
    """An s3:// URI as it is, a local path made absolute (Ray tasks and trials do not share the
    driver's working directory)."""
    return str(uri) if is_s3(uri) else str(Path(uri).absolute())


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
        kwargs["allow_bucket_creation"] = True
    return pafs.S3FileSystem(**kwargs)


def open_fs(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    text = str(uri)
    if is_s3(text):
        return s3_filesystem(), text[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def exists(uri: str | os.PathLike) -> bool:
    fs, path = open_fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str | os.PathLike) -> bool:
    fs, path = open_fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = open_fs(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    """Write so that readers see the old content or the new, never a torn file."""
    if is_s3(uri):
        fs, path = open_fs(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(uri)
    tmp = write_temp_beside(target, data)
    try:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_temp_beside(target: Path, data: bytes) -> str:
    """`data` in a new fsynced temp file in `target`'s directory (created if needed); its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_text_atomic(uri: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def put_file(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy one local file to `uri` atomically (temp name + rename locally; one PUT on S3)."""
    if not is_s3(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, path = open_fs(uri)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def _list(uri: str | os.PathLike, kind: pafs.FileType, recursive: bool) -> list[str]:
    """Entries of one `kind` under `uri`, as URIs in the same scheme, sorted."""
    fs, path = open_fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == kind)


def list_files(uri: str | os.PathLike, recursive: bool = False) -> list[str]:
    """Files (not directories) under `uri`, as URIs in the same scheme, sorted."""
    return _list(uri, pafs.FileType.File, recursive)


def list_dirs(uri: str | os.PathLike) -> list[str]:
    """Directories directly under `uri`, as URIs in the same scheme, sorted."""
    return _list(uri, pafs.FileType.Directory, recursive=False)


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = open_fs(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str | os.PathLike) -> None:
    """Remove a file or a directory tree; missing is fine."""
    fs, path = open_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def upload_dir(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    for file in sorted(Path(local).rglob("*")):
        if file.is_file():
            put_file(file, join(uri, file.relative_to(local).as_posix()))


def download_dir(uri: str | os.PathLike, local: str | os.PathLike) -> Path:
    local = Path(local)
    base = str(uri).rstrip("/")
    for file in list_files(uri, recursive=True):
        rel = file[len(base) :].lstrip("/")
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_bytes(file))
    return local
