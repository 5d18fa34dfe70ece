"""aimray.files: atomic writes, marked report sections shared by scripts, the timestamp."""

from __future__ import annotations

import re

from aimray.files import get_section, now, put_section, sha256_file, write_json_atomic


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
