"""Does a run survive being killed? SIGKILL at random moments, resume, compare with an uninterrupted run.

    python benchmarks/faults.py [--cases run,ray-worker,sweep-driver] [--kills 10] [--preset smoke]
                                [--method aimmerging] [--seed 0] [--out runs/faults]
                                [--results benchmarks/RESULTS.md] [--report-only] [key=value ...]

Every run uses the real backbone (the preset's) with a checkpoint every 2 optimizer steps
(checkpoint.every_steps) so that kills land inside tasks too, and 2 torch threads. The cases:
  run            `python -m aimray run --workers 0` in a subprocess: a reference run; the same seed again
                 (must be bit-identical); the same command SIGKILLed `--kills` times at random moments
                 (seeded) and restarted each time; train.threads=1 against 2 (what differs, by how much)
  ray-worker     the run under Ray Train whose worker process SIGKILLs itself after a mid-task checkpoint;
                 Train retries it from the last checkpoint it registered; compared with the reference
  sweep-driver   `python sweeps/tune_controller.py` (sweeps/configs/smoke.yaml, 2 trials, one at a time, no
                 scheduler): its driver and local Ray SIGKILLed 5 times, resumed with --resume; every
                 trial's runs compared with an uninterrupted sweep's trial of the same config
  stops          asked to stop, then continued by the same command: SIGTERM to the process (as Kubernetes,
                 Slurm or a spot preemption sends it) and SIGINT to its process group (Ctrl-C in a shell) of
                 the run in the process (--workers 0) and in a Ray Train worker (--workers 1), at a seeded
                 moment after its first checkpoint; the seconds from the signal to the exit, the exit code
  sweep-stops    the same for the sweep driver (then --resume), with a second driver started on the same
                 --out while the first runs (it must refuse)
  full-disk      the run with --out on a tmpfs too small for its next checkpoint (root and mount needed):
                 it stops with one line, the tmpfs grows (as a user frees space) and the same command
                 finishes
  node-lost      the sweep (two trials at once) on a two-node Ray cluster started here whose nodes share
                 only an S3 bucket (moto on 127.0.0.1; the worker node's --out is a tmpfs of its own; root and
                 unshare needed): every process of the worker node SIGKILLed once a run there has
                 checkpointed; Tune retries the trial on the head from its copy in the bucket
  storage-outage the sweep with --storage on an S3 server (moto behind a relay) that goes down (connections
                 refused) for 60 s once a run has reached it: uploads retry with backoff; then an outage past
                 the limit ($AIMRAY_STORAGE_OUTAGE_S=20, down until the driver ends), back, --resume
  storage-hang   the same with a server that stops answering (SIGSTOP: connections accepted, never answered)
Counted: kills survived, event rows lost or duplicated against the uninterrupted run (multisets), whether
the matrices and events are identical. The table goes into a section of --results (between the
`faults:begin` / `faults:end` markers), the raw figures into <out>/faults.json (cases run earlier are kept).
Timings (wall_seconds, eval_seconds) are never compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import testbed

from aimray.events import TIMINGS

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("steps", "merges", "evals", "costs")


def command(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aimray",
        "run",
        "--method",
        args.method,
        "--benchmark",
        "offline-standard",
        "--order",
        "1",
        "--seed",
        str(args.seed),
        "--preset",
        args.preset,
        "--workers",
        "0",
        "--out",
        str(out),
        "checkpoint.every_steps=2",
        *args.overrides,
        *extra,
    ]


def run_once(cmd: list[str]) -> float:
    """Run to the end; returns the wall seconds."""
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.time() - t0


def killed_after(proc: subprocess.Popen, delay: float, delays: list[float], group: bool = False) -> bool:
    """SIGKILL `proc` (with group=True its whole process group: a driver and the local Ray it started) if it
    is still running after `delay` seconds; the delay is appended to `delays` when it was killed."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
        proc.wait()
        delays.append(round(delay, 1))
        return True


def run_with_kills(cmd: list[str], kills: int, span: float, rng: random.Random) -> tuple[int, list[float]]:
    """Start the command, SIGKILL it after a random delay (seeded), restart, until `kills` kills are done or
    the run finished first; then let it finish. Returns (kills done, the delays of the kills)."""
    delays: list[float] = []
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        if len(delays) < kills and killed_after(proc, rng.uniform(4.0, max(6.0, span / 4)), delays):
            continue
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
        return len(delays), delays


