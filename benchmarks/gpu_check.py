"""What aimray does on a CUDA GPU, measured in one call: benchmarks/gpu_check.sh runs this on a bare GPU
machine (no network, no install: python3 with torch, transformers and peft, aimray on PYTHONPATH).

    python3 benchmarks/gpu_check.py --files benchmarks/gpu_files [--device cuda] [--quick]

The weights are random: models are built from real configurations (SmolLM2-135M-Instruct's, shipped with
its real tokenizer by `gpu_check.sh --prepare`, and the Llama-2-7B shape in aimray/shapes), because speed
and memory do not depend on the weights' values and the weights cannot travel to that machine. This is
the one place outside unit tests where random weights are used; every row says so. Rows:

1. step: examples/s and peak GPU memory of the harness's training step (aimray.step.optimize, as SeqLoRA
   runs it; and as AimMerging runs it: the step and the forgetting signal's memory-batch forward) against a
   bare PEFT loop (model(labels=...), backward, AdamW) on the same batches, bf16 base.
2. 7b: the Llama-2-7B shape, bf16 base, at the paper's batch 32 x 512 tokens through the micro-batch the
   plan chooses and activation checkpointing: the plan's predicted peak beside the measured one.
3. eval: label scoring and greedy generation throughput (examples/s).
Writes <out>/gpu_check.json and <out>/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from aimray import plan  # noqa: E402
from aimray.config import ModelConfig, make_config  # noqa: E402
from aimray.distributed import LOCAL  # noqa: E402
from aimray.model import Backbone, encode, evaluate, wrap_backbone  # noqa: E402
from aimray.step import Learner, memory_loss, optimize  # noqa: E402
from aimray.tasks.spec import Example  # noqa: E402

GiB = 1024**3
RANDOM = "random weights, real configuration"


def build(config, tokenizer_dir: Path, device: str, cfg: ModelConfig) -> Backbone:
    """A Backbone of `config` with random weights, built on the device, bf16 (cfg.dtype)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, cfg.dtype), attn_implementation="sdpa")
    return wrap_backbone(model, AutoTokenizer.from_pretrained(tokenizer_dir), cfg, torch.device(device))


