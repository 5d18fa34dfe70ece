"""Ray security kept: a local Ray starts its dashboard only when asked for, and then on loopback."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import ray
from aimray.launch.cluster import ensure_ray

for kwargs in ({}, {"dashboard": True}):
    ensure_ray(num_cpus=1, **kwargs)
    print(repr(ray._private.worker._global_node.address_info.get("webui_url")))
    ray.shutdown()
"""


def test_the_dashboard_starts_only_when_asked_and_on_loopback() -> None:
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    off, on = proc.stdout.split()
    assert off in ("''", "None") and on.strip("'").startswith("127.0.0.1:")
