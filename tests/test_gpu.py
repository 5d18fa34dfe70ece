"""The loop on a CUDA GPU (tiny random-init Llama: unit tests only). Skipped without one; CI has none:
benchmarks/gpu_check.sh runs these on a machine that has."""

from __future__ import annotations

import json

import pytest
import torch

from aimray.loop import run
from aimray.model import ModelConfig, load_backbone
from tests.test_loop import quiet, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


def test_a_run_on_the_gpu_matches_its_shape_and_records_the_device(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, "aimmerging", model={"device": "cuda"})
    result = run(cfg, tmp_path, log=quiet)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "success" and result.test.shape == (4, 4)
    assert sum(result.merges.values()) > 0 and manifest["provenance"]["hardware"].get("gpus")


def test_the_precision_probe_on_the_gpu(tiny_causal, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIMRAY_HOME", str(tmp_path))
    bb = load_backbone(ModelConfig(name_or_path=tiny_causal, device="cuda", autocast="auto"))
    assert bb.device.type == "cuda" and bb.precision["autocast"] in ("bf16", "off")
    if torch.cuda.is_bf16_supported():
        assert bb.precision["source"] in ("probe",) or bb.precision["source"].startswith("cached probe")