def rows(out: Path, kind: str) -> list[tuple]:
    """A run's event rows of one kind in write order, timings dropped, NaN made comparable."""
    paths = sorted((out / "events" / kind).glob("part-*.parquet"))
    table = [r for p in paths for r in pq.read_table(p).to_pylist()]
    return [
        tuple((k, "nan" if isinstance(v, float) and v != v else v) for k, v in r.items() if k not in TIMINGS)
        for r in table
    ]


def compare(ref: Path, other: Path) -> dict:
    """Rows lost and duplicated against the reference (multisets), and whether matrices and events match."""
    lost = dup = 0
    same_events = True
    for kind in KINDS:
        a, b = rows(ref, kind), rows(other, kind)
        ca, cb = Counter(a), Counter(b)
        lost += sum((ca - cb).values())
        dup += sum((cb - ca).values())
        same_events &= a == b
    ma, mb = (json.loads((d / "matrix.json").read_text()) for d in (ref, other))
    same_matrix = ma["test"] == mb["test"] and ma["dev"] == mb["dev"]
    return {"lost": lost, "duplicated": dup, "identical": bool(same_events and same_matrix)}


def differences(a: Path, b: Path) -> dict:
    """Largest differences between two runs: test/dev matrix entries (points) and train losses."""
    ma, mb = (json.loads((d / "matrix.json").read_text()) for d in (a, b))
    diff = {}
    for split in ("test", "dev"):
        x, y = (np.array(m[split], dtype=float) for m in (ma, mb))
        diff[f"max |{split} difference| (points)"] = float(np.nanmax(np.abs(x - y))) * 100
    la, lb = (np.array([dict(r)["train_loss"] for r in rows(d, "steps")]) for d in (a, b))
    diff["max |train loss difference|"] = float(np.max(np.abs(la - lb))) if la.shape == lb.shape else float("nan")
    diff["merges"] = (len(rows(a, "merges")), len(rows(b, "merges")))
    return diff


RAY_WORKER = """
import sys
from pathlib import Path
from aimray.config import make_config, parse_overrides
from aimray.faults import FailOnceAt
from aimray.launch.train import Resources, run_with_ray_train
preset, method, seed, out, stage, step, *overrides = sys.argv[1:]
cfg = make_config(preset, parse_overrides(overrides), method=method, benchmark="offline-standard", order=1,
                  seed=int(seed))
fail = FailOnceAt(int(stage), int(step), Path(out) / ".failed-once", sigkill=True)
run_with_ray_train(cfg, out, Resources(workers=1, cpus_per_worker=2, max_failures=2), on_checkpoint=fail)
"""


def ray_worker_case(args: argparse.Namespace, out: Path, at: tuple[int, int] = (1, 4)) -> dict:
    """The run under Ray Train, its worker SIGKILLed right after the mid-task checkpoint `at`."""
    folder = out / "ray-worker"
    overrides = [*args.overrides, "checkpoint.every_steps=2", "train.threads=2"]
    cmd = [sys.executable, "-c", RAY_WORKER, args.preset, args.method, str(args.seed), str(folder), *map(str, at)]
    t0 = time.time()
    subprocess.run([*cmd, *overrides], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    from aimray.manifest import Manifest

    resumed = Manifest.read(folder).resumed_from
    survived = int((folder / ".failed-once").exists())
    result = {"kills": survived, "at": list(at), "resumed_from": resumed, "seconds": time.time() - t0}
    return {**result, **compare(out / "reference", folder)}


def sweep_command(args: argparse.Namespace, out: Path, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "tune_controller.py"),
        "--config",
        str(ROOT / "sweeps/configs/smoke.yaml"),
        "--preset",
        args.preset,
        "--num-samples",
        "2",
        "--concurrency",
        "1",
        "--scheduler",
        "none",
        "--out",
        str(out),
        *args.overrides,
        "checkpoint.every_steps=2",
    ]
    return [*cmd, "--resume"] if resume else cmd


def sweep_driver_case(args: argparse.Namespace, out: Path, kills: int = 5) -> dict:
    """An uninterrupted sweep, and the same sweep whose driver (with the local Ray it started: the whole
    process group) is SIGKILLed `kills` times at random moments and resumed; trials matched by config."""
    ref, killed = out / "sweep-reference", out / "sweep-killed"
    t0 = time.time()
    subprocess.run(sweep_command(args, ref, False), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    span = time.time() - t0
    rng, delays = random.Random(args.seed + 1), []
    t0 = time.time()
    while True:
        cmd = sweep_command(args, killed, resume=(killed / "ray" / "tune").is_dir())
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        if len(delays) < kills and killed_after(proc, rng.uniform(15.0, max(20.0, span / 5)), delays, group=True):
            continue
        _, err = proc.communicate()
        if proc.returncode == 2 and b"no sweep to resume" in err:  # killed before Tune wrote its state
            shutil.rmtree(killed / "ray", ignore_errors=True)
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.decode()[-2000:]}")
        break
    return {
        "kills": len(delays),
        "delays": delays,
        "seconds": time.time() - t0,
        "reference_seconds": span,
        **compare_sweeps(ref, killed),
    }


