"""Start a model from a pretrained zoo entry by name (``zoo:<name>``), with no network.

Plugins register the entries (``register_pretrained``; mtkd's own face encoders come from the
``mtkd_plugins.zoo`` plugin). The core finds an entry by name, checks that it fits the recipe
(the same timm encoder; another input size only warns), verifies the file's size and SHA-256
against its card on every load, and hands over its tensors in the model's dtypes:

- ``encoder.weights=zoo:<name>``: every encoder tensor of the entry, and nothing else;
- ``init_from=zoo:<name>``: the encoder and the heads whose names and shapes match, through
  ``mtkd.model.transfer.init_from`` and its report.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ...errors import RecipeError, close_matches
from ...plugins import PluginSet, load_plugins, plugins_for
from ...pretrained import PretrainedEntry, sha256_of
from ..encoder import Encoder

ZOO = "zoo:"
TRUNK = "encoder.trunk."  # as in transfer.py: the trunk's tensors in an mtkd model's state


class ImageSizeWarning(UserWarning):
    """A zoo entry used at another input size than it was trained at: it works, less well."""


def zoo_name(ref: Any) -> str | None:
    """``"zoo:<name>"`` → ``"<name>"``; anything else (a path, timm, None) → None."""
    if isinstance(ref, str) and ref.startswith(ZOO):
        return ref[len(ZOO) :].strip()
    return None


def find_entry(name: str, plugins: PluginSet, key: str) -> PretrainedEntry:
    """The entry registered as ``name``; an unknown name lists the names that exist."""
    names = plugins.pretrained.names()
    if name not in plugins.pretrained:
        hint = close_matches(name, names)
        listing = ", ".join(names) if names else "none are installed"
        raise RecipeError(
            f"{key}: no zoo entry named '{name}'{hint}; zoo entries: {listing} (see `mtkd zoo`)"
        )
    return plugins.pretrained.get(name, key=key)


def architecture(encoder_name: str) -> str:
    """A timm name without its pretrained tag: ``mobilenetv2_100.ra_in1k`` → ``mobilenetv2_100``."""
    return encoder_name.split(".", 1)[0]


def resolve(ref: str, plugins: PluginSet, *, encoder_name: str, key: str) -> PretrainedEntry:
    """The entry ``ref`` names, refused when it belongs to another encoder than the recipe's."""
    entry = find_entry(zoo_name(ref) or "", plugins, key)
    if architecture(entry.encoder) != architecture(encoder_name):
        raise RecipeError(
            f"{key}: zoo entry '{entry.name}' holds a '{entry.encoder}' encoder, but "
            f"encoder.name is '{encoder_name}' (set encoder.name={entry.encoder} or pick another "
            "entry)"
        )
    return entry


def warn_image_size(entry: PretrainedEntry, image_size: int, key: str) -> None:
    if image_size != entry.image_size:
        warnings.warn(
            f"{key}: zoo entry '{entry.name}' was trained at {entry.image_size} px, the model "
            f"is built for {image_size} px (data.image_size): it loads, but may transfer less "
            "well",
            ImageSizeWarning,
            stacklevel=3,
        )


def verify(entry: PretrainedEntry, key: str) -> None:
    """Refuse a missing, truncated, corrupt or altered weights file (size, then SHA-256)."""
    path = entry.file
    if not path.is_file():
        raise RecipeError(f"{key}: zoo entry '{entry.name}': weights file '{path}' not found")
    size = path.stat().st_size
    digest = sha256_of(path) if size == entry.size else None
    if digest != entry.sha256:
        found = f"sha256 {digest[:12]}…" if digest else f"{size} bytes"
        raise RecipeError(
            f"{key}: zoo entry '{entry.name}': weights file '{path}' is corrupt or altered "
            f"({found}; its card says {entry.size} bytes, sha256 {entry.sha256[:12]}…): "
            "reinstall it, or release the entry again"
        )


