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
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

ENV = "AIMRAY_PLUGINS"
_loaded: dict[str, Path | None] = {}  # module name -> the file or package folder to ship (None: installed)


class PluginError(ValueError):
    """A plugin that cannot be imported (the message names it)."""


def requested(extra: str | Iterable[str] | None = None, env: bool = True) -> list[str]:
    """The plugins named in $AIMRAY_PLUGINS (unless `env` is False), then in `extra` (a comma-separated string
    or a list), once each."""
    names: list[str] = []
    for source in (os.environ.get(ENV, "") if env else "", extra or ()):
        items = source.split(",") if isinstance(source, str) else list(source)
        names += [n.strip() for n in items if n.strip() and n.strip() not in names]
    return names


def load(extra: str | Iterable[str] | None = None, env: bool = True) -> list[str]:
    """Import every requested plugin not imported yet; returns the module names of all loaded so far.
    Raises PluginError naming the first plugin that fails to import, with the reason. A Ray worker passes
    the driver's module names with env=False: $AIMRAY_PLUGINS may hold paths that mean nothing in the
    worker's folder, and the modules came with the job (`sources`)."""
    for name in requested(extra, env):
        try:
            module = _import(name)
        except PluginError:
            raise
        except Exception as err:  # a plugin's own error at import time is the plugin's error
            raise PluginError(f"plugin {name!r} failed to import: {type(err).__name__}: {err}") from err
        if module is not None:
            _loaded[module.__name__] = _shippable(module)
    return loaded()


def loaded() -> list[str]:
    """The module names of the plugins imported in this process, in order."""
    return list(_loaded)


def sources() -> list[str]:
    """What Ray must ship to other nodes: the file (or top-level package folder) of each loaded plugin that
    is not an installed package."""
    return [str(p) for p in _loaded.values() if p is not None]


def _import(name: str) -> ModuleType | None:
    """Import a module by name (the current folder searched too: a script in sweeps/ does not have it on
    sys.path) or a .py file by path, under its stem; None when it is loaded already."""
    if not (name.endswith(".py") or os.sep in name):
        if name in _loaded:
            return None
        if str(Path.cwd()) not in sys.path and "" not in sys.path:
            sys.path.append(str(Path.cwd()))
        return importlib.import_module(name)
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"plugin {name!r}: {path} is not a file")
    present = sys.modules.get(path.stem)
    if present is not None:
        if Path(getattr(present, "__file__", "") or "").resolve() != path:
            raise PluginError(f"plugin {name!r}: a module {path.stem!r} is imported already ({present.__file__})")
        return None if path.stem in _loaded else present
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # the name Ray's workers import it by (runtime_env py_modules)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


def _shippable(module) -> Path | None:
    """The file or top-level package folder of a module that is not installed (in site-packages or the
    standard library), else None."""
    top = sys.modules[module.__name__.split(".")[0]]
    where = getattr(top, "__file__", None) or next(iter(getattr(top, "__path__", [])), None)  # a namespace package
    if where is None:
        return None
    path = Path(where).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}
    if any(path.is_relative_to(p) for p in installed):
        return None
    return path.parent if path.name == "__init__.py" else path
