"""Recipes: a schema of dataclasses, base-recipe inheritance, overlays and dot-list overrides.

A recipe is a short YAML file. ``defaults: [_base]`` merges other recipes underneath it (names
or paths relative to the recipe, ``.yaml`` optional; then mtkd's shipped recipes:
:mod:`mtkd.recipe_files`); YAML overlays and ``key=value`` overrides are merged on top.
Every error names the file and the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .data_schema import AugmentConfig, check_resize_mode, check_where
from .errors import OptionError, RecipeError, did_you_mean
from .recipe_files import find_recipe

T = TypeVar("T")  # a plugin's options dataclass


@dataclass
class EncoderConfig:
    name: str = "mobilenetv2_100"
    pretrained: bool = False  # timm hub weights (needs the network)
    weights: str | None = None  # a local weights file (safetensors or torch) or zoo:<name>
    taps: Any = "stages"  # "stages", "none", or a list of module names
    out_indices: list[int] | None = None  # which stages, with taps: stages (negatives allowed)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


@dataclass
class SplitConfig:
    test: float = 0.1  # fraction of each group's samples held out for testing
    val: float = 0.2  # fraction of the remaining samples used for validation
    holdout: float = 0.0  # fraction of whole groups (people) never trained on: verification
    seed: int = 0
    # a data set's own split without validation samples: take `val` of each group's training
    # samples for validation (off: such a split trains without validation, as before)
    val_from_train: bool = False
    # label-range filters, e.g. {yaw: [-30, 30]}: only samples whose vector-label component
    # lies in the range (ends included) train / validate; test and holdout keep every sample
    train_where: dict[str, list[float]] = field(default_factory=dict)
    val_where: dict[str, list[float]] | None = None  # None: as train_where; {}: no filter


@dataclass
class DataConfig:
    dataset: dict[str, Any] = field(default_factory=dict)  # {name: <data-set plugin>, **options}
    preprocess: list[Any] = field(default_factory=list)  # [{name: <preprocessor>, **options}]
    image_size: int = 128
    resize: str = "squash"  # non-square images: squash | center_crop | top_crop | pad
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training split only
    # where `augment` runs: host (per sample, in the loader), device (per batch, in the
    # training step; the loader hands uint8 images), auto (device on a GPU, else host)
    augment_on: str = "auto"
    on_error: str = "fail"  # an unreadable sample: fail, or skip it and count it
    cache: str = "disk"  # decoded samples: disk (reused by later runs) or memory
    cache_dir: str | None = None  # default $MTKD_CACHE_DIR or ~/.cache/mtkd
    # processes that build the sample cache: null = the cores available (small sets stay in
    # one process; 2 processes built 1.84x as fast as one on an idle 2-core machine), 1 = this
    # process alone; the cache is the same byte for byte either way
    cache_workers: int | None = None
    # under torchrun on several machines: local (each machine builds its own copy of the cache
    # in its data.cache_dir) or shared (data.cache_dir is one file system every machine sees:
    # the machines split the build, each with its own cache_workers)
    cache_fs: str = "local"


@dataclass
class TrainerConfig:
    max_epochs: int = 125
    patience: int = 20  # epochs without val-loss improvement before stopping; 0 disables
    min_delta: float = 0.0
    optimizer: str = "adam"  # any timm optimizer name
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "none"  # any timm scheduler name (cosine, step, plateau, ...) or none
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    log_every: int = 10  # steps between progress updates (each costs one host sync)
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke tests)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at epoch ends only)
    check_finite: bool = True  # test every step's loss for NaN/Inf (one host sync per step)
    on_nan: str = "stop"  # a non-finite loss: stop, skip the step, or lower_lr (halve it, skip)
    max_skipped_steps: int = 10  # with skip/lower_lr: stop after this many bad steps
    progress: bool = True
    # the line printed after each epoch: compact (each task's loss and key metrics) or full
    # (every logged figure, as metrics.jsonl has it)
    console: str = "compact"
    # {name: fixed | uncertainty | dwa | gradnorm | <plugin>, **options}
    weighting: dict[str, Any] = field(default_factory=lambda: {"name": "fixed"})
    channels_last: bool = True  # NHWC weights and inputs (faster convolutions on CPU and GPU)
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + grad scaler, CUDA)
    compile: bool = False  # torch.compile the model (minutes of compile time on a CPU)
    sync_batchnorm: bool = True  # under DDP on GPUs: batch statistics over all ranks
    freeze_encoder_epochs: int = 0  # train only the heads this many epochs (encoder BN frozen too)
    encoder_lr: float | None = None  # the encoder's learning rate; null: trainer.lr
    layer_decay: float | None = None  # in (0, 1]: each encoder layer's lr is the next one's x this


@dataclass
class EvaluateConfig:
    verification: bool = True  # 10-fold pair verification on every task with an embedding
    folds: int = 10
    pairs_per_fold: int = 300  # matched and as many mismatched pairs per fold (LFW: 300)
    pairs_file: str | None = None  # an LFW pairs.txt: "name n" is the sample named name_000n
    bin_label: str = "pose"  # accuracy per bin of this vector label's component, if present
    bin_component: str = "yaw"
    bin_width: float = 15.0
    bin_low: float = -90.0
    bin_high: float = 90.0
    # gallery/probe identification: each group's gallery is the mean embedding of its test
    # samples inside this range (e.g. {yaw: [-15, 15]}); every other test sample is a probe
    gallery_where: dict[str, list[float]] = field(default_factory=dict)
    latency: bool = True  # time the full and the inference model
    latency_batches: list[int] = field(default_factory=lambda: [1, 32])
    latency_repeats: int = 10


@dataclass
class DistillConfig:
    enabled: bool = True


@dataclass
class OutputConfig:
    plots: bool = True  # curves, confusion, predicted masks, accuracy by bin (PNG)
    root: str = "runs"
    dir: str | None = None  # the run folder; default <root>/<name>-<timestamp>
    # experiment loggers (docs/tracking.md): jsonl (metrics.jsonl, always on), tensorboard,
    # mlflow, or a plugin's; each name once
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    experiment: str | None = None  # groups runs in the loggers; default a study's or recipe's name
    mlflow_uri: str | None = None  # MLflow tracking URI; default sqlite in mlruns/ beside root
    images_every: int = 5  # epochs between predicted-mask images in loggers (0: never)


@dataclass
class InitFromConfig:
    source: str | None = None  # a run folder, a weights file, zoo:<name>, or timm (hub weights)
    heads: bool = True  # also load task-head tensors whose name and shape match
    strict: bool = False  # every encoder tensor must load (default: at least one)


@dataclass
class RecipeConfig:
    name: str = MISSING
    plugins: list[str] = field(default_factory=list)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tasks: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init_from: InitFromConfig = field(default_factory=InitFromConfig)  # `init_from: runs/x` works
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def read_yaml_mapping(path: Path, what: str = "a recipe") -> dict[str, Any]:
    """A recipe, overlay or study file as a dict; unreadable YAML is a one-line error."""
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' not found")  # find_recipe names close ones
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: {what} must be a mapping of keys, got {type(data).__name__}")
    return data


def _with_defaults(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The recipe and its bases, most basic first."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise RecipeError(f"{path}: defaults form a cycle: {cycle}")
    data = read_yaml_mapping(path)
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list):
        raise RecipeError(f"{path}: 'defaults' must be a list of recipe names")
    layers: list[tuple[Path, dict[str, Any]]] = []
    for ref in defaults:
        try:
            base = find_recipe(str(ref), path.parent)
        except RecipeError as exc:
            raise RecipeError(f"{path}: defaults: base {exc}") from exc
        layers.extend(_with_defaults(base, (*chain, path)))
    layers.append((path, data))
    return layers


# Option blocks whose ``name`` picks a plugin: naming another one drops the old one's options.
NAMED_BLOCKS: tuple[tuple[str, str], ...] = (("data", "dataset"), ("trainer", "weighting"))


def _new_name(layer: Any, path: tuple[str, str]) -> str | None:
    node = layer
    for key in (*path, "name"):
        node = node.get(key) if isinstance(node, dict | DictConfig) else None
    return None if node is None else str(node)


def _expand_shorthands(layer: Any) -> Any:
    """``init_from: runs/x`` (or ``init_from=null``) means ``init_from: {source: runs/x}``."""
    if not isinstance(layer, dict | DictConfig) or "init_from" not in layer:
        return layer
    value = layer["init_from"]
    if value is not None and not isinstance(value, str):
        return layer
    layer = dict(layer) if isinstance(layer, dict) else layer.copy()
    layer["init_from"] = {"source": value}
    return layer


def _merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    """Merge ``layer`` over ``base``; naming another data set (or loss weighting) replaces
    the old one's options."""
    layer = _expand_shorthands(layer)
    for section, block in NAMED_BLOCKS:
        name = _new_name(layer, (section, block))
        if name is not None and name != base[section][block].get("name"):
            base = base.copy()
            base[section][block] = {}
    try:
        merged = OmegaConf.merge(base, layer)
    except ConfigKeyError as exc:
        raise RecipeError(f"{source}: {_describe_key_error(exc)}") from exc
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_describe_validation_error(exc)}") from exc
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{source}: {exc}") from exc
    assert isinstance(merged, DictConfig)
    return merged


