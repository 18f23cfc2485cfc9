"""Plugin loading and the registries plugins fill (tasks, data sets, ..., pretrained encoders).

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
from omegaconf import DictConfig

from . import hookspecs
from .commands import Command
from .errors import PluginError, did_you_mean
from .loggers import Logger
from .preprocess import Preprocessor
from .pretrained import PretrainedEntry
from .samples import SampleSource
from .tasks import Task
from .teachers import TeacherNetwork
from .weighting import LossWeighting

ENTRY_POINT_GROUP = "mtkd"
ENV_VAR = "MTKD_PLUGINS"
# The core's own defaults, each registered by the stage it belongs to and loaded by module
# name, as entry points are (so the plugin manager imports no stage above it): the `fixed`
# loss weighting, the built-in loggers (jsonl, TensorBoard, MLflow), the default
# `distill` (at trylast: any plugin's own replaces it) and the built-in subcommands.
CORE_PLUGINS = ("mtkd.engine.setup", "mtkd.runs.tracking", "mtkd.model.distill", "mtkd.cli")
CORE_ORIGIN = "mtkd core"

T = TypeVar("T")


class Registry(Generic[T]):
    """Named items registered by plugins; a name may be registered once.

    Items are classes (subclasses of ``base``: tasks, data sets, ...) or, with ``instances``,
    objects (instances of ``base``: pretrained encoders, which are data, not code).
    """

    def __init__(self, kind: str, base: type, instances: bool = False) -> None:
        self.kind = kind
        self.base = base
        self.instances = instances
        self._items: dict[str, tuple[T, str]] = {}

    def _check_type(self, item: Any, plugin: str) -> None:
        if self.instances:
            fits, relation = isinstance(item, self.base), "an instance"
        else:
            fits, relation = isinstance(item, type) and issubclass(item, self.base), "a subclass"
        if not fits:
            raise PluginError(
                f"plugin '{plugin}' registered {item!r} as a {self.kind}, "
                f"but it is not {relation} of {self.base.__name__}"
            )

    def add(self, item: Any, plugin: str) -> None:
        self._check_type(item, plugin)
        name = getattr(item, "name", "")
        if not name:
            label = item.__name__ if isinstance(item, type) else repr(item)
            raise PluginError(f"plugin '{plugin}' registered {self.kind} {label} without a name")
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

    def values(self) -> list[T]:
        """Every registered item, by name."""
        return [self._items[name][0] for name in self.names()]

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
    pretrained: Registry[PretrainedEntry]
    loggers: Registry[type[Logger]]
    teachers: Registry[type[TeacherNetwork]]
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> hookspecs.HookCalls:
        """The hooks, to call by keyword (``plugins.hook.distill(model=model)``), typed
        after the specs; pluggy's relay underneath."""
        return cast(hookspecs.HookCalls, self.manager.hook)

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.manager.get_plugin(plugin_name)
        callers = self.manager.get_hookcallers(plugin) or []
        return sorted(c.name for c in callers)


@dataclass(frozen=True)
class _RegistrySpec:
    """One registry: the PluginSet field, the hook that fills it, and what it holds."""

    attribute: str
    hook: str
    kind: str
    base: type
    instances: bool = False  # registers objects (instances of base), not classes


REGISTRIES = (
    _RegistrySpec("tasks", "register_tasks", "task", Task),
    _RegistrySpec("datasets", "register_datasets", "data set", SampleSource),
    _RegistrySpec("preprocessors", "register_preprocessors", "preprocessor", Preprocessor),
    _RegistrySpec("commands", "register_commands", "command", Command),
    _RegistrySpec("weightings", "register_weightings", "loss weighting", LossWeighting),
    _RegistrySpec(
        "pretrained", "register_pretrained", "pretrained encoder", PretrainedEntry, instances=True
    ),
    _RegistrySpec("loggers", "register_loggers", "logger", Logger),
    _RegistrySpec("teachers", "register_teacher_networks", "teacher network", TeacherNetwork),
)


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
    manager = _Manager()
    for name in CORE_PLUGINS:
        manager.add(importlib.import_module(name), name, CORE_ORIGIN)
    for ep in _entry_points(_allowed_from_env()):
        manager.add_new(_load_entry_point(ep), ep.name, f"entry point {ep.value}")
    for ref in extra:
        manager.add_new(_import_recipe_plugin(ref), ref, "recipe")
    for name, obj in objects:
        manager.add(obj, name, "object")
    try:
        manager.pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{exc.plugin}' implements an unknown hook: {exc}") from exc
    registries = {spec.attribute: _collect(manager.pm, spec) for spec in REGISTRIES}
    return PluginSet(manager=manager.pm, origins=manager.origins, **registries)


def plugins_for(cfg: DictConfig, plugins: PluginSet | None = None) -> PluginSet:
    """The given plugin set, or the default set plus the recipe's ``plugins:`` list."""
    return plugins if plugins is not None else load_plugins(list(cfg.plugins))


class _Manager:
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}

    def add(self, plugin: object, name: str, origin: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}' ({origin}) is invalid: {exc}") from exc
        except ValueError as exc:  # same name or same object registered twice
            raise PluginError(f"plugin '{name}' ({origin}) cannot be registered: {exc}") from exc
        self.origins[name] = origin

    def add_new(self, module: ModuleType, name: str, origin: str) -> None:
        """Register ``module`` unless it already is (under another name)."""
        if not self.pm.is_registered(module):
            self.add(module, name, origin)


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> ModuleType:
    try:
        module: ModuleType = ep.load()
    except Exception as exc:
        raise PluginError(
            f"plugin '{ep.name}' (entry point {ep.value}) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module


def _import_recipe_plugin(ref: str) -> ModuleType:
    try:
        return _import_plugin(ref)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin '{ref}' failed to import: {type(exc).__name__}: {exc}") from exc


def _collect(pm: pluggy.PluginManager, spec: _RegistrySpec) -> Registry[Any]:
    """Call one registration hook plugin by plugin (through pluggy, each plugin's
    implementation alone), so every registered class knows the plugin that registered it."""
    registry: Registry[Any] = Registry(spec.kind, spec.base, spec.instances)
    plugins = [impl.plugin for impl in getattr(pm.hook, spec.hook).get_hookimpls()]
    for plugin in plugins:
        plugin_name = pm.get_name(plugin) or repr(plugin)
        only_this = pm.subset_hook_caller(
            spec.hook, remove_plugins=[p for p in pm.get_plugins() if p is not plugin]
        )

        def register(item: Any, _plugin: str = plugin_name) -> None:
            registry.add(item, _plugin)

        try:
            only_this(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin '{plugin_name}' failed in {spec.hook}: {type(exc).__name__}: {exc}"
            ) from exc
    return registry
