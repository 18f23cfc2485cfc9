"""Plugin loading and the registries of tasks and data sets.

Built-in and third-party plugins load the same way: through the ``mtkd`` entry-point group.
A recipe may list extra plugin modules or ``.py`` files under ``plugins:``. Setting
``MTKD_PLUGINS=name1,name2`` restricts which entry points load (an empty value loads none).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar, cast

import pluggy

from . import _default_hooks, hookspecs
from .commands import Command
from .errors import PluginError, did_you_mean
from .preprocess import Preprocessor
from .samples import SampleSource
from .tasks import Task
from .weighting import LossWeighting

ENTRY_POINT_GROUP = "mtkd"
ENV_VAR = "MTKD_PLUGINS"
CORE_PLUGIN = "mtkd.core"

T = TypeVar("T")


class Registry(Generic[T]):
    """Named classes registered by plugins; a name may be registered once."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._items: dict[str, tuple[T, str]] = {}

    def add(self, item: Any, plugin: str) -> None:
        name = getattr(item, "name", "")
        if not (isinstance(item, type) and issubclass(item, self.base)):
            raise PluginError(
                f"plugin '{plugin}' registered {item!r} as a {self.kind}, "
                f"but it is not a subclass of {self.base.__name__}"
            )
        if not name:
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} {item.__name__} without a name"
            )
        if name in self._items:
            other = self._items[name][1]
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by plugin '{other}' and by '{plugin}'"
            )
        self._items[name] = (cast(T, item), plugin)

    def get(self, name: str, *, key: str) -> T:
        """Look a name up; ``key`` is the config key that asked for it, named in the error."""
        if name not in self._items:
            raise PluginError(
                f"{key}: unknown {self.kind} '{name}'" + did_you_mean(name, self._items)
            )
        return self._items[name][0]

    def names(self) -> list[str]:
        return sorted(self._items)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, (_, p) in self._items.items() if p == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._items


@dataclass
class PluginSet:
    """A loaded plugin manager with its registries, and where each plugin came from."""

    manager: pluggy.PluginManager
    tasks: Registry[type[Task]]
    datasets: Registry[type[SampleSource]]
    preprocessors: Registry[type[Preprocessor]]
    commands: Registry[type[Command]]
    weightings: Registry[type[LossWeighting]]
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.manager.get_plugin(plugin_name)
        callers = self.manager.get_hookcallers(plugin) or []
        return sorted(c.name for c in callers)


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"mtkd_user_plugin_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file '{path}' cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def _import_plugin(ref: str) -> ModuleType:
    if ref.endswith(".py") or os.sep in ref or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise PluginError(f"plugins: file '{ref}' not found")
        return _import_file(path)
    return importlib.import_module(ref)


def _entry_points(only: set[str] | None) -> Iterable[importlib.metadata.EntryPoint]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if only is None or ep.name in only:
            yield ep


def _allowed_from_env() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def load_plugins(
    extra: Sequence[str] = (), objects: Sequence[tuple[str, object]] = ()
) -> PluginSet:
    """Load entry-point plugins, then ``extra`` modules/files, then ``objects`` (name, plugin).

    Every failure names the plugin at fault: an import error, an implementation of a hook
    that does not exist, a task or data set registered twice.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origins: dict[str, str] = {}

    def add(plugin: object, name: str, origin: str) -> None:
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}' ({origin}) is invalid: {exc}") from exc
        except ValueError as exc:  # same name or same object registered twice
            raise PluginError(f"plugin '{name}' ({origin}) cannot be registered: {exc}") from exc
        origins[name] = origin

    add(_default_hooks, CORE_PLUGIN, "mtkd core")
    for ep in _entry_points(_allowed_from_env()):
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin '{ep.name}' (entry point {ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if pm.is_registered(module):
            continue
        add(module, ep.name, f"entry point {ep.value}")
    for ref in extra:
        try:
            module = _import_plugin(ref)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin '{ref}' failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        if not pm.is_registered(module):
            add(module, ref, "recipe")
    for name, obj in objects:
        add(obj, name, "object")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{exc.plugin}' implements an unknown hook: {exc}") from exc

    tasks: Registry[type[Task]] = Registry("task", Task)
    datasets: Registry[type[SampleSource]] = Registry("data set", SampleSource)
    _collect(pm, "register_tasks", tasks)
    _collect(pm, "register_datasets", datasets)
    preprocessors: Registry[type[Preprocessor]] = Registry("preprocessor", Preprocessor)
    _collect(pm, "register_preprocessors", preprocessors)
    commands: Registry[type[Command]] = Registry("command", Command)
    _collect(pm, "register_commands", commands)
    weightings: Registry[type[LossWeighting]] = Registry("loss weighting", LossWeighting)
    _collect(pm, "register_weightings", weightings)
    return PluginSet(
        manager=pm,
        tasks=tasks,
        datasets=datasets,
        preprocessors=preprocessors,
        commands=commands,
        weightings=weightings,
        origins=origins,
    )


def _collect(pm: pluggy.PluginManager, hook_name: str, registry: Registry[Any]) -> None:
    """Call one registration hook plugin by plugin, so each entry knows its plugin."""
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(item: Any, _plugin: str = plugin_name) -> None:
            registry.add(item, _plugin)

        try:
            impl.function(**{n: register for n in impl.argnames if n == "register"})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin '{plugin_name}' failed in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc
