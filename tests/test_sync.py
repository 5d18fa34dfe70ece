"""aimray.sync: the one helper that copies folders to and from a location (a plain path, file://, s3:// on
a moto server on 127.0.0.1, gs://)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from aimray.sync import Place, StampFiles, sync


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_run(folder) -> None:
    (folder / "events" / "steps").mkdir(parents=True)
    (folder / "events" / "steps" / "part-00000.parquet").write_bytes(b"rows")
    (folder / "manifest.json").write_text('{"status": "running"}')
    (folder / ".lock").write_text("")  # stays on this node


def test_a_plain_path_to_a_file_uri_copies_what_changed_deletes_what_went_and_the_marker_last(tmp_path) -> None:
    src, dst = tmp_path / "run", tmp_path / "a copy"
    make_run(src)
    stamps: dict[str, str] = {}
    first = sync(Place.of(src), Place.of(dst.as_uri()), stamps=stamps, last="manifest.json")
    assert first == ["events/steps/part-00000.parquet", "manifest.json"] and ".lock" not in tree(dst)
    assert sync(Place.of(src), Place.of(dst.as_uri()), stamps=stamps, last="manifest.json") == ["manifest.json"]
    (src / "events" / "steps" / "part-00000.parquet").unlink()  # a resume truncated the events
    (src / "events" / "steps" / "part-00001.parquet").write_bytes(b"new rows")
    assert sync(Place.of(src), Place.of(dst), stamps=stamps, last="manifest.json") == [
        "events/steps/part-00001.parquet",
        "manifest.json",
    ]
    assert tree(dst) == {k: v for k, v in tree(src).items() if k != ".lock"}
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]  # written under a temporary name
    # a checkpoint travels after the event parts written before it (a copy cut short never holds a
    # checkpoint whose events are missing), whatever the names' order
    (src / "checkpoints" / "t01-s000000").mkdir(parents=True)
    (src / "checkpoints" / "t01-s000000" / "state.json").write_text("{}")
    (src / "events" / "steps" / "part-00002.parquet").write_bytes(b"task 1's last rows")
    order = sync(Place.of(src), Place.of(dst), stamps=stamps, last="manifest.json", later=("checkpoints/",))
    assert order == ["events/steps/part-00002.parquet", "checkpoints/t01-s000000/state.json", "manifest.json"]


def test_s3_up_and_back_and_a_mirror_that_remembers_its_stamps(s3, tmp_path) -> None:
    fs, query = s3
    src = tmp_path / "run"
    make_run(src)
    bucket = Place.of(f"s3://studies/sweep/runs/t1/order1{query}")
    assert isinstance(bucket.fs, pafs.S3FileSystem) and bucket.path == "studies/sweep/runs/t1/order1"
    sync(Place.of(src), bucket, last="manifest.json")
    back = tmp_path / "elsewhere"
    (back / "ray").mkdir(parents=True)
    (back / "ray" / "state.json").write_text("{}")  # a local file the copy does not have: kept (no prune)
    sync(bucket, Place.of(back), last="manifest.json", prune=False)
    assert tree(back) == {**{k: v for k, v in tree(src).items() if k != ".lock"}, "ray/state.json": b"{}"}
    mirror = tmp_path / "mirror"
    assert len(sync(bucket, Place.of(mirror), stamps=StampFiles(mirror))) == 2
    before = {p: p.stat().st_mtime_ns for p in mirror.rglob("*.json")}
    assert sync(bucket, Place.of(mirror), stamps=StampFiles(mirror)) == []  # another process: nothing again
    assert {p: p.stat().st_mtime_ns for p in mirror.rglob("*.json")} == before
    fs.delete_file("studies/sweep/runs/t1/order1/events/steps/part-00000.parquet")
    sync(bucket, Place.of(mirror), stamps=StampFiles(mirror))
    assert not (mirror / "events" / "steps" / "part-00000.parquet").exists()
    assert not list(mirror.rglob(".part-00000.parquet.stamp"))


def test_a_gs_uri_names_a_gcs_bucket() -> None:
    """No GCS server here: the location is parsed (no request is made until a file is read)."""
    place = Place.of("gs://bucket/studies/sweep?endpoint_override=127.0.0.1:1&scheme=http")
    assert isinstance(place.fs, pafs.GcsFileSystem) and place.path == "bucket/studies/sweep"
    assert Place.of("relative/folder").path == os.path.abspath("relative/folder")
