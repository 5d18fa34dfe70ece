"""aimray.files: atomic writes, marked report sections shared by scripts, the timestamp."""

from __future__ import annotations

import re
from pathlib import Path

from aimray.files import get_section, is_uri, local_path, now, put_section, sha256_file, write_json_atomic


def test_sections_are_replaced_or_appended_and_the_rest_is_kept() -> None:
    section = "<!-- faults:begin -->\nnew\n<!-- faults:end -->"
    assert put_section("", "faults", section) == section + "\n"
    text = "# R\n\nbody\n\n<!-- faults:begin -->\nold\n<!-- faults:end -->\ntail\n"
    out = put_section(text, "faults", section)
    assert out == "# R\n\nbody\n\n" + section + "\ntail\n" and get_section(out, "faults") == section
    assert get_section("# R\n", "faults") is None and get_section("<!-- faults:begin --> no end", "faults") is None


def test_atomic_json_leaves_no_temporary_file(tmp_path) -> None:
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": float("nan")}, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == '{\n  "a": NaN,\n  "b": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert len(sha256_file(tmp_path / "a.json")) == 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now())


def _write_many(target: str, writer: int) -> None:
    for _ in range(40):
        write_json_atomic(Path(target), {"writer": writer, "data": [writer] * 50000})


def test_concurrent_writers_of_one_file_leave_one_whole_version(tmp_path) -> None:
    """Two processes writing one file at once (trials sharing a cache file) never interleave their bytes:
    each writes its own temporary file."""
    import json
    import multiprocessing

    target = tmp_path / "cache.json"
    procs = [multiprocessing.get_context("fork").Process(target=_write_many, args=(str(target), w)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert json.loads(target.read_text())["writer"] in (0, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_local_locations_as_paths_and_uris(tmp_path) -> None:
    from aimray.launch.storage import location

    folder = tmp_path / "a study"
    assert local_path(str(folder)) == folder and local_path(folder.as_uri()) == folder  # file:///.../a%20study
    assert not is_uri(folder.as_uri()) and is_uri("s3://bucket/study") and not is_uri(str(folder))
    assert location(folder.as_uri(), tmp_path) == (None, str(folder)) == location(str(folder), tmp_path)
