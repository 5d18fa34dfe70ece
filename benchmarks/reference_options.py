"""What each reference-mode option (the released code's behaviour, docs/method.md section 7) changes on the
real model: AimMerging on the smoke preset, once with aimray's defaults and once per option, then with all
of them, over orders 1-3.

    python benchmarks/reference_options.py [--orders 1,2,3] [--out benchmarks/results/reference_options]

Runs in this process one after another (`python -m aimray run --workers 0` folders under
<out>/runs/<option>/o<order>-<config hash>/; a finished run is skipped, so the same command continues an
interrupted comparison). Task 1 comes from the stage cache where an option leaves it alone. Writes
<out>/options.md: merges per task, test OP and BWT per option, mean over the orders, and the difference
from the defaults on the same orders. The generation options (eval.max_new_tokens, eval.rouge_stemmer)
and memory.class_rule change nothing on these label-scored tasks with 2 to 6 classes, by construction;
they are listed with their measured (zero) effect.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aimray.cliargs import error_text, int_list

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {  # name -> overrides over the smoke preset
    "defaults (spec)": {},
    "controller.warmup_count=code": {"controller": {"warmup_count": "code"}},
    "controller.burst_loss_scale=0.25": {"controller": {"burst_loss_scale": 0.25}},
    "memory.class_rule=literal": {"memory": {"class_rule": "literal"}},
    "checkpoint.keep=best_dev_loss": {"checkpoint": {"keep": "best_dev_loss", "best_dev_every": 4}},
    "model.autocast=off": {"model": {"autocast": "off"}},
    "eval max_new_tokens=128, rouge_stemmer": {"eval": {"max_new_tokens": 128, "rouge_stemmer": True}},
    "all of them (reference)": {
        "controller": {"warmup_count": "code", "burst_loss_scale": 0.25},
        "memory": {"class_rule": "literal"},
        "checkpoint": {"keep": "best_dev_loss", "best_dev_every": 4},
        "model": {"autocast": "off"},
        "eval": {"max_new_tokens": 128, "rouge_stemmer": True},
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int_list, default=[1, 2, 3], help="orders of offline-standard (default 1,2,3)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "reference_options"),
        help="folder of the runs and options.md (default benchmarks/results/reference_options)",
    )
    args = parser.parse_args(argv)

    from aimray.config import config_hash, make_config
    from aimray.loop import check_inputs, run
    from aimray.manifest import status_of
    from aimray.results import collect

    try:
        cfgs = {
            (name, o): make_config("smoke", over, method="aimmerging", order=o)
            for name, over in OPTIONS.items()
            for o in args.orders
        }
        check_inputs(cfgs.values())
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = {}
    for i, ((name, order), cfg) in enumerate(cfgs.items(), start=1):
        slug = name.split(" ")[0].replace("=", "-").replace(",", "")
        folder = out / "runs" / slug / f"o{order}-{config_hash(cfg)}"
        t0 = time.time()
        done = status_of(folder) == "success"
        results[(name, order)] = collect(folder) if done else run(cfg, folder, log=lambda _: None)
        print(f"[reference] {i}/{len(cfgs)} {name}, order {order}: {'cached' if done else f'{time.time() - t0:.0f} s'}")
    text = options_markdown(results, args.orders, next(iter(cfgs.values())).data.test)
    (out / "options.md").write_text(text)
    print(text)
    return 0


def options_markdown(results: dict, orders: list[int], test_per_task: int) -> str:
    def mean(values):
        return sum(values) / len(values)

    def per_task(res) -> float:
        return sum(res.merges.values()) / len(res.tasks)

    base = {o: results[("defaults (spec)", o)] for o in orders}
    lines = [
        f"# Reference-mode options on the real model: aimmerging, smoke preset, orders {','.join(map(str, orders))}",
        "",
        f"`python benchmarks/reference_options.py`, {time.strftime('%Y-%m-%d')}. Test OP and BWT in points, mean "
        f"over the orders; Δ: the option minus the defaults on the same orders. {test_per_task} test examples per "
        f"task (smoke): one example is {100 / test_per_task:.2f} points of a task and "
        f"{100 / (test_per_task * len(base[orders[0]].tasks)):.2f} of OP, so these are smoke-sized effects, "
        "not estimates.",
        "",
        "| option | merges/task | Δ merges/task | OP | Δ OP | BWT | Δ BWT |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in OPTIONS:
        rs = [results[(name, o)] for o in orders]
        m, op, bwt = (
            mean([f(r) for r in rs]) for f in (per_task, lambda r: r.metrics["op"], lambda r: r.metrics["bwt"])
        )
        dm = m - mean([per_task(base[o]) for o in orders])
        dop = 100 * (op - mean([base[o].metrics["op"] for o in orders]))
        dbwt = 100 * (bwt - mean([base[o].metrics["bwt"] for o in orders]))
        lines.append(f"| {name} | {m:.2f} | {dm:+.2f} | {100 * op:.1f} | {dop:+.1f} | {100 * bwt:.1f} | {dbwt:+.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
