"""Does a run survive being killed? SIGKILL at random moments, resume, compare with an uninterrupted run.

    python benchmarks/faults.py [--kills 10] [--preset smoke] [--method aimmerging] [--seed 0]
                                [--out runs/faults] [--results benchmarks/RESULTS.md]
                                [key=value ...]

Every run is `python -m aimray run --workers 0` in a subprocess on the real backbone, with a checkpoint
every 2 optimizer steps (checkpoint.every_steps) so that kills land inside tasks too:
  reference      one uninterrupted run
  same seed      a second uninterrupted run: must be bit-identical to the reference (matrices and events)
  kills          the same command SIGKILLed `--kills` times at random moments (seeded), restarted after
                 each kill until it finishes; counted: kills survived, event rows lost or duplicated
                 against the reference, whether the matrices and the events are identical
  threads        the reference with train.threads=1 against threads=2: what differs and by how much
The table goes into a section of --results (between the `faults:begin` / `faults:end` markers), the raw
figures into <out>/faults.json. Timings (wall_seconds, eval_seconds) are never compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("steps", "merges", "evals", "costs")
TIMINGS = ("wall_seconds", "eval_seconds")


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


def run_with_kills(cmd: list[str], kills: int, span: float, rng: random.Random) -> tuple[int, list[float]]:
    """Start the command, SIGKILL it after a random delay (seeded), restart, until `kills` kills are done or
    the run finished first; then let it finish. Returns (kills done, the delays of the kills)."""
    delays: list[float] = []
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        if len(delays) < kills:
            delay = rng.uniform(4.0, max(6.0, span / 4))
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                delays.append(round(delay, 1))
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


def markdown(figures: dict, args: argparse.Namespace) -> str:
    k = figures["kills"]
    lines = [
        "<!-- faults:begin -->",
        "## Faults: killed runs resume exactly",
        "",
        f"`python benchmarks/faults.py --kills {args.kills} --preset {args.preset} --method {args.method}` "
        f"({figures['date']}, {figures['machine']}): `python -m aimray run --workers 0` on the real backbone, "
        "checkpoint every 2 steps; timings never compared.",
        "",
        "| case | kills survived | event rows lost | event rows duplicated | matrices and events vs uninterrupted |",
        "|---|---|---|---|---|",
        f"| same seed twice | 0 | {figures['same_seed']['lost']} | {figures['same_seed']['duplicated']} | "
        f"{'identical' if figures['same_seed']['identical'] else 'DIFFERENT'} |",
        f"| SIGKILL at {k['kills']} random moments, resumed each time | {k['kills']} | {k['lost']} | "
        f"{k['duplicated']} | {'identical' if k['identical'] else 'DIFFERENT'} |",
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


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_section(path: Path, section: str) -> None:
    """Replace the faults section of `path` (or append it), leaving the rest as it is."""
    from aimray.files import put_section, write_text_atomic

    write_text_atomic(path, put_section(path.read_text() if path.exists() else "", "faults", section))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the run before it may finish (10)")
    parser.add_argument("--preset", default="smoke", help="run preset (default smoke: the real backbone)")
    parser.add_argument("--method", default="aimmerging", help="method (default aimmerging)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; the kill moments use it too (0)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "faults"), help="scratch folder (emptied first)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="markdown to update")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from <out>/faults.json")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error(f"argument --kills: {args.kills} must be >= 1")
    out = Path(args.out)
    if args.report_only:
        if not (out / "faults.json").is_file():
            parser.error(f"--report-only: {out / 'faults.json'} does not exist (run without --report-only first)")
        write_section(Path(args.results), markdown(json.loads((out / "faults.json").read_text()), args))
        return 0
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a scratch folder: every case starts from nothing
    out.mkdir(parents=True)
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
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
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
    (out / "faults.json").write_text(json.dumps(figures, indent=1, default=str))
    section = markdown(figures, args)
    write_section(Path(args.results), section)
    print(section)
    ok = figures["same_seed"]["identical"] and figures["kills"]["identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
