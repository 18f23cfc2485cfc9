"""Fine-tuning an initialised encoder: its own learning rate, layer-wise decay, a frozen start.

Why: an encoder that arrives with useful features (``init_from``, timm weights) is easily
wrecked by the large, noisy gradients of freshly initialised heads. Freezing it for the first
epochs lets the heads settle; a lower encoder learning rate, decaying further towards the
stem, keeps the generic early layers near where they started.

In the training loop::

    optimizer = create_optimizer_v2(param_groups(model, trainer), opt=..., lr=trainer.lr)
    freeze = FreezeSchedule.from_trainer(trainer)
    freeze.set_train_mode(model, epoch)  # at each epoch's start, instead of model.train()
    freeze.release(model)                # after the last epoch

Every parameter is in the optimizer from the start, frozen or not: a frozen parameter has no
gradient, and torch's optimizers skip such parameters entirely (no update, no weight decay, no
state), so it stays bit-identical until its epoch comes. Whether a parameter is frozen depends
only on the epoch, and the groups only on the recipe and the model: a resumed run is the same.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from timm.models import group_parameters
from timm.optim._param_groups import auto_group_layers
from torch import nn

from ..config import check_finetune

ENCODER = "encoder."
TRUNK = "encoder.trunk."
NORM_WITH_STATS = nn.modules.batchnorm._NormBase  # BatchNorm (and timm's BatchNormAct), ...


def _encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{type(model).__name__} has no .encoder module (not a MultiTaskModel)")
    return encoder


def encoder_layers(trunk: nn.Module) -> tuple[dict[str, int], int]:
    """Trunk parameter name → depth (0: the stem) and the number of depths.

    From the timm model's own ``group_matcher`` (fine-grained: one block per depth), as timm's
    layer decay does; models without one fall back to timm's chunks of 12 parameters.
    """
    ids: dict[str, int] | None = None
    matcher = getattr(trunk, "group_matcher", None)
    if callable(matcher):
        try:
            ids = dict(group_parameters(trunk, matcher(coarse=False), reverse=True))
        except (NotImplementedError, AttributeError, TypeError):
            ids = None
    if ids is None:
        ids = dict(auto_group_layers(trunk))
    return ids, max(ids.values(), default=-1) + 1


def _no_weight_decay(model: nn.Module) -> list[str]:
    """Patterns (e.g. ``pos_embed``) the timm trunk asks to keep out of weight decay."""
    trunk = getattr(getattr(model, "encoder", None), "trunk", None)
    ask = getattr(trunk, "no_weight_decay", None)
    if not callable(ask):
        return []
    return [TRUNK + str(name) for name in ask()]


def _decays(name: str, ndim: int, exclude: Iterable[str]) -> bool:
    """timm's rule: biases and 1-d tensors (norm scales) are not decayed."""
    if ndim <= 1 or name.endswith(".bias"):
        return False
    return not any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def param_groups(model: nn.Module, trainer: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``trainer``'s lr, weight decay, encoder_lr, layer_decay.

    Each group carries its own ``lr`` and ``weight_decay`` (``name`` says what it is), so it
    works with or without a scheduler (timm's schedulers keep the ratios: they scale each
    group from its initial lr). Without ``encoder_lr`` and ``layer_decay`` the groups are
    exactly timm's default (no-decay, then decay), so older checkpoints resume unchanged.
    Heads come first: ``param_groups[0]["lr"]`` is ``trainer.lr``. Frozen parameters are
    included (see :class:`FreezeSchedule`).
    """
    check_finetune(trainer)
    lr = float(trainer.lr)
    weight_decay = float(trainer.weight_decay)
    raw_encoder_lr = getattr(trainer, "encoder_lr", None)
    layer_decay = getattr(trainer, "layer_decay", None)
    encoder_lr = lr if raw_encoder_lr is None else float(raw_encoder_lr)
    separate = raw_encoder_lr is not None or layer_decay is not None
    ids: dict[str, int] = {}
    depth = 0
    if layer_decay is not None:
        ids, depth = encoder_layers(_encoder(model).trunk)  # type: ignore[arg-type]
    exclude = _no_weight_decay(model)

    # bucket: (order, name, lr); heads first, then encoder layers from the top down
    def bucket(name: str) -> tuple[float, str, float]:
        if not separate:
            return (0, "all", lr)
        if not name.startswith(ENCODER):
            return (0, "heads", lr)
        if layer_decay is None:
            return (1, "encoder", encoder_lr)
        layer = ids.get(name.removeprefix(TRUNK), depth - 1)
        scale = float(layer_decay) ** (depth - layer)
        return (1 + depth - layer, f"encoder.layer{layer}", encoder_lr * scale)

    groups: dict[tuple[float, str, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        decays = weight_decay > 0 and _decays(name, param.ndim, exclude)
        groups.setdefault((*bucket(name), decays), []).append(param)
    out = []
    for order, name, group_lr, decays in sorted(groups, key=lambda k: (k[0], k[3])):
        out.append(
            {
                "params": groups[(order, name, group_lr, decays)],
                "lr": group_lr,
                "weight_decay": weight_decay if decays else 0.0,
                "name": name if not decays else f"{name}+decay",
            }
        )
    return out


@dataclass(frozen=True)
class FreezeSchedule:
    """The encoder is frozen for epochs ``0 .. epochs-1`` (0-based, as the training loop counts).

    Frozen: encoder parameters have ``requires_grad`` False, and the encoder's normalisation
    layers with running statistics (BatchNorm) stay in eval mode so their statistics do not
    drift either. The state is a function of the epoch alone, so a resumed run matches.
    ``epochs == 0`` touches nothing.
    """

    epochs: int = 0

    @classmethod
    def from_trainer(cls, trainer: Any) -> FreezeSchedule:
        check_finetune(trainer)
        return cls(int(getattr(trainer, "freeze_encoder_epochs", 0) or 0))

    def frozen(self, epoch: int) -> bool:
        return epoch < self.epochs

    def apply(self, model: nn.Module, epoch: int) -> bool:
        """Set the encoder's ``requires_grad`` for ``epoch``; returns whether it is frozen."""
        if self.epochs <= 0:
            return False
        frozen = self.frozen(epoch)
        for param in _encoder(model).parameters():
            param.requires_grad_(not frozen)
            if frozen:
                param.grad = None
        return frozen

    def set_train_mode(self, model: nn.Module, epoch: int) -> None:
        """``model.train()`` for ``epoch``, with a frozen encoder's BatchNorm kept in eval."""
        model.train()
        if self.apply(model, epoch):
            for module in _encoder(model).modules():
                if isinstance(module, NORM_WITH_STATS):
                    module.eval()

    def release(self, model: nn.Module) -> None:
        """Unfreeze whatever the schedule froze (after training: counts, export, later use)."""
        if self.epochs > 0:
            for param in _encoder(model).parameters():
                param.requires_grad_(True)


def set_train_mode(model: nn.Module, epoch: int, trainer: Any) -> None:
    """``model.train()`` that honours ``trainer.freeze_encoder_epochs`` (see FreezeSchedule)."""
    FreezeSchedule.from_trainer(trainer).set_train_mode(model, epoch)