def compare_sweeps(ref: Path, other: Path) -> dict:
    """`compare` summed over every order of every trial the two sweeps share (matched by config), and how many
    trials that is; not identical when they share none."""
    pairs = matched_trials(ref, other)
    totals = {"trials": len(pairs), "lost": 0, "duplicated": 0, "identical": bool(pairs)}
    for a, b in pairs:
        for order_dir in sorted(a.iterdir()):
            c = compare(order_dir, b / order_dir.name)
            totals["lost"] += c["lost"]
            totals["duplicated"] += c["duplicated"]
            totals["identical"] &= c["identical"]
    return totals


def matched_trials(ref: Path, other: Path) -> list[tuple[Path, Path]]:
    """(reference trial folder, other trial folder) for every reference trial whose config the other sweep
    ran too (trial ids differ between sweeps; configs are seeded)."""
    tables = [pq.read_table(d / "trials.parquet").to_pylist() for d in (ref, other)]
    knobs = [p["key"] for p in json.loads((ref / "sweep.json").read_text())["space"]]

    def key(row: dict) -> tuple:
        return tuple(row.get(f"config/{k}") for k in knobs)

    others = {key(r): r["trial_id"] for r in tables[1]}
    return [(ref / "runs" / r["trial_id"], other / "runs" / others[key(r)]) for r in tables[0] if key(r) in others]


def markdown(figures: dict, args: argparse.Namespace) -> str:
    k = figures["kills"]
    lines = [
        "<!-- faults:begin -->",
        "## Faults: killed runs resume exactly",
        "",
        f"`python benchmarks/faults.py --kills {args.kills} --preset {args.preset} --method {args.method}` "
        f"(cases: {', '.join(c for c, k in CASE_KEYS.items() if k in figures)}; {figures['date']}, "
        f"{figures['machine']}): `python -m aimray run --workers 0` on the real backbone, checkpoint every 2 "
        "steps; timings never compared.",
        "",
        "| case | kills survived | event rows lost | event rows duplicated | matrices and events vs uninterrupted |",
        "|---|---|---|---|---|",
        f"| same seed twice | 0 | {figures['same_seed']['lost']} | {figures['same_seed']['duplicated']} | "
        f"{'identical' if figures['same_seed']['identical'] else 'DIFFERENT'} |",
        f"| SIGKILL at {k['kills']} random moments, resumed each time | {k['kills']} | {k['lost']} | "
        f"{k['duplicated']} | {'identical' if k['identical'] else 'DIFFERENT'} |",
        *case_rows(figures),
        "",
        f"Kill delays after each (re)start, seconds: {', '.join(map(str, k['delays']))}; uninterrupted run "
        f"{figures['reference_seconds']:.0f} s, with the kills {k['seconds']:.0f} s in all.",
        "",
        "Threads (train.threads=1 against 2, same seed): "
        + "; ".join(f"{name} {_num(value)}" for name, value in figures["threads"].items())
        + ". Matmul reductions are split differently across threads, so bits differ; the table above holds "
        "for a fixed thread count.",
        "<!-- faults:end -->",
    ]
    return "\n".join(lines) + "\n"


def case_rows(figures: dict) -> list[str]:
    """Table rows of the Ray worker and sweep driver cases, where they were run."""
    rows = []
    if "ray_worker" in figures:
        w = figures["ray_worker"]
        rows.append(
            f"| Ray Train worker process SIGKILLed after the checkpoint at stage {w['at'][0]}, step {w['at'][1]}; "
            f"retried from {w['resumed_from']} | {w['kills']} | {w['lost']} | {w['duplicated']} | "
            f"{'identical' if w['identical'] else 'DIFFERENT'} |"
        )
    if "sweep_driver" in figures:
        d = figures["sweep_driver"]
        rows.append(
            f"| sweep driver and its local Ray SIGKILLed {d['kills']} times ({', '.join(map(str, d['delays']))} s "
            "after each start), `--resume` each time "
            f"({d['trials']} trials matched by config, every order) | {d['kills']} | {d['lost']} | "
            f"{d['duplicated']} | {'identical' if d['identical'] else 'DIFFERENT'} |"
        )
    return rows


