"""`python -m aimray`: list tasks and benchmarks, evaluate a backbone on tasks.

python -m aimray tasks [--benchmark B] [--data-dir D]
python -m aimray eval --benchmark offline-standard [--split test] [--limit N] [--out DIR]
python -m aimray run --preset smoke --out runs/smoke [key=value ...]
python -m aimray plan [--preset P] [--model M] [--device cpu|cuda] [--memory 80GiB] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from aimray import plugins, stopping
from aimray.assets import AssetMissingError
from aimray.cliargs import (
    ArgumentParser,
    add_plugins_arg,
    check_out_dir,
    error_text,
    nonnegative_int,
    positive_int,
)
from aimray.files import DiskFullError, now, read_json, write_json_atomic
from aimray.tasks import BENCHMARKS, TASKS, SplitSizes, get_benchmark, get_task
from aimray.tasks.offline import inventory as offline_inventory

if TYPE_CHECKING:
    from aimray.config import RunConfig

# The default backbone's zero-shot scores on the offline tasks, measured with `python -m aimray eval`
# (its "command" says how); `tasks -v` prints them.
ZERO_SHOT = Path(__file__).parent / "tasks" / "zero_shot.json"


def _sizes(args: argparse.Namespace) -> SplitSizes:
    return SplitSizes(args.train_size, args.dev_size, args.test_size)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder with the paper's data (AimMerging or O-LoRA layout)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--train-size", type=positive_int, default=1000, help="train examples per task (default 1000)")
    p.add_argument("--dev-size", type=positive_int, default=200, help="dev examples per task (default 200)")
    p.add_argument("--test-size", type=positive_int, default=500, help="test examples per task (default 500)")


def _task_names(args: argparse.Namespace) -> list[str]:
    if getattr(args, "tasks", None):
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.benchmark:
        return list(get_benchmark(args.benchmark).tasks)
    return list(TASKS)


def cmd_tasks(args: argparse.Namespace) -> int:
    """Print every task with split sizes and labels, then the benchmarks and their orders."""
    if args.benchmark:
        bench = get_benchmark(args.benchmark)
        if bench.needs_data_dir and not args.data_dir:
            raise ValueError(f"benchmark {bench.name!r} reads the paper's data: pass --data-dir")
    names = _task_names(args)
    data_dir = args.data_dir if args.data_dir else None
    inventory = offline_inventory([] if data_dir else names) if args.verbose else {}
    zero_shot = read_json(ZERO_SHOT) if args.verbose and ZERO_SHOT.exists() else {}
    print(f"{'task':<16} {'train':>6} {'dev':>5} {'test':>5}  {'metric':<8} labels")
    for name in names:
        spec = get_task(name, data_dir)
        data = spec.load(_sizes(args), args.seed)
        labels = ", ".join(spec.labels) if spec.labels else "(free text)"
        sizes = f"{len(data.train):>6} {len(data.dev):>5} {len(data.test):>5}"
        print(f"{name:<16} {sizes}  {spec.metric:<8} {labels}")
        if args.verbose:
            print(f"{'':<16} source: {spec.source}")
            for line in _inventory_lines(name, inventory, zero_shot):
                print(f"{'':<16} {line}")
        for note in data.notes:
            if args.verbose or "overlap" in note:  # dev/test overlap is always worth seeing
                print(f"{'':<16} note: {note}")
    print("\nbenchmarks (order: tasks)")
    for bench in BENCHMARKS.values():
        if args.benchmark and bench.name != args.benchmark:
            continue
        need = "  [needs --data-dir]" if bench.needs_data_dir else ""
        print(f"{bench.name}: {bench.about}{need}")
        for k, order in bench.orders.items():
            print(f"  order {k}: {', '.join(order)}")
    return 0


def _inventory_lines(name: str, inventory: dict, zero_shot: dict) -> list[str]:
    """`tasks -v`: an offline task's unique examples per label, texts shared with other listed tasks, and the
    recorded zero-shot scores of the default backbone (aimray/tasks/zero_shot.json)."""
    lines = []
    if name in inventory:
        inv = inventory[name]
        counts = ", ".join(f"{lab} {n}" for lab, n in sorted(inv["labels"].items(), key=lambda kv: -kv[1]))
        lines.append(f"unique: {inv['unique']} ({counts})")
        shared = ", ".join(f"{other} {n}" for other, n in sorted(inv["shared"].items()))
        lines.append(f"texts also in: {shared or 'no other listed task'}")
    got = zero_shot.get("tasks", {}).get(name)
    if got:
        scores = ", ".join(f"{mode} {100 * v:.1f}" for mode, v in got.items())
        lines.append(f"zero-shot {zero_shot['model']} ({zero_shot['split']}, n={zero_shot['n']}): {scores}")
    return lines


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the backbone with a fresh (identity) LoRA adapter: the zero-shot baseline of every task."""
    import torch

    from aimray.model import ModelConfig, load_backbone
    from aimray.provenance import provenance

    out = Path(args.out) if args.out else None
    if out:
        check_out_dir(out)
    names = _task_names(args)
    specs = [get_task(n, args.data_dir) for n in names]  # fail on a bad name before loading the model
    cfg = ModelConfig(name_or_path=args.model, max_prompt_tokens=args.max_prompt_tokens)
    # The data and the model load before --out is made: a bad file or model leaves nothing on disk.
    examples = [spec.load(_sizes(args), args.seed).split(args.split)[: args.limit or None] for spec in specs]
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    bb = load_backbone(cfg, seed=args.seed)
    print(f"[eval] loaded {args.model} in {time.time() - t0:.1f} s; split={args.split} mode={args.mode}")
    manifest = {
        "command": "eval",
        "argv": sys.argv,
        "config": {**vars(args), "model": cfg.__dict__},
        "provenance": provenance(),
        "status": "running",
        "started_at": now(),
    }
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "manifest.json", manifest)
    rows = []
    try:
        for spec, task_examples in zip(specs, examples, strict=True):
            rows += eval_rows(bb, spec, task_examples, args)
            row = rows[-1]
            scores = ", ".join(f"{r['mode']} {100 * r['value']:5.1f}" for r in rows if r["task"] == spec.name)
            print(
                f"[eval] {spec.name:<16} {row['metric']} {scores}  (chance {_pct(row['chance'])}, "
                f"majority {_pct(row['majority'])}, n={row['n']}, {row['seconds']:.0f} s)",
                flush=True,
            )
    except BaseException:
        if out:
            write_json_atomic(out / "manifest.json", {**manifest, "status": "failed"})
        raise
    if out:
        write_json_atomic(out / "results.json", rows)
        done = {**manifest, "status": "success", "seconds": time.time() - t0}
        write_json_atomic(out / "manifest.json", done)
        print(f"[eval] wrote {out}/results.json and manifest.json")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        values = [r["value"] for r in rows if r["mode"] == mode]
        print(f"[eval] {mode}: mean over {len(values)} tasks {100 * sum(values) / len(values):.1f}")
    return 0


