"""The core's own hook implementations: defaults any plugin can override."""

from __future__ import annotations

from collections.abc import Callable

from .hookspecs import hookimpl
from .loggers import JsonlLogger, Logger
from .model.multitask import MultiTaskModel
from .runs.mlflow_logger import MlflowLogger
from .runs.tensorboard_logger import TensorBoardLogger
from .weighting import FixedWeighting, LossWeighting


@hookimpl
def register_weightings(register: Callable[[type[LossWeighting]], None]) -> None:
    """The paper's static weights, always available (the default strategy)."""
    register(FixedWeighting)


@hookimpl
def register_loggers(register: Callable[[type[Logger]], None]) -> None:
    """metrics.jsonl (always on), and TensorBoard and MLflow when their extras are installed
    (their packages are imported only when a run asks for them)."""
    for logger in (JsonlLogger, TensorBoardLogger, MlflowLogger):
        register(logger)


@hookimpl(trylast=True)
def distill(model: MultiTaskModel) -> MultiTaskModel:
    """Drop every teacher task, and the encoder taps that only teachers read."""
    teachers = [key for key, task in model.tasks.items() if task.role == "teacher"]
    return model.without_tasks(teachers)
