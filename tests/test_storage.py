"""Studies read straight from object storage: an S3 bucket served on 127.0.0.1 by moto's server mode (the
S3 protocol over HTTP, as Ray's own storage tests use), holding the committed quality study (real runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from aimray.events import read_events
from analysis.load import mirror, open_study
from benchmarks import testbed
from benchmarks.testbed import CREDENTIALS, free_port

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "benchmarks" / "results" / "quality"


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


@pytest.fixture
def split_cluster(tmp_path):
    """benchmarks.testbed.split_cluster over `tmp_path/sweep`: yields (address, the sweep's --out)."""
    out = tmp_path / "sweep"
    with testbed.split_cluster(out) as address:
        yield address, out


def test_a_sweep_across_nodes_that_share_no_folder_comes_home_through_the_bucket(s3, split_cluster, tiny_causal):
    """--storage s3://... on a two-node cluster whose worker node cannot see --out (its own tmpfs there):
    two trials at once on orders 1 and 2, the driver SIGKILLed once a run has reached the bucket and
    resumed (no tables before the end; finished runs not run again); the trial that ran on the worker wrote
    its runs where the driver cannot read them, and yet --out holds every trajectory at the end, brought home
    from the bucket, as are the runs on held-out order 3;
    the bucket also holds Tune's state and the sweep's tables: the analysis of the bucket and of --out agree,
    and the Optuna journal holds every trial with the objective the sweep's table records. (This test also
    stands for a two-node cluster on a shared folder: the same kill and resume, with less to bring home.)"""
    import subprocess as sp

    import pandas as pd

    from tests.test_tune import sweep_cli

    fs, query = s3
    address, out = split_cluster
    uri = f"s3://studies/split{query}"
    extra = [
        "--address",
        address,
        "--concurrency",
        "2",
        "--holdout-orders",
        "3",
        "--scheduler",
        "none",
        "--storage",
        uri,
    ]
    env = {"RAY_AUTH_MODE": "token"}
    log = open(out.parent / "driver.log", "w")  # noqa: SIM115
    proc = sweep_cli(out, tiny_causal, *extra, env=env, stdout=log, stderr=sp.STDOUT, start_new_session=True)
    # SIGKILL the driver (and its process group) once a first run has reached the bucket, then resume
    deadline = time.time() + 600
    while time.time() < deadline and not committed(fs, "studies/split/runs"):
        assert proc.poll() is None, (out.parent / "driver.log").read_text()[-4000:]
        time.sleep(0.5)
    assert committed(fs, "studies/split/runs"), "no run reached the bucket in 10 minutes"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "trials.parquet").exists()  # the sweep's tables come at its end only
    finished = finished_runs(fs, "studies/split/runs")
    # resumed, and the worker node lost (every process of it SIGKILLed) while a trial runs there: Tune starts
    # that trial again on the head (max_failures), its runs carry on from their copies in the bucket
    with open(out.parent / "resumed.log", "w") as log:
        resumed = sweep_cli(out, tiny_causal, *extra, "--resume", env=env, stdout=log, stderr=sp.STDOUT)
        lost = testbed.lose_the_worker_node(address, resumed, out)
        resumed.wait(timeout=900)
    stdout = (out.parent / "resumed.log").read_text()
    assert resumed.returncode == 0, stdout[-4000:]
    assert lost, "no trial ran on the worker node after the resume"
    assert f"Trial task failed for trial run_trial_{lost}" in stdout  # lost with its node, then started again
    assert "reported value is ignored" not in stdout  # Optuna's warning on a trial started again: off the terminal
    # runs finished before the kill were not run again (their manifests in the bucket are as they were)
    assert finished and finished.items() <= finished_runs(fs, "studies/split/runs").items()
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "completed").all()
    spans = []
    for trial in trials.trial_id:
        for order in (1, 2):
            manifest = out / "runs" / trial / f"order{order}" / "manifest.json"
            assert manifest.exists(), f"{trial}'s run of order {order} did not come home"
            steps = read_events(manifest.parent, "steps").to_pandas()  # nothing lost or done twice
            assert len(steps) and not steps.duplicated(["task_index", "step", "phase"]).any()
            assert sorted(set(steps.task_index)) == [0, 1, 2, 3] and len(read_events(manifest.parent, "costs")) == 4
        m = json.loads((out / "runs" / trial / "order1" / "manifest.json").read_text())
        spans.append((m["started_at"], m["finished_at"]))
    # each node has one CPU and each trial takes one: runs that overlapped in time ran on different nodes
    first, second = sorted(spans)
    assert second[0] <= first[1], f"the two trials did not run at once ({spans}): nothing ran on the worker node"
    # the worker node's own copy of --out is invisible here: the runs above came through the bucket
    listing = fs.get_file_info(pafs.FileSelector("studies/split/runs", recursive=True))
    assert sum(i.path.endswith("manifest.json") for i in listing) == 4
    assert fs.get_file_info("studies/split/trials.parquet").type == pafs.FileType.File  # the sweep's tables
    # the held-out order's runs (Ray tasks on either node) came home through the bucket too
    holdout = pd.read_parquet(out / "holdout.parquet")
    assert (holdout.order == 3).all() and (holdout.status == "success").all() and "default" in set(holdout.config)
    for name in holdout.config:
        assert json.loads((out / "holdout" / name / "order3" / "manifest.json").read_text())["status"] == "success"
        assert fs.get_file_info(f"studies/split/holdout/{name}/order3/manifest.json").type == pafs.FileType.File
    assert fs.get_file_info("studies/split/tune").type == pafs.FileType.Directory  # Tune's own state
    # the analysis of the bucket and of --out agree
    env = {**os.environ, **CREDENTIALS, "AIMRAY_HOME": str(out.parent / "home")}
    tables = {}
    for name, study in (("bucket", uri), ("local", str(out))):
        cmd = [sys.executable, "-m", "analysis", study, "--out", str(out.parent / name)]
        res = sp.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        tables[name] = (out.parent / name / "tables" / "methods.md").read_text()
    assert tables["bucket"] == tables["local"] and "| " in tables["local"]
    # the searcher's study came through the kill with every trial
    import optuna
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="aimray-sweep",
        storage=optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.journal"))),
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2  # with the objectives Tune recorded (TPE's history survives Tuner.restore)
    assert sorted(round(t.value, 9) for t in complete) == sorted(round(v, 9) for v in trials.objective)