def _full_key(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", "") or getattr(exc, "key", "") or "?")


def _describe_key_error(exc: ConfigKeyError) -> str:
    key = _full_key(exc)
    parent_key, _, leaf = key.rpartition(".")
    known = list(RecipeConfig.__dataclass_fields__)
    node: Any = OmegaConf.structured(RecipeConfig)
    for part in [p for p in parent_key.split(".") if p]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    if isinstance(node, DictConfig):
        known = [str(k) for k in node]
    return f"unknown key '{key}'" + did_you_mean(leaf, known)


def _describe_validation_error(exc: ValidationError) -> str:
    message = str(exc).split("\n", 1)[0]
    return f"wrong type for '{_full_key(exc)}': {message}"


def _absolute_plugin_paths(cfg: DictConfig, recipe_dir: Path) -> None:
    """Plugin files resolve against the working directory, then the recipe's folder."""
    resolved = []
    for i, ref in enumerate(cfg.plugins):
        ref = str(ref)
        if ref.endswith(".py") or "/" in ref:
            here, beside = Path(ref), recipe_dir / ref
            path = here if here.is_file() else beside
            if not path.is_file():
                raise RecipeError(f"plugins[{i}]: plugin file '{ref}' not found")
            ref = str(path.resolve())
        resolved.append(ref)
    cfg.plugins = resolved


def _as_list_if_list_key(cfg: DictConfig, item: str) -> str:
    """``output.loggers=tensorboard`` (or ``=tensorboard,mlflow``) means a list: a bare value
    given to a list key is wrapped in brackets, as YAML would need."""
    key, _, value = item.partition("=")
    text = value.strip()
    if not text or text.startswith("[") or text in ("null", "~"):
        return item
    try:
        node = OmegaConf.select(cfg, key.strip(), default=None, throw_on_missing=False)
    except OmegaConfBaseException:
        return item
    # the schema's type, not the value's: ``encoder.taps`` (Any) may hold a list or "stages"
    declared = getattr(getattr(node, "_metadata", None), "ref_type", None)
    is_list = isinstance(node, ListConfig) and getattr(declared, "__origin__", None) is list
    return f"{key}=[{value}]" if is_list else item


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), overlays: Sequence[str | Path] = ()
) -> DictConfig:
    """Read a recipe, its bases, YAML ``overlays`` and ``key=value`` ``overrides``; validate.

    The result follows :class:`RecipeConfig`; task and data-set options are validated against
    their plugins when the model and data are built (:func:`mtkd.build_model`,
    :func:`mtkd.build_data`).
    """
    path = find_recipe(path)
    cfg: DictConfig = OmegaConf.structured(RecipeConfig)
    for layer_path, data in _with_defaults(path):
        cfg = _merge(cfg, data, str(layer_path))
    for overlay in overlays:
        overlay_path = find_recipe(overlay, profile=True)
        data = read_yaml_mapping(overlay_path)
        if "defaults" in data:
            raise RecipeError(f"{overlay_path}: an overlay cannot have 'defaults'")
        cfg = _merge(cfg, data, str(overlay_path))
    for item in overrides:
        if "=" not in item:
            raise RecipeError(
                f"override '{item}' must look like key=value (e.g. trainer.max_epochs=3)"
            )
        item = _as_list_if_list_key(cfg, item)
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise RecipeError(f"override '{item}': {exc}") from exc
        except yaml.YAMLError as exc:  # the value is parsed as YAML: an unbalanced [ or {
            first = str(exc).splitlines()[0]
            raise RecipeError(
                f"override '{item}': its value is not valid YAML ({first}); quote it"
            ) from exc
        cfg = _merge(cfg, dotlist, f"override '{item}'")
    if OmegaConf.is_missing(cfg, "name"):
        cfg.name = path.stem
    _absolute_plugin_paths(cfg, path.parent)
    check_values(cfg)
    return cfg


