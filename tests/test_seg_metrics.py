"""Segmentation IoU: torchmetrics' handling of absent classes, presence, and the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from mtkd.metrics.segmentation import (
    iou_from_confusion,
    iou_summary,
    jaccard_per_class,
    segmentation_iou,
)

# One 2 x 4 image, 4 classes; class 3 appears in neither target nor prediction.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [0, 0, 2, 1]]])
# class 0: tp 3 (target 0 at 4 pixels, predicted 0 at 3 of them), fp 0, fn 1 → 3/4
# class 1: tp 2, fp 2 (a 0 and a 2 predicted as 1), fn 0 → 2/4
# class 2: tp 1, fp 0, fn 1 → 1/2
# class 3: 0 / 0 → absent
EXPECTED = [0.75, 0.5, 0.5, 0.0]


def test_torchmetrics_reports_absent_classes_as_zero_and_macro_skips_them() -> None:
    """Pins the torchmetrics behaviour this module is written around (1.9)."""
    per_class = MulticlassJaccardIndex(4, average="none")(PREDS, TARGET)
    assert per_class.tolist() == pytest.approx(EXPECTED)  # absent class 3 → 0, not NaN
    macro = MulticlassJaccardIndex(4, average="macro")(PREDS, TARGET)
    assert float(macro) == pytest.approx(np.mean(EXPECTED[:3]))  # absent class left out


def test_segmentation_iou_returns_iou_and_presence() -> None:
    per_class, present = segmentation_iou(PREDS, TARGET, num_classes=4)
    assert per_class.tolist() == pytest.approx(EXPECTED)
    assert present.tolist() == [True, True, True, False]
    scores = torch.nn.functional.one_hot(PREDS, 4).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    per_class_scores, _ = segmentation_iou(scores, TARGET, num_classes=4)
    assert per_class_scores.tolist() == pytest.approx(EXPECTED)


def test_a_class_only_predicted_is_present_with_iou_zero() -> None:
    target = torch.tensor([[0, 0, 0, 1]])
    preds = torch.tensor([[0, 0, 2, 1]])
    per_class, present = segmentation_iou(preds, target, num_classes=3)
    assert per_class.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert present.tolist() == [True, True, True]  # a false positive class counts


def test_ignore_index_pixels_are_skipped_and_an_ignored_class_is_absent() -> None:
    target = TARGET.clone()
    target[0, 0, 1] = 255  # the pixel where a 0 was predicted as 1 no longer counts
    per_class, present = segmentation_iou(PREDS, target, num_classes=4, ignore_index=255)
    # class 0: tp 3, fn 0 → 1.0; class 1: tp 2, fp 1 → 2/3; class 2 unchanged
    assert per_class.tolist() == pytest.approx([1.0, 2 / 3, 0.5, 0.0])
    _, present = segmentation_iou(PREDS, TARGET, num_classes=4, ignore_index=0)
    assert present.tolist() == [False, True, True, False]


def test_jaccard_per_class_reads_a_metric_updated_batch_by_batch() -> None:
    metric = MulticlassJaccardIndex(4, average="macro")
    metric.update(PREDS[:, :1], TARGET[:, :1])
    metric.update(PREDS[:, 1:], TARGET[:, 1:])
    per_class, present = jaccard_per_class(metric)
    assert per_class.tolist() == pytest.approx(EXPECTED)
    assert present.tolist() == [True, True, True, False]
    assert float(metric.compute()) == pytest.approx(per_class[present].mean())


def test_iou_from_confusion_rejects_a_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="C, C"):
        iou_from_confusion(np.zeros((2, 3)))


def test_iou_summary_with_and_without_background() -> None:
    names = ["background", "skin", "hair", "hat"]
    summary = iou_summary(EXPECTED, [True, True, True, False], names)
    assert summary["mean_iou"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert summary["mean_iou_no_background"] == pytest.approx(0.5)
    assert summary["classes_present"] == 3
    assert summary["classes_absent"] == ["hat"]
    assert summary["per_class"] == {"background": 0.75, "skin": 0.5, "hair": 0.5, "hat": None}
    no_bg = iou_summary(EXPECTED, [True, True, True, False], names, background_index=None)
    assert no_bg["mean_iou_no_background"] == no_bg["mean_iou"]


def test_iou_summary_when_nothing_but_background_is_present() -> None:
    summary = iou_summary([1.0, 0.0], [True, False], ["bg", "fg"])
    assert summary["mean_iou"] == 1.0
    assert summary["mean_iou_no_background"] is None


@pytest.mark.parametrize(
    ("iou", "present", "names", "background", "message"),
    [
        ([0.5, 0.5], [True], ["a", "b"], 0, "one entry per class"),
        ([0.5, 0.5], [True, True], ["a"], 0, "one entry per class"),
        ([0.5, 0.5], [True, True], ["a", "a"], 0, "unique"),
        ([0.5, 0.5], [True, True], ["a", "b"], 2, "background_index"),
    ],
)
def test_iou_summary_rejects_inconsistent_input(
    iou: list[float], present: list[bool], names: list[str], background: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        iou_summary(iou, present, names, background_index=background)
