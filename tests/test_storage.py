"""Studies read straight from object storage: an S3 bucket served on 127.0.0.1 by moto's server mode (the
S3 protocol over HTTP, as Ray's own storage tests use), holding the committed quality study (real runs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from analysis.load import mirror, open_study

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "benchmarks" / "results" / "quality"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (stopped by its pid); yields (filesystem, URI query string)."""
    port = free_port()
    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    cmd = [server, "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    try:
        endpoint = {"endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "region": "us-east-1"}
        fs = pafs.S3FileSystem(**endpoint, allow_bucket_creation=True)
        deadline = time.time() + 30
        while True:
            try:
                fs.create_dir("studies")  # a bucket
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield fs, f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        proc.kill()
        proc.wait()


def test_a_study_in_an_s3_bucket_gives_the_tables_of_its_local_copy(s3, tmp_path, monkeypatch) -> None:
    fs, query = s3
    monkeypatch.setenv("AIMRAY_HOME", str(tmp_path / "home"))
    pafs.copy_files(str(QUALITY), "studies/quality", destination_filesystem=fs)
    fs.create_dir("studies/quality/runs/aimmerging/o1-s0-0d55c136/checkpoints")
    with fs.open_output_stream("studies/quality/runs/aimmerging/o1-s0-0d55c136/checkpoints/big.bin") as f:
        f.write(b"state, not results")
    uri = f"s3://studies/quality{query}"
    local = mirror(uri)
    assert not list(local.rglob("checkpoints"))  # state is never copied
    remote, here = open_study(uri), open_study(QUALITY)
    assert remote.kind == here.kind == "ablation"
    assert len(remote.runs) == len(here.runs) >= 30
    for kind in ("runs", "steps", "merges", "evals", "costs"):
        a, b = (getattr(s, kind).astype(str).sort_values(list(getattr(s, kind).columns)) for s in (remote, here))
        assert a.reset_index(drop=True).equals(b.reset_index(drop=True)), kind
    # a second open copies nothing; a file gone from the bucket is gone from the mirror
    stamps = {p: p.stat().st_mtime_ns for p in local.rglob("manifest.json")}
    fs.delete_dir("studies/quality/runs/seqlora")
    mirror(uri)
    assert not (local / "runs" / "seqlora").exists() or not list((local / "runs" / "seqlora").rglob("manifest.json"))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if "seqlora" not in str(p))
    # the analysis CLI reads the bucket directly
    env = {**os.environ, **CREDENTIALS, "AIMRAY_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "analysis", uri, "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "aimmerging" in (tmp_path / "out" / "tables" / "methods.md").read_text()


def test_a_sweep_whose_storage_is_an_s3_bucket_keeps_the_whole_study_there(s3, tiny_causal, tmp_path) -> None:
    """--storage s3://...: Tune's state and every run folder go to the bucket (manifest last, after every
    task); at the end --out mirrors the trajectories and the bucket holds the sweep's tables, so the analysis
    of the bucket and of --out agree."""
    import json
    import subprocess as sp

    import pandas as pd

    from tests.test_tune import sweep_cli

    fs, query = s3
    uri = f"s3://studies/sweep{query}"
    out = tmp_path / "sweep"
    proc = sweep_cli(out, tiny_causal, "--orders", "1,2", "--storage", uri, stdout=sp.PIPE, stderr=sp.STDOUT)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-4000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "completed").all()
    for trial in trials.trial_id:
        for order in (1, 2):
            with fs.open_input_stream(f"studies/sweep/runs/{trial}/order{order}/manifest.json") as f:
                assert json.loads(f.read())["status"] == "success"
    assert fs.get_file_info("studies/sweep/trials.parquet").type == pafs.FileType.File
    assert fs.get_file_info("studies/sweep/tune").type == pafs.FileType.Directory  # Tune's own state
    env = {**os.environ, **CREDENTIALS, "AIMRAY_HOME": str(tmp_path / "home")}
    tables = {}
    for name, study in (("bucket", uri), ("local", str(out))):
        cmd = [sys.executable, "-m", "analysis", study, "--out", str(tmp_path / name)]
        res = sp.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        tables[name] = (tmp_path / name / "tables" / "methods.md").read_text()
    assert tables["bucket"] == tables["local"] and "| " in tables["local"]