def finished_runs(fs, base: str) -> dict[str, str]:
    """{manifest path: finished_at} of the run folders under `base` whose manifest says success."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError:
        return {}
    done = {}
    for info in infos:
        if info.path.endswith("manifest.json"):
            with fs.open_input_stream(info.path) as f:
                manifest = json.loads(f.read())
            if manifest.get("status") == "success":
                done[info.path] = manifest["finished_at"]
    return done


def committed(fs, base: str) -> bool:
    """Whether some run folder under `base` has a manifest saying success (its copy is complete)."""
    return bool(finished_runs(fs, base))


def test_uploads_ride_out_a_storage_outage_and_a_long_one_names_the_uri(tmp_path, monkeypatch, capsys) -> None:
    """The S3 server is down when a run folder's upload starts and comes up once the upload has failed and
    backs off (a real moto server on 127.0.0.1): the upload retries and the copy is complete. An outage
    longer than the limit fails with one line naming the URI and saying --resume continues."""
    import threading

    from aimray.launch.storage import RemoteFolder, StorageUnavailableError

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    endpoint = {"endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "region": "us-east-1"}
    fs = pafs.S3FileSystem(**endpoint, allow_bucket_creation=True, connect_timeout=1, request_timeout=2)
    run = tmp_path / "run"
    (run / "events").mkdir(parents=True)
    (run / "events" / "part-00000.parquet").write_bytes(b"x" * 1000)
    (run / "manifest.json").write_text('{"status": "success"}')
    servers = []

    from aimray.launch import storage as storage_lib

    first_retry, sleep = threading.Event(), time.sleep

    def backoff(seconds: float) -> None:  # the upload's first failure is seen before the server comes up
        first_retry.set()
        sleep(seconds)

    monkeypatch.setattr(storage_lib.time, "sleep", backoff)

    def come_back() -> None:
        first_retry.wait(60)
        server = str(Path(sys.executable).parent / "moto_server")
        servers.append(subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                fs.create_dir("studies")
                return
            except OSError:
                time.sleep(0.2)

    monkeypatch.setenv("AIMRAY_STORAGE_OUTAGE_S", "60")
    threading.Thread(target=come_back, daemon=True).start()
    remote = RemoteFolder(fs, "studies/runs/t1/order1")
    try:
        remote.upload(run)
        retries = capsys.readouterr().err
        assert "s3://studies/runs/t1/order1: uploading a run folder failed" in retries and "retrying in 1 s" in retries
        assert fs.get_file_info("studies/runs/t1/order1/manifest.json").size == len('{"status": "success"}')
        assert fs.get_file_info("studies/runs/t1/order1/events/part-00000.parquet").size == 1000
    finally:
        for server in servers:
            server.kill()
            server.wait()
    # the server is gone for good: past the limit, one clear error naming the copy's URI
    monkeypatch.setenv("AIMRAY_STORAGE_OUTAGE_S", "2")
    (run / "manifest.json").write_text('{"status": "running"}')
    with pytest.raises(StorageUnavailableError, match="s3://studies/runs/t1/order1: storage unreachable for"):
        remote.upload(run)


def test_one_sweep_driver_per_storage_prefix_across_machines_holds_a_lease(s3, monkeypatch, capsys) -> None:
    """prefix_lease on a real S3 server: a fresh lease of a driver on another host refuses a second driver,
    naming it; a lapsed one, or one a dead driver of this host left, is taken over with a warning; the
    holder renews its lease while it runs and removes it at the end."""
    import socket

    from aimray.files import FolderInUseError
    from aimray.launch.storage import LEASE_FILE, prefix_lease

    fs, query = s3
    base, uri = "studies/lease", f"s3://studies/lease{query}"
    monkeypatch.setenv("AIMRAY_STORAGE_LEASE_S", "2")

    def claim(host: str, pid: int, age: float) -> None:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{LEASE_FILE}") as f:
            f.write(json.dumps({"host": host, "pid": pid, "token": "theirs", "renewed": time.time() - age}).encode())

    def lease() -> dict:
        with fs.open_input_stream(f"{base}/{LEASE_FILE}") as f:
            return json.loads(f.read())

    claim("gpu-node-7", 4242, age=0.0)
    refused = "in use by another sweep driver \\(pid 4242 on gpu-node-7"
    with pytest.raises(FolderInUseError, match=refused), prefix_lease(fs, base, uri, settle=0.1):
        pass
    claim("gpu-node-7", 4242, age=10.0)  # not renewed for longer than the lease: that machine is gone
    with prefix_lease(fs, base, uri, settle=0.1):
        first = lease()
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
        time.sleep(1.2)  # renewed every quarter of the lease
        assert lease()["renewed"] > first["renewed"]
    assert "taking over from pid 4242 on gpu-node-7, whose lease lapsed 10 s ago" in capsys.readouterr().out
    assert fs.get_file_info(f"{base}/{LEASE_FILE}").type == pafs.FileType.NotFound  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim(socket.gethostname(), int(dead.stdout), age=0.0)  # a driver of this host that was SIGKILLed
    with prefix_lease(fs, base, uri, settle=0.1):
        pass
    assert "which is no longer running" in capsys.readouterr().out


def test_an_outage_counts_from_the_start_of_the_first_failed_call(monkeypatch) -> None:
    """Against a server that stops answering, one call hangs until the S3 client gives up (about 100 s with
    pyarrow's defaults, measured against a SIGSTOPped moto): that time counts toward the limit, so a 60 s
    limit is not stretched into minutes."""
    import types

    from aimray.launch import storage as storage_lib
    from aimray.launch.storage import StorageUnavailableError

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(storage_lib, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    calls = []

    def hangs() -> None:
        calls.append(clock[0])
        sleep(99.0)
        raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: Timeout was reached")

    with pytest.raises(StorageUnavailableError, match="s3://studies/p: storage unreachable for 99 s while uploading"):
        storage_lib.retrying("uploading", "s3://studies/p", hangs, limit=60)
    assert calls == [0.0]  # given up after the one call that outlasted the limit, not retried
    calls.clear()

    def fails_fast() -> None:  # a server that refuses at once: retried with backoff 1, 2, 4, ... s
        calls.append(clock[0])
        raise OSError("Connection refused")

    with pytest.raises(StorageUnavailableError, match="storage unreachable for 31 s"):
        storage_lib.retrying("uploading", "s3://studies/p", fails_fast, limit=60)
    assert len(calls) == 6  # at 99, 100, 102, 106, 114, 130 s; the next wait (30 s) would pass the limit


def test_a_switchable_s3_server_goes_down_and_comes_back_with_its_buckets() -> None:
    """benchmarks/faults.py's storage-outage case: moto behind testbed.Relay; down refuses connections (and
    cuts those open), up serves the same buckets again on the same port."""
    import socket

    with testbed.s3_server(switchable=True) as s3:
        with s3.fs.open_output_stream("studies/run/manifest.json") as f:
            f.write(b'{"status": "success"}')
        port = s3.relay.port
        s3.down()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        s3.up()
        with s3.fs.open_input_stream("studies/run/manifest.json") as f:
            assert f.read() == b'{"status": "success"}'


def test_a_sweep_brings_home_the_runs_it_lacks_and_never_an_older_copy_over_a_newer_run(s3, tmp_path) -> None:
    """At a sweep's end the runs come home from the bucket: one that ran on another node, one cut short here
    and finished there. A run of this node whose uploads failed in an outage is ahead of its copy and stays
    as it is (faults.py's storage-hang case found the older copy mirrored over it: task 1's events beside
    task 4's checkpoint, and the resumed run failed)."""
    from aimray.launch.storage import bring_home

    fs, _ = s3
    success, running = b'{"status": "success"}', b'{"status": "running"}'

    def put(rel: str, data: bytes) -> None:
        with fs.open_output_stream(f"studies/home/{rel}") as f:
            f.write(data)

    def write(rel: str, data: bytes) -> None:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)

    local = tmp_path / "runs"
    put("t1/order1/events/steps/part-00000.parquet", b"A0")  # ran on another node
    put("t1/order1/manifest.json", success)
    put("t2/order1/events/steps/part-00000.parquet", b"B0")  # ran here; its copy stops after task 1
    put("t2/order1/manifest.json", running)
    write("t2/order1/events/steps/part-00000.parquet", b"B0")
    write("t2/order1/events/steps/part-00001.parquet", b"B1")
    write("t2/order1/checkpoints/t03-s000000/state.json", b"{}")
    write("t2/order1/manifest.json", running)
    for part in ("part-00000", "part-00001"):  # finished on another node after a retry; cut short here
        put(f"t3/order1/events/steps/{part}.parquet", part.encode())
    put("t3/order1/manifest.json", success)
    write("t3/order1/events/steps/part-00000.parquet", b"part-00000")
    write("t3/order1/manifest.json", running)
    assert sorted(bring_home(fs, "studies/home", local, "s3://studies/home")) == ["t1/order1", "t3/order1"]
    assert (local / "t1/order1/manifest.json").read_bytes() == success
    assert (local / "t2/order1/events/steps/part-00001.parquet").read_bytes() == b"B1"  # ahead: kept
    assert (local / "t2/order1/checkpoints/t03-s000000/state.json").exists()
    assert (local / "t3/order1/events/steps/part-00001.parquet").read_bytes() == b"part-00001"
    assert (local / "t3/order1/manifest.json").read_bytes() == success
    assert bring_home(fs, "studies/home", local, "s3://studies/home") == []  # all home: nothing again


