"""Every hook a plugin may implement: the plugin author's contract.

Implement a hook by decorating a module-level function with ``@mtkd.hookimpl`` and naming it
after the spec; an implementation may take fewer arguments than the spec (pluggy passes only
those it names). Registration hooks receive a ``register`` callback (call it once per class);
lifecycle hooks are called with the live run context, in plugin registration order (last
registered first, as pluggy does). Each docstring below is the reference: its parameters,
when it is called, and whether the first answer wins. ``docs/writing-plugins.md`` shows
them: ``python docs/gen_hook_reference.py`` writes that section from here, and a test
keeps the two equal.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .commands import Command
    from .context import TrainContext
    from .loggers import Logger
    from .preprocess import Preprocessor
    from .pretrained import PretrainedEntry
    from .samples import SampleSource
    from .tasks import Task
    from .teachers import TeacherNetwork
    from .weighting import LossWeighting

PROJECT = "mtkd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_tasks(register: Callable[[type[Task]], None]) -> None:
    """Register task classes: subclasses of ``mtkd.Task``, selectable as ``tasks.<key>``.

    :param register: call ``register(TaskClass)`` once per class.

    Called when plugins load, once per plugin; a name registered twice is an error naming
    both plugins.
    """


@hookspec
def register_datasets(register: Callable[[type[SampleSource]], None]) -> None:
    """Register data-set classes: subclasses of ``mtkd.SampleSource``, selectable as
    ``data.dataset.name``.

    :param register: call ``register(SampleSourceClass)`` once per class.

    Called when plugins load, once per plugin.
    """


@hookspec
def register_preprocessors(register: Callable[[type[Preprocessor]], None]) -> None:
    """Register preprocessing steps: subclasses of ``mtkd.Preprocessor``, usable in
    ``data.preprocess`` (see ``mtkd_plugins.face_crop``).

    :param register: call ``register(PreprocessorClass)`` once per class.

    Called when plugins load, once per plugin.
    """


@hookspec
def register_commands(register: Callable[[type[Command]], None]) -> None:
    """Register ``mtkd`` subcommands: subclasses of ``mtkd.Command`` (see ``mtkd synth``).

    :param register: call ``register(CommandClass)`` once per class.

    Called when the ``mtkd`` command starts, before it parses its arguments.
    """


@hookspec
def register_weightings(register: Callable[[type[LossWeighting]], None]) -> None:
    """Register loss-weighting strategies: subclasses of ``mtkd.LossWeighting``, selectable
    as ``trainer.weighting.name``.

    :param register: call ``register(LossWeightingClass)`` once per class.

    Called when plugins load, once per plugin.
    """


@hookspec
def register_pretrained(register: Callable[[PretrainedEntry], None]) -> None:
    """Register pretrained encoders (model-zoo entries), usable as ``encoder.weights=zoo:<name>``
    or ``init_from=zoo:<name>`` and listed by ``mtkd zoo``.

    :param register: call ``register(entry)`` once per entry, with a ``mtkd.PretrainedEntry``
        *instance* (not a class), usually read from a card the plugin ships beside its weights
        file (``mtkd.read_cards(folder)``).

    Called when plugins load, once per plugin (every implementation, not firstresult); a name
    registered twice is an error naming both plugins.
    """


@hookspec
def register_loggers(register: Callable[[type[Logger]], None]) -> None:
    """Register experiment loggers: subclasses of ``mtkd.Logger``, selectable by name in
    ``output.loggers`` (the core registers ``jsonl``, ``tensorboard`` and ``mlflow``).

    :param register: call ``register(LoggerClass)`` once per class.

    Called when plugins load, once per plugin (every implementation, not firstresult); a name
    may be registered once.
    """


@hookspec
def register_teacher_networks(register: Callable[[type[TeacherNetwork]], None]) -> None:
    """Register teacher networks: subclasses of ``mtkd.TeacherNetwork``, selectable as
    ``tasks.<key>.teacher.name`` (a frozen network whose outputs on each sample become the
    targets of that teacher task: see docs/teacher-networks.md).

    :param register: call ``register(TeacherNetworkClass)`` once per class.

    Called when plugins load, once per plugin (every implementation, not firstresult); a name
    may be registered once.
    """


@hookspec(firstresult=True)
def distill(model: nn.Module) -> nn.Module | None:
    """Turn the trained model into the inference model.

    :param model: the trained ``mtkd.MultiTaskModel``, best weights restored, every task
        still attached.
    :return: the inference model (a ``mtkd.MultiTaskModel``), or ``None`` to let the next
        implementation answer.

    Called once after training (``distill.enabled``). The built-in implementation, registered
    last, drops every task whose role is ``teacher`` and the encoder taps only they read:
    return a model to replace it.
    """


@hookspec
def on_train_start(context: TrainContext) -> None:
    """A training run starts.

    :param context: the run's ``mtkd.TrainContext`` (model, optimizer, recipe, state).

    Called once before the first epoch, after the optimizer exists; not when a run resumes.
    """


@hookspec
def on_step_end(context: TrainContext, step: int) -> None:
    """An optimizer step ended.

    :param context: the run's ``mtkd.TrainContext``.
    :param step: steps over the whole run, counting from 1 (skipped steps included).

    Called after every step, after any mid-epoch checkpoint of that step. It runs in the
    hot loop: keep it cheap.
    """


@hookspec
def on_epoch_end(context: TrainContext, epoch: int, metrics: dict[str, Any]) -> None:
    """An epoch ended.

    :param context: the run's ``mtkd.TrainContext``; set ``context.stop_requested = True``
        to stop after this epoch.
    :param epoch: the epoch just run, counting from 1.
    :param metrics: its record, as written to ``metrics.jsonl`` (losses and metrics per task
        and split, learning rate, time).

    Called after validation, the log line and the epoch's checkpoint.
    """


@hookspec
def on_train_end(context: TrainContext) -> None:
    """Training stopped (last epoch, early stopping, or a hook's request).

    :param context: the run's ``mtkd.TrainContext``, best weights already restored.

    Called once; not when training was interrupted (Ctrl-C, SIGTERM).
    """


class HookCalls(Protocol):
    """How the core calls the hooks (``PluginSet.hook``): by keyword, each returning the
    list of its implementations' answers, or for ``distill`` (first answer wins) the first
    answer that is not None. tests/test_plugin_contract.py keeps it equal to the specs."""

    def register_tasks(self, *, register: Callable[[type[Task]], None]) -> list[None]: ...

    def register_datasets(
        self, *, register: Callable[[type[SampleSource]], None]
    ) -> list[None]: ...

    def register_preprocessors(
        self, *, register: Callable[[type[Preprocessor]], None]
    ) -> list[None]: ...

    def register_commands(self, *, register: Callable[[type[Command]], None]) -> list[None]: ...

    def register_weightings(
        self, *, register: Callable[[type[LossWeighting]], None]
    ) -> list[None]: ...

    def register_pretrained(self, *, register: Callable[[PretrainedEntry], None]) -> list[None]: ...

    def register_loggers(self, *, register: Callable[[type[Logger]], None]) -> list[None]: ...

    def register_teacher_networks(
        self, *, register: Callable[[type[TeacherNetwork]], None]
    ) -> list[None]: ...

    def distill(self, *, model: nn.Module) -> nn.Module | None: ...

    def on_train_start(self, *, context: TrainContext) -> list[None]: ...

    def on_step_end(self, *, context: TrainContext, step: int) -> list[None]: ...

    def on_epoch_end(
        self, *, context: TrainContext, epoch: int, metrics: dict[str, Any]
    ) -> list[None]: ...

    def on_train_end(self, *, context: TrainContext) -> list[None]: ...


def hook_reference() -> str:
    """The Markdown reference of every hook, generated from the specs above, in their order."""
    specs = [v for v in globals().values() if inspect.isfunction(v) and hasattr(v, _MARK)]
    sections = []
    for spec in sorted(specs, key=lambda f: f.__code__.co_firstlineno):
        first = " — *the first answer wins*" if getattr(spec, _MARK).get("firstresult") else ""
        params = ", ".join(inspect.signature(spec).parameters)
        doc = inspect.cleandoc(spec.__doc__ or "").replace("``", "`")
        doc = re.sub(r":param (\w+):", r"- `\1`:", doc)
        doc = doc.replace(":return:", "- returns:")
        doc = re.sub(r"\n {4}(\S)", r" \1", doc)  # a parameter's continued lines
        sections.append(f"### `{spec.__name__}({params})`{first}\n\n{doc}\n")
    return "\n".join(sections)


_MARK = f"{PROJECT}_spec"
