"""analysis.load on studies made by the loop (tiny random-init Llama: unit tests only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from aimray.loop import run
from analysis.load import NotAStudyError, accuracy_matrix, open_study
from tests.test_loop import quiet, tiny_config


@pytest.fixture(scope="module")
def study(tiny_causal, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for method in ("aimmerging", "seqlora"):
        run(tiny_config(tiny_causal, method), root / method, log=quiet)
    return root


def test_open_study_returns_tidy_tables(study) -> None:
    s = open_study(study)
    assert sorted(s.runs.method) == ["aimmerging", "seqlora"] and (s.runs.status == "success").all()
    assert set(s.evals.path) == {"aimmerging", "seqlora"} and {"after_index", "eval_task", "split"} <= set(s.evals)
    assert len(s.merges) and (s.merges.path == "aimmerging").all()
    assert len(s.costs) == 8 and s.trials is None and s.ablation is None
    a = accuracy_matrix(s, "aimmerging")
    assert list(a.columns) == ["wordnet", "amazon", "trec", "bbc"] and list(a.index) == [0, 1, 2, 3, 4]


def test_not_a_study_and_other_schema_fail_clearly(tmp_path, study) -> None:
    with pytest.raises(NotAStudyError, match="holds no aimray run"):
        open_study(tmp_path)
    copy = tmp_path / "old"
    shutil.copytree(study / "seqlora", copy / "seqlora")
    manifest = copy / "seqlora" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 0}))
    with pytest.raises(ValueError, match="schema version 0"):
        open_study(copy)


def test_analysis_never_imports_torch_or_ray(study) -> None:
    code = (f"import sys; from analysis.load import open_study; open_study({str(study)!r}); "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; sys.exit(1 if bad else 0)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
