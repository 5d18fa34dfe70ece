"""Memory and time of the harness's training step on the real SmolLM2, beside the memory plan's prediction.

    python benchmarks/memory.py [--rows all|quick] [--out benchmarks/results]

Each row is one fresh process: SmolLM2-135M-Instruct loaded with a LoRA adapter, a batch of examples whose
prompts fill the prompt budget, then two optimizer steps of the loop's own step (aimray.step.optimize, with
its gradient accumulation). Measured: the allocator's peak, the most tensor bytes alive at once in a step
beyond the weights and the optimizer's state (tracked op by op, as torch.cuda.max_memory_allocated does on a
GPU), with beside it the peak resident memory of the first step above the loaded model (Linux's high-water
mark, reset once the weights are read: /proc/self/clear_refs; it adds the runtime's own buffers and what the
C allocator keeps), and the second step's seconds (untracked).
Predicted: aimray.plan's activations for the micro-batch plus the optimizer's state (gradients and AdamW's
two moments of the adapter). Rows the plan puts over this machine's available memory are skipped, saying
so. Results go to <out>/memory.json (rows kept across invocations: a row measured before is not run
again) and <out>/memory.md. On a GPU (--device cuda) the measurement is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3


def grid(which: str) -> list[dict]:
    """The rows: (autocast, batch, prompt budget, checkpointing, micro-batch); first those the targets read
    (checkpointing at batch 32 x 512 tokens, accumulation of 4 x 8 against one batch of 32)."""
    rows = [row("bf16", 32, 512, False, 32), row("bf16", 32, 512, True, 32), row("bf16", 32, 512, False, 8)]
    rows += [row("bf16", 32, 512, False, m) for m in (1, 2, 4, 16)] + [row("bf16", 32, 512, True, 8)]
    for autocast in ("off", "bf16"):
        for budget in (96, 256, 512):
            for batch in (4, 8, 16, 32):
                for ckpt in (False, True):
                    rows.append(row(autocast, batch, budget, ckpt, batch))
    if which == "quick":
        rows = [r for r in rows if r["batch"] <= 8 and r["budget"] <= 256 and r["micro"] == r["batch"]]
    return list({key(r): r for r in rows}.values())


def row(autocast: str, batch: int, budget: int, ckpt: bool, micro: int) -> dict:
    return {"autocast": autocast, "batch": batch, "budget": budget, "checkpointing": ckpt, "micro": micro}


def key(r: dict) -> str:
    return f"{r['autocast']}/b{r['batch']}/t{r['budget']}/ckpt{int(r['checkpointing'])}/m{r['micro']}"


def run_config(r: dict, device: str):
    from aimray.config import make_config

    model = {
        "max_prompt_tokens": r["budget"],
        "autocast": r["autocast"],
        "attention": "sdpa",
        "gradient_checkpointing": r["checkpointing"],
        "device": device,
    }
    train = {"batch_size": r["batch"], "micro_batch_size": r["micro"], "threads": 0}
    return make_config(None, {"model": model, "train": train})


ANSWER = 3  # " positive" / " negative" and EOS: SmolLM2's tokens of the rows' answers


def predict(r: dict, device: str) -> int:
    """The plan's bytes above the loaded model for one optimizer step of this row (its real answer length)."""
    from dataclasses import replace

    from aimray import plan

    cfg = run_config(r, device)
    arch = plan.read_arch(cfg.model.name_or_path, cfg.model.lora_r)
    setting = replace(plan.run_setting(cfg, arch, device), tokens=r["budget"] + ANSWER, answer=ANSWER)
    return plan.activation_bytes(arch, setting, r["micro"]) + arch.adapter * 4 * 3


class LiveTensors:
    """The peak of live tensor bytes inside its context (the allocator's view, as
    torch.cuda.max_memory_allocated on a GPU): every op's new storages counted until freed; storages that
    exist when it starts (weights, the optimizer's state) and views of them are not counted."""

    def __init__(self, known: list) -> None:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0
        known_ids = {t.untyped_storage()._cdata for t in known}
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if not isinstance(t, torch.Tensor):
                        continue
                    st = t.untyped_storage()
                    k = st._cdata
                    if k in known_ids or k in tracker.sizes or not st.nbytes():
                        continue
                    tracker.sizes[k] = st.nbytes()
                    tracker.current += st.nbytes()
                    tracker.peak = max(tracker.peak, tracker.current)
                    weakref.finalize(st, tracker.free, k)
                return out

        self.mode = Mode()

    def free(self, k: int) -> None:
        self.current -= self.sizes.pop(k)

    def __enter__(self) -> LiveTensors:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def measure(r: dict, device: str) -> dict:
    """One row, in this process: the peak above the loaded model and the second step's seconds."""
    import torch

    from aimray.distributed import LOCAL
    from aimray.model import answer_loss, encode, load_backbone
    from aimray.step import Learner, optimize
    from aimray.tasks.spec import Example

    cfg = run_config(r, device)
    bb = load_backbone(cfg.model, seed=0)
    params = bb.lora_state()
    words = " ".join(["news"] * (2 * r["budget"]))
    batch = [Example("Classify the text.", words, "positive" if i % 2 else "negative") for i in range(r["batch"])]
    assert all(len(encode(bb, ex)[0]) == r["budget"] for ex in batch)
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4)
    learner = Learner(bb, params, LOCAL, r["micro"])
    with torch.no_grad():  # the weights' pages are read (mapped from the file) before the baseline
        answer_loss(bb, batch[:1])
    bb.model.train()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from here
        base = rss_kib("VmRSS:") * 1024
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        optimize(learner, batch, optimizer, clip=1.0)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    if device == "cuda":
        return {"measured": torch.cuda.max_memory_allocated() - base, "step_seconds": seconds[-1]}
    rss = rss_kib("VmHWM:") * 1024 - base
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with LiveTensors([*bb.model.parameters(), *bb.model.buffers(), *state]) as live:
        optimize(learner, batch, optimizer, clip=1.0)
    return {"measured": live.peak, "rss": rss, "step_seconds": seconds[-1]}


