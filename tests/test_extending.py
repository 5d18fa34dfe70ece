"""The README's worked example of adding a method (a merge at every task end with TIES), run as it stands:
a new fusion rule and a new method, registered from outside the package, run through the unchanged loop."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aimray.events import read_events
from aimray.loop import run
from aimray.merging.fusion import FUSIONS
from aimray.methods import METHODS
from tests.test_loop import comparable, quiet, tiny_config

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Extending aimray" section."""
    section = README.read_text().split("## Extending aimray", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture
def ties_method():
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    yield "ties_at_task_end"
    METHODS.pop("ties_at_task_end")
    FUSIONS.pop("ties")


def test_the_readme_example_adds_a_method_in_under_40_lines(ties_method, tiny_causal, tmp_path) -> None:
    assert len([line for line in readme_example().splitlines() if line.strip()]) < 40
    run(tiny_config(tiny_causal, ties_method), tmp_path / "ties", log=quiet)
    run(tiny_config(tiny_causal, "single_merge"), tmp_path / "weighted", log=quiet)  # same schedule, w = 0.5/0.5
    merges = read_events(tmp_path / "ties", "merges").to_pandas()
    assert list(merges.trigger) == ["task_end"] * 3 and (merges.w_in == 0.5).all() and (merges.w_out == 0.5).all()
    ties, weighted = ([{**r, "run_id": ""} for r in comparable(tmp_path / d, "steps")] for d in ("ties", "weighted"))
    # Identical up to the first fusion (task 2's inner steps and its burst); TIES then leaves another adapter.
    first = sum(r["task_index"] <= 1 for r in ties)
    assert ties[:first] == weighted[:first] and ties[first:] != weighted[first:]


# ------------------------------------------------------------------------------------------------ plugins

ROOT = README.parent
TINY_ARGS = [  # after the README's own arguments: the tiny model on a few examples
    "model.max_prompt_tokens=40",
    "data.train=8",
    "data.dev=4",
    "data.test=4",
    "train.batch_size=4",
    "train.warmup_steps=0",
    "train.eval_batch_size=8",
    "memory.per_task=4",
    "memory.batch_size=2",
    "eval.base=false",
]


def readme_commands() -> list[list[str]]:
    """The bash block after the example: one command per line, split as the shell would."""
    section = README.read_text().split("## Extending aimray", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.fixture
def plugin_folder(tmp_path) -> Path:
    """A user's folder: the README's plugin as ties_plugin.py, and the project's sweep configs beside it."""
    (tmp_path / "ties_plugin.py").write_text(readme_example())
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    return tmp_path


def cli(folder: Path, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    assert argv[0] == "python"
    env = {**os.environ, "AIMRAY_PROGRESS_S": "off"}
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_plugin_reaches_ray_train_and_a_sweep(plugin_folder, tiny_causal) -> None:
    """The README's two commands as written (the tiny model's overrides appended): a Ray Train worker and a
    one-trial sweep's trial import the plugin before they rebuild the config, and merge with TIES at every
    task end."""
    run_cmd, sweep_cmd = readme_commands()
    assert "--plugins" in run_cmd and "--plugins" in sweep_cmd
    proc = cli(plugin_folder, [*run_cmd, f"model.name_or_path={tiny_causal}", *TINY_ARGS])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = plugin_folder / "runs" / "ties"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["plugins"] == ["ties_plugin"]
    assert (out / "ray").is_dir()  # it ran in Ray Train
    merges = read_events(out, "merges").to_pandas()
    assert list(merges.trigger) == ["task_end"] * 3 and (merges.w_in == 0.5).all()

    # the sweep on order 1 only (a sweep field after the README's arguments): one trial, one run
    proc = cli(plugin_folder, [*sweep_cmd, "orders=[1]", f"model.name_or_path={tiny_causal}", *TINY_ARGS])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sweep = plugin_folder / "runs" / "ties-sweep"
    table = pd.read_parquet(sweep / "trials.parquet")
    assert len(table) == 1 and (table.status == "completed").all(), table[["status", "error"]]
    merges = read_events(sweep / "runs" / table.trial_id[0] / "order1", "merges").to_pandas()
    assert list(merges.trigger) == ["task_end"] * 3


PARITY = """
from aimray.tasks import register_task
from aimray.tasks.offline import offline_task


def pairs():
    return [(f"The number {n}.", "even" if n % 2 == 0 else "odd") for n in range(2000)]


register_task(offline_task("parity", "Is the number even or odd?", ("even", "odd"), pairs, "the numbers 0-1999"))
"""


def test_a_custom_task_through_eval_and_plugin_errors(tmp_path, tiny_causal) -> None:
    (tmp_path / "parity_task.py").write_text(PARITY)
    argv = ["python", "-m", "aimray", "eval", "--plugins", "parity_task", "--tasks", "parity", "--limit", "8"]
    proc = cli(tmp_path, [*argv, "--model", tiny_causal, "--out", "zero-shot"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = json.loads((tmp_path / "zero-shot" / "results.json").read_text())
    assert [r["task"] for r in rows] == ["parity"] and rows[0]["n"] == 8
    # A plugin that is missing, or that fails on import, is one line naming it (exit 2), before any work.
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no licence key')\n")
    for name, why in [("no_such_plugin", "ModuleNotFoundError"), ("broken_plugin", "RuntimeError: no licence key")]:
        proc = cli(tmp_path, ["python", "-m", "aimray", "run", "--plugins", name, "--out", "x", "--workers", "0"])
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: plugin '{name}' failed to import: "), proc
        assert why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_plugin_file_is_imported_by_its_path_and_workers_ignore_the_environment(tmp_path, monkeypatch) -> None:
    """A .py plugin is that file (a module of the same name imported already is an error, not a silent
    stand-in); a worker loads the driver's module names only: $AIMRAY_PLUGINS may hold paths relative to
    the driver's folder."""
    from aimray import plugins

    monkeypatch.setattr(plugins, "_loaded", {})
    (tmp_path / "json.py").write_text("raise RuntimeError('never run')\n")
    with pytest.raises(plugins.PluginError, match=r"a module 'json' is imported already"):
        plugins.load(str(tmp_path / "json.py"))
    (tmp_path / "my_rules.py").write_text("RULES = 3\n")
    monkeypatch.setenv(plugins.ENV, "nowhere/else.py")
    monkeypatch.delitem(sys.modules, "my_rules", raising=False)
    assert plugins.load([str(tmp_path / "my_rules.py")], env=False) == ["my_rules"]
    assert sys.modules["my_rules"].RULES == 3 and str(tmp_path) not in sys.path
    assert plugins.load(["my_rules"], env=False) == ["my_rules"]  # a worker: by name, loaded already
    with pytest.raises(plugins.PluginError, match=r"plugin 'nowhere/else.py': .* is not a file"):
        plugins.load()


def test_plugins_not_installed_travel_to_ray_workers(tmp_path, monkeypatch) -> None:
    """A plugin outside the workers' sys.path (not in the driver's working folder either) reaches them
    through runtime_env py_modules: aimray.launch.cluster.ensure_ray ships what aimray.plugins.sources() lists."""
    ray = pytest.importorskip("ray")
    from aimray import plugins
    from aimray.launch.cluster import ensure_ray

    folder = tmp_path / "only-here"
    folder.mkdir()
    (folder / "shipped_plugin.py").write_text("ANSWER = 42\n")
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setenv(plugins.ENV, "json")  # an installed module: loaded, never shipped
    assert plugins.load(str(folder / "shipped_plugin.py")) == ["json", "shipped_plugin"]
    assert plugins.sources() == [str(folder / "shipped_plugin.py")]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])

    @ray.remote
    def where() -> tuple[int, str]:
        import shipped_plugin

        return shipped_plugin.ANSWER, shipped_plugin.__file__

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=1)
    try:
        answer, path = ray.get(where.remote())
    finally:
        ray.shutdown()
    assert answer == 42 and not path.startswith(str(folder))
