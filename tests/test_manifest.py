"""The typed manifest (aimray.manifest): every manifest committed under benchmarks/results reads and writes
back as it was, unknown keys included; a broken one fails naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimray.manifest import STATUSES, Manifest, status_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_committed_manifest_round_trips() -> None:
    paths = sorted((ROOT / "benchmarks" / "results").rglob("manifest.json"))
    assert len(paths) > 100
    for path in paths:
        data = json.loads(path.read_text())
        manifest = Manifest.read(path.parent)
        assert manifest.to_dict() == data, path
        assert manifest.status in STATUSES and manifest.tasks and manifest.config["method"] == manifest.method


def test_unknown_keys_survive_a_rewrite_and_broken_manifests_name_their_file(tmp_path) -> None:
    folder = next((ROOT / "benchmarks" / "results").rglob("manifest.json")).parent
    data = {**json.loads((folder / "manifest.json").read_text()), "written_by_a_later_version": {"x": 1}}
    manifest = Manifest.from_dict(data)
    assert manifest.extra == {"written_by_a_later_version": {"x": 1}}
    manifest.status = "stopped"
    manifest.write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {**data, "status": "stopped"}
    assert status_of(tmp_path) == "stopped" and status_of(tmp_path / "nothing") is None
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"manifest.json: expected a JSON object, got list"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "r", "status": "running"}))
    missing = r"manifest.json: no method, benchmark, order, seed, tasks \(keys: run_id, status\)"
    with pytest.raises(ValueError, match=missing):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text('{"run_id": ')
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON at line 1, column 12"):
        Manifest.read(tmp_path)
    assert status_of(tmp_path) is None
