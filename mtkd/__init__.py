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
"""

from .commands import Command
from .config import RecipeConfig, load_recipe, recipe_from_dict
from .context import TrainContext
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
)
from .hookspecs import hookimpl
from .loggers import Logger
from .metrics.evaluate import evaluate
from .model.build import build_model, build_tasks
from .model.multitask import MultiTaskModel, ParameterCounts, count_parameters
from .plugins import PluginSet, load_plugins
from .preprocess import Preprocessor
from .pretrained import PretrainedEntry
from .runs.folder import load_run
from .runs.pipeline import RunResult, distill, run, train
from .samples import LabelSpace, NoOptions, Sample, SampleSource
from .tasks import FeatureInfo, Task
from .teachers import TeacherNetwork, teacher_label_key
from .weighting import LossWeighting

__version__ = "0.1.0"

__all__ = [
    "Command",
    "DataBundle",
    "DataError",
    "FeatureInfo",
    "Interrupted",
    "LabelSpace",
    "Logger",
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
    "distill",
    "evaluate",
    "export_run",
    "hookimpl",
    "load_exported",
    "load_plugins",
    "load_recipe",
    "load_run",
    "make_loader",
    "recipe_from_dict",
    "run",
    "teacher_label_key",
    "train",
]
