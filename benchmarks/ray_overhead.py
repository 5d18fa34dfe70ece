"""What Ray Train costs on a run of a few minutes: the same seqlora run in this process and in a TorchTrainer.

    python benchmarks/ray_overhead.py [--steps-per-task 64] [--batch 8] [--workers 1] [--out benchmarks/results]

perf.py's Ray rows time a run of about 30 seconds, where Ray's fixed start-up (worker processes, imports,
the model loaded again in the worker) is most of the difference. This script sizes the run to a few minutes
(the default, 4 tasks x 64 steps of 8 on offline-standard order 1, is about 6 minutes on a 2-core CPU in
bf16) and splits the difference in three: Ray's own start (ray.init, once per driver), the fixed cost of a
run (end to end less the tasks' wall time), and the tasks' training and evaluation time, which is where a
per-step cost (reports, checkpoints copied into Ray's storage, threads) would show.

Writes <out>/ray_overhead.json and <out>/ray_overhead.md and prints the table. Wall times on shared machines
are indicative; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from perf import costs_of, harness, resolved, write_report  # perf.py's helpers (this folder is on sys.path)

from aimray.cliargs import positive_int
from aimray.config import make_config
from aimray.model import load_backbone
from aimray.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="backbone: smollm2 (offline default), HF id or folder")
    ap.add_argument("--batch", type=positive_int, default=8, help="training batch size (default 8)")
    ap.add_argument("--steps-per-task", type=positive_int, default=64, help="optimizer steps per task (4 tasks)")
    ap.add_argument("--test", type=positive_int, default=32, help="test examples per task (default 32)")
    ap.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (default 1)")
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results"),
        help="folder for ray_overhead.json, ray_overhead.md (default benchmarks/results)",
    )
    return ap.parse_args(argv)


def split(res: dict) -> dict:
    """A run's end-to-end seconds as fixed cost + training + evaluation (costs.parquet's per-task walls)."""
    tasks = res["seconds"] + res["eval_seconds"]
    return {**res, "tasks_seconds": tasks, "fixed_seconds": res["end_to_end"] - tasks}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    log = lambda msg: print(f"[ray-overhead] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    overrides = {
        "model": {"name_or_path": args.model, "device": "cpu"},
        "data": {"train": args.batch * args.steps_per_task, "dev": 4, "test": args.test},
        "train": {"batch_size": args.batch, "epochs": 1, "warmup_steps": 2, "lr": 5e-4, "eval_batch_size": 16},
        "eval": {"splits": ["test"], "base": False},
    }
    cfg = make_config(None, overrides, method="seqlora", benchmark="offline-standard", order=1, seed=0)
    os.environ["AIMRAY_STAGE_CACHE"] = "off"  # both runs compute task 1 (set before ray.init: workers inherit it)
    probe = load_backbone(cfg.model).precision  # model.autocast=auto: the probe is cached, paid here, not timed
    log(f"precision: {probe['autocast']} ({probe['source']}); {4 * args.steps_per_task} steps of {args.batch}")

    scratch = tempfile.TemporaryDirectory(prefix="aimray-ray-overhead-", ignore_cleanup_errors=True)  # run folders
    tmp = Path(scratch.name)
    inproc = split(harness(cfg, tmp / "in-process"))
    log(f"in-process: {inproc['end_to_end']:.0f} s end to end, {inproc['seconds']:.0f} s training")

    from aimray.launch.cluster import ensure_ray, shutdown_ray
    from aimray.launch.train import Resources, run_with_ray_train

    t0 = time.perf_counter()
    ensure_ray(num_cpus=os.cpu_count())
    ray_start = time.perf_counter() - t0
    cpus = max(1, (os.cpu_count() or 1) // args.workers)
    t0 = time.perf_counter()
    run_with_ray_train(cfg, tmp / "ray", Resources(args.workers, cpus_per_worker=cpus, max_failures=0))
    ray = split({"end_to_end": time.perf_counter() - t0, **costs_of(tmp / "ray")})
    shutdown_ray()
    precision = resolved(tmp / "in-process")
    scratch.cleanup()  # both run folders (about 15 MB): read, not kept
    log(f"ray train: {ray['end_to_end']:.0f} s end to end, {ray['seconds']:.0f} s training")

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/ray_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "precision": precision,
        "workers": args.workers,
        "steps": 4 * args.steps_per_task,
        "batch": args.batch,
        "ray_start_seconds": ray_start,
        "in_process": inproc,
        "ray_train": ray,
        "ratio_end_to_end": ray["end_to_end"] / inproc["end_to_end"],
        "ratio_with_ray_start": (ray["end_to_end"] + ray_start) / inproc["end_to_end"],
        "ratio_training": ray["seconds"] / inproc["seconds"],
        "provenance": provenance(),
    }
    write_report(Path(args.out), "ray_overhead", report, markdown(report))
    return 0


def markdown(rep: dict) -> str:
    a, b = rep["in_process"], rep["ray_train"]
    rows = [
        ("end to end", "end_to_end"),
        ("fixed (end to end less the tasks)", "fixed_seconds"),
        ("training", "seconds"),
        ("evaluation", "eval_seconds"),
    ]
    hw = rep["provenance"].get("hardware", {})
    lines = [
        f"# Ray Train overhead: {rep['date']}, {hw.get('cpus', '?')} CPUs, {rep['precision']}",
        "",
        f"`{rep['command']}`: seqlora, offline-standard order 1, {rep['steps']} steps of {rep['batch']}, "
        f"{rep['workers']} worker(s). Ray's own start (ray.init, once per driver): {rep['ray_start_seconds']:.1f} s.",
        "",
        "| seconds | in-process | Ray Train | Ray / in-process |",
        "|---|---|---|---|",
    ]
    for name, key in rows:
        ratio = b[key] / a[key] if a[key] > 0 else float("nan")
        lines.append(f"| {name} | {a[key]:.1f} | {b[key]:.1f} | {ratio:.2f} |")
    lines += [
        "",
        f"Ray Train vs in-process end to end: **{rep['ratio_end_to_end']:.2f}x** (target <= 1.25x on a 5-minute run); "
        f"with Ray's start counted {rep['ratio_with_ray_start']:.2f}x; training time alone "
        f"{rep['ratio_training']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
