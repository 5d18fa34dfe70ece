"""A run whose disk fills up (a real tmpfs, filled after task 2's checkpoint): one clear error naming the
folder and the bytes a checkpoint needs, nothing half-written left behind, the last complete checkpoint
intact, and once space is freed the same run resumes to the result an uninterrupted run has (tiny
random-init Llama: unit tests only). Needs root to mount the tmpfs; skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aimray.checkpoint import Checkpointer
from aimray.events import SCHEMAS
from aimray.files import DiskFullError
from aimray.loop import run
from tests.test_loop import comparable, quiet, tiny_config


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


class FillAt:
    """Fill the disk right after the checkpoint that ends task `stage`."""

    def __init__(self, disk: Path, stage: int) -> None:
        self.disk, self.stage = disk, stage

    def __call__(self, stage: int, step: int) -> None:
        if (stage, step) == (self.stage, 0):
            with open(self.disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass


def test_a_full_disk_stops_the_run_cleanly_and_it_resumes_once_space_is_freed(small_disk, tiny_causal, tmp_path):
    out = small_disk / "run"
    cfg = tiny_config(tiny_causal)
    with pytest.raises(DiskFullError) as err:
        run(cfg, out, log=quiet, on_checkpoint=FillAt(small_disk, 2))
    text = str(err.value)
    assert text.startswith(f"{out}: no space left on device while writing events and a checkpoint")
    assert "a checkpoint needs about " in text and "iB free)" in text and "free space and run the same" in text
    latest = Checkpointer(out / "checkpoints").latest()
    assert latest is not None and f"the last complete checkpoint, {latest.name}, is intact" in text
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers  # no half-written event part or checkpoint folder
    (small_disk / "filler").unlink()
    run(cfg, out, log=quiet)  # the same run again: resumes from the intact checkpoint
    whole = tmp_path / "whole"
    run(cfg, whole, log=quiet)
    for kind in SCHEMAS:
        assert comparable(out, kind) == comparable(whole, kind), kind
    assert os.path.getsize(out / "matrix.json") == os.path.getsize(whole / "matrix.json")
