"""Trajectory events: the Parquet schema (versioned, owned here), the writer, the run manifest.

Layout of a run folder:
    manifest.json                 config, provenance, status (running, success, failed, stopped)
    events/<kind>/part-NNNNN.parquet  kind in steps, merges, evals, costs; one part per checkpoint
    matrix.json                   the accuracy matrices and metrics (written at the end)
Rows are buffered and flushed as one part per kind just before each checkpoint; the checkpoint records
how many parts exist, and a resume deletes later parts, so no row is duplicated or lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# 2: costs.eval_seconds; 3: evals.mode, evals.subsample, costs.monitor/merge_seconds. A column added since
# (costs.cpu_seconds) is read as null from parts without it and left out by readers that predate it, so it
# keeps the version: a study's driver still running older code reads the runs newer code writes.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # a version-2 run reads as version 3 (upgrade)

_f64, _i32, _i64, _str = pa.float64(), pa.int32(), pa.int64(), pa.string()

SCHEMAS: dict[str, pa.Schema] = {
    "steps": pa.schema(
        [
            ("run_id", _str),
            ("task_index", _i32),
            ("task", _str),
            ("step", _i32),
            ("global_step", _i64),
            ("phase", _str),  # inner (new-task step) or burst (rehearsal step of a merge)
            ("train_loss", _f64),
            ("memory_loss", _f64),
            ("threshold", _f64),
            ("activations", _i32),
            ("interval", _i32),
            ("burst_len", _i32),
            ("lam", _f64),
            ("lr", _f64),
        ]
    ),
    "merges": pa.schema(
        [
            ("run_id", _str),
            ("task_index", _i32),
            ("task", _str),
            ("step", _i32),
            ("global_step", _i64),
            ("trigger", _str),  # normal, early, forced, fixed, task_end
            ("interval", _i32),
            ("burst_len", _i32),
            ("activations", _i32),
            ("w_in", _f64),
            ("w_out", _f64),
            ("l1_delta_in", _f64),
            ("l1_delta_out", _f64),
            ("lam", _f64),
        ]
    ),
    "evals": pa.schema(
        [
            ("run_id", _str),
            ("after_index", _i32),  # 0: before training (base); k: after the k-th task
            ("after_task", _str),
            ("eval_index", _i32),
            ("eval_task", _str),
            ("split", _str),
            ("metric", _str),
            ("value", _f64),
            ("n", _i32),
            ("mode", _str),  # score (label likelihood) or generate (exact match / ROUGE-L); eval.modes
            ("subsample", _i32),  # 0: the whole split; N: a fixed seeded N-example subsample (eval.matrix)
        ]
    ),
    "costs": pa.schema(
        [
            ("run_id", _str),
            ("task_index", _i32),
            ("task", _str),
            ("steps", _i32),
            ("merges", _i32),
            ("train_examples", _i64),
            ("replay_examples", _i64),
            ("burst_examples", _i64),
            ("monitor_examples", _i64),
            ("forward_passes", _i64),
            ("backward_passes", _i64),
            ("eval_examples", _i64),
            ("eval_seconds", _f64),
            ("monitor_seconds", _f64),
            ("merge_seconds", _f64),
            ("wall_seconds", _f64),
            ("cpu_seconds", _f64),
        ]
    ),
}


class EventWriter:
    """Buffers rows per kind and writes them as Parquet parts; `parts` counts the flushes so far."""

    def __init__(self, out: Path, run_id: str, enabled: bool = True) -> None:
        self.root = Path(out) / "events"
        self.run_id = run_id
        self.enabled = enabled  # False on data-parallel ranks other than 0: rows are checked, not kept
        self.parts = 0
        self.rows: dict[str, list[dict]] = {k: [] for k in SCHEMAS}

    def add(self, kind: str, **row) -> None:
        schema = SCHEMAS[kind]
        missing = set(schema.names) - set(row) - {"run_id"}
        extra = set(row) - set(schema.names)
        if missing or extra:
            raise ValueError(f"{kind} row: missing {sorted(missing)}, unknown {sorted(extra)}")
        if self.enabled:
            self.rows[kind].append({"run_id": self.run_id, **row})

    def flush(self) -> int:
        """Write one part per kind (empty kinds too, so the part numbers line up); returns parts so far."""
        for kind, rows in self.rows.items() if self.enabled else ():
            folder = self.root / kind
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(rows, schema=SCHEMAS[kind])
            table = table.replace_schema_metadata({"aimray_schema_version": str(SCHEMA_VERSION)})
            path = folder / f"part-{self.parts:05d}.parquet"
            tmp = folder / f".part-{self.parts:05d}.tmp"
            try:
                pq.write_table(table, tmp)
            except BaseException:  # a full disk, a kill: no partial part left behind (readers skip .tmp anyway)
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
            rows.clear()
        self.parts += 1
        return self.parts

    def missing(self, parts: int) -> list[str]:
        """The parts before `parts` (what a checkpoint follows) that are not there, as kind/part-NNNNN."""
        return [
            f"{kind}/part-{i:05d}"
            for kind in (SCHEMAS if self.enabled else ())
            for i in range(parts)
            if not (self.root / kind / f"part-{i:05d}.parquet").exists()
        ]

    def truncate(self, parts: int) -> None:
        """On resume: forget buffered rows and delete parts written after the checkpoint."""
        self.parts = parts
        self.rows = {k: [] for k in SCHEMAS}
        for kind in SCHEMAS if self.enabled else ():
            for path in (self.root / kind).glob("part-*.parquet"):
                if int(path.stem.split("-")[1]) >= parts:
                    path.unlink()


# Columns that differ between two runs that computed the same thing (comparisons leave them out).
TIMINGS = ("wall_seconds", "eval_seconds", "monitor_seconds", "merge_seconds", "cpu_seconds")


def upgrade(table: pa.Table, kind: str, eval_mode: str) -> pa.Table:
    """A part written with an earlier schema version as the current one: version-2 evals rows get the run's
    one mode (its config's eval.mode) and subsample 0 (every cell was the whole split); a column added later
    (the costs' monitor and merge seconds) is null."""
    if kind == "evals" and "mode" not in table.column_names:
        table = table.append_column("mode", pa.array([eval_mode] * len(table), _str))
        table = table.append_column("subsample", pa.array([0] * len(table), _i32))
    if kind not in SCHEMAS:
        return table
    for name in SCHEMAS[kind].names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), SCHEMAS[kind].field(name).type))
    return table.select(SCHEMAS[kind].names)  # the current column order: old and new parts concatenate


def read_events(out: Path, kind: str, eval_mode: str = "score") -> pa.Table:
    """All rows of one kind of a run folder, in write order (parts of an earlier version upgraded; a
    version-2 run's evals are in the mode `eval_mode`, its config's)."""
    if kind not in SCHEMAS:
        raise KeyError(f"unknown event kind {kind!r}; valid: {', '.join(SCHEMAS)}")
    paths = sorted((Path(out) / "events" / kind).glob("part-*.parquet"))
    if not paths:
        return SCHEMAS[kind].empty_table()
    return pa.concat_tables([upgrade(pq.read_table(p), kind, eval_mode) for p in paths])
