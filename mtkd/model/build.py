"""From a validated recipe to live objects: tasks and the multi-task model."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import parse_options, task_entries
from ..errors import OptionError, PluginError, RecipeError
from ..plugins import PluginSet, plugins_for
from ..samples import LabelSpace
from ..tasks import ROLES, Task
from .encoder import Encoder, check_encoder_name, create_timm_trunk, resolve_taps
from .multitask import MultiTaskModel
from .zoo.load import load_encoder_weights, split_weights

TASK_KEYS = ("type", "role", "weight")


def check_model_names(cfg: DictConfig, plugins: PluginSet) -> None:
    """The encoder and every task (type and options) exist: checked before the data set is
    built, which can take minutes, rather than after it."""
    check_encoder_name(str(cfg.encoder.name))
    for entry in task_entries(cfg):
        task_cls = plugins.tasks.get(entry.kind, key=entry.where)
        parse_options(task_cls.Options, entry.options, f"tasks.{entry.key}")


def build_tasks(
    cfg: DictConfig,
    label_spaces: Mapping[str, LabelSpace],
    plugins: PluginSet | None = None,
) -> dict[str, Task]:
    """Instantiate every task of ``cfg.tasks``; options are checked against the task plugin."""
    plugins = plugins_for(cfg, plugins)
    tasks: dict[str, Task] = {}
    for entry in task_entries(cfg):
        key, kind, weight = entry.key, entry.kind, entry.weight
        task_cls = plugins.tasks.get(kind, key=entry.where)
        role = entry.role or task_cls.default_role
        if role not in ROLES:
            raise RecipeError(f"tasks.{key}.role: '{role}' is not one of {', '.join(ROLES)}")
        try:
            weight = float(weight)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"tasks.{key}.weight: expected a number, got {weight!r}") from exc
        options = parse_options(task_cls.Options, entry.options, f"tasks.{key}")
        label_key = task_cls.label_key_for(key)
        space = label_spaces.get(label_key)
        if space is None:
            raise RecipeError(
                f"tasks.{key}: task '{kind}' needs label '{label_key}', which the data "
                f"set does not provide (it provides: {', '.join(sorted(label_spaces)) or 'none'})"
            )
        tasks[key] = _new_task(task_cls, key, options, role, weight, space)
    if not tasks:
        raise RecipeError("tasks: a recipe needs at least one task")
    if all(t.role == "teacher" for t in tasks.values()):
        raise RecipeError("tasks: every task is a teacher, so distillation would leave nothing")
    return tasks


def _new_task(
    cls: type[Task], key: str, options: Any, role: Any, weight: float, space: LabelSpace
) -> Task:
    """The task object; an option its ``setup`` rejects is reported by its recipe key."""
    if "head" not in inspect.signature(cls.loss).parameters:
        raise PluginError(
            f"task '{cls.name}' ({cls.__module__}): loss(self, output, target) must also take "
            "`head` (the module build_head made) — see docs/writing-plugins.md"
        )
    try:
        return cls(key, options, role=role, weight=weight, label_space=space)
    except OptionError as exc:
        where = f"tasks.{key}.{exc.option}" if exc.option else f"tasks.{key}"
        raise RecipeError(f"{where}: {exc.message}") from None


def build_model(
    cfg: DictConfig,
    label_spaces: Mapping[str, LabelSpace],
    plugins: PluginSet | None = None,
) -> MultiTaskModel:
    """The encoder named in ``cfg.encoder`` with one head per task of ``cfg.tasks``.

    ``encoder.weights=zoo:<name>`` loads a pretrained zoo entry's encoder
    (``model/zoo/load.py``)."""
    plugins = plugins_for(cfg, plugins)
    tasks = build_tasks(cfg, label_spaces, plugins)
    enc = cfg.encoder
    raw_kwargs: Any = OmegaConf.to_container(enc.kwargs, resolve=True)
    kwargs = {str(k): v for k, v in raw_kwargs.items()}
    weights, zoo_ref = split_weights(enc)
    trunk = create_timm_trunk(enc.name, pretrained=enc.pretrained, weights=weights, **kwargs)
    needs_taps = any(task.uses_taps for task in tasks.values())
    taps_cfg = enc.taps if isinstance(enc.taps, str) else list(enc.taps)
    out_indices = list(enc.out_indices) if enc.out_indices is not None else None
    taps = resolve_taps(trunk, taps_cfg, out_indices) if needs_taps else []
    if needs_taps and not taps:
        readers = [k for k, t in tasks.items() if t.uses_taps]
        raise RecipeError(
            f"encoder.taps: task(s) {readers} read encoder taps, but none are configured"
        )
    encoder = Encoder(trunk, taps, cfg.data.image_size)
    if zoo_ref is not None:
        load_encoder_weights(encoder, zoo_ref, plugins, encoder_name=enc.name)
    return MultiTaskModel(encoder, tasks)
