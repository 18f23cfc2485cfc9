"""Every hook a plugin may implement: the plugin author's contract.

Implement a hook by decorating a module-level function with ``@mtkd.hookimpl`` and naming it
after the spec. Registration hooks receive a ``register`` callback (call it once per class);
lifecycle hooks are called with the live run context, in plugin registration order (last
registered first, as pluggy does). ``docs/writing-plugins.md`` documents each one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .commands import Command
    from .engine.fit import TrainContext
    from .loggers import Logger
    from .model.multitask import MultiTaskModel
    from .preprocess import Preprocessor
    from .samples import SampleSource
    from .tasks import Task
    from .weighting import LossWeighting

PROJECT = "mtkd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_tasks(register: Callable[[type[Task]], None]) -> None:
    """Register task classes (subclasses of ``mtkd.Task``): ``register(MyTask)``."""


@hookspec
def register_datasets(register: Callable[[type[SampleSource]], None]) -> None:
    """Register data-set classes (subclasses of ``mtkd.SampleSource``)."""


@hookspec
def register_preprocessors(register: Callable[[type[Preprocessor]], None]) -> None:
    """Register preprocessing steps (subclasses of ``mtkd.Preprocessor``)."""


@hookspec
def register_commands(register: Callable[[type[Command]], None]) -> None:
    """Register ``mtkd`` subcommands (subclasses of ``mtkd.Command``)."""


@hookspec
def register_weightings(register: Callable[[type[LossWeighting]], None]) -> None:
    """Register loss-weighting strategies (subclasses of ``mtkd.LossWeighting``)."""


@hookspec
def register_loggers(register: Callable[[type[Logger]], None]) -> None:
    """Register experiment loggers (subclasses of ``mtkd.Logger``) selectable by name in
    ``output.loggers``: ``register(MyLogger)``.

    Called once when plugins load, like the other registration hooks; every plugin's
    implementation is called (not firstresult). The core registers ``jsonl``, ``tensorboard``
    and ``mlflow``; a name may be registered once.
    """


@hookspec(firstresult=True)
def distill(model: MultiTaskModel) -> MultiTaskModel | None:
    """Turn the trained model into the inference model; the first non-None answer wins.

    The built-in implementation (registered last, so any plugin overrides it) drops every task
    whose role is ``teacher`` and the encoder taps only they used.
    """


@hookspec
def on_train_start(context: TrainContext) -> None:
    """Called once before the first epoch, after the optimizer exists."""


@hookspec
def on_step_end(context: TrainContext, step: int) -> None:
    """Called after every optimizer step (``step`` counts from 1 over the whole run), after
    any mid-epoch checkpoint of that step. Keep it cheap: it runs in the hot loop."""


@hookspec
def on_epoch_end(context: TrainContext, epoch: int, metrics: dict[str, Any]) -> None:
    """Called after validation of each epoch with that epoch's metrics (already logged)."""


@hookspec
def on_train_end(context: TrainContext) -> None:
    """Called once after training stops (best weights already restored)."""
