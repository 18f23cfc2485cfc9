"""Transfer learning: start a freshly built model from another run's (or a file's) weights.

Only tensors whose name and shape both match are copied, so a source trained on other people
(another identity count) or with other teachers still hands over its encoder. Nothing is
dropped silently: a :class:`TransferReport` lists every tensor loaded and every tensor passed
over with its reason, the run prints a summary and keeps the report as ``init_from.json``.

Recipe use::

    init_from: runs/pretrain_synthetic_heads-20250101-120000     # shorthand for {source: ...}
    init_from: {source: model.safetensors, heads: false, strict: true}
    init_from: zoo:mobilenetv2_heads64       # a pretrained zoo entry (mtkd.model.zoo.load)

Library use: ``mtkd.model.transfer.init_from(model, "runs/...")`` before ``mtkd.train(...)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from ..errors import RecipeError
from ..plugins import PluginSet, plugins_for
from ..utils.checkpoint import load_safetensors, write_json
from ..utils.layout import BEST, CHECKPOINTS, DISTILLED, INIT_FROM, LAST, WEIGHTS
from .encoder import create_timm_trunk
from .zoo.load import check_refs, entry_state, zoo_name

TIMM = "timm"  # source: the encoder's own timm hub weights
ENCODER = "encoder."
HEADS = "heads."
TRUNK = "encoder.trunk."
# In a run folder, the first of these that exists is the source (all hold the encoder; the
# first and the last also the teacher heads).
RUN_FILES = (
    f"{CHECKPOINTS}/{BEST}",
    f"{DISTILLED}/{WEIGHTS}",
    f"{CHECKPOINTS}/{LAST}/{WEIGHTS}",
    WEIGHTS,  # a checkpoints/last folder itself
)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WRAPPERS = ("state_dict", "model", "model_state_dict", "module")

SHAPE = "shape mismatch"
MISSING = "missing in source"
UNEXPECTED = "unexpected in source"
EXCLUDED = "not requested (init_from.heads: false)"
REASONS = (SHAPE, MISSING, UNEXPECTED, EXCLUDED)


@dataclass(frozen=True)
class SkippedTensor:
    """One tensor not loaded, and why."""

    key: str
    reason: str  # one of REASONS
    source_shape: tuple[int, ...] | None = None
    model_shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        if self.reason == SHAPE:
            return f"{self.key}: source {self.source_shape}, model {self.model_shape}"
        return self.key


@dataclass
class TransferReport:
    """What ``init_from`` copied into the model, and what it passed over."""

    source: str  # as given
    resolved: str  # the file read, or timm:<model name>
    heads: bool
    loaded: list[str] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)

    @property
    def loaded_encoder(self) -> list[str]:
        return [k for k in self.loaded if k.startswith(ENCODER)]

    @property
    def loaded_heads(self) -> list[str]:
        return [k for k in self.loaded if not k.startswith(ENCODER)]

    def by_reason(self) -> dict[str, list[SkippedTensor]]:
        groups: dict[str, list[SkippedTensor]] = defaultdict(list)
        for item in self.skipped:
            groups[item.reason].append(item)
        return {reason: groups[reason] for reason in REASONS if groups.get(reason)}

    def counts(self) -> dict[str, int]:
        out = {
            "loaded": len(self.loaded),
            "loaded_encoder": len(self.loaded_encoder),
            "loaded_heads": len(self.loaded_heads),
        }
        out.update({reason: len(items) for reason, items in self.by_reason().items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resolved": self.resolved,
            "heads": self.heads,
            "counts": self.counts(),
            "loaded": list(self.loaded),
            "skipped": [asdict(item) for item in self.skipped],
        }

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / INIT_FROM
        write_json(path, self.to_dict())
        return path

    def print(self, console: Console, limit: int = 8) -> None:
        """Counts, then the skipped tensors grouped by reason (at most ``limit`` per reason)."""
        console.print(
            f"init_from {escape(self.resolved)}: loaded {len(self.loaded)} tensors "
            f"(encoder {len(self.loaded_encoder)}, heads {len(self.loaded_heads)}), "
            f"skipped {len(self.skipped)}",
            highlight=False,
        )
        for reason, items in self.by_reason().items():
            style = "yellow" if reason in (SHAPE, MISSING) else "dim"
            console.print(f"  [{style}]{reason}: {len(items)}[/{style}]", highlight=False)
            for item in items[:limit]:
                console.print(f"    {escape(item.describe())}", highlight=False)
            if len(items) > limit:
                console.print(f"    ... and {len(items) - limit} more (see {INIT_FROM})")


def resolve_source(source: str | Path) -> Path:
    """The weights file ``source`` names: itself, or the best file of a run folder."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                return path / name
        raise RecipeError(
            f"init_from: '{source}' is a folder without weights (looked for "
            + ", ".join(RUN_FILES)
            + "); give a run folder, a .safetensors/.pt/.pth file, or timm"
        )
    raise RecipeError(f"init_from: '{source}' not found (a run folder, a weights file, or timm)")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A torch file's state dict, also when wrapped as {"state_dict": ...} or {"model": ...}."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise RecipeError(f"init_from: '{path}' holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise RecipeError(f"init_from: '{path}' holds no tensors (keys: {list(obj)[:8]})")
    return tensors


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or torch file; torch files load with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(path)  # checked against its checksum, and for NaN/Inf
        if path.suffix in TORCH_SUFFIXES:
            return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(
            f"init_from: '{path}' is unreadable, corrupt or not a plain tensor file "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    raise RecipeError(
        f"init_from: '{path}' is not a weights file (expected .safetensors, "
        + ", ".join(TORCH_SUFFIXES)
        + ", or a run folder)"
    )


def as_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name tensors as a MultiTaskModel does.

    Files saved by mtkd already are; a bare timm trunk's state dict (``conv_stem.weight``) gets
    ``encoder.trunk.``; a DataParallel ``module.`` prefix is dropped.
    """
    out = dict(state)
    if out and all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    if not any(k.startswith((ENCODER, HEADS)) for k in out):
        out = {TRUNK + k: v for k, v in out.items()}
    return out


def timm_name(model: nn.Module) -> str:
    """The timm name (with pretrained tag) the model's trunk was created from."""
    encoder: Any = getattr(model, "encoder", None)
    trunk: Any = encoder.trunk if encoder is not None else model
    cfg = getattr(trunk, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise RecipeError(f"init_from: timm: '{type(trunk).__name__}' is not a timm model")
    if not any(cfg.get(k) for k in ("url", "hf_hub_id", "file", "state_dict")):
        raise RecipeError(
            f"init_from: timm has no pretrained weights for '{arch}'"
            + (f" (tag '{cfg['tag']}')" if cfg.get("tag") else "")
        )
    return f"{arch}.{cfg['tag']}" if cfg.get("tag") else str(arch)


def timm_state(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """The trunk's timm hub weights (network or the timm/Hugging Face cache), as model keys.

    The same weights ``encoder.pretrained: true`` loads, here with a report.
    """
    name = timm_name(model)
    pretrained = create_timm_trunk(name, pretrained=True)
    return f"{TIMM}:{name}", {TRUNK + k: v for k, v in pretrained.state_dict().items()}


def match(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, heads: bool = True
) -> tuple[dict[str, torch.Tensor], list[SkippedTensor]]:
    """(tensors to load, tensors passed over): a model tensor loads when name and shape match.

    The encoder is always in scope; task heads only with ``heads``.
    """
    target = model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    skipped: list[SkippedTensor] = []
    for key, tensor in target.items():
        if not heads and not key.startswith(ENCODER):
            skipped.append(SkippedTensor(key, EXCLUDED, model_shape=tuple(tensor.shape)))
            continue
        source = state.get(key)
        if source is None:
            skipped.append(SkippedTensor(key, MISSING, model_shape=tuple(tensor.shape)))
        elif tuple(source.shape) != tuple(tensor.shape):
            skipped.append(SkippedTensor(key, SHAPE, tuple(source.shape), tuple(tensor.shape)))
        else:
            chosen[key] = source
    for key, source in state.items():
        if key not in target:
            skipped.append(SkippedTensor(key, UNEXPECTED, source_shape=tuple(source.shape)))
    return chosen, skipped


def _read_source(
    model: nn.Module, source: str | Path, plugins: PluginSet | None
) -> tuple[str, dict[str, torch.Tensor]]:
    """(what was read, its tensors under model names) for any kind of source."""
    if str(source) == TIMM:
        return timm_state(model)
    if zoo_name(str(source)) is not None:
        return entry_state(str(source), model, plugins)
    path = resolve_source(source)
    return str(path), as_model_keys(read_state(path))


def init_from(
    model: nn.Module,
    source: str | Path,
    *,
    heads: bool = True,
    strict: bool = False,
    plugins: PluginSet | None = None,
) -> TransferReport:
    """Copy matching tensors from ``source`` into ``model``; the report says what and why not.

    ``source``: a run folder (its best checkpoint, else the distilled model, else the last
    checkpoint), a ``.safetensors`` or torch state-dict file (an mtkd model's or a bare timm
    trunk's), ``"timm"`` (the trunk's hub weights), or ``"zoo:<name>"`` (a pretrained entry
    registered by a plugin of ``plugins``, default the installed ones; checksum verified).
    Raises :class:`RecipeError` naming ``init_from`` when the source is missing or unreadable,
    when no encoder weight fits, and with ``strict`` when any encoder tensor does not.
    """
    resolved, state = _read_source(model, source, plugins)
    chosen, skipped = match(model, state, heads=heads)
    report = TransferReport(str(source), resolved, heads, sorted(chosen), skipped)
    _check(report, chosen, model, strict)
    with torch.no_grad():
        model.load_state_dict(chosen, strict=False)
    return report


def _check(
    report: TransferReport, chosen: Mapping[str, torch.Tensor], model: nn.Module, strict: bool
) -> None:
    """Refuse a source that hands over no encoder weight (a conv or linear kernel).

    Counters and small norm vectors (``bn1.num_batches_tracked``) match by name and shape
    across unrelated architectures; they alone do not make a transfer.
    """
    kernels = [k for k, t in chosen.items() if k.startswith(ENCODER) and t.ndim >= 2]
    encoder_misses = [
        s for s in report.skipped if s.key.startswith(ENCODER) and s.reason in (SHAPE, MISSING)
    ]
    examples = "; ".join(s.describe() + f" ({s.reason})" for s in encoder_misses[:3])
    trunk = type(getattr(getattr(model, "encoder", None), "trunk", model)).__name__
    if not kernels:
        raise RecipeError(
            f"init_from: nothing in '{report.resolved}' (from '{report.source}') fits the "
            f"encoder ({trunk}): is it another architecture? e.g. {examples or 'no tensors'}"
        )
    if strict and encoder_misses:
        raise RecipeError(
            f"init_from.strict: {len(encoder_misses)} encoder tensor(s) of the model did not "
            f"load from '{report.resolved}': {examples}"
        )


def check_init_from(cfg: Any, plugins: PluginSet | None = None) -> None:
    """Fail fast on a missing ``init_from`` source or an unknown or unfitting ``zoo:`` entry
    (also in ``encoder.weights``), before the (slow) data are built."""
    spec = cfg.get("init_from")
    source = spec.source if spec is not None else None
    if source and str(source) != TIMM and zoo_name(str(source)) is None:
        resolve_source(str(source))
    check_refs(cfg, plugins)


def init_from_recipe(
    model: nn.Module, cfg: Any, plugins: PluginSet | None = None
) -> TransferReport | None:
    """Apply the recipe's ``init_from`` (``None`` when it names no source)."""
    spec = cfg.get("init_from")
    if spec is None or not spec.source:
        return None
    source = str(spec.source)
    plugins = plugins_for(cfg, plugins) if zoo_name(source) is not None else plugins
    return init_from(
        model, source, heads=bool(spec.heads), strict=bool(spec.strict), plugins=plugins
    )
