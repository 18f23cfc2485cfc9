"""Segmentation IoU: per class, and mean IoU with and without the background class.

Mean IoU must skip classes that occur neither in the targets nor in the predictions: their
IoU is 0 / 0, undefined. torchmetrics' ``MulticlassJaccardIndex(average="none")`` reports
them as ``zero_division`` (0 by default — indistinguishable from a class that was always
missed), while its ``average="macro"`` leaves them out (in torchmetrics 1.9 it weights a
class whose confusion-matrix row and column are empty by 0; a test pins both behaviours).
So the IoU here comes from torchmetrics, and *presence* is read from the same accumulated
confusion matrix — a class is present when any pixel has it as target or as prediction —
instead of trusting a 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    # torchmetrics loads matplotlib: mtkd.iou_summary / mtkd.jaccard_per_class (public, for
    # task plugins) must not, so only the function that builds a metric imports it
    from torchmetrics.classification import MulticlassJaccardIndex


def iou_from_confusion(
    confmat: torch.Tensor | np.ndarray, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(per_class_iou, present)`` from a (C, C) confusion matrix (rows target, cols pred).

    IoU is ``tp / (tp + fp + fn)``; classes absent from both targets and predictions get
    IoU 0 and ``present=False``. A class equal to ``ignore_index`` is never present.
    """
    cm = torch.as_tensor(confmat).double()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (C, C), got shape {tuple(cm.shape)}")
    tp = torch.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    present = (cm.sum(0) + cm.sum(1)) > 0
    if ignore_index is not None and 0 <= ignore_index < cm.shape[0]:
        present[ignore_index] = False
    return iou.numpy(), present.numpy()


def jaccard_per_class(metric: MulticlassJaccardIndex) -> tuple[np.ndarray, np.ndarray]:
    """``(per_class_iou, present)`` of an updated ``MulticlassJaccardIndex`` (any ``average``).

    Use it on the metric an evaluation loop has been updating batch by batch: the metric
    keeps the confusion matrix (its ``confmat`` state), from which both are read.
    """
    return iou_from_confusion(metric.confmat.detach().cpu(), metric.ignore_index)


def segmentation_iou(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and class presence for predictions against targets, via torchmetrics.

    ``preds`` are class indices (N, ...) or scores (N, C, ...), argmax'd over C; ``target``
    holds class indices (N, ...); pixels whose target is ``ignore_index`` are skipped. The
    IoU is torchmetrics' ``MulticlassJaccardIndex(average="none")``.
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index)
    metric.update(preds.detach().cpu(), target.detach().cpu())
    per_class = metric.compute().double().numpy()
    _, present = jaccard_per_class(metric)
    return per_class, present


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def iou_summary(
    per_class_iou: Sequence[float] | np.ndarray,
    present: Sequence[bool] | np.ndarray,
    class_names: Sequence[str],
    background_index: int | None = 0,
) -> dict[str, Any]:
    """Mean IoU over present classes (with and without background) and IoU per class name.

    Returns ``mean_iou`` (over present classes), ``mean_iou_no_background`` (present classes
    other than ``background_index``; ``None`` for no background class gives the same set),
    ``classes_present``, ``classes_absent`` (names), and ``per_class`` (name → IoU, ``None``
    for an absent class, whose 0 from torchmetrics means "no data", not "always wrong").
    A mean over no class is ``None``.
    """
    iou = np.asarray(per_class_iou, dtype=np.float64)
    mask = np.asarray(present, dtype=bool)
    names = list(class_names)
    if iou.ndim != 1 or mask.shape != iou.shape or len(names) != iou.size:
        raise ValueError(
            f"per_class_iou, present and class_names must have one entry per class, got "
            f"{iou.shape}, {mask.shape} and {len(names)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    if background_index is not None and not 0 <= background_index < iou.size:
        raise ValueError(f"background_index {background_index} is not a class index")
    foreground = mask.copy()
    if background_index is not None:
        foreground[background_index] = False
    return {
        "mean_iou": _mean(iou[mask]),
        "mean_iou_no_background": _mean(iou[foreground]),
        "classes_present": int(mask.sum()),
        "classes_absent": [n for n, p in zip(names, mask, strict=True) if not p],
        "per_class": {
            n: (float(v) if p else None) for n, v, p in zip(names, iou, mask, strict=True)
        },
    }
