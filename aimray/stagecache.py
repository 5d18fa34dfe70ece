"""Computations shared across runs: the first stage's training, and evaluations of the same adapter.

Task 1 of a run is plain LoRA training (no memory yet, so no merge schedule acts and nothing is replayed):
every method but MTL, every trial of a sweep, and single_task on that task compute it identically for the
same backbone, precision, data, train config and seed; the untrained adapter's evaluation (row 0) is the
same in every run of a benchmark. Both are cached under $AIMRAY_STAGE_CACHE (default
$AIMRAY_HOME/stage-cache; "off" turns the cache off), keyed by a sha256 of everything the computation reads:

    stage  the backbone (the sha256 of its files, the model config, the resolved precision), the device,
           torch's version and thread count, the data-parallel world size, the train config, the best-dev
           settings, the seed, the stage's name and first global step, the adapter it starts from and the
           training examples themselves
    eval   the same backbone facts, the adapter ("untrained" while every lora_B is zero: then the adapter
           adds exactly nothing, whatever its seed), the examples, the options, the eval mode, batch size,
           generation length and ROUGE stemming

A stage entry is a folder like a checkpoint (safetensors + JSON, every file's sha256 checked before use):
the trained adapter, the best-dev adapter if one is kept, each step's loss and learning rate, and the
stage's compute counters; the run replays the step rows through its own schedule, so its files equal an
uncached run's. An eval entry is one JSON file. Entries are written once (a temporary name, then a
rename); an unreadable entry is a miss. Bump VERSION whenever the loop's training or evaluation changes
what it computes.

A run takes a `StageCache` (or None: nothing shared; `FROM_ENV`, the default of aimray.loop.run, is the
folder above) and binds it to its backbone and ranks (`bind`): the bound `Shared` makes the keys from what
the loop says a computation reads, counts hits and misses, and owns the manifest's "cache" record. The
loop only asks it for a result before computing one and hands it what it computed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from aimray import assets
from aimray.checkpoint import Checkpointer, CheckpointError, write_folder
from aimray.distributed import LOCAL, Dist
from aimray.files import read_json, write_json_atomic
from aimray.manifest import Manifest
from aimray.model import Backbone, cpu_name, resolve_path
from aimray.tasks.spec import Example

VERSION = 1
Tensors = dict[str, torch.Tensor]


def root() -> Path | None:
    """The cache folder, or None when $AIMRAY_STAGE_CACHE is "off"."""
    setting = os.environ.get("AIMRAY_STAGE_CACHE", "")
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    return Path(setting).expanduser() if setting else assets.home() / "stage-cache"


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()


def _plain(obj: object) -> object:
    """JSON for what a key may hold beside plain data: an example by its fields."""
    return asdict(obj) if isinstance(obj, Example) else str(obj)


def examples_digest(examples: list[Example]) -> str:
    return digest([asdict(ex) for ex in examples])


def tensors_digest(tensors: Tensors) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def adapter_id(tensors: Tensors) -> str:
    """The adapter's digest, or "untrained" while every lora_B is zero (the model is then the base model)."""
    b = [t for name, t in tensors.items() if "lora_B" in name]
    if b and all(not t.any() for t in b):
        return "untrained"
    return tensors_digest(tensors)


@functools.cache
def _files_digest(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def backbone_identity(bb: Backbone, world: int) -> dict:
    """What the numbers of a forward/backward pass depend on, beside the adapter and the inputs."""
    path = resolve_path(bb.config.name_or_path)
    if Path(path).is_dir():
        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(path).iterdir()))
        files = _files_digest(path, stamp)
    else:
        files = path  # a hub id: its revision is whatever the local HF cache holds
    model = {k: v for k, v in asdict(bb.config).items() if k not in ("autocast", "attention", "device")}
    device = torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else cpu_name()
    return {
        "version": VERSION,
        "files": files,
        "model": model,
        "precision": [bb.precision.get("autocast"), bb.precision.get("attention")],
        "device": [bb.device.type, device, platform.machine()],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "world": world,
    }


