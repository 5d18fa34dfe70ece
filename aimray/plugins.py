"""Plugins: your own modules that register tasks, benchmarks, methods, merge schedules or fusion rules.

A plugin is a plain Python module whose import registers things (README, "Extending aimray"). Name it on
any entry point, or in the environment, and aimray imports it in the driver before a config is built and
again in every Ray worker (Train workers, Tune trials, a study's run tasks) before that worker rebuilds its
config:

    python -m aimray run --plugins my_methods method=ties_at_task_end ...
    AIMRAY_PLUGINS=my_methods,my_tasks python sweeps/tune_controller.py ...

A plugin is a module name importable here (the current folder counts) or the path of a .py file. When
aimray starts or joins Ray, the plugins that are not installed packages travel to every node with the job
(Ray's runtime_env `py_modules`), so a module that exists only on the driver's machine works on a cluster.
No torch and no Ray here.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

ENV = "AIMRAY_PLUGINS"
_loaded: dict[str, Path | None] = {}  # module name -> the file or package folder to ship (None: installed)


class PluginError(ValueError):
    """A plugin that cannot be imported (the message names it)."""


def requested(extra: str | Iterable[str] | None = None) -> list[str]:
    """The plugins named in $AIMRAY_PLUGINS, then in `extra` (a comma-separated string or a list), once each."""
    names: list[str] = []
    for source in (os.environ.get(ENV, ""), extra or ()):
        items = source.split(",") if isinstance(source, str) else list(source)
        names += [n.strip() for n in items if n.strip() and n.strip() not in names]
    return names


def load(extra: str | Iterable[str] | None = None) -> list[str]:
    """Import every requested plugin not imported yet; returns the module names of all loaded so far.
    Raises PluginError naming the first plugin that fails to import, with the reason."""
    for name in requested(extra):
        module = _module_name(name)
        if module in _loaded:
            continue
        try:
            imported = importlib.import_module(module)
        except Exception as err:  # a plugin's own error at import time is the plugin's error
            raise PluginError(f"plugin {name!r} failed to import: {type(err).__name__}: {err}") from err
        _loaded[module] = _shippable(imported)
    return loaded()


def loaded() -> list[str]:
    """The module names of the plugins imported in this process, in order."""
    return list(_loaded)


def sources() -> list[str]:
    """What Ray must ship to other nodes: the file (or top-level package folder) of each loaded plugin that
    is not an installed package."""
    return [str(p) for p in _loaded.values() if p is not None]


def _module_name(name: str) -> str:
    """A module name, or for the path of a .py file its stem, with its folder put on sys.path. The current
    folder is searched too (a script in sweeps/ does not have it on sys.path)."""
    if name.endswith(".py") or os.sep in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin {name!r}: {path} is not a file")
        _add_path(path.parent)
        return path.stem
    _add_path(Path.cwd())
    return name


def _add_path(folder: Path) -> None:
    if str(folder) not in sys.path and not (folder == Path.cwd() and "" in sys.path):
        sys.path.append(str(folder))


def _shippable(module) -> Path | None:
    """The file or top-level package folder of a module that is not installed (in site-packages or the
    standard library), else None."""
    top = sys.modules[module.__name__.split(".")[0]]
    where = getattr(top, "__file__", None)
    if where is None:
        return None
    path = Path(where).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}
    if any(path.is_relative_to(p) for p in installed):
        return None
    return path.parent if path.name == "__init__.py" else path