STOPPED = {"w0": "the run (in the process)", "w1": "the run in a Ray Train worker"}
SENT = {"SIGTERM": "SIGTERM to the process", "SIGINT": "SIGINT to its process group (Ctrl-C)"}


def stop_rows(figures: dict) -> list[str]:
    """Table rows of the stops, sweep-stops and full-disk cases, where they were run."""

    def same(c: dict) -> str:
        return "identical" if c["identical"] else "DIFFERENT"

    rows = []
    for key, c in figures.get("stops", {}).items():
        where, sig = key.split("-")
        rows.append(
            f"| {SENT[sig]}: {STOPPED[where]}, exit {c['code']} {c['seconds']} s after the signal (`{c['line']}`); "
            f"the same command | 1 | {c['lost']} | {c['duplicated']} | {same(c)} |"
        )
    for key, c in figures.get("sweep_stops", {}).items():
        if key == "reference_seconds":
            continue
        if key == "second driver":
            rows.append(
                f"| a second sweep driver on the same --out: exit {c['code']} (`{c['line']}`) | – | – | – | – |"
            )
            continue
        rows.append(
            f"| {SENT[key]}: the sweep driver, exit {c['code']} {c['seconds']} s after the signal (`{c['line']}`); "
            f"`--resume` | 1 | {c['lost']} | {c['duplicated']} | {same(c)} |"
        )
    disk = figures.get("full_disk")
    if disk and "skipped" not in disk:
        rows.append(
            f"| --out on a 3 MiB tmpfs: exit {disk['code']} (`{disk['line']}`); tmpfs grown, the same command "
            f"| 1 | {disk['lost']} | {disk['duplicated']} | {same(disk)} |"
        )
    if "node_lost" in figures:
        n = figures["node_lost"]
        retried = f"trial {n['lost_trial']} retried on the head" if n["retried"] else "NO TRIAL RETRIED"
        rows.append(
            "| two nodes sharing only an S3 bucket (moto), two trials at once: every process of the worker node "
            f"SIGKILLed {n['lost_after']} s in, once a run there had checkpointed; {retried}, exit {n['code']} "
            f"({n['trials']} trials matched by config) | 1 | {n['lost']} | {n['duplicated']} | {same(n)} |"
        )
    for key, how in (("storage_outage", "down"), ("storage_hang", "frozen")):
        for name, c in figures.get(key, {}).items():
            rows.append(f"| {outage_words(how, name, c)} | 1 | {c['lost']} | {c['duplicated']} | {same(c)} |")
    return rows


def not_measured(figures: dict) -> list[str]:
    """A line naming the storage sub-cases without a row yet ([] when every one has one)."""
    missing = [
        f"{case} ({name})"
        for case in ("storage-outage", "storage-hang")
        for name in ("short", "long")
        if name not in figures.get(CASE_KEYS[case], {})
    ]
    return ["", f"Not yet measured by this script: {', '.join(missing)}."] if missing else []


def outage_words(how: str, name: str, c: dict) -> str:
    """The case column of a storage-outage row."""
    gone = {
        "down": "the S3 server gone (connections refused)",
        "frozen": "the S3 server not answering (SIGSTOP: connections hang)",
    }[how]
    if name == "short":
        return f"{gone} for {c['away_seconds']} s while trials upload: {c['retries']} retries logged, exit {c['code']}"
    line = c["line"].split(" -- ", 1)[-1]  # a log record's message, without its time and place
    head = f"{gone}, past the limit ($AIMRAY_STORAGE_OUTAGE_S=20): {c['away_seconds']} s"
    resumed = f"`--resume` exit {c['resume_code']}"
    if c["ended_while_away"]:
        return f"{head}, until the driver ended; exit {c['code']} (`{line}`); the server back, {resumed}"
    return (
        f"{head} (the most this script waits): the trial failed (`{line}`) and was retried, but the driver waited "
        f"on Tune's own save of its state to the hung server (aimray's limit does not bound Tune's calls); the "
        f"server back, the sweep finished, exit {c['code']}; {resumed} (nothing left)"
    )


def worst_stop(figures: dict) -> str:
    """The slowest stop of the stops and sweep-stops cases, in words ("" where none ran)."""
    stops = {f"{SENT[k.split('-')[1]]}, {STOPPED[k.split('-')[0]]}": c for k, c in figures.get("stops", {}).items()}
    stops |= {f"{SENT[k]}, the sweep driver": c for k, c in figures.get("sweep_stops", {}).items() if k in SENT}
    if not stops:
        return ""
    name, c = max(stops.items(), key=lambda kv: kv[1]["seconds"])
    return f"Slowest stop: {c['seconds']} s from the signal to the exit ({name}; the grace is 25 s)."


