"""The `python -m aimray` command line (no model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aimray", *args], capture_output=True, text=True, timeout=300)


def test_tasks_lists_tasks_sizes_labels_and_orders() -> None:
    proc = run("tasks")
    assert proc.returncode == 0, proc.stderr
    for name in ["wordnet", "amazon", "trec", "bbc", "sms_spam", "tweet_sentiment"]:
        assert f"\n{name} " in proc.stdout
    assert "trec               1000   200   500  accuracy abbreviation, description" in proc.stdout
    assert "order 3: trec, amazon, bbc, wordnet" in proc.stdout
    assert "order 7: task1572, task363" in proc.stdout and "[needs --data-dir]" in proc.stdout


def test_tasks_lists_offline_long_with_sizes_overlap_and_zero_shot() -> None:
    proc = run("tasks", "--benchmark", "offline-long", "-v")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines()[1:] if line and not line.startswith(" ")]
    assert len(listed[: listed.index("benchmarks")]) == 15
    for k in (4, 5, 6):
        assert f"  order {k}: " in proc.stdout
    assert "order 4: corr2cause, hedge, sense, quartz, simlex, socialiqa, sms_spam, afinn" in proc.stdout
    assert "unique: 768 (no 444, yes 324)" in proc.stdout  # simlex's pool, from the real file
    assert "texts also in: afinn 1302" in proc.stdout  # sense shares words with afinn
    assert proc.stdout.count("zero-shot smollm2 (test, n=200): generate ") == 15


def test_bad_names_fail_with_the_valid_ones() -> None:
    proc = run("tasks", "--benchmark", "nope")
    assert proc.returncode == 2 and "valid: offline-standard" in proc.stderr
    proc = run("eval", "--tasks", "trec,bogus")
    assert proc.returncode == 2 and "unknown task 'bogus'" in proc.stderr


def test_paper_benchmark_without_data_dir_says_so() -> None:
    proc = run("tasks", "--benchmark", "standard")
    assert proc.returncode == 2 and "--data-dir" in proc.stderr


def test_a_run_missing_its_data_fails_before_ray_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    proc = run("run", "--preset", "smoke", "--benchmark", "standard", "--out", str(out))  # Ray Train by default
    assert proc.returncode == 2 and "pass --data-dir" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_list_flags_name_themselves() -> None:
    root = Path(__file__).resolve().parent.parent
    for script in ("sweeps/ablations.py", "sweeps/tune_controller.py", "benchmarks/quality.py"):
        proc = subprocess.run([sys.executable, str(root / script), "--orders", "1,x"], capture_output=True, text=True)
        assert proc.returncode == 2 and "argument --orders: '1,x' is not a comma-separated list" in proc.stderr


def test_flags_left_out_keep_the_presets_values(tmp_path) -> None:
    """`--preset long` runs offline-long order 4 (the preset's), not the flags' defaults; a flag given wins."""
    from aimray.cli import build_parser, config_of

    parse = build_parser().parse_args
    cfg = config_of(parse(["run", "--preset", "long", "--out", "x"]))
    assert (cfg.method, cfg.benchmark, cfg.order, cfg.seed) == ("aimmerging", "offline-long", 4, 0)
    cfg = config_of(
        parse(["run", "--preset", "long", "--order", "5", "--seed", "2", "--method", "replay", "--out", "x"])
    )
    assert (cfg.method, cfg.benchmark, cfg.order, cfg.seed) == ("replay", "offline-long", 5, 2)
    cfg = config_of(parse(["run", "--preset", "smoke", "--out", "x"]))
    assert (cfg.benchmark, cfg.order) == ("offline-standard", 1)
    assert config_of(parse(["plan", "--preset", "long"])).order == 4
    ablations = Path(__file__).resolve().parent.parent / "sweeps" / "ablations.py"  # its --benchmark too
    cmd = [sys.executable, str(ablations), "--preset", "long", "--orders", "1", "--out", str(tmp_path / "a")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "benchmark 'offline-long' has no order 1" in proc.stderr, proc.stderr


def test_help_explains() -> None:
    proc = run("eval", "--help")
    assert proc.returncode == 0 and "--limit" in proc.stdout and "label word" in proc.stdout
