"""The core's own hook implementations: defaults any plugin can override."""

from __future__ import annotations

from .hookspecs import hookimpl
from .model import MultiTaskModel


@hookimpl(trylast=True)
def distill(model: MultiTaskModel) -> MultiTaskModel:
    """Drop every teacher task, and the encoder taps that only teachers read."""
    teachers = [key for key, task in model.tasks.items() if task.role == "teacher"]
    return model.without_tasks(teachers)
