"""The core's default ``distill`` hook: the inference model is the trained one without its
teachers. Registered by the plugin manager with the other core defaults (by module name,
as entry points are), at ``trylast``, so any plugin's own ``distill`` replaces it."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .multitask import MultiTaskModel


@hookimpl(trylast=True)
def distill(model: MultiTaskModel) -> MultiTaskModel:
    """Drop every teacher task, and the encoder taps that only teachers read."""
    teachers = [key for key, task in model.tasks.items() if task.role == "teacher"]
    return model.without_tasks(teachers)
