"""Joining or starting Ray, the same way for a run, a sweep and an ablation study."""

from __future__ import annotations

import os

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None) -> None:
    """Join `address` (or RAY_ADDRESS's cluster) with token authentication unless the user set
    RAY_AUTH_MODE, or start a local Ray with `num_cpus` and the dashboard on (None: Ray's default) or
    off; nothing when Ray is already up in this process."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard)


def shutdown_ray() -> None:
    ray.shutdown()