def recipe_from_dict(data: dict[str, Any]) -> DictConfig:
    """Validate a recipe given as a dict (library use, tests)."""
    cfg = _merge(OmegaConf.structured(RecipeConfig), data, "recipe")
    if OmegaConf.is_missing(cfg, "name"):
        cfg.name = "recipe"
    check_values(cfg)
    return cfg


def check_finetune(trainer: Any) -> None:
    """The fine-tuning keys' ranges (their types the schema checks already)."""
    epochs = getattr(trainer, "freeze_encoder_epochs", 0)
    if epochs < 0:
        raise RecipeError(f"trainer.freeze_encoder_epochs: must be 0 or more, got {epochs}")
    encoder_lr = getattr(trainer, "encoder_lr", None)
    if encoder_lr is not None and not encoder_lr > 0:
        raise RecipeError(
            f"trainer.encoder_lr: must be above 0, got {encoder_lr} "
            "(to keep the encoder fixed, use trainer.freeze_encoder_epochs)"
        )
    decay = getattr(trainer, "layer_decay", None)
    if decay is not None and not 0 < decay <= 1:
        raise RecipeError(f"trainer.layer_decay: must be in (0, 1], got {decay}")


def check_data(data: Any) -> None:
    """The data sizes' ranges: a zero or negative size would fail deep inside a generator or
    the DataLoader instead of naming the key."""
    for key in ("image_size", "batch_size", "eval_batch_size"):
        value = getattr(data, key, None)
        if value is not None and value < 1:
            raise RecipeError(f"data.{key}: must be 1 or more, got {value}")
    if getattr(data, "num_workers", 0) < 0:
        raise RecipeError(f"data.num_workers: must be 0 or more, got {data.num_workers}")
    check_resize_mode(getattr(data, "resize", "squash"))
    check_augment_on(getattr(data, "augment_on", "auto"))
    cache_fs = getattr(data, "cache_fs", "local")
    if cache_fs not in CACHE_FILE_SYSTEMS:
        raise RecipeError(
            f"data.cache_fs: '{cache_fs}' is not one of {', '.join(CACHE_FILE_SYSTEMS)}"
        )
    if cache_fs == "shared" and getattr(data, "cache", "disk") == "memory":
        raise RecipeError(
            "data.cache_fs: 'shared' splits the build of a cache on disk between machines, "
            "but data.cache is 'memory' (each process builds its own): set data.cache=disk"
        )
    split = getattr(data, "split", None)
    for key in ("train_where", "val_where"):
        check_where(getattr(split, key, None), f"data.split.{key}")


