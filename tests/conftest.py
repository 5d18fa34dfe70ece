"""Shared fixtures. The tiny random-init models here exist for unit tests only (never a default): they use
the real SmolLM2 tokenizer from the offline assets, so `make test` fetches the assets first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aimray import assets
from benchmarks.testbed import CREDENTIALS, s3_server

# The stage cache shares task 1 across runs; tests that kill, resume or time a run at task 1 must compute it.
# Tests of the cache itself point it at their own folder (the `stage_cache` fixture).
os.environ["AIMRAY_STAGE_CACHE"] = "off"


# `make test` runs two pytest workers, a file to each at a time (pytest-xdist, --dist loadfile): the files
# that take longest (Ray clusters, sweeps, the real backbone: about 60% of the suite) start first, so that
# the short ones fill the gaps at the end instead of one long file running alone.
LONGEST_FIRST = (
    "test_real_model.py",
    "test_tune.py",
    "test_benchmarks.py",
    "test_storage.py",
    "test_ray_train.py",
    "test_extending.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture
def stage_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty stage cache for this test."""
    folder = tmp_path / "stage-cache"
    monkeypatch.setenv("AIMRAY_STAGE_CACHE", str(folder))
    return folder


def real_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets.backbone_dir())


def _save_tiny(folder: Path, config) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    auto.from_config(config).save_pretrained(folder)
    real_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> str:
    """A 2-layer, 32-wide Llama with random weights (unit tests only)."""
    from transformers import LlamaConfig

    tok = real_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), config)


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory) -> str:
    """A 2-layer, 32-wide T5 with random weights (unit tests only)."""
    from transformers import T5Config

    tok = real_tokenizer()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=pad,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=pad,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-t5"), config)


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (stopped by its pid); yields (filesystem, URI query string)."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with s3_server() as server:
        yield server.fs, server.query