def signal_during(cmd: list[str], sig: int, delay: float, group: bool, ready: Path) -> dict:
    """Start `cmd` in its own session, send `sig` `delay` seconds after `ready` (a folder) has an entry (with
    group=True to its whole process group, as a shell's Ctrl-C does); the exit code, seconds from the signal
    to the exit, the last line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    while proc.poll() is None and not (ready.is_dir() and any(ready.iterdir())):
        time.sleep(0.1)
    try:
        proc.wait(timeout=delay)
        return {"code": proc.returncode, "seconds": 0.0, "line": "finished before the signal"}
    except subprocess.TimeoutExpired:
        sent = time.time()
        (os.killpg if group else os.kill)(proc.pid, sig)
        _, err = proc.communicate(timeout=600)
        lines = [line for line in err.decode().splitlines() if line.startswith(("[run]", "[sweep]", "error"))]
        return {"code": proc.returncode, "seconds": round(time.time() - sent, 1), "line": (lines or [""])[-1]}


def stops_case(args: argparse.Namespace, out: Path, span: float) -> dict:
    """SIGTERM (the process) and SIGINT (the group) of the run in the process and in Ray Train, each once its
    first checkpoint is written and then a seeded wait of up to 40% of the reference run's `span` seconds,
    then the same command; compared with the reference."""
    rng, cases = random.Random(args.seed + 2), {}
    for workers in ("0", "1"):
        for sig, group in ((signal.SIGTERM, False), (signal.SIGINT, True)):
            folder = out / f"stop-w{workers}-{signal.Signals(sig).name}"
            shutil.rmtree(folder, ignore_errors=True)
            cmd = [*command(args, folder, "train.threads=2"), "--workers", workers]  # the last --workers wins
            stopped = signal_during(cmd, sig, rng.uniform(0.0, 0.4) * span, group, folder / "checkpoints")
            run_once(cmd)
            cases[f"w{workers}-{signal.Signals(sig).name}"] = {**stopped, **compare(out / "reference", folder)}
    return cases


def sweep_reference(args: argparse.Namespace, out: Path, span: float | None) -> float:
    """The uninterrupted sweep every sweep case is compared with (`out/sweep-reference`), made and timed
    where missing; its seconds."""
    ref = out / "sweep-reference"
    if (ref / "trials.parquet").is_file() and span is not None:
        return span
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.time()
    subprocess.run(sweep_command(args, ref, False), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t0


def sweep_stops_case(args: argparse.Namespace, out: Path, span: float) -> dict:
    """SIGTERM (the driver) and SIGINT (its group) of a sweep at a seeded moment between 30% and 60% of the
    uninterrupted sweep's `span` seconds, then --resume; a second driver on the same --out while the first
    runs; trials compared with the uninterrupted sweep's."""
    ref = out / "sweep-reference"
    rng, cases = random.Random(args.seed + 3), {"reference_seconds": span}
    for sig, group in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        folder = out / f"sweep-{signal.Signals(sig).name}"
        shutil.rmtree(folder, ignore_errors=True)
        proc = subprocess.Popen(
            sweep_command(args, folder, False),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.3, 0.6) * span)
        if sig == signal.SIGTERM:  # a second driver on the same folder, while the first runs
            second = subprocess.run(sweep_command(args, folder, True), capture_output=True, text=True)
            cases["second driver"] = {"code": second.returncode, "line": second.stderr.strip().splitlines()[-1]}
        sent = time.time()
        (os.killpg if group else os.kill)(proc.pid, sig)
        _, err = proc.communicate(timeout=600)
        line = [x for x in err.decode().splitlines() if x.startswith("[sweep] interrupted")]
        stopped = {"code": proc.returncode, "seconds": round(time.time() - sent, 1), "line": (line or [""])[-1]}
        subprocess.run(
            sweep_command(args, folder, True), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        cases[signal.Signals(sig).name] = {**stopped, **compare_sweeps(ref, folder)}
    return cases


def node_lost_case(args: argparse.Namespace, out: Path) -> dict:
    """The sweep on a two-node cluster whose nodes share only an S3 bucket (benchmarks/testbed.py: moto on
    127.0.0.1; the worker node's --out is a tmpfs of its own), two trials at once, one per node; every process
    of the worker node SIGKILLed once a run there has written a checkpoint. Tune retries that trial on the
    head, its runs continue from their copies in the bucket; compared with the uninterrupted sweep."""
    folder, log = out / "sweep-node-lost", out / "sweep-node-lost.log"
    shutil.rmtree(folder, ignore_errors=True)
    os.environ.update(testbed.CREDENTIALS)  # the nodes' processes reach the bucket with these
    with testbed.s3_server() as s3, testbed.split_cluster(folder) as address:
        uri = f"s3://studies/node-lost{s3.query}"
        cmd = [*sweep_command(args, folder, False), "--address", address, "--concurrency", "2", "--storage", uri]
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        t0 = time.time()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            lost = testbed.lose_the_worker_node(address, proc, folder, timeout=3600)
            lost_after = time.time() - t0
            code = proc.wait()
    text = log.read_text()
    return {
        "code": code,
        "lost_trial": lost,
        "lost_after": round(lost_after),
        "retried": bool(lost) and f"Trial task failed for trial run_trial_{lost}" in text,
        "seconds": round(time.time() - t0),
        **compare_sweeps(out / "sweep-reference", folder),
    }


OUTAGES = {  # how the S3 server goes away: (cut, restore) on a testbed.S3Server
    "down": ("down", "up"),  # gone: connections refused and those open cut (its relay closed)
    "frozen": ("freeze", "thaw"),  # hangs: SIGSTOP, connections accepted and never answered
}


def storage_outage_case(
    args: argparse.Namespace, out: Path, how: str, name: str, span: float = 60.0, limit: float = 20.0
) -> dict:
    """The sweep with --storage on an S3 server (moto on 127.0.0.1) that goes away `how` (OUTAGES) once a run
    has reached the bucket, and comes back: for `span` seconds (name "short": uploads retry with backoff and
    the sweep finishes), or past the limit (name "long", $AIMRAY_STORAGE_OUTAGE_S=`limit`: away until the
    driver ends, at most 10 minutes; the server back, `--resume`). Compared with the uninterrupted sweep; the
    drivers' output in sweep-outage-<how>-<name>.log (and .resume.log)."""
    os.environ.update(testbed.CREDENTIALS)
    cut, restore = OUTAGES[how]
    env = {**os.environ, **({"AIMRAY_STORAGE_OUTAGE_S": f"{limit:g}"} if name == "long" else {})}
    prefix = f"outage-{how}-{name}"
    folder, log = out / f"sweep-{prefix}", out / f"sweep-{prefix}.log"
    shutil.rmtree(folder, ignore_errors=True)
    with testbed.s3_server(switchable=how == "down") as s3:
        cmd = [*sweep_command(args, folder, False), "--storage", f"s3://studies/{prefix}{s3.query}"]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            while proc.poll() is None and not any(i.path.endswith("manifest.json") for i in bucket(s3, prefix)):
                time.sleep(0.5)
            getattr(s3, cut)()
            away = time.time()
            with contextlib.suppress(subprocess.TimeoutExpired):  # the long one: until the driver gives up
                proc.wait(timeout=span if name == "short" else 600)
            seconds, gave_up = time.time() - away, proc.poll() is not None
            getattr(s3, restore)()
            code = proc.wait()
        text = log.read_text()
        said = [x for x in text.splitlines() if x.startswith(("error", "[sweep]")) or "storage unreachable" in x]
        row = {
            "code": code,
            "away_seconds": round(seconds),
            "retries": text.count("[storage] "),
            "ended_while_away": gave_up,
            "line": (said or [""])[-1][:300],
        }
        if name == "long":
            with open(out / f"sweep-{prefix}.resume.log", "w") as f:
                resumed = subprocess.run([*cmd, "--resume"], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            row["resume_code"] = resumed.returncode
    if not (folder / "trials.parquet").is_file():  # the sweep did not end: nothing to compare
        return {**row, "trials": 0, "lost": None, "duplicated": None, "identical": False}
    return {**row, **compare_sweeps(out / "sweep-reference", folder)}


def bucket(s3: testbed.S3Server, prefix: str) -> list:
    """What the bucket holds under <prefix>/runs (nothing while that prefix is missing)."""
    selector = pafs.FileSelector(f"studies/{prefix}/runs", recursive=True, allow_not_found=True)
    try:
        return s3.fs.get_file_info(selector)
    except OSError:
        return []


def full_disk_case(args: argparse.Namespace, out: Path) -> dict:
    """The run with --out on a 3 MiB tmpfs (its first checkpoint does not fit): it stops with one line; the
    tmpfs grows to 256 MiB and the same command finishes; compared with the reference."""
    mount = out / "full-disk"
    subprocess.run(["umount", str(mount)], stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(mount, ignore_errors=True)
    mount.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=False).returncode:
        return {"skipped": "no tmpfs mount here (needs root)"}
    try:
        cmd = command(args, mount / "run", "train.threads=2")
        first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in first.stderr.splitlines() if x.startswith("error")]
        subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)
        run_once(cmd)
        return {"code": first.returncode, "line": (line or [""])[-1], **compare(out / "reference", mount / "run")}
    finally:
        shutil.copytree(
            mount / "run", out / "full-disk-run", dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints")
        )
        subprocess.run(["umount", str(mount)], check=False)


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_sections(path: Path, figures: dict, args: argparse.Namespace) -> str:
    """Replace the faults section (the kills) and the faults-stops section (stops, a full disk) of `path`
    with those the figures hold (or append them), leaving the rest as it is; returns what was written."""
    from aimray.files import put_section, write_text_atomic

    text, written = path.read_text() if path.exists() else "", []
    if "same_seed" in figures:
        written.append(markdown(figures, args))
        text = put_section(text, "faults", written[-1])
    if "stops_run" in figures:
        written.append(stops_markdown(figures, args))
        text = put_section(text, "faults-stops", written[-1])
    write_text_atomic(path, text)
    return "\n".join(written)