AUGMENT_PLACES = ("auto", "host", "device")  # data.augment_on (mtkd.data.batch_augment)
CACHE_FILE_SYSTEMS = ("local", "shared")  # data.cache_fs (mtkd.data.cache_shared)


def check_augment_on(value: object) -> None:
    """``data.augment_on`` is one of :data:`AUGMENT_PLACES` (one line naming the key)."""
    if value not in AUGMENT_PLACES:
        raise RecipeError(f"data.augment_on: '{value}' is not one of {', '.join(AUGMENT_PLACES)}")


# string options with a fixed set of values, checked when the recipe loads
NAN_POLICIES = ("stop", "skip", "lower_lr")
CONSOLE_STYLES = ("compact", "full")


def check_choices(trainer: DictConfig) -> None:
    for key, allowed in (("on_nan", NAN_POLICIES), ("console", CONSOLE_STYLES)):
        value = trainer.get(key)
        if value not in allowed:
            raise RecipeError(f"trainer.{key}: '{value}' is not one of {', '.join(allowed)}")


def check_values(cfg: DictConfig) -> None:
    """Range checks that a type alone cannot express; each error names its key."""
    check_choices(cfg.trainer)
    check_finetune(cfg.trainer)
    check_data(cfg.data)
    check_where(cfg.evaluate.get("gallery_where"), "evaluate.gallery_where")
    source = cfg.init_from.source
    if source is not None and not str(source).strip():
        raise RecipeError(
            "init_from.source: empty; give a run folder, a weights file, zoo:<name> or timm"
        )


