"""A run folder's manifest.json, typed: what ran, on what, and how it went. Its one reader and writer, next
to the event schema it versions (aimray.events). The loop writes it when a run starts or resumes and when
it ends; the launchers, benchmarks and analysis read it.

Tolerant of every manifest already written: a field added later takes its default when absent, a key this
version does not know is kept as it was (`extra`) and written back on a rewrite. No torch, no Ray.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from aimray.events import SCHEMA_VERSION
from aimray.files import read_json, write_json_atomic

STATUSES = ("running", "success", "failed", "stopped")
REQUIRED = ("run_id", "method", "benchmark", "order", "seed", "tasks", "status")


@dataclass
class Manifest:
    run_id: str
    method: str
    benchmark: str
    order: int
    seed: int
    tasks: list[str]
    config: dict = field(default_factory=dict)  # RunConfig.to_dict()
    shape: str = ""  # sequential, joint or independent; "" in manifests older than the field (see run_shape)
    schema_version: int = SCHEMA_VERSION  # of the events beside it
    provenance: dict = field(default_factory=dict)  # git commit, package versions, hardware
    plugins: list[str] = field(default_factory=list)  # the modules that registered what the config names
    labels: dict[str, str] = field(default_factory=dict)  # what the launcher calls the run, e.g. {"trial": id}
    precision: dict = field(default_factory=dict)  # model.autocast and attention as resolved, and why
    micro_batch: dict = field(default_factory=dict)  # train.micro_batch_size as resolved (size, source, peaks)
    status: str = "running"  # one of STATUSES
    started_at: str = ""
    resumed_from: str | None = None  # the checkpoint the last attempt resumed from
    cache: dict = field(default_factory=dict)  # what came from the stage cache (aimray.stagecache)
    finished_at: str | None = None
    error: str | None = None  # repr of what stopped a failed or stopped run
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know
    # fields the file read had not (written before they existed): left out again while they keep their default
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: object, where: str | Path = "manifest.json") -> Manifest:
        """ValueError naming `where` when `data` is not a JSON object or lacks a required key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)} (keys: {', '.join(data)})")
        known = {f.name for f in fields(cls)} - {"extra", "absent"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
            absent=frozenset(known - set(data)),
        )

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of a run folder; FileNotFoundError when it has none, ValueError when it is not one."""
        path = Path(folder) / "manifest.json"
        return cls.from_dict(read_json(path), path)

    def to_dict(self) -> dict:
        """The JSON object: the fields in declaration order (finished_at and error once set; a field the read
        file had not, only once it changed), then the unknown keys."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            unset = f.name in ("finished_at", "error") and value is None
            if f.name not in ("extra", "absent") and not unset and not (f.name in self.absent and value == default):
                out[f.name] = value
        return {**out, **self.extra}

    def write(self, folder: str | Path) -> None:
        write_json_atomic(Path(folder) / "manifest.json", self.to_dict())


def status_of(folder: str | Path) -> str | None:
    """The status a run folder's manifest records, or None where there is no (readable) manifest."""
    try:
        return Manifest.read(folder).status
    except (FileNotFoundError, ValueError):
        return None
