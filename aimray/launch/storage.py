"""A sweep's storage as the one home of its study, on a cluster whose nodes share no filesystem.

`--storage` is a local path (or NFS) or a URI that pyarrow's filesystems know (`s3://bucket/prefix`, an
S3-compatible server by `?endpoint_override=HOST:PORT&scheme=http`, `gs://...`). Ray Tune keeps its
experiment state there (`<storage>/tune`, through the same filesystem). A trial writes each run folder on
its own node's disk, as a run always does, and copies it to `<storage>/runs/<trial>/order<k>/` after every
task: the files that changed since its last copy, `manifest.json` last (its status is the commit marker:
a reader that sees `success` sees a complete folder; no rename is assumed), and the latest checkpoint, so
a trial retried on another node first copies its folder back and resumes from there. At the end the driver
mirrors every trajectory into `--out/runs` and copies the sweep's tables to the storage, so both
`python -m analysis --out` and `python -m analysis <storage>` read the whole study. The same holds for the
runs of `--workers N` trials (Train's rank 0 copies them, from whichever node it runs on) and for the
`--holdout-orders` runs (`<storage>/holdout/<config>/order<k>/`, mirrored into `--out/holdout`).

Why aimray copies the run folder itself: Ray Tune's artifact syncing (`SyncConfig(sync_artifacts=True)`)
copies a trial's working directory only when it reports a Tune checkpoint or ends, and never brings it back
to a node that retries the trial (Ray's documentation; not measured here), so the loop's own checkpoints
would be lost with the node. Cost, measured 2026-12-01 on this 2-core machine against moto on loopback: a
whole smoke run folder (28 files, 3.8 MB with its checkpoint) uploads in 1.1 s; an unchanged folder is
checked in 0.04 s; after a task only its new event parts and checkpoint travel.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from aimray.files import FolderInUseError, pid_alive
from aimray.sync import Place, copy_file, sync, visible

T = TypeVar("T")


class StorageUnavailableError(OSError):
    """The sweep's storage stayed unreachable longer than the outage limit; the message names the URI."""


def outage_limit() -> float:
    """Seconds a copy to or from the storage keeps retrying through an outage: $AIMRAY_STORAGE_OUTAGE_S
    (default 300)."""
    return float(os.environ.get("AIMRAY_STORAGE_OUTAGE_S", "300"))


