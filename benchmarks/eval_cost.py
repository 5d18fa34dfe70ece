"""What the second scoring costs: label scoring, greedy generation, and both from one pass over each prompt
(aimray.model.evaluate_modes), side by side in one process on the real SmolLM2.

    python benchmarks/eval_cost.py [--benchmark offline-long] [--preset long] [--model M] [--examples 50]
                                   [--threads 1] [--repeats 2] [--out benchmarks/results]

Per task of the benchmark: `--examples` test examples with the preset's prompt budget, precision and
evaluation batch; each way timed `--repeats` times in rotating order, the best time kept. Rows: seconds for
score, generate and both; both / score; both / (score + generate), what one pass saves against scoring
twice; and whether both's predictions equal each mode's alone (they should, token for token). Writes
<out>/eval_cost.json and eval_cost.md and prints the table. Wall times on a shared machine are indicative.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from aimray.cliargs import positive_int
from aimray.config import make_config
from aimray.files import now
from aimray.model import evaluate_modes, load_backbone
from aimray.tasks import get_benchmark, get_task

WAYS = {"score": ("score",), "generate": ("generate",), "both": ("generate", "score")}


def time_task(bb, spec, examples, batch: int, repeats: int) -> dict:
    """Best-of-`repeats` seconds per way, rotating which goes first; predictions of the last repeat."""
    best, preds = {w: float("inf") for w in WAYS}, {}
    for r in range(repeats):
        ways = list(WAYS)[r % len(WAYS) :] + list(WAYS)[: r % len(WAYS)]
        for way in ways:
            t0 = time.perf_counter()
            preds[way] = evaluate_modes(bb, examples, spec.labels, WAYS[way], batch_size=batch)
            best[way] = min(best[way], time.perf_counter() - t0)
    same = all(preds["both"][m].predictions == preds[m][m].predictions for m in ("score", "generate"))
    return {
        "task": spec.name,
        "n": len(examples),
        **{f"{w}_s": round(best[w], 3) for w in WAYS},
        "both_vs_score": round(best["both"] / best["score"], 3),
        "both_vs_two": round(best["both"] / (best["score"] + best["generate"]), 3),
        "same_predictions": same,
        "accuracy": {m: preds["both"][m].value for m in ("generate", "score")},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Evaluation cost: both scorings from one pass ({meta['benchmark']}, preset {meta['preset']})",
        "",
        f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['precision']}, {meta['examples']} test examples per task, best of {meta['repeats']}.",
        "",
        "| task | score s | generate s | both s | both / score | both / (score + generate) | same predictions |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['score_s']:.2f} | {r['generate_s']:.2f} | {r['both_s']:.2f} | "
            f"{r['both_vs_score']:.2f} | {r['both_vs_two']:.2f} | {r['same_predictions']} |"
        )
    tot = {w: sum(r[f"{w}_s"] for r in rows) for w in WAYS}
    lines += [
        f"| **all** | {tot['score']:.1f} | {tot['generate']:.1f} | {tot['both']:.1f} | "
        f"{tot['both'] / tot['score']:.2f} | {tot['both'] / (tot['score'] + tot['generate']):.2f} | "
        f"{all(r['same_predictions'] for r in rows)} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--benchmark", default="offline-long", help="whose tasks (default offline-long)")
    ap.add_argument("--preset", default="long", help="prompt budget, precision, eval batch (default long)")
    ap.add_argument("--model", default=None, help="the backbone (default: the preset's, smollm2)")
    ap.add_argument("--examples", type=positive_int, default=50, help="test examples per task (default 50)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=positive_int, default=2, help="timings per way, best kept (default 2)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for eval_cost.json and .md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {"model": {"name_or_path": args.model}} if args.model else {}
    cfg = make_config(args.preset, overrides, benchmark=args.benchmark)
    bench = get_benchmark(args.benchmark)
    bb = load_backbone(cfg.model, seed=0)
    rows = []
    for name in bench.tasks:
        spec = get_task(name)
        examples = spec.load(cfg.data, 0).test[: args.examples]
        rows.append(time_task(bb, spec, examples, cfg.train.eval_batch_size, args.repeats))
        r = rows[-1]
        print(
            f"{name:<16} score {r['score_s']:6.2f} s  generate {r['generate_s']:6.2f} s  both {r['both_s']:6.2f} s",
            flush=True,
        )
    meta = {
        "benchmark": args.benchmark,
        "preset": args.preset,
        "examples": args.examples,
        "repeats": args.repeats,
        "threads": args.threads,
        "precision": bb.precision.get("autocast", "") if isinstance(bb.precision, dict) else str(bb.precision),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "date": now(),
        "argv": sys.argv,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, meta)
    (out / "eval_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