def eval_rows(bb, spec, examples: list, args: argparse.Namespace) -> list[dict]:
    """One task's zero-shot score per mode (results.json's rows) beside its chance and majority-class
    baselines; `--mode both` scores both from one pass over the prompts."""
    from aimray.model import evaluate_modes

    t0 = time.time()
    modes = ("generate", "score") if args.mode == "both" else (args.mode,)
    modes = modes if spec.labels else ("generate",)
    results = evaluate_modes(bb, examples, spec.labels, modes, batch_size=args.batch_size)
    counts = Counter(ex.target for ex in examples)
    seconds = time.time() - t0
    return [
        {
            "task": spec.name,
            "split": args.split,
            "mode": mode,
            "metric": res.metric,
            "value": res.value,
            "n": res.n,
            "chance": 1 / len(spec.labels) if spec.labels else None,
            "majority": max(counts.values()) / len(examples) if spec.labels else None,
            "seconds": seconds,  # of every mode of the task together (one pass over the prompts)
        }
        for mode, res in results.items()
    ]


def cmd_run(args: argparse.Namespace) -> int:
    """One continual-learning run; prints progress, then the accuracy matrix and the CL metrics."""
    from aimray.loop import run

    check_out_dir(args.out)
    cfg = config_of(args)
    t0 = time.time()
    if args.verbose:  # Train workers read it (aimray.launch.train.quiet_train_logs)
        os.environ["AIMRAY_RAY_LOG_LEVEL"] = "INFO"
    if args.workers == 0:
        with stopping.on_signals():
            try:
                result = run(cfg, args.out)
            except stopping.StopRequested as stop:
                print(stop.line(), file=sys.stderr)
                return stop.exit_code
            except DiskFullError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
    else:
        from aimray.launch.train import Resources, run_with_ray_train

        cpus = args.cpus_per_worker or max(1, (os.cpu_count() or 1) // args.workers)
        resources = Resources(args.workers, cpus, args.gpus_per_worker, args.max_failures)
        try:
            result = run_with_ray_train(cfg, args.out, resources, storage=args.storage, signals=True)
        except stopping.StopRequested as stop:
            print(stop.line(), file=sys.stderr)
            return stop.exit_code
    print(format_result(result))
    print(f"[run] {time.time() - t0:.0f} s; events, manifest and matrix.json in {args.out}")
    return 0


def config_of(args: argparse.Namespace) -> RunConfig:
    """The run's config: the preset, the flags given over it (a flag left out keeps the preset's value: `--preset
    long` runs offline-long order 4), then --model and the key=value overrides."""
    from aimray.config import make_config

    flags = {k: getattr(args, k, None) for k in ("method", "benchmark", "order", "seed", "data_dir")}
    return make_config(args.preset, model_overrides(args), **flags)


def model_overrides(args: argparse.Namespace) -> dict:
    """The key=value overrides, with --model as model.name_or_path (an override of the same key wins)."""
    from aimray.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.model is not None:
        overrides = {**overrides, "model": {"name_or_path": args.model, **overrides.get("model", {})}}
    return overrides


def cmd_plan(args: argparse.Namespace) -> int:
    """What a run needs in memory and the micro-batch it would use (aimray.plan)."""
    from aimray import plan

    cfg = config_of(args)
    memory = plan.parse_bytes(args.memory) if args.memory else None
    result = plan.make_plan(cfg, args.device, memory)
    print(plan.to_json(result) if args.json else "\n".join(plan.describe(result)))
    return 0 if result.micro is not None else 1


def format_result(result) -> str:
    """The test accuracy matrix (rows: after each task; row 0 the base model) and the metrics."""
    names = result.tasks
    width = max(8, *(len(n) for n in names))
    lines = ["accuracy matrix (test, %): rows = after training task j, columns = task i"]
    lines.append(" " * (width + 2) + " ".join(f"{n:>{width}}" for n in names))
    rows = ([("base", result.base_test)] if result.base_test is not None else []) + [
        (names[j] if result.test.shape[0] == len(names) else f"stage {j + 1}", result.test[j])
        for j in range(result.test.shape[0])
    ]
    for label, row in rows:
        cells = " ".join(f"{'-':>{width}}" if v != v else f"{100 * v:>{width}.1f}" for v in row)
        lines.append(f"{label:<{width}}  {cells}")
    shown = ", ".join(f"{k.upper()} {100 * v:.2f}" for k, v in result.metrics.items() if v == v)
    lines.append(f"metrics (points): {shown}")
    merges = ", ".join(f"{k} {v}" for k, v in sorted(result.merges.items())) or "none"
    lines.append(f"merges by trigger: {merges}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "  -  " if x is None else f"{100 * x:4.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m aimray",
        description="aimray: continual learning of language models by AimMerging. "
        "Assets first: python -m aimray.assets fetch.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    add_tasks_parser(sub)
    add_eval_parser(sub)
    add_run_parser(sub)
    add_plan_parser(sub)
    return parser


def add_tasks_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list tasks (split sizes, labels) and benchmarks (orders)")
    p.add_argument("--benchmark", help=f"only this benchmark's tasks; one of {', '.join(BENCHMARKS)}")
    p.add_argument("-v", "--verbose", action="store_true", help="also print sources and split notes")
    _add_data_args(p)
    add_plugins_arg(p)
    p.set_defaults(func=cmd_tasks)


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate the backbone (fresh adapter = zero-shot) on tasks",
        description="Evaluate the backbone with a fresh (zero) LoRA adapter, i.e. zero-shot, on each task: "
        "accuracy (or ROUGE-L) next to chance and majority-class baselines.",
    )
    p.add_argument("--benchmark", help="evaluate this benchmark's tasks (default: all offline tasks)")
    p.add_argument("--tasks", help="comma-separated task names instead of a benchmark")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="default test")
    p.add_argument("--limit", type=nonnegative_int, default=0, help="at most N examples per task (0 = all)")
    p.add_argument(
        "--mode",
        default="score",
        choices=["score", "generate", "both"],
        help="score: most likely label word (default); generate: greedy exact match; both: the two from one "
        "pass over each prompt",
    )
    p.add_argument("--model", default="smollm2", help="'smollm2' (offline default), a folder or an HF id")
    p.add_argument("--max-prompt-tokens", type=int, default=192, help="prompt token budget (default 192)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="examples per forward pass (default 16)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--out", help="write results.json and manifest.json here")
    _add_data_args(p)
    add_plugins_arg(p)
    p.set_defaults(func=cmd_eval)


def add_run_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="one continual-learning run (Ray Train workers; --workers 0: in this process)",
        description="Train one LoRA adapter through a benchmark's task order with a CL method; evaluate every "
        "task after every task; write events (Parquet), manifest.json, matrix.json and checkpoints to --out. "
        "Rerunning with the same --out and config resumes from the last checkpoint. Runs in Ray Train workers "
        "(a local Ray is started unless RAY_ADDRESS names a cluster); --workers 0 runs in this process.",
        epilog="overrides: dotted config keys, e.g. train.lr=1e-3 controller.threshold_factor=2.5 data.train=64. "
        f"Presets: {', '.join(_presets())}.",
    )
    p.add_argument("--method", help=f"one of {', '.join(_methods())} (default aimmerging)")
    p.add_argument("--benchmark", help=f"one of {', '.join(BENCHMARKS)} (default: the preset's, else offline-standard)")
    p.add_argument("--order", type=int, help="task order of the benchmark (default: the preset's, else 1)")
    p.add_argument(
        "--preset",
        help="smoke (about 2 min here), demo, bench, sweep, study, paper (the paper's sizes) or reference "
        "(the paper's sizes run as the released code runs them); none: the built-in defaults, which are the "
        "paper's sizes too (1000/200/500 examples per task, batch 32)",
    )
    p.add_argument(
        "--model",
        help="the backbone: 'smollm2' (the offline default, SmolLM2-135M-Instruct), a model folder or an HF id "
        "(the paper used t5-large, which no registry package ships: pass its folder); = model.name_or_path",
    )
    p.add_argument("--seed", type=int, help="seed of data splits, adapter and batches (default: the preset's, else 0)")
    p.add_argument("--data-dir", help="folder with the paper's data (for standard, long, superni)")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it holds a checkpoint)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray Train data-parallel workers (default 1); 0 runs in this process (debugging)",
    )
    p.add_argument("--cpus-per-worker", type=float, default=0, help="default: all CPUs / workers")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (nccl); default 0 (gloo)")
    p.add_argument(
        "--max-failures", type=int, default=1, help="worker failures retried from the last checkpoint (default 1)"
    )
    p.add_argument("--storage", help="Ray Train storage (default <out>/ray; shared storage on a cluster)")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Ray Train's INFO lines (every report and checkpoint) on the terminal too; they are always in "
        "Ray's own logs, linked from <out>/.ray-logs",
    )
    add_plugins_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_run)


