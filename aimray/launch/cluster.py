"""Joining or starting Ray, the same way for a run, a sweep and an ablation study."""

from __future__ import annotations

import os

import ray


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
) -> None:
    """Join `address` (or RAY_ADDRESS's cluster) with token authentication unless the user set
    RAY_AUTH_MODE, or start a local Ray with `num_cpus`; its dashboard only when asked for, listening on
    `dashboard_host` (loopback unless the user says otherwise). Nothing when Ray is already up here."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host)


def shutdown_ray() -> None:
    ray.shutdown()