def batches(n: int, size: int, words: int) -> list[list[Example]]:
    text = " ".join(["news"] * (2 * words))
    labels = ("positive", "negative", "neutral", "mixed")
    return [[Example("Classify the text.", text, labels[(b * size + i) % 4]) for i in range(size)] for b in range(n)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GiB if device == "cuda" else None


def timed(fn, steps: int, device: str) -> tuple[float, float | None]:
    """(seconds per call after one warm-up call, peak GiB)."""
    fn(0)
    sync(device)
    peak_reset(device)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        fn(i)
    sync(device)
    return (time.perf_counter() - t0) / steps, peak(device)


def step_rows(files: Path, device: str, batch: int, tokens: int, steps: int) -> list[dict]:
    """The harness's step (SeqLoRA; AimMerging with its forgetting signal) against a bare PEFT loop."""
    cfg = ModelConfig(max_prompt_tokens=tokens, dtype="bfloat16", autocast="off", attention="sdpa", device=device)
    bb = build(AutoConfig.from_pretrained(files / "smollm2"), files / "smollm2", device, cfg)
    data, memory = batches(steps + 1, batch, tokens), batches(steps + 1, batch, tokens // 2)
    params = bb.lora_state()
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4)
    learner = Learner(bb, params, LOCAL)
    bb.model.train()

    def bare(i: int) -> None:  # what a plain PEFT training loop does with the same token ids
        pairs = [encode(bb, ex) for ex in data[i]]
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((batch, width), bb.tokenizer.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for r, (p, a) in enumerate(pairs):
            ids[r, width - len(p) - len(a) :] = torch.tensor(p + a)
            labels[r, width - len(a) :] = torch.tensor(a)
            mask[r, width - len(p) - len(a) :] = 1
        optimizer.zero_grad()
        out = bb.model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        out.loss.backward()
        optimizer.step()

    def seqlora(i: int) -> None:
        optimize(learner, data[i], optimizer, clip=1.0)

    def aimmerging(i: int) -> None:
        optimize(learner, data[i], optimizer, clip=1.0)
        memory_loss(learner, memory[i], eval_mode=False)

    rows = []
    for name, fn in (
        ("bare PEFT loop", bare),
        ("harness step (seqlora)", seqlora),
        ("harness step + signal", aimmerging),
    ):
        seconds, gib = timed(fn, steps, device)
        rows.append({"row": "step", "what": name, "examples_per_s": batch / seconds, "peak_gib": gib})
    base = rows[0]["examples_per_s"]
    for r in rows:
        r.update(model=f"SmolLM2-135M ({RANDOM})", batch=batch, tokens=tokens, ratio_to_bare=r["examples_per_s"] / base)
    return rows


def big_row(files: Path, device: str, shape: str, batch: int, tokens: int) -> dict:
    """A large shape (Llama-2-7B) at batch x tokens, bf16 base, the plan's micro-batch, checkpointing."""
    model = {"name_or_path": shape, "dtype": "bfloat16", "gradient_checkpointing": True, "max_prompt_tokens": tokens}
    run = make_config("paper", {"model": model, "train": {"batch_size": batch}})
    made = plan.make_plan(run, device, arch=plan.read_arch(shape))
    micro = made.micro or 1
    cfg = replace(run.model, device=device, autocast="off", attention="sdpa")
    bb = build(plan.hf_config(shape), files / "smollm2", device, cfg)  # SmolLM2's tokenizer: the ids only
    params = bb.lora_state()
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4)
    learner = Learner(bb, params, LOCAL, micro)
    data = batches(2, batch, tokens)
    bb.model.train()
    weights = torch.cuda.memory_allocated() / GiB if device == "cuda" else None
    seconds, gib = timed(lambda i: optimize(learner, data[i % 2], optimizer, clip=1.0), 1, device)
    return {
        "row": "7b",
        "model": f"{shape} shape ({RANDOM})",
        "batch": batch,
        "tokens": tokens,
        "micro": micro,
        "checkpointing": True,
        "predicted_peak_gib": made.peak(micro) / GiB,
        "measured_peak_gib": gib,
        "weights_gib": weights,
        "step_seconds": seconds,
        "examples_per_s": batch / seconds,
    }


def eval_rows(files: Path, device: str, batch: int, tokens: int) -> list[dict]:
    """Label scoring (4 options) and greedy generation, examples/s."""
    cfg = ModelConfig(max_prompt_tokens=tokens, dtype="bfloat16", autocast="off", attention="sdpa", device=device)
    bb = build(AutoConfig.from_pretrained(files / "smollm2"), files / "smollm2", device, cfg)
    examples = [ex for b in batches(4, batch, tokens) for ex in b]
    options = ["positive", "negative", "neutral", "mixed"]
    rows = []
    for mode in ("score", "generate"):
        evaluate(bb, examples[:batch], options, mode=mode, batch_size=batch)
        sync(device)
        t0 = time.perf_counter()
        evaluate(bb, examples, options, mode=mode, batch_size=batch)
        sync(device)
        rows.append(
            {
                "row": "eval",
                "what": mode,
                "model": f"SmolLM2-135M ({RANDOM})",
                "batch": batch,
                "tokens": tokens,
                "examples_per_s": len(examples) / (time.perf_counter() - t0),
            }
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({report['gpu'] or report['device']}, torch {report['torch']}, {report['date']})",
        "",
        "Random weights from real configurations (speed and memory do not depend on the values). "
        "`python3 benchmarks/gpu_check.py`, written by benchmarks/gpu_check.sh.",
        "",
        "| row | model | what | batch x tokens | examples/s | peak GiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["row"] == "7b":
            note = f"micro {r['micro']}, checkpointing; plan predicted {r['predicted_peak_gib']:.1f} GiB"
            gib = r["measured_peak_gib"]
            what = "harness step (seqlora)"
        else:
            note = f"{r['ratio_to_bare']:.2f}x the bare loop" if "ratio_to_bare" in r else ""
            gib, what = r.get("peak_gib"), r["what"]
        shown = f"{gib:.2f}" if gib is not None else "-"
        size = f"{r['batch']} x {r['tokens']}"
        lines.append(f"| {r['row']} | {r['model']} | {what} | {size} | {r['examples_per_s']:.1f} | {shown} | {note} |")
    lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default=str(ROOT / "benchmarks" / "gpu_files"), help="gpu_check.sh --prepare's folder")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a quick dry run of the script")
    p.add_argument("--quick", action="store_true", help="small sizes, SmolLM2 for the 7B row (a dry run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    files, device, out = Path(args.files), args.device, Path(args.out)
    report = {
        "machine": platform.node(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": [],
        "notes": [],
    }
    batch, tokens, steps = (4, 64, 2) if args.quick else (32, 512, 10)
    stages = [("step", lambda: step_rows(files, device, batch, tokens, steps))]
    stages.append(("eval", lambda: eval_rows(files, device, batch, tokens)))
    big = ("smollm2", 4, 64) if args.quick else ("llama-2-7b", 32, 512)  # a dry run takes the code path
    stages.append(("7b", lambda: [big_row(files, device, *big)]))
    for name, stage in stages:
        t0 = time.time()
        try:
            report["rows"] += stage()
        except Exception as err:  # a stage that fails is a row of the report, not the end of the check
            report["notes"].append(f"{name}: failed after {time.time() - t0:.0f} s: {err!r}"[:500])
        else:
            report["notes"].append(f"{name}: {time.time() - t0:.0f} s")
        if device == "cuda":
            torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" if device == "cuda" else "gpu_check_dry_run"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
