"""Re-run committed runs with the code as it is now and compare what they wrote: a refactor that claims to
change no number proves it here.

    python benchmarks/rerun.py benchmarks/results/sweep_efficiency/runs/aimmerging/o1-s0-f9e0d640 [...]
    python benchmarks/rerun.py --share RUN RUN ...   # the runs share one fresh stage cache, in the given order

Each run's config comes from its manifest, run in this process into a scratch folder with the precision
the committed run resolved (model.autocast and model.attention set to it, so that a precision probe on
this machine cannot choose another kernel; the config hash changes, the computation does not). Its events
(steps, merges, evals, costs: timings aside) and accuracy matrix are compared with the committed ones
value for value. Without --share every run computes task 1 itself; with it the first run of each first
task fills a fresh cache and the others take it from there, so both paths of the stage cache are checked.
Exit status 1 when any run differs; one line per run either way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("steps", "merges", "evals", "costs")


def comparable(folder: Path, kind: str) -> list[dict]:
    """The event rows of one kind, timings dropped and NaN made comparable."""
    from aimray.events import TIMINGS, read_events

    rows = read_events(folder, kind).to_pylist()
    for row in rows:
        for key in TIMINGS:
            row.pop(key, None)
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = "nan"
    return rows


def rerun(committed: Path, scratch: Path, cache) -> list[str]:
    """Run `committed`'s config again into `scratch`; returns what differs (empty: nothing)."""
    from aimray.config import config_from_dict
    from aimray.loop import run
    from aimray.manifest import Manifest

    manifest = Manifest.read(committed)
    values, precision = manifest.config, manifest.precision
    values["model"] = {**values["model"], **{k: precision[k] for k in ("autocast", "attention") if k in precision}}
    run(config_from_dict(values), scratch, log=lambda _: None, cache=cache)
    diffs = [kind for kind in KINDS if comparable(scratch, kind) != comparable(committed, kind)]
    matrix = json.loads((committed / "matrix.json").read_text())
    if json.loads((scratch / "matrix.json").read_text()) != matrix:
        diffs.append("matrix.json")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="committed run folders (manifest.json, events/)")
    parser.add_argument("--share", action="store_true", help="one fresh stage cache for all the runs, in order")
    args = parser.parse_args(argv)
    from aimray.manifest import Manifest
    from aimray.stagecache import StageCache

    failed = 0
    with tempfile.TemporaryDirectory(prefix="aimray-rerun-") as tmp:
        cache = StageCache(Path(tmp) / "stage-cache") if args.share else None
        for i, committed in enumerate(args.runs):
            t0 = time.time()
            diffs = rerun(committed, Path(tmp) / f"run{i}", cache)
            shared = Manifest.read(Path(tmp) / f"run{i}").cache.get("stage", {})
            taken = " (task 1 from the stage cache)" if shared.get("hit") else ""
            verdict = "differs in " + ", ".join(diffs) if diffs else "identical"
            print(f"{committed}: {verdict}{taken}, {time.time() - t0:.0f} s", flush=True)
            failed += bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