def add_plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="what a run needs in memory on a device, and the micro-batch it would use",
        description="Print a run's memory plan: frozen weights, adapter and optimizer state, activations per "
        "micro-batch at the preset's prompt budget (with and without activation checkpointing), the "
        "evaluation's peak; whether it fits the device and the largest micro-batch that does (what "
        "train.micro_batch_size=auto starts from; on a GPU a run confirms it with a short probe). Reads the "
        "model's configuration only, no weights. Exit status 1 when nothing fits.",
        epilog="examples: python -m aimray plan --preset paper --model llama-2-7b --device cuda --memory 80GiB; "
        "python -m aimray plan --preset smoke model.gradient_checkpointing=true. Models known by name (no "
        "folder needed): t5-large, llama-2-7b, llama-2-13b.",
    )
    p.add_argument("--preset", help=f"one of {', '.join(_presets())} (default: the built-in defaults)")
    p.add_argument(
        "--model", help="'smollm2' (default), a model folder, an HF id, or t5-large / llama-2-7b / llama-2-13b"
    )
    p.add_argument("--method", help="the method (default aimmerging)")
    p.add_argument(
        "--benchmark", help="whose tasks set the label count for scoring (default: the preset's, else offline-standard)"
    )
    p.add_argument("--order", type=int, help="task order of the benchmark (default: the preset's, else 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default cuda")
    p.add_argument(
        "--memory",
        help="the device's memory, e.g. 80GiB (default: this machine's GPU or available RAM; 80GiB "
        "for cuda where there is no GPU)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_plugins_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_plan)


def _methods() -> list[str]:
    from aimray.methods import METHODS

    return list(METHODS)


def _presets() -> list[str]:
    from aimray.config import preset_names

    return preset_names()


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # progress lines as they come, through a pipe or a log collector too
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    try:
        plugins.load(args.plugins)  # before any config names what they register
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, AssetMissingError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
