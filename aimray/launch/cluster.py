"""Joining or starting Ray, the same way for a run, a sweep and an ablation study."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import ray

from aimray import plugins


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
) -> None:
    """Join `address` (or RAY_ADDRESS's cluster) with token authentication unless the user set
    RAY_AUTH_MODE, or start a local Ray with `num_cpus`; its dashboard only when asked for, listening on
    `dashboard_host` (loopback unless the user says otherwise). Nothing when Ray is already up here.
    The plugins loaded so far (aimray.plugins) that are not installed packages travel with the job to every
    node (runtime_env py_modules); a Ray started before they were loaded reaches only this machine's."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if ray.is_initialized():
        return
    env = {"py_modules": plugins.sources()} if plugins.sources() else {}
    if address:
        ray.init(address=address, runtime_env=env or None)
    else:
        if not dashboard:
            env["worker_process_setup_hook"] = "aimray.launch.cluster.quiet_ray_workers"
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host, runtime_env=env or None)


def quiet_ray_workers() -> None:
    """Run in every worker process of a local Ray started without its dashboard (runtime_env's
    worker_process_setup_hook). Ray Train's placement-group cleaner asks the State API once a second whether
    the Train controller still lives; without the dashboard there is no State API, and every ask would log a
    warning that Ray forwards to the terminal, one line a second for the whole run. Its errors still show."""
    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    logging.getLogger(cleaner).setLevel(logging.ERROR)


def shutdown_ray() -> None:
    ray.shutdown()


def link_ray_logs(folder: Path, name: str = "ray-logs") -> Path | None:
    """A link `folder/name` to this node's Ray session logs (every Ray process's own log files, Train's
    per-report INFO lines among them), so they sit with the run or sweep they belong to; the logs' folder,
    or None where this process has no local Ray node (a client of a remote cluster: the head keeps them)."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    logs = Path(node.get_logs_dir_path())
    link = folder / name
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    with contextlib.suppress(OSError):  # a filesystem without symbolic links: the path is printed all the same
        link.symlink_to(logs, target_is_directory=True)
    return logs