def stops_markdown(figures: dict, args: argparse.Namespace) -> str:
    """The faults-stops section: runs and sweeps asked to stop, a second driver, a full disk, a node lost, an
    S3 storage outage."""
    run = figures["stops_run"]
    lines = [
        "<!-- faults-stops:begin -->",
        "## Faults: runs and sweeps asked to stop, a node lost, storage gone, a full disk",
        "",
        f"`python benchmarks/faults.py --cases {','.join(run['cases'])} --preset {args.preset} --method "
        f"{args.method}` ({run['date']}, {run['machine']}): the real backbone, checkpoint every 2 steps; each "
        "compared with an uninterrupted run (the sweeps: with an uninterrupted sweep, trials matched by config); "
        "timings never compared.",
        "",
        "| case | stops | event rows lost | event rows duplicated | matrices and events vs uninterrupted |",
        "|---|---|---|---|---|",
        *stop_rows(figures),
        "",
        worst_stop(figures),
        *not_measured(figures),
        "<!-- faults-stops:end -->",
    ]
    return "\n".join(lines) + "\n"


CASE_KEYS = {  # in faults.json
    "run": "same_seed",
    "ray-worker": "ray_worker",
    "sweep-driver": "sweep_driver",
    "stops": "stops",
    "sweep-stops": "sweep_stops",
    "full-disk": "full_disk",
    "node-lost": "node_lost",
    "storage-outage": "storage_outage",
    "storage-hang": "storage_hang",
}
# the cases of the faults-stops section
STOP_CASES = ("stops", "sweep-stops", "full-disk", "node-lost", "storage-outage", "storage-hang")
CASES = tuple(CASE_KEYS)