def read_entry(entry: PretrainedEntry, key: str) -> dict[str, torch.Tensor]:
    """The entry's tensors as stored (fp16 floats), after :func:`verify`."""
    verify(entry, key)
    try:
        return load_file(str(entry.file))
    except Exception as exc:
        raise RecipeError(
            f"{key}: zoo entry '{entry.name}': weights file '{entry.file}' is unreadable: {exc}"
        ) from exc


def as_dtypes(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Floating tensors cast to the dtype of the model tensor of the same name (float32 when
    the model has none); integer tensors (BatchNorm counters) as they are."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        like = target.get(key)
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def encoder_name_of(model: nn.Module) -> str:
    """The timm architecture of a MultiTaskModel's trunk (what its encoder.name was)."""
    encoder = getattr(model, "encoder", None)
    trunk = encoder.trunk if isinstance(encoder, Encoder) else model
    cfg = getattr(trunk, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(trunk).__name__)


def entry_state(
    ref: str, model: nn.Module, plugins: PluginSet | None, key: str = "init_from"
) -> tuple[str, dict[str, torch.Tensor]]:
    """(the file read, its tensors in the model's dtypes): the source of ``init_from=zoo:``."""
    encoder: Any = model.encoder
    entry = resolve(ref, plugins or load_plugins(), encoder_name=encoder_name_of(model), key=key)
    warn_image_size(entry, encoder.feature_info.image_size, key)
    return str(entry.file), as_dtypes(read_entry(entry, key), model.state_dict())


def load_encoder_weights(
    encoder: Encoder,
    ref: str,
    plugins: PluginSet,
    *,
    encoder_name: str,
    key: str = "encoder.weights",
) -> PretrainedEntry:
    """Load every trunk tensor of the entry into ``encoder``; all must fit, nothing else loads."""
    entry = resolve(ref, plugins, encoder_name=encoder_name, key=key)
    warn_image_size(entry, encoder.feature_info.image_size, key)
    state = {
        k.removeprefix(TRUNK): v for k, v in read_entry(entry, key).items() if k.startswith(TRUNK)
    }
    target = encoder.trunk.state_dict()
    misfits = [
        k for k in target if k not in state or tuple(state[k].shape) != tuple(target[k].shape)
    ]
    extra = [k for k in state if k not in target]
    if misfits or extra:
        raise RecipeError(
            f"{key}: zoo entry '{entry.name}' does not fit the {encoder_name} encoder as built "
            f"(missing or other shape: {misfits[:3]}, not in the model: {extra[:3]})"
        )
    with torch.no_grad():
        encoder.trunk.load_state_dict(as_dtypes(state, target), strict=True)
    return entry


def split_weights(encoder_cfg: Any) -> tuple[str | None, str | None]:
    """``encoder.weights`` as (a weights file for timm, a zoo reference): one or the other."""
    weights = encoder_cfg.weights
    if zoo_name(weights) is None:
        return weights, None
    if encoder_cfg.pretrained:
        raise RecipeError(
            f"encoder.pretrained: true and encoder.weights={weights} both name the encoder's "
            "weights; keep one"
        )
    return None, str(weights)


def check_refs(cfg: Any, plugins: PluginSet | None = None) -> None:
    """Fail fast, before the (slow) data are built: every ``zoo:`` name the recipe uses
    exists and holds the recipe's encoder."""
    refs = [
        (key, ref)
        for key, ref in (("encoder.weights", cfg.encoder.weights), ("init_from", _source(cfg)))
        if zoo_name(ref) is not None
    ]
    if not refs:
        return
    split_weights(cfg.encoder)
    plugins = plugins_for(cfg, plugins)
    for key, ref in refs:
        resolve(ref, plugins, encoder_name=str(cfg.encoder.name), key=key)


def _source(cfg: Any) -> Any:
    spec = cfg.get("init_from")
    return spec.source if spec is not None else None