def run_row(r: dict, device: str, timeout: int) -> dict:
    """One row in a fresh process (its own high-water mark)."""
    cmd = [sys.executable, __file__, "--row", json.dumps(r), "--device", device]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"status": f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"}
    return {"status": "measured", **json.loads(done.stdout.strip().splitlines()[-1])}


def available() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", choices=["all", "quick"], default="all", help="all (default) or quick (small rows)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where memory.json/.md go")
    p.add_argument("--timeout", type=int, default=900, help="seconds per row (default 900)")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = p.parse_args(argv)
    if args.row:
        print(json.dumps(measure(json.loads(args.row), args.device)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("memory.json" if args.device == "cpu" else "memory_cuda.json")
    results = json.loads(path.read_text())["rows"] if path.exists() else {}
    rows = grid(args.rows)
    for i, r in enumerate(rows, 1):
        k = key(r)
        if results.get(k, {}).get("status") == "measured":
            continue
        predicted = predict(r, args.device)
        if args.device == "cpu" and predicted > 0.8 * available():
            results[k] = {**r, "predicted": predicted, "status": "skipped: the plan puts it over 80% of free memory"}
        else:
            print(f"[memory] {i}/{len(rows)} {k}: predicted {predicted / GiB:.2f} GiB", flush=True)
            results[k] = {**r, "predicted": predicted, **run_row(r, args.device, args.timeout)}
        write(path, out, results, args.device)
    print((out / "memory.md").read_text() if args.device == "cpu" else path.read_text())
    return 0


def write(path: Path, out: Path, results: dict, device: str) -> None:
    from aimray.files import write_json_atomic
    from aimray.model import cpu_name

    machine = {"node": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    write_json_atomic(path, {"machine": machine, "device": device, "rows": results})
    if device == "cpu":
        (out / "memory.md").write_text(table(results, machine))


def targets(results: dict) -> list[str]:
    """The issue's targets read off the rows at batch 32 x 512 tokens, bf16 autocast."""
    rows = {key(r): r for r in results.values() if r.get("measured")}
    whole, ckpt = rows.get("bf16/b32/t512/ckpt0/m32"), rows.get("bf16/b32/t512/ckpt1/m32")
    accumulated = rows.get("bf16/b32/t512/ckpt0/m8")
    lines = []
    if whole and ckpt:
        cut, slower = whole["measured"] / ckpt["measured"], ckpt["step_seconds"] / whole["step_seconds"]
        lines.append(
            f"- Checkpointing at batch 32 x 512: activation memory cut {cut:.1f}x (target >= 3x) at "
            f"{slower:.2f}x the step time (target <= 1.4x)."
        )
    if whole and accumulated:
        ratio = accumulated["step_seconds"] / whole["step_seconds"]
        lines.append(f"- Accumulation of 4 x 8 against one batch of 32: {ratio:.2f}x the step time (target <= 1.15x).")
    ratios = [r["predicted"] / r["measured"] for r in rows.values()]
    if ratios:
        inside = sum(abs(x - 1) <= 0.25 for x in ratios)
        lines.append(
            f"- Predictions: {inside} of {len(ratios)} within 25% of the measured peak (ratios "
            f"{min(ratios):.2f}-{max(ratios):.2f})."
        )
    return lines


def table(results: dict, machine: dict) -> str:
    lines = [
        "# Memory of a training step: the plan's prediction beside the measured peak",
        "",
        f"`python benchmarks/memory.py`, {machine['date']}, {machine['cpu']} ({machine['cores']} cores), real "
        "SmolLM2-135M-Instruct, LoRA r 8 on q/v (dropout 0.05), SDPA attention, AdamW, one process per row. "
        "Measured: the allocator's peak in one optimizer step, the most tensor bytes alive at once beyond the "
        "weights and the optimizer's state (as torch.cuda.max_memory_allocated on a GPU). Predicted: aimray.plan's "
        "activations of the micro-batch plus the adapter's gradients and AdamW moments; ratio = predicted / "
        "measured. RSS: the first step's peak resident memory above the loaded model (with glibc's and oneDNN's "
        "own buffers). Step: seconds of the second optimizer step (all micro-batches).",
        "",
        *targets(results),
        "",
        "| autocast | batch | budget | checkpointing | micro | predicted GiB | measured GiB | ratio | RSS GiB "
        "| step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        measured = r.get("measured")
        cells = (
            [
                f"{measured / GiB:.3f}",
                f"{r['predicted'] / measured:.2f}",
                f"{r.get('rss', 0) / GiB:.3f}",
                f"{r['step_seconds']:.2f}",
            ]
            if measured
            else [r["status"], "", "", ""]
        )
        ckpt = "on" if r["checkpointing"] else "off"
        head = [r["autocast"], r["batch"], r["budget"], ckpt, r["micro"], f"{r['predicted'] / GiB:.3f}"]
        lines.append("| " + " | ".join(str(c) for c in head + cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
