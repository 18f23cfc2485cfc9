"""A plugin class's recipe options, declared once: by the generic parameter of its base.

``class HeadYaw(mtkd.Task[YawOptions])`` is all a plugin writes: the parameter types
``self.options`` for the type checker, and :class:`Configurable` copies it to the ``Options``
class variable the engine reads (``parse_options(cls.Options, ...)``). A class that still
sets ``Options`` itself must name the parameter's class or a subclass of it; anything else
stops at class creation with one line naming the class, not later with an attribute error
deep inside a run.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from .errors import PluginError

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class NoOptions:
    """Options of a plugin component that takes none."""


class Configurable(Generic[OptionsT]):
    """Base of the plugin contracts that take recipe options (task, data set, preprocessing
    step, loss weighting, teacher network): binds ``Options`` to the generic parameter."""

    # the dataclass the recipe's options are parsed into; set by the generic parameter
    Options: ClassVar[type[Any]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bound = next(filter(None, map(bound_options, cls.__mro__)), None)
        if bound is None:
            return
        if "Options" not in vars(cls):
            if bound_options(cls) is not None:
                cls.Options = bound
        elif not (isinstance(cls.Options, type) and issubclass(cls.Options, bound)):
            shown = getattr(cls.Options, "__name__", repr(cls.Options))
            module = sys.modules.get(cls.__module__)
            where = getattr(module, "__file__", None) or cls.__module__
            raise PluginError(
                f"{cls.__qualname__} ({where}): Options = {shown}, but the class is "
                f"declared with options {bound.__name__}; drop the Options line (the generic "
                "parameter sets it) or make the two agree"
            )


def bound_options(cls: type) -> type | None:
    """The options class ``cls``'s own bases (not its ancestors') give the generic parameter
    (``Task[X]`` -> X), or None when they leave it open (a bare ``Task``, a type variable)."""
    for base in vars(cls).get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Configurable):
            args = get_args(base)
            if len(args) == 1 and isinstance(args[0], type):
                return args[0]
    return None


def options_repr(options: object) -> str:
    """Options as the cache keys spell them: a dataclass instance by its fields' values."""
    if is_dataclass(options) and not isinstance(options, type):
        return repr(asdict(options))
    return repr(options)
