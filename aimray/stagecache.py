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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from aimray import assets
from aimray.checkpoint import Checkpointer, CheckpointError, write_folder
from aimray.files import read_json, write_json_atomic
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
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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


# --------------------------------------------------------------------------------------------- stages


@dataclass
class StageEntry:
    adapter: Tensors
    steps: list[tuple[float, float]]  # (train loss, lr) per optimizer step
    costs: dict  # the stage's compute counters (seconds not included)
    seconds: float  # what computing the stage took
    best: Tensors = field(default_factory=dict)
    best_score: float = float("-inf")


def stage_key(identity: dict, settings: dict, start: Tensors, examples: list[Example]) -> str:
    """`settings`: the train config, best-dev settings, seed, stage name and first global step."""
    fields = {"backbone": identity, "settings": settings, "start": tensors_digest(start)}
    return digest({"kind": "stage", **fields, "examples": examples_digest(examples)})


def load_stage(key: str, device: torch.device) -> StageEntry | None:
    base = root()
    if base is None or not (base / "stages" / key).is_dir():
        return None
    try:
        tensors, _, state = Checkpointer.load(base / "stages" / key)
    except (CheckpointError, OSError, ValueError):  # entries appear whole (a rename): this one was damaged
        shutil.rmtree(base / "stages" / key, ignore_errors=True)
        return None
    move = {g: {k: v.to(device) for k, v in t.items()} for g, t in tensors.items()}
    steps = [tuple(s) for s in state["steps"]]
    return StageEntry(
        move["adapter"], steps, state["costs"], state["seconds"], move.get("best", {}), state["best_score"]
    )


def store_stage(key: str, entry: StageEntry) -> None:
    base = root()
    if base is None:
        return
    if (base / "stages" / key).exists():
        return
    (base / "stages").mkdir(parents=True, exist_ok=True)
    tensors = {"adapter": entry.adapter, **({"best": entry.best} if entry.best else {})}
    state = {"steps": entry.steps, "costs": entry.costs, "seconds": entry.seconds, "best_score": entry.best_score}
    with contextlib.suppress(FileExistsError):  # another run stored the same computation meanwhile
        write_folder(base / "stages" / key, tensors, {}, state)


# ---------------------------------------------------------------------------------------------- evals


def eval_key(identity: dict, adapter: str, examples: list[Example], settings: dict) -> str:
    """`settings`: the arguments of model.evaluate beside the model and the examples (aimray.loop.eval_settings)."""
    fields = {"backbone": identity, "adapter": adapter, "settings": settings}
    return digest({"kind": "eval", **fields, "examples": examples_digest(examples)})


def load_eval(key: str) -> dict | None:
    base = root()
    path = base / "evals" / f"{key}.json" if base is not None else None
    if path is None or not path.is_file():
        return None
    try:
        entry = read_json(path)
        return entry if {"value", "n", "metric", "seconds"} <= set(entry) else None
    except (OSError, ValueError, TypeError):
        return None


def store_eval(key: str, entry: dict) -> None:
    base = root()
    if base is None:
        return
    (base / "evals").mkdir(parents=True, exist_ok=True)
    write_json_atomic(base / "evals" / f"{key}.json", entry)
