"""Copying a folder to and from a location: a plain path, a file:// URI, or any URI pyarrow's filesystems
know (s3://bucket/prefix, an S3-compatible server by ?endpoint_override=HOST:PORT&scheme=http, gs://...).

One helper, `sync`, makes every copy aimray makes: a run folder up to a sweep's storage after every task
and back onto a node that retries it (aimray.launch.storage.RemoteFolder), a study down into a local mirror
for the analysis (analysis.load.mirror). Only what changed since the last copy travels (`stamps`: the
source's size and modification time as last copied); `last` goes after every other file and after the
deletions (a run's manifest.json: its status is the commit marker, so a reader that sees `success` sees a
complete folder); what the source no longer has is deleted at the destination. A local destination file
is written under a temporary name and renamed into place. No torch, no Ray.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from aimray.files import is_uri, local_path


@dataclass(frozen=True)
class Place:
    """A folder on a filesystem."""

    fs: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, location: str | Path) -> Place:
        """A plain path or file:// URI on the local filesystem (made absolute, links resolved), else the
        URI's filesystem."""
        if is_uri(location):
            fs, path = pafs.FileSystem.from_uri(str(location))
            return cls(fs, path.rstrip("/"))
        return cls(pafs.LocalFileSystem(), str(local_path(location).resolve()))

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def files(self, keep: Callable[[str], bool]) -> dict[str, pafs.FileInfo]:
        """The files below this folder that `keep` accepts, by path relative to it; {} when it is absent."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return {}
        start = len(self.path.rstrip("/")) + 1
        return {i.path[start:]: i for i in infos if i.type == pafs.FileType.File and keep(i.path[start:])}


def visible(rel: str) -> bool:
    """Not a lock file, probe or temporary folder (no part of the path starts with a dot)."""
    return not any(part.startswith(".") for part in Path(rel).parts)


def sync(
    src: Place,
    dst: Place,
    keep: Callable[[str], bool] = visible,
    stamps: MutableMapping[str, str] | None = None,
    last: str | None = None,
    prune: bool = True,
    later: tuple[str, ...] = (),
) -> list[str]:
    """Copy src's files that `keep` accepts into dst, but those whose size and modification time `stamps`
    records as copied before (`last` always travels), those under the `later` prefixes after the others;
    with `prune`, delete dst's kept files that src lacks; then copy `last`. Returns the paths copied
    (relative). The order is what makes a copy cut short by a crash usable: a run folder's event parts
    travel before the checkpoint that follows them, as the run wrote them, and its manifest last."""
    stamps = {} if stamps is None else stamps
    files = src.files(keep)
    ordered = sorted(files, key=lambda rel: (rel.startswith(later), rel))  # startswith(()) is False
    copied = [rel for rel in ordered if rel != last and _copy_if_changed(src, dst, rel, files[rel], stamps)]
    for rel in sorted(dst.files(keep).keys() - files.keys()) if prune else ():  # gone from the source
        dst.fs.delete_file(f"{dst.path}/{rel}")
        with contextlib.suppress(KeyError):
            del stamps[rel]
    if last in files:
        copy_file(src, dst, last)
        stamps[last] = _stamp(files[last])
        copied.append(last)
    return copied


def copy_file(src: Place, dst: Place, rel: str) -> None:
    """One file, src/rel to dst/rel (its folder made; a local target written under a temporary name and
    renamed into place)."""
    target = f"{dst.path}/{rel}"
    dst.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    with src.fs.open_input_stream(f"{src.path}/{rel}") as stream:
        data = stream.read()
    if dst.local:  # a name of this writer's own: two processes mirroring one study never mix their halves
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(target).name}.", suffix=".tmp", dir=Path(target).parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    else:
        with dst.fs.open_output_stream(target) as out:
            out.write(data)


def _copy_if_changed(src: Place, dst: Place, rel: str, info: pafs.FileInfo, stamps: MutableMapping) -> bool:
    if stamps.get(rel) == _stamp(info):
        return False
    copy_file(src, dst, rel)
    stamps[rel] = _stamp(info)
    return True


def _stamp(info: pafs.FileInfo) -> str:
    return f"{info.size}:{info.mtime_ns}"


class StampFiles(MutableMapping):
    """`stamps` kept beside the files of a local folder (`.<name>.stamp`), so a mirror made by an earlier
    process copies only what changed since."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _marker(self, rel: str) -> Path:
        path = self.folder / rel
        return path.with_name(f".{path.name}.stamp")

    def __getitem__(self, rel: str) -> str:
        marker = self._marker(rel)
        if not marker.exists() or not (self.folder / rel).exists():
            raise KeyError(rel)
        return marker.read_text()

    def __setitem__(self, rel: str, stamp: str) -> None:
        self._marker(rel).write_text(stamp)

    def __delitem__(self, rel: str) -> None:
        self._marker(rel).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        for marker in self.folder.rglob(".*.stamp"):
            yield str(marker.with_name(marker.name[1:].removesuffix(".stamp")).relative_to(self.folder))

    def __len__(self) -> int:
        return sum(1 for _ in self)