# --------------------------------------------------------------------------------------------- entries


@dataclass
class StageEntry:
    adapter: Tensors
    steps: list[tuple[float, float]]  # (train loss, lr) per optimizer step
    costs: dict  # the stage's compute counters (seconds not included)
    seconds: float  # what computing the stage took
    best: Tensors = field(default_factory=dict)
    best_score: float = float("-inf")


FROM_ENV = "from $AIMRAY_STAGE_CACHE"  # aimray.loop.run's default: the folder root() names, or none


class StageCache:
    """The cache folder: stage entries (folders like checkpoints) and eval entries (one JSON each)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def resolve(cls, cache: StageCache | str | Path | None) -> StageCache | None:
        """FROM_ENV: the folder $AIMRAY_STAGE_CACHE names (None when it is "off"); a folder: a cache there;
        else `cache` itself."""
        if cache == FROM_ENV:
            base = root()
            return cls(base) if base is not None else None
        return cls(Path(cache)) if isinstance(cache, str | Path) else cache

    def bind(self, bb: Backbone, dist: Dist = LOCAL) -> Shared:
        return Shared(self, backbone_identity(bb, dist.world), dist)

    def load_stage(self, key: str, device: torch.device) -> StageEntry | None:
        path = self.folder / "stages" / key
        if not path.is_dir():
            return None
        try:
            tensors, _, state = Checkpointer.load(path)
        except (CheckpointError, OSError, ValueError):  # entries appear whole (a rename): this one was damaged
            shutil.rmtree(path, ignore_errors=True)
            return None
        move = {g: {k: v.to(device) for k, v in t.items()} for g, t in tensors.items()}
        steps = [tuple(s) for s in state["steps"]]
        return StageEntry(
            move["adapter"], steps, state["costs"], state["seconds"], move.get("best", {}), state["best_score"]
        )

    def store_stage(self, key: str, entry: StageEntry) -> None:
        path = self.folder / "stages" / key
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"adapter": entry.adapter, **({"best": entry.best} if entry.best else {})}
        state = {"steps": entry.steps, "costs": entry.costs, "seconds": entry.seconds, "best_score": entry.best_score}
        with contextlib.suppress(FileExistsError):  # another run stored the same computation meanwhile
            write_folder(path, tensors, {}, state)

    def load_eval(self, key: str) -> dict | None:
        path = self.folder / "evals" / f"{key}.json"
        if not path.is_file():
            return None
        try:
            entry = read_json(path)
            return entry if {"value", "n", "metric", "seconds"} <= set(entry) else None
        except (OSError, ValueError, TypeError):
            return None

    def store_eval(self, key: str, entry: dict) -> None:
        (self.folder / "evals").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / "evals" / f"{key}.json", entry)


def stage_key(identity: dict, reads: dict, start: Tensors, examples: list[Example]) -> str:
    """`reads`: what the stage's training reads beside the backbone, its starting adapter and its examples
    (the train config, best-dev settings and examples, seed, stage name and first global step)."""
    fields = {"backbone": identity, "settings": reads, "start": tensors_digest(start)}
    return digest({"kind": "stage", **fields, "examples": examples_digest(examples)})


def eval_key(identity: dict, adapter: str, examples: list[Example], settings: dict) -> str:
    """`settings`: the arguments of model.evaluate beside the model and the examples."""
    fields = {"backbone": identity, "adapter": adapter, "settings": settings}
    return digest({"kind": "eval", **fields, "examples": examples_digest(examples)})


# ------------------------------------------------------------------------------------------ bound to a run


class Shared:
    """The stage cache as one run sees it: keys from its backbone, counters, the manifest's "cache" record.
    With no cache (`Shared(None)`) every lookup misses and nothing is stored or counted."""

    def __init__(self, cache: StageCache | None, identity: dict | None = None, dist: Dist = LOCAL) -> None:
        self.cache, self.identity, self.dist = cache, identity, dist
        counts = {"hits": 0, "misses": 0, "seconds_saved": 0.0}
        self.record = {"dir": str(cache.folder), "base_evals": dict(counts), "evals": dict(counts)} if cache else {}
        self.key: str | None = None  # the first stage's key, once looked up

    def recorded(self, manifest: Manifest) -> Manifest:
        """`manifest` with what the run took from the cache so far (a copy)."""
        return replace(manifest, cache=json.loads(json.dumps(self.record)))

    def resume(self, folder: Path) -> None:
        """Carry on the counts that earlier attempts of the run recorded in its folder's manifest (none when
        it is missing or unreadable)."""
        if self.cache is None:
            return
        try:
            earlier = Manifest.read(folder).cache
        except (FileNotFoundError, ValueError):
            return
        self.record.update({k: v for k, v in earlier.items() if k in ("stage", "base_evals", "evals")})

    def stage(self, reads: dict, start: Tensors, examples: list[Example], device: torch.device) -> StageEntry | None:
        """A stage's result computed before (every rank has it), or None: compute it and `store_stage`."""
        if self.cache is None:
            return None
        self.key = stage_key(self.identity, reads, start, examples)
        entry = self.cache.load_stage(self.key, device)
        if self.dist.sum(float(entry is not None)) != self.dist.world:  # every rank has it, or every rank trains
            return None
        self.record["stage"] = {"key": self.key[:16], "hit": True, "seconds_saved": round(entry.seconds, 1)}
        return entry

    def describe(self, entry: StageEntry) -> str:
        """Where a stage's result came from, for the run's log."""
        return f"from the stage cache ({entry.seconds:.0f} s saved)"

    def store_stage(self, entry: StageEntry) -> None:
        if self.cache is None or self.key is None:
            return
        if self.dist.main:
            self.cache.store_stage(self.key, entry)
        self.record["stage"] = {"key": self.key[:16], "hit": False, "seconds_saved": 0.0}

    def scorer(self, counter: str, adapter: Tensors) -> Callable[[list[Example], dict, Callable], dict]:
        """`score` for one adapter, identified once (its digest is taken here, not per task and split)."""
        if self.cache is None:
            return lambda examples, settings, compute: compute(list(settings))
        return functools.partial(self.score, counter, adapter_id(adapter))

    def score(
        self, counter: str, adapter: str, examples: list[Example], settings: dict[str, dict], compute: Callable
    ) -> dict[str, tuple[float, int, str]]:
        """{mode: (value, n, metric)} of the adapter `adapter` (adapter_id) on `examples`, for each mode of
        `settings` ({mode: that mode's evaluation settings}, each its own cache entry): the entries every
        rank holds are read, the other modes computed together by `compute(modes)` and stored; counted
        under record[counter], one hit or miss per entry."""
        counts, out, missing = self.record[counter], {}, []
        for mode, one in settings.items():
            entry = self.cache.load_eval(eval_key(self.identity, adapter, examples, one))
            if self.dist.sum(float(entry is not None)) == self.dist.world:
                counts["hits"] += 1
                counts["seconds_saved"] = round(counts["seconds_saved"] + entry["seconds"], 1)
                out[mode] = (entry["value"], entry["n"], entry["metric"])
            else:
                missing.append(mode)
        if not missing:
            return out
        t0 = time.time()
        computed = compute(missing)
        seconds = (time.time() - t0) / len(missing)
        for mode in missing:
            value, n, metric = out[mode] = computed[mode]
            if self.dist.main:
                key = eval_key(self.identity, adapter, examples, settings[mode])
                self.cache.store_eval(key, {"value": value, "n": n, "metric": metric, "seconds": seconds})
            counts["misses"] += 1
        return out