def run_case(args: argparse.Namespace, out: Path) -> dict:
    """Reference, same seed again, the kills, one thread: the figures of the `run` case."""
    for name in ("reference", "again", "killed", "one-thread"):
        shutil.rmtree(out / name, ignore_errors=True)
    print(f"[faults] reference run ({args.preset}, {args.method})", flush=True)
    ref_seconds = run_once(command(args, out / "reference", "train.threads=2"))
    print(f"[faults] same seed again ({ref_seconds:.0f} s each)", flush=True)
    run_once(command(args, out / "again", "train.threads=2"))
    print(f"[faults] {args.kills} kills at random moments", flush=True)
    t0 = time.time()
    kills, delays = run_with_kills(
        command(args, out / "killed", "train.threads=2"), args.kills, ref_seconds, random.Random(args.seed)
    )
    killed_seconds = time.time() - t0
    print("[faults] one thread", flush=True)
    run_once(command(args, out / "one-thread", "train.threads=1"))
    return {
        "reference_seconds": ref_seconds,
        "same_seed": compare(out / "reference", out / "again"),
        "kills": {
            "kills": kills,
            "delays": delays,
            "seconds": killed_seconds,
            **compare(out / "reference", out / "killed"),
        },
        "threads": differences(out / "reference", out / "one-thread"),
    }