def test_storage_gone_at_a_sweeps_end_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys) -> None:
    """faults.py's storage-outage case found Tune's own listing of the storage at the end of fit() raising
    an OSError traceback out of the sweep driver: it is one line naming the storage now, exit 1."""
    import importlib.util

    from aimray.launch import tune as tune_lib
    from aimray.launch.storage import StorageUnavailableError

    class Gone:
        def fit(self):
            raise OSError("When listing objects under key 'sweep/tune/' in bucket 'studies': Connection refused")

    fs = pafs.S3FileSystem(endpoint_override="127.0.0.1:1", scheme="http", region="us-east-1")
    with pytest.raises(StorageUnavailableError, match="^s3://studies/sweep: storage unreachable while Tune"):
        tune_lib.fit(Gone(), fs, "studies/sweep")
    with pytest.raises(OSError, match="Connection refused"):  # a local storage's errors are not an outage
        tune_lib.fit(Gone(), None, str(tmp_path))
    spec = importlib.util.spec_from_file_location("tune_controller", ROOT / "sweeps" / "tune_controller.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    line = "s3://studies/sweep/runs: storage unreachable for 21 s while listing the runs (...); run the same ..."

    def gone(*args, **kwargs):
        raise StorageUnavailableError(line)

    monkeypatch.setattr(tune_lib, "sweep", gone)
    code = cli.main(["--config", str(ROOT / "sweeps" / "configs" / "smoke.yaml"), "--out", str(tmp_path / "s")])
    assert code == 1 and capsys.readouterr().err == f"error: {line}\n"
