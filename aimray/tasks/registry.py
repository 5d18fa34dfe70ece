"""Registries of tasks and benchmarks (plain dicts behind register_* that refuse duplicates).

Task orders are data: a benchmark maps order numbers (numbered as in the paper) to task-name tuples.
Orders beyond the paper's are seeded permutations (`permuted_order`): the same number gives the same
sequence on every machine and with every library version.
Benchmarks whose tasks come from a folder in the paper's layout need `data_dir`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aimray.tasks.spec import TaskSpec

EXTRA_ORDERS_FROM = 100  # orders numbered above it are seeded permutations added for studies, not the paper's
TASKS: dict[str, TaskSpec] = {}
BENCHMARKS: dict[str, Benchmark] = {}


@dataclass(frozen=True)
class Benchmark:
    name: str
    orders: dict[int, tuple[str, ...]]
    needs_data_dir: bool
    about: str

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task of the benchmark, in first-seen order."""
        return tuple(dict.fromkeys(t for order in self.orders.values() for t in order))

    @property
    def main_orders(self) -> tuple[int, ...]:
        """The paper's orders: what "every order" means to a sweep (the seeded permutations are for studies
        that ask for more pairs)."""
        return tuple(k for k in self.orders if k <= EXTRA_ORDERS_FROM) or tuple(self.orders)

    def order(self, k: int) -> tuple[str, ...]:
        if k not in self.orders:
            raise KeyError(f"benchmark {self.name!r} has no order {k}; valid: {sorted(self.orders)}")
        return self.orders[k]


def permuted_order(tasks: tuple[str, ...], key: str) -> tuple[str, ...]:
    """`tasks` shuffled by a Fisher-Yates pass whose draws are SHA-256 digests of `key` and the step: fixed by
    `key` alone, never by a random generator whose stream a library version may change."""
    out = list(tasks)
    for i in range(len(out) - 1, 0, -1):
        draw = int.from_bytes(hashlib.sha256(f"{key}/{i}".encode()).digest()[:8], "big")
        j = draw % (i + 1)
        out[i], out[j] = out[j], out[i]
    return tuple(out)


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def register_benchmark(bench: Benchmark) -> Benchmark:
    if bench.name in BENCHMARKS:
        raise ValueError(f"benchmark {bench.name!r} is already registered")
    if not bench.needs_data_dir:
        unknown = [t for t in bench.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"benchmark {bench.name!r} names unregistered tasks {unknown}")
    BENCHMARKS[bench.name] = bench
    return bench


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def get_task(name: str, data_dir: str | Path | None = None) -> TaskSpec:
    """A registered (offline) task, or with data_dir a task read from a folder in the paper's layout."""
    if data_dir is not None:
        from aimray.tasks.jsondir import json_task

        return json_task(name, Path(data_dir))
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(TASKS)} (paper tasks need --data-dir)")
    return TASKS[name]


def benchmark_tasks(benchmark: str, order: int, data_dir: str | Path | None = None) -> list[TaskSpec]:
    """The task specs of one order of a benchmark, in training order."""
    bench = get_benchmark(benchmark)
    if bench.needs_data_dir and data_dir is None:
        raise ValueError(
            f"benchmark {benchmark!r} reads the paper's data: pass --data-dir (a folder in the "
            "AimMerging or O-LoRA layout, see README)"
        )
    return [get_task(t, data_dir if bench.needs_data_dir else None) for t in bench.order(order)]
