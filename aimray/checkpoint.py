"""Checkpoints: explicit state written atomically, one folder per checkpoint, a `latest` pointer.

A checkpoint folder holds
    tensors-<group>.safetensors   adapter, anchor (theta_t), importance estimates ... (one file per group)
    torch.pt                      optimizer and scheduler states, torch RNG state
    state.json                    progress, controller, memory, Python RNG states, counters
It is written under a temporary name and renamed into place; `latest` is rewritten last, so a run killed
at any moment resumes from a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class Checkpointer:
    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep  # complete checkpoints kept on disk (older ones are deleted)

    def save(self, name: str, tensors: dict[str, dict[str, torch.Tensor]], objects: dict, state: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for group, tensor_dict in tensors.items():
            flat = {k: v.detach().contiguous().cpu() for k, v in tensor_dict.items()}
            save_file(flat, str(tmp / f"tensors-{group}.safetensors"))
        torch.save(objects, tmp / "torch.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = self.root / ".latest.tmp"
        pointer.write_text(name)
        os.replace(pointer, self.root / "latest")
        self._prune(name)
        return final

    def _prune(self, current: str) -> None:
        done = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in done[: max(0, len(done) - self.keep)]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").exists() else None

    @staticmethod
    def load(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
        tensors = {
            p.name[len("tensors-") : -len(".safetensors")]: load_file(str(p))
            for p in sorted(path.glob("tensors-*.safetensors"))
        }
        objects = torch.load(path / "torch.pt", weights_only=False)
        state = json.loads((path / "state.json").read_text())
        return tensors, objects, state
