"""Open a study folder (one run, a sweep or an ablation study) as tidy pandas DataFrames.

A study folder holds run folders (each with manifest.json and events/<kind>/part-*.parquet, written by
aimray.events); a sweep (sweeps/tune_controller.py) adds sweep.json, trials.parquet and
trial_orders.parquet (which trial and order each of its runs is) with its runs under runs/<trial>/order<k>/,
an ablation study (sweeps/ablations.py) runs.parquet with its runs under runs/<method>/o<order>-s<seed>/.
Runs are found anywhere below the folder, so one run folder (`python -m aimray run --out`) is a study too.
Reads Parquet and JSON only (the schema from aimray.events): never imports torch or ray.

A study can also be opened from a URI (`s3://bucket/prefix/sweep`, `gs://...`, anything pyarrow's
filesystem layer knows; an S3-compatible server by `?endpoint_override=HOST:PORT&scheme=http` or
AWS_ENDPOINT_URL): the files the analysis reads (manifests, events, tables; never checkpoints or Ray's own
state) are mirrored into a local folder, copying only what is new or changed, and opened from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from aimray import results
from aimray.assets import home
from aimray.events import READABLE_VERSIONS, SCHEMAS, upgrade
from aimray.files import is_uri, local_path, read_json
from aimray.manifest import Manifest
from aimray.results import run_modes, run_shape
from aimray.sync import Place, StampFiles, sync, visible

KINDS = tuple(SCHEMAS)  # steps, merges, evals, costs


class NotAStudyError(ValueError):
    """The folder holds no aimray run."""


@dataclass
class Study:
    root: Path
    kind: str  # "sweep", "ablation" or "runs"
    runs: pd.DataFrame  # one row per run: run_id, method, benchmark, order, seed, status, path, tasks, trial
    steps: pd.DataFrame
    merges: pd.DataFrame
    evals: pd.DataFrame  # the accuracy matrices in long form: after_index, eval_task, split, value, ...
    costs: pd.DataFrame
    trials: pd.DataFrame | None  # a sweep's trials table
    trial_orders: pd.DataFrame | None  # a sweep's per-order results: trial_id, order, path, op, bwt, ...
    ablation: pd.DataFrame | None  # an ablation study's runs table
    space: list[dict]  # a sweep's search space: [{key, kind, values, when}], from sweep.json
    sweep: dict | None  # a sweep's spec (sweep.json)

    def select(self, paths) -> Study:
        """The same study restricted to the runs at these paths."""
        keep = set(paths)
        rows = {
            k: (f[f.path.isin(keep)] if len(f) else f)
            for k, f in (("runs", self.runs), *((kind, getattr(self, kind)) for kind in KINDS))
        }
        return replace(self, **rows)


def run_folders(root: Path) -> list[Path]:
    """Every folder below `root` (itself included) with a manifest.json and an events folder; ValueError
    naming a folder whose events/ has no manifest.json beside it (a run folder cut short or half copied)."""
    for events in Path(root).rglob("events"):
        if events.is_dir() and any(events.glob("*/part-*.parquet")) and not (events.parent / "manifest.json").exists():
            raise ValueError(f"{events.parent}: events/ without manifest.json (an incomplete run folder)")
    return sorted(p.parent for p in Path(root).rglob("manifest.json") if (p.parent / "events").is_dir())


def read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file; ValueError naming it when it cannot be read (truncated, not Parquet)."""
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None


def read_parts(paths: list[Path], kind: str = "", eval_mode: str = "score") -> pd.DataFrame:
    """Parquet parts as one DataFrame, parts of an earlier event schema upgraded (aimray.events.upgrade: a
    version-2 run's evals are in `eval_mode`); ValueError naming the part that cannot be read."""
    try:
        tables = [upgrade(ds.dataset(str(p), format="parquet").to_table(), kind, eval_mode) for p in paths]
        return pa.concat_tables(tables).to_pandas()
    except (pa.ArrowException, OSError) as err:
        for path in paths:
            read_parquet(path)
        raise ValueError(f"{paths[0].parent}: Parquet parts that do not read together ({err})") from None


SKIPPED = ("checkpoints", "ray", "analysis")  # folders a mirror leaves out: state, not results


def mirror(uri: str, local: Path | None = None) -> Path:
    """Copy the study at `uri` (what the analysis reads) into `local` (default a folder under
    $AIMRAY_HOME/studies named by the URI's hash), copying only files whose size or modification time
    changed; returns the local folder. NotAStudyError when the URI names nothing."""
    try:
        place = Place.of(uri)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise NotAStudyError(f"{uri}: cannot be opened ({err})") from None
    if local is None:
        local = home() / "studies" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    return mirror_from(place.fs, place.path, local, name=uri)


def mirror_from(fs: pafs.FileSystem, base: str, local: Path, name: str = "") -> Path:
    """`mirror` from a pyarrow filesystem and a path on it (aimray.sync: what changed since the last mirror,
    by the stamps kept beside the copies; what is gone there is gone here)."""
    uri, src = name or base, Place(fs, base.rstrip("/"))
    try:
        if not src.files(results_only):
            raise NotAStudyError(f"{uri}: no files there")
    except (OSError, pa.ArrowException) as err:
        raise NotAStudyError(f"{uri}: cannot be listed ({err})") from None
    local.mkdir(parents=True, exist_ok=True)
    sync(src, Place.of(local), keep=results_only, stamps=StampFiles(local))
    return local


