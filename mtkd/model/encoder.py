"""A timm encoder with named taps: the multi-scale features heads may read.

Taps are forward hooks on named modules, so any layer of any timm model can feed a decoder
(the paper's U-Net reads MobileNetV2 expansion outputs that ``features_only`` does not
expose). ``taps: stages`` uses the model's own ``feature_info`` stages; a list names modules.
Channel counts and strides are measured with one dry forward pass.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import RecipeError, did_you_mean
from ..tasks import FeatureInfo

STAGES = "stages"


def check_encoder_name(name: str) -> None:
    """``name`` is a timm model, else one line with the closest names."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise RecipeError(
            f"encoder.name: unknown timm model '{name}'" + did_you_mean(name, timm.list_models())
        )


def create_timm_trunk(
    name: str, pretrained: bool = False, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model without its classifier; ``weights`` is a local file (no network needed)."""
    check_encoder_name(name)
    options: dict[str, Any] = dict(kwargs)
    if weights:
        if not Path(weights).is_file():
            raise RecipeError(f"encoder.weights: file '{weights}' not found")
        options["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **options)
    except TypeError as exc:
        raise RecipeError(
            f"encoder.kwargs: timm model '{name}' rejected an argument: {exc}"
        ) from exc
    except Exception as exc:
        if not weights:
            raise
        raise RecipeError(f"encoder.weights: '{weights}' {_weights_problem(exc)}") from exc
    return model


def _weights_problem(exc: Exception) -> str:
    """Why a local weights file failed to load, in a phrase."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        # timm loads weights-only: a pickle that would run code is refused before it runs
        return (
            "is not a plain tensor file (.safetensors, or a torch file holding only tensors): "
            "refused, nothing in it was run"
        )
    first = text.splitlines()[0][:200] if text else ""
    return f"does not load into this encoder ({type(exc).__name__}: {first})"


def _resolve_stage_taps(model: nn.Module, out_indices: Sequence[int] | None) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise RecipeError(
            f"encoder.taps: '{type(model).__name__}' has no feature_info stages; "
            "list module names under encoder.taps instead"
        )
    modules = [str(i["module"]) for i in info]
    if out_indices is None:
        return modules
    chosen = []
    for index in out_indices:
        if not -len(modules) <= index < len(modules):
            raise RecipeError(
                f"encoder.out_indices: index {index} is out of range for {len(modules)} stages "
                f"(valid: {-len(modules)}..{len(modules) - 1})"
            )
        chosen.append(modules[index])
    return chosen


def resolve_taps(
    model: nn.Module, taps: str | Sequence[str], out_indices: Sequence[int] | None
) -> list[str]:
    """Module names to hook, validated against the model (unknown names are errors, not drops)."""
    if isinstance(taps, str):
        if taps == STAGES:
            return _resolve_stage_taps(model, out_indices)
        if taps in ("", "none"):
            return []
        raise RecipeError(
            f"encoder.taps: expected 'stages', 'none' or a list of module names, got '{taps}'"
        )
    if out_indices is not None:
        raise RecipeError("encoder.out_indices: only valid with encoder.taps: stages")
    names = dict(model.named_modules())
    for i, tap in enumerate(taps):
        if tap not in names:
            raise RecipeError(
                f"encoder.taps[{i}]: module '{tap}' is not in {type(model).__name__}"
                + did_you_mean(tap, [n for n in names if n])
            )
    return list(taps)


class Encoder(nn.Module):
    """timm trunk → (taps, final feature map). Input: float images in [0, 1], normalized here."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, trunk: nn.Module, taps: Sequence[str], image_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.tap_names: tuple[str, ...] = tuple(taps)
        cfg = getattr(trunk, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._hook_taps()
        self._drop_unused_children(image_size)
        self.feature_info = self._measure(image_size)

    def _hook_taps(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        modules = dict(self.trunk.named_modules())
        for name in self.tap_names:
            self._handles.append(modules[name].register_forward_hook(self._capture_hook(name)))

    def _capture_hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self._captured[name] = output

        return hook

    @torch.no_grad()
    def _drop_unused_children(self, image_size: int) -> None:
        """Replace top-level children that ``forward_features`` never calls (e.g. VGG's fc6/fc7).

        timm keeps some of them after ``num_classes=0``; they would inflate parameter counts.
        """
        called: set[str] = set()
        handles = [
            child.register_forward_hook(lambda *_a, _n=name: called.add(_n))
            for name, child in self.trunk.named_children()
        ]
        was_training = self.trunk.training
        self.trunk.eval()
        try:
            self._forward_features(torch.zeros(1, 3, image_size, image_size))
        except Exception as exc:
            raise RecipeError(
                f"encoder: '{type(self.trunk).__name__}' cannot run at "
                f"data.image_size={image_size}: {exc}"
            ) from exc
        finally:
            for h in handles:
                h.remove()
            self.trunk.train(was_training)
        for name, child in list(self.trunk.named_children()):
            if name not in called and any(True for _ in child.parameters()):
                setattr(self.trunk, name, nn.Identity())

    @torch.no_grad()
    def _measure(self, image_size: int) -> FeatureInfo:
        was_training = self.training
        self.eval()
        try:
            taps, final = self(torch.zeros(1, 3, image_size, image_size))
        finally:
            self.train(was_training)
        for name, tensor in [*zip(self.tap_names, taps, strict=True), ("final features", final)]:
            if tensor.ndim != 4:
                raise RecipeError(
                    f"encoder: '{type(self.trunk).__name__}' gives {name} of shape "
                    f"{tuple(tensor.shape)}; mtkd heads need (batch, channels, height, width) maps"
                )
        return FeatureInfo(
            tap_names=self.tap_names,
            tap_channels=tuple(int(t.shape[1]) for t in taps),
            tap_reductions=tuple(image_size // int(t.shape[-1]) for t in taps),
            final_channels=int(final.shape[1]),
            final_reduction=image_size // int(final.shape[-1]),
            image_size=image_size,
        )

    def without_taps(self) -> None:
        """Stop capturing taps (no head reads them any more)."""
        self.tap_names = ()
        self._hook_taps()
        self.feature_info = FeatureInfo(
            tap_names=(),
            tap_channels=(),
            tap_reductions=(),
            final_channels=self.feature_info.final_channels,
            final_reduction=self.feature_info.final_reduction,
            image_size=self.feature_info.image_size,
        )

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        forward_features: Any = self.trunk.forward_features
        return forward_features(x)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = (images - self.mean) / self.std
        self._captured = {}
        final = self._forward_features(x)
        taps = [self._captured[name] for name in self.tap_names]
        self._captured = {}
        return taps, final

    def __deepcopy__(self, memo: dict[int, Any]) -> Encoder:
        # Hook closures point at the original object: copy without them, then re-hook.
        handles, self._handles = self._handles, []
        try:
            clone = self.__class__.__new__(self.__class__)
            memo[id(self)] = clone
            for key, value in self.__dict__.items():
                clone.__dict__[key] = copy.deepcopy(value, memo)
        finally:
            self._handles = handles
        for module in clone.trunk.modules():
            module._forward_hooks.clear()
        clone._hook_taps()
        return clone