def named_block(
    raw: Any, key: str, *, name_key: str = "name", default: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``{name: <plugin>, **options}`` → (name, options): how every recipe block that picks a
    plugin reads (``data.dataset``, ``data.preprocess`` entries, ``trainer.weighting``, and
    ``tasks.<key>`` with ``type``, defaulting to the key)."""
    if not isinstance(raw, Mapping):
        if default is None:
            raise RecipeError(f"{key}: needs a '{name_key}' (the plugin; see `mtkd plugins`)")
        raise RecipeError(f"{key}: expected a mapping of options, got {raw!r}")
    values = {str(k): v for k, v in raw.items()}
    name = values.pop(name_key, default)
    if name is None:
        raise RecipeError(f"{key}: needs a '{name_key}' (the plugin; see `mtkd plugins`)")
    return str(name), values


@dataclass(frozen=True)
class TaskEntry:
    """One block of ``tasks:``: its key, its task type (the key unless ``type`` says
    otherwise), ``role`` and ``weight`` as written (None and 1.0 when absent), the rest."""

    key: str
    kind: str
    role: Any
    weight: Any
    options: dict[str, Any]

    @property
    def where(self) -> str:
        """The recipe key that names the task type, for errors."""
        return f"tasks.{self.key}.type" if self.kind != self.key else f"tasks.{self.key}"


def task_entries(cfg: DictConfig) -> list[TaskEntry]:
    """Every task block of the recipe, in order (``tasks.<key>=null`` removes one)."""
    raw_tasks = OmegaConf.to_container(cfg.tasks, resolve=True) or {}
    assert isinstance(raw_tasks, dict)
    entries = []
    for raw_key, raw in raw_tasks.items():
        key = str(raw_key)
        if raw is None:
            continue
        kind, values = named_block(raw, f"tasks.{key}", name_key="type", default=key)
        role, weight = values.pop("role", None), values.pop("weight", 1.0)
        entries.append(TaskEntry(key, kind, role, weight, values))
    return entries


def parse_options(options_cls: type[T], values: Any, key: str) -> T:
    """Validate plugin options (a mapping) against the plugin's ``Options`` dataclass.

    ``key`` is where the options live in the recipe (e.g. ``tasks.segmentation``), so an
    unknown or mistyped option is reported by its full recipe key.
    """
    schema = OmegaConf.structured(options_cls)
    try:
        merged = OmegaConf.merge(schema, values or {})
        return cast(T, OmegaConf.to_object(merged))
    except OptionError as exc:  # the options dataclass's own check (__post_init__)
        raise RecipeError(f"{_option_key(key, exc.option)}: {exc.message}") from None
    except ConfigKeyError as exc:
        leaf = _full_key(exc).rpartition(".")[2]
        known = [str(k) for k in schema]
        raise RecipeError(f"unknown key '{key}.{leaf}'" + did_you_mean(leaf, known)) from exc
    except ValidationError as exc:
        message = str(exc).split("\n", 1)[0]
        raise RecipeError(f"wrong type for '{key}.{_full_key(exc)}': {message}") from exc
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{key}: {exc}") from exc


def _option_key(key: str, option: str) -> str:
    return f"{key}.{option}" if option else key