def results_only(rel: str) -> bool:
    """What the analysis reads: no hidden file, nothing under checkpoints/, ray/ or analysis/ (SKIPPED)."""
    return visible(rel) and not any(part in SKIPPED for part in Path(rel).parts[:-1])


def open_study(root: str | Path, mode: str | None = None) -> Study:
    """Load every run below `root` (a folder, or a URI: `mirror`); raises NotAStudyError naming the folder
    when there is none, and ValueError when a run was written with an event schema version this analysis
    does not read. `mode`: the scoring whose evaluations `evals` holds (eval.modes; default: each run's
    headline mode); ValueError naming a run that did not evaluate in it."""
    root = mirror(str(root)) if is_uri(root) else local_path(root)
    if not root.is_dir():
        raise NotAStudyError(f"{root} is not a folder")
    folders = run_folders(root)
    if not folders:
        raise NotAStudyError(f"{root} holds no aimray run (no manifest.json beside an events/ folder)")
    rows, modes = [], {}
    for folder in folders:
        manifest = Manifest.read(folder)
        if manifest.schema_version not in READABLE_VERSIONS or "schema_version" in manifest.absent:
            version = None if "schema_version" in manifest.absent else manifest.schema_version
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise ValueError(f"{folder}: event schema version {version}, this analysis reads {readable}")
        path = folder.relative_to(root)
        modes[str(path)] = run_modes(manifest)
        if mode is not None and mode not in modes[str(path)]:
            raise ValueError(f"{folder}: evaluated in {', '.join(modes[str(path)])} only, not in mode {mode!r}")
        rows.append(run_row(manifest, str(path), mode or modes[str(path)][0]))
    runs = pd.DataFrame(rows)
    # run_id is not unique across a sweep's trials: every event row is keyed by its run folder (`path`).
    frames = {kind: _with_paths(folders, kind, root, modes) for kind in KINDS}
    if len(frames["evals"]):  # one scoring per run: `mode`, or the run's headline mode
        wanted = frames["evals"].path.map(lambda p: mode or modes[p][0])
        frames["evals"] = frames["evals"][frames["evals"]["mode"] == wanted].reset_index(drop=True)
    trials = read_parquet(root / "trials.parquet") if (root / "trials.parquet").exists() else None
    orders = read_parquet(root / "trial_orders.parquet") if (root / "trial_orders.parquet").exists() else None
    if orders is not None:  # runs written before their manifests named their trial: as trial_orders says
        recorded = dict(zip(orders.path, orders.trial_id, strict=True))
        runs["trial"] = [t if t is not None else recorded.get(p) for t, p in zip(runs.trial, runs.path, strict=True)]
    ablation = read_parquet(root / "runs.parquet") if (root / "runs.parquet").exists() else None
    sweep = read_json(root / "sweep.json") if (root / "sweep.json").exists() else None
    if sweep is not None and not isinstance(sweep, dict):
        raise ValueError(f"{root / 'sweep.json'}: expected a JSON object, got {type(sweep).__name__}")
    kind = "sweep" if sweep is not None else "ablation" if ablation is not None else "runs"
    space = list(sweep.get("space", [])) if sweep else []
    return Study(
        root,
        kind,
        runs,
        frames["steps"],
        frames["merges"],
        frames["evals"],
        frames["costs"],
        trials,
        orders,
        ablation,
        space,
        sweep,
    )


def run_row(manifest: Manifest, path: str, mode: str) -> dict:
    """The runs table's row of one run folder (`mode`: the scoring of its rows in `evals`)."""
    return {
        "run_id": manifest.run_id,
        "method": manifest.method,
        "shape": run_shape(manifest),
        "benchmark": manifest.benchmark,
        "order": manifest.order,
        "seed": manifest.seed,
        "status": manifest.status,
        "tasks": manifest.tasks,
        "path": path,
        "trial": manifest.labels.get("trial"),  # a sweep's run: the trial it belongs to
        "mode": mode,
    }


def _with_paths(folders: list[Path], kind: str, root: Path, modes: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """All rows of one event kind, each with the path of its run folder relative to the study (`modes`: each
    run's eval modes by path, the headline first)."""
    parts = []
    for folder in folders:
        paths = sorted((folder / "events" / kind).glob("part-*.parquet"))
        if paths:
            frame = read_parts(paths, kind, modes[str(folder.relative_to(root))][0])
            frame.insert(0, "path", str(folder.relative_to(root)))
            parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def accuracy_matrix(study: Study, path: str, split: str = "test") -> pd.DataFrame:
    """One run's accuracy matrix: rows after_index (0 = the base model, when measured), columns the tasks in
    training order, NaN where a task was not evaluated (read by aimray.results.accuracy_matrix)."""
    tasks = list(study.runs.set_index("path").loc[path, "tasks"])
    a, base = results.accuracy_matrix(study.evals[study.evals.path == path].to_dict("records"), tasks, split)
    rows = ([base] if base is not None else []) + a.tolist()
    index = pd.Index(range(0 if base is not None else 1, len(a) + 1), name="after_index")
    return pd.DataFrame(rows, index=index, columns=pd.Index(tasks, name="eval_task"))