def retrying(what: str, uri: str, call: Callable[[], T], limit: float | None = None) -> T:
    """`call()`, retried with backoff (1 s doubling to 30 s) while it fails with an OSError (a storage server
    down, a network gone), for at most `limit` seconds (outage_limit()) from the start of the first failed
    call; then StorageUnavailableError naming `uri`. Every copy is idempotent (aimray.sync sends what the
    other side lacks), so a retry resumes it."""
    limit = outage_limit() if limit is None else limit
    delay, first = 1.0, None
    while True:
        began = time.monotonic()
        try:
            return call()
        except PermissionError:  # credentials, not an outage: retrying will not help
            raise
        except OSError as err:
            # the outage is counted from the start of its first failed call: against a server that stops
            # answering, one call hangs until the S3 client gives up (about 100 s with pyarrow's defaults)
            first = first or began
            if time.monotonic() + delay > first + limit:
                raise StorageUnavailableError(
                    f"{uri}: storage unreachable for {time.monotonic() - first:.0f} s while {what} ({err}); "
                    "run the same command with --resume once it is back"
                ) from None
            print(f"[storage] {uri}: {what} failed ({type(err).__name__}); retrying in {delay:.0f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def location(storage: str | None, default: Path) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) of a sweep's storage: None and a local path, or a URI's filesystem and path."""
    place = Place.of(storage or default)
    return (None if place.local else place.fs), place.path


@dataclass
class RemoteFolder:
    """One run folder's copy under `path` on `fs`: `upload` sends what changed, `download` brings it back
    (both through aimray.sync)."""

    fs: pafs.FileSystem
    path: str
    sent: dict[str, str] = field(default_factory=dict)  # rel path -> the local file's stamp when copied

    @property
    def place(self) -> Place:
        return Place(self.fs, self.path)

    @property
    def uri(self) -> str:
        return f"{self.fs.type_name}://{self.path}"

    def upload(self, local: Path) -> None:
        """Send what changed since the last upload, delete what is gone: event parts before checkpoints (a
        copy cut short by a lost node never holds a checkpoint without the events before it), the manifest
        last; retried through a storage outage (`retrying`). A folder without a manifest is no run yet (a
        run that failed before it began): nothing is sent or deleted."""
        if (local / "manifest.json").exists():
            send = functools.partial(
                sync, Place.of(local), self.place, stamps=self.sent, last="manifest.json", later=("checkpoints/",)
            )
            retrying("uploading a run folder", self.uri, send)

    def download(self, local: Path) -> bool:
        """Copy the remote folder into `local` (a run retried on another node), the manifest last, leaving
        what `local` holds besides; False when there is none. Retried through an outage."""
        if "manifest.json" not in retrying(
            "listing a run folder", self.uri, functools.partial(self.place.files, visible)
        ):
            return False
        fetch = functools.partial(sync, self.place, Place.of(local), last="manifest.json", prune=False)
        retrying("downloading a run folder", self.uri, fetch)
        return True

    def restore(self, local: Path) -> bool:
        """`download` unless `local` already holds the run (its manifest): for a run retried on another node,
        or read by a process on another node than the one that ran it; whether anything came."""
        return not (local / "manifest.json").exists() and self.download(local)


def remote_folder(storage: str, path: str) -> RemoteFolder:
    """The copy of a run folder at `path` under the storage URI `storage` (both strings, so they travel to
    a Ray Train worker or task on any node, which opens the filesystem itself)."""
    fs, base = location(storage, Path("."))
    return RemoteFolder(fs, f"{base}/{path}")


def upload_files(fs: pafs.FileSystem, base: str, files: list[Path]) -> None:
    """Copy the sweep's tables (trials.parquet, best.md, ...) to `base` on `fs`."""
    for p in files:
        if p.exists():
            copy = functools.partial(copy_file, Place.of(p.parent), Place(fs, base), p.name)
            retrying(f"uploading {p.name}", f"{fs.type_name}://{base}", copy)


def bring_home(fs: pafs.FileSystem, base: str, local: Path, uri: str) -> list[str]:
    """Copy into `local` the run folders under `base` on the storage that `local` lacks, or holds unfinished
    while the storage's copy is finished (its manifest says success): the trajectories of runs that ran on
    other nodes. What the analysis reads travels (no checkpoints), the manifest last. A local run folder that
    is not behind its copy is left as it is: a run on this node whose uploads failed in a storage outage is
    AHEAD of its copy, and copying that copy over it would put older events beside newer checkpoints. The
    run folders copied (relative to `local`); retried through an outage."""
    from analysis.load import results_only

    def manifests() -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        start = len(base.rstrip("/")) + 1
        rels = (i.path[start:] for i in infos if i.type == pafs.FileType.File)
        return [rel for rel in rels if Path(rel).name == "manifest.json" and results_only(rel)]

    def read_there(path: str) -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    copied = []
    for rel in retrying("listing the runs", uri, manifests):
        folder = str(Path(rel).parent)
        here = local / folder
        read = functools.partial(read_there, f"{base}/{rel}")
        there = retrying("reading a run's manifest", uri, functools.partial(manifest_status, read))
        mine = manifest_status((here / "manifest.json").read_bytes)
        if mine is None or (there == "success" and mine != "success"):
            copy = functools.partial(
                sync, Place(fs, f"{base}/{folder}"), Place.of(here), keep=results_only, last="manifest.json"
            )
            retrying("bringing a run folder home", f"{uri}/{folder}", copy)
            copied.append(folder)
    return copied


def manifest_status(read: Callable[[], bytes]) -> str | None:
    """The status of the manifest.json that `read` returns, from the storage or from disk; None when there is
    none (or it does not read)."""
    try:
        return json.loads(read()).get("status")
    except (FileNotFoundError, ValueError):
        return None


LEASE_FILE = "driver.json"


def lease_seconds() -> float:
    """How long a sweep driver's hold on a storage prefix lasts unrenewed: $AIMRAY_STORAGE_LEASE_S (default
    120; the holder renews it every quarter of that)."""
    return float(os.environ.get("AIMRAY_STORAGE_LEASE_S", "120"))


@contextlib.contextmanager
def prefix_lease(fs: pafs.FileSystem, base: str, uri: str, settle: float = 1.0) -> Iterator[None]:
    """One sweep driver per storage prefix, across machines: <base>/driver.json names the holder (host, pid)
    and when it last renewed its lease. A second driver refuses (FolderInUseError naming host and pid) while
    the lease is fresh; a lease left by a dead driver of this host, or not renewed for lease_seconds() (a
    machine lost), is taken over with a warning. Object stores have no exclusive create: a driver writes its
    claim, waits `settle` seconds and reads it back; of two that raced, the one whose claim is there holds."""
    path, lease = f"{base}/{LEASE_FILE}", lease_seconds()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def read() -> dict | None:
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def write() -> None:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps({**me, "renewed": time.time()}).encode())

    held = retrying("reading the sweep's lease", uri, read)
    if held is not None and held.get("token") != me["token"]:
        age = time.time() - held.get("renewed", 0)
        dead = held.get("host") == me["host"] and not pid_alive(int(held.get("pid", 0)))
        who = f"pid {held.get('pid')} on {held.get('host')}"
        if age < lease and not dead:
            raise FolderInUseError(f"{uri} is in use by another sweep driver ({who}, lease renewed {age:.0f} s ago)")
        why = "which is no longer running" if dead else f"whose lease lapsed {age:.0f} s ago"
        print(f"[sweep] {uri}: taking over from {who}, {why}", flush=True)
    retrying("writing the sweep's lease", uri, write)
    time.sleep(settle)
    now = retrying("reading the sweep's lease", uri, read) or {}
    if now.get("token") != me["token"]:
        raise FolderInUseError(f"{uri} is in use by another sweep driver (pid {now.get('pid')} on {now.get('host')})")
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease / 4):
            with contextlib.suppress(OSError):  # an outage: the next renewal tries again
                write()

    threading.Thread(target=renew, daemon=True, name="aimray-lease").start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(OSError):
            if (read() or {}).get("token") == me["token"]:
                fs.delete_file(path)
