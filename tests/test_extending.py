"""The README's worked example of adding a method (a merge at every task end with TIES), run as it stands:
a new fusion rule and a new method, registered from outside the package, run through the unchanged loop."""

from __future__ import annotations

from pathlib import Path

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
