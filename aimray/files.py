"""Small file helpers shared by the run folder, the assets cache and the reports: atomic writes, the
timestamp format, an exclusive lock. Imports nothing heavy (no torch, no pyarrow)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


def read_json(path: Path) -> object:
    """A JSON file's content; ValueError naming the file, and the line and column, when it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name of this writer's own, flush it to disk, then rename: a reader (or a run
    resumed after a crash) never sees half a file, and two processes writing the same file at once leave
    one whole version, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(table, path: Path) -> None:
    """A pandas DataFrame to Parquet the same way as write_text_atomic: this writer's own temporary file,
    fsynced, then renamed (pandas and pyarrow are the caller's: nothing is imported here)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_uri(location: str | Path) -> bool:
    """Whether a storage location is a URI for a filesystem other than the local one (s3://, gs://, ...)."""
    return "://" in str(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local location as a path: a plain path, or a file:// URI (file:///abs/path, percent-escapes
    decoded). Not for other URIs (is_uri)."""
    text = str(location)
    if text.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    return Path(text)


def write_json_atomic(path: Path, obj: object, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str, allow_nan=True, sort_keys=sort_keys))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def get_section(text: str, name: str) -> str | None:
    """The marked section `name` of a markdown text (markers included), or None."""
    begin, end = section_markers(name)
    if begin not in text or end not in text.split(begin, 1)[1]:
        return None
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def put_section(text: str, name: str, section: str) -> str:
    """`text` with its marked section `name` replaced by `section` (which carries the markers), or with
    `section` appended when there is none: reports written by different scripts share one file."""
    old = get_section(text, name)
    if old is not None:
        return text.replace(old, section.strip("\n"))
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section.strip("\n") + "\n"


def now() -> str:
    """UTC time as ISO 8601 to the second (manifests, asset records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DiskFullError(OSError):
    """A run folder's disk filled up while writing; the message names the folder, what was being written,
    the bytes it needed and the last complete checkpoint."""


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files below `path` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def locked(path: Path, blocking: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be, our pid written in it) while the block runs.
    Non-blocking: raise FolderInUseError naming the holder's pid when another live process holds it. The
    kernel drops the lock when its holder dies, so a killed run never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderInUseError(f"{path.parent} is in use by another process (pid {holder})") from None
        try:
            f.seek(0)
            if f.read().strip() != str(os.getpid()):  # unchanged when the same process locks again
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