def keep(saved: Path, figures: dict) -> None:
    """Write the figures so far to faults.json (atomically), after every case: one that fails later loses
    nothing of those before it."""
    from aimray.files import write_text_atomic

    write_text_atomic(saved, json.dumps(figures, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    os.environ["AIMRAY_STAGE_CACHE"] = "off"  # every case computes task 1 itself, faults and all
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (all)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the run before it may finish (10)")
    parser.add_argument("--preset", default="smoke", help="run preset (default smoke: the real backbone)")
    parser.add_argument("--method", default="aimmerging", help="method (default aimmerging)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; the kill moments use it too (0)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "faults"), help="scratch folder")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="markdown to update")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from <out>/faults.json")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        parser.error(f"argument --cases: {args.cases!r}; valid: {', '.join(CASES)}")
    if args.kills < 1:
        parser.error(f"argument --kills: {args.kills} must be >= 1")
    out = Path(args.out)
    saved = out / "faults.json"
    figures = json.loads(saved.read_text()) if saved.is_file() else {}
    if args.report_only:
        if "same_seed" not in figures and "stops" not in figures:
            parser.error(f"--report-only: {saved} holds no case (run without --report-only first)")
        write_sections(Path(args.results), figures, args)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if "run" in cases:
        figures.update(run_case(args, out))
        keep(saved, figures)
    elif not (out / "reference" / "matrix.json").is_file() or "reference_seconds" not in figures:
        print(f"[faults] reference run ({args.preset}, {args.method})", flush=True)
        shutil.rmtree(out / "reference", ignore_errors=True)
        figures["reference_seconds"] = run_once(command(args, out / "reference", "train.threads=2"))
        keep(saved, figures)
    if "ray-worker" in cases:
        print("[faults] Ray Train worker killed mid-task", flush=True)
        shutil.rmtree(out / "ray-worker", ignore_errors=True)
        figures["ray_worker"] = ray_worker_case(args, out)
        keep(saved, figures)
    if "sweep-driver" in cases:
        print("[faults] sweep driver killed 5 times", flush=True)
        for name in ("sweep-reference", "sweep-killed"):
            shutil.rmtree(out / name, ignore_errors=True)
        figures["sweep_driver"] = sweep_driver_case(args, out)
        keep(saved, figures)
    if "stops" in cases:
        print("[faults] runs asked to stop (SIGTERM, SIGINT; in the process and in Ray Train)", flush=True)
        figures["stops"] = stops_case(args, out, figures["reference_seconds"])
        keep(saved, figures)
    if {"sweep-stops", "node-lost", "storage-outage", "storage-hang"} & set(cases):
        figures["sweep_reference_seconds"] = sweep_reference(args, out, figures.get("sweep_reference_seconds"))
    if "sweep-stops" in cases:
        print("[faults] sweep drivers asked to stop, and a second driver", flush=True)
        figures["sweep_stops"] = sweep_stops_case(args, out, figures["sweep_reference_seconds"])
        keep(saved, figures)
    if "full-disk" in cases:
        print("[faults] a full disk", flush=True)
        figures["full_disk"] = full_disk_case(args, out)
        keep(saved, figures)
    if "node-lost" in cases:
        print("[faults] a sweep on two nodes sharing only an S3 bucket; the worker node lost", flush=True)
        figures["node_lost"] = node_lost_case(args, out)
        keep(saved, figures)
    for case, how, words in (("storage-outage", "down", "goes down"), ("storage-hang", "frozen", "stops answering")):
        for name in ("short", "long") if case in cases else ():
            how_long = "60 s" if name == "short" else "past the limit"
            print(f"[faults] a sweep whose S3 storage {words}: {how_long}", flush=True)
            figures.setdefault(CASE_KEYS[case], {})[name] = storage_outage_case(args, out, how, name)
            keep(saved, figures)
    stamp = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    figures.update(stamp if {"run", "ray-worker", "sweep-driver"} & set(cases) else {})
    if set(STOP_CASES) & set(cases):
        before = set(figures.get("stops_run", {}).get("cases", []))  # cases of earlier invocations stay listed
        figures["stops_run"] = {**stamp, "cases": [c for c in STOP_CASES if c in before or c in cases]}
    keep(saved, figures)
    print(write_sections(Path(args.results), figures, args))
    checks = [figures.get("same_seed"), figures.get("kills"), figures.get("ray_worker"), figures.get("sweep_driver")]
    checks += [*figures.get("stops", {}).values(), figures.get("full_disk"), figures.get("node_lost")]
    checks += [*figures.get("storage_outage", {}).values(), *figures.get("storage_hang", {}).values()]
    checks += [v for k, v in figures.get("sweep_stops", {}).items() if k in SENT]
    return 0 if all(c["identical"] for c in checks if c and "identical" in c) else 1


if __name__ == "__main__":
    sys.exit(main())
