"""mtkd: multi-task learning with removable teacher tasks, for any timm encoder.

The library in ten lines::

    import mtkd
    cfg = mtkd.load_recipe("recipes/seg_distilled_id.yaml", ["trainer.max_epochs=2"])
    data = mtkd.build_data(cfg)
    model = mtkd.build_model(cfg, data.label_spaces)
    mtkd.train(model, data, cfg)
    student = mtkd.distill(model)
    print(mtkd.evaluate(student, data.test))

``mtkd.run(cfg)`` does all of that and writes a run folder.

Every name below is imported on first use (module ``__getattr__``), so ``import mtkd`` costs
next to nothing and never loads torch, timm, matplotlib, MLflow, TensorBoard or onnx; the
``TYPE_CHECKING`` block gives type checkers and editors the same names.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .commands import Command
    from .config import RecipeConfig, load_recipe, parse_options, recipe_from_dict
    from .context import LoopState, TrainContext
    from .data.build import DataBundle, build_data, build_source, make_loader
    from .deploy.export import export_run, load_exported
    from .deploy.inference import Predictor
    from .errors import (
        DataError,
        Interrupted,
        MtkdError,
        OptionError,
        PluginError,
        RecipeError,
        SampleError,
        check_options,
        did_you_mean,
    )
    from .hookspecs import hookimpl
    from .loggers import Logger
    from .metrics.evaluate import evaluate
    from .metrics.segmentation import iou_summary, jaccard_per_class
    from .model.build import build_model, build_tasks
    from .model.multitask import MultiTaskModel, ParameterCounts, count_parameters
    from .options import NoOptions
    from .plugins import PluginSet, load_plugins
    from .preprocess import Preprocessor
    from .pretrained import PretrainedEntry, read_cards
    from .runs.folder import load_run
    from .runs.pipeline import RunResult, distill, run, train
    from .samples import LabelSpace, Sample, SampleSource
    from .tasks import FeatureInfo, Task
    from .teachers import TeacherNetwork, teacher_label_key
    from .utils import distributed
    from .utils.checksums import sha256_file, weights_sha256
    from .weighting import EncoderOutputs, LossWeighting, weighted_sum

__version__ = "0.1.0"

# public name -> the module that defines it (tests/test_import_cost.py keeps this table, the
# TYPE_CHECKING block above and __all__ in step)
_HOMES: dict[str, str] = {
    "Command": ".commands",
    "DataBundle": ".data.build",
    "DataError": ".errors",
    "EncoderOutputs": ".weighting",
    "FeatureInfo": ".tasks",
    "Interrupted": ".errors",
    "LabelSpace": ".samples",
    "Logger": ".loggers",
    "LoopState": ".context",
    "LossWeighting": ".weighting",
    "MtkdError": ".errors",
    "MultiTaskModel": ".model.multitask",
    "NoOptions": ".options",
    "OptionError": ".errors",
    "ParameterCounts": ".model.multitask",
    "PluginError": ".errors",
    "PluginSet": ".plugins",
    "Predictor": ".deploy.inference",
    "Preprocessor": ".preprocess",
    "PretrainedEntry": ".pretrained",
    "RecipeConfig": ".config",
    "RecipeError": ".errors",
    "RunResult": ".runs.pipeline",
    "Sample": ".samples",
    "SampleError": ".errors",
    "SampleSource": ".samples",
    "Task": ".tasks",
    "TeacherNetwork": ".teachers",
    "TrainContext": ".context",
    "build_data": ".data.build",
    "build_model": ".model.build",
    "build_source": ".data.build",
    "build_tasks": ".model.build",
    "check_options": ".errors",
    "count_parameters": ".model.multitask",
    "did_you_mean": ".errors",
    "distill": ".runs.pipeline",
    "distributed": ".utils",
    "evaluate": ".metrics.evaluate",
    "export_run": ".deploy.export",
    "hookimpl": ".hookspecs",
    "iou_summary": ".metrics.segmentation",
    "jaccard_per_class": ".metrics.segmentation",
    "load_exported": ".deploy.export",
    "load_plugins": ".plugins",
    "load_recipe": ".config",
    "load_run": ".runs.folder",
    "make_loader": ".data.build",
    "parse_options": ".config",
    "read_cards": ".pretrained",
    "recipe_from_dict": ".config",
    "run": ".runs.pipeline",
    "sha256_file": ".utils.checksums",
    "teacher_label_key": ".teachers",
    "train": ".runs.pipeline",
    "weighted_sum": ".weighting",
    "weights_sha256": ".utils.checksums",
}

__all__ = [
    "Command",
    "DataBundle",
    "DataError",
    "EncoderOutputs",
    "FeatureInfo",
    "Interrupted",
    "LabelSpace",
    "Logger",
    "LoopState",
    "LossWeighting",
    "MtkdError",
    "MultiTaskModel",
    "NoOptions",
    "OptionError",
    "ParameterCounts",
    "PluginError",
    "PluginSet",
    "Predictor",
    "Preprocessor",
    "PretrainedEntry",
    "RecipeConfig",
    "RecipeError",
    "RunResult",
    "Sample",
    "SampleError",
    "SampleSource",
    "Task",
    "TeacherNetwork",
    "TrainContext",
    "build_data",
    "build_model",
    "build_source",
    "build_tasks",
    "check_options",
    "count_parameters",
    "did_you_mean",
    "distill",
    "distributed",
    "evaluate",
    "export_run",
    "hookimpl",
    "iou_summary",
    "jaccard_per_class",
    "load_exported",
    "load_plugins",
    "load_recipe",
    "load_run",
    "make_loader",
    "parse_options",
    "read_cards",
    "recipe_from_dict",
    "run",
    "sha256_file",
    "teacher_label_key",
    "train",
    "weighted_sum",
    "weights_sha256",
]

if not TYPE_CHECKING:  # hidden from type checkers, so that ``mtkd.typo`` stays an error there

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use (then keep the name here); a submodule
        (``mtkd.config``) imports as it would have after the eager ``import mtkd`` of old."""
        home = _HOMES.get(name)
        if home is not None:
            module = importlib.import_module(home, __name__)
            if not hasattr(module, name):  # a public submodule (``mtkd.distributed``)
                importlib.import_module(f"{home}.{name}", __name__)
            value = getattr(module, name)
            globals()[name] = value
            return value
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
