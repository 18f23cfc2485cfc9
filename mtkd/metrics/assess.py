"""The full evaluation of a trained model: what ``results.json`` reports beyond the losses.

- task metrics on the test split, for the full model (teachers included) and the inference
  model;
- accuracy per bin of a vector label (yaw by default), for every classification task;
- with ``evaluate.gallery_where``, gallery/probe identification of the test split (rank-1
  overall and per bin, beside the classifier's accuracy on the same probes);
- the confusion matrix of every classification task;
- 10-fold pair verification (LFW protocol) for every task whose head outputs an
  ``embedding``: on the held-out groups when ``data.split.holdout`` > 0, else on the test split;
- latency of both models at batch 1 and 32.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ..data.build import DataBundle, TensorView, make_eval_loader
from ..data.where import describe, resolve_where, where_mask
from ..errors import DataError
from ..model.embedding import embed_with_flip
from ..model.losses import labelled_outputs
from ..model.multitask import MultiTaskModel
from ..samples import to_device
from .evaluate import evaluate_loader
from .gallery import Bins, gallery_section
from .latency import measure_latency
from .lfw_pairs import read_lfw_pairs
from .pair_generation import generate_pairs
from .pairs import Pair, PairList, index_pairs, pair_labels
from .pose import accuracy_by_bin
from .verification import pair_distances
from .verification import verification_accuracy as lfw_accuracy


def _bin_column(data: DataBundle, cfg: DictConfig) -> int | None:
    space = data.label_spaces.get(cfg.evaluate.bin_label)
    if space is None or space.kind != "vector" or cfg.evaluate.bin_component not in space.names:
        return None
    return space.names.index(cfg.evaluate.bin_component)


@torch.no_grad()
def _classification_outputs(
    model: MultiTaskModel,
    loader: DataLoader,
    device: torch.device,
    bin_label: str,
    column: int | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per classification task (per-sample class labels): predictions, targets, bin values."""
    model.eval()
    found: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for raw in loader:
        batch = to_device(raw, device)
        outputs = model(batch["image"])
        for key, task, output, target in labelled_outputs(outputs, batch, model.tasks):
            scores = task.predictions(output)
            if target is None or scores.ndim != 2 or target.ndim != 1:
                continue
            found[key]["pred"].append(scores.argmax(1).cpu().numpy())
            found[key]["target"].append(target.cpu().numpy())
            present = raw["present"][task.label_key]
            has_bin = raw["present"].get(bin_label)
            if column is not None and has_bin is not None and bool(has_bin[present].all()):
                found[key]["bin"].append(raw[bin_label][present][:, column].numpy())
    return {k: {n: np.concatenate(v) for n, v in parts.items()} for k, parts in found.items()}


def _confusion(pred: np.ndarray, target: np.ndarray, n: int) -> list[list[int]]:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (target, pred), 1)
    return matrix.tolist()


@torch.no_grad()
def _embeddings(
    model: MultiTaskModel, key: str, loader: DataLoader, device: torch.device, label_key: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flip-summed, normalised embeddings of the samples carrying ``label_key``, with those
    labels as groups; ``label_key`` None: every sample in order (a pairs file's people need
    not be classes of the head), no groups."""
    model.eval()
    chunks, groups = [], []
    for raw in loader:
        every = torch.ones(raw["image"].shape[0], dtype=torch.bool)
        keep = raw["present"].get(label_key) if label_key else every
        if keep is None or not bool(keep.any()):
            continue
        images = raw["image"][keep].to(device)
        chunks.append(embed_with_flip(lambda x: model(x)[key]["embedding"], images))
        if label_key:
            groups.append(raw[label_key][keep].numpy())
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return embeddings, np.concatenate(groups) if groups else np.zeros(0, np.int64)


def _pairs_from_file(data: DataBundle, path: str) -> tuple[PairList[int], TensorView]:
    """The pairs of an LFW pairs.txt as indices into a view of just the samples they name."""
    names = data.cached.names
    if names is None:
        raise DataError(f"evaluate.pairs_file: the data set gives its samples no names ({path})")
    listed = read_lfw_pairs(path)
    by_name = {name: i for i, name in enumerate(names)}
    keys = {key for pair in listed for key in (pair.a, pair.b)}
    named = {key: f"{key[0]}_{key[1]:04d}" for key in keys}  # LFW: ("Name", 1) is Name_0001
    index = {key: by_name[name] for key, name in named.items() if name in by_name}
    pairs = index_pairs(listed, index, source=path)  # names every sample the file lacks
    used = sorted({i for p in pairs for i in (p.a, p.b)})
    position = {sample: row for row, sample in enumerate(used)}
    view = TensorView(data.cached, np.asarray(used, dtype=np.int64))
    return [Pair(position[p.a], position[p.b], p.same, p.fold) for p in pairs], view


def _verification(
    model: MultiTaskModel, data: DataBundle, cfg: DictConfig, device: torch.device
) -> dict[str, Any]:
    listed: PairList[int] | None = None
    if cfg.evaluate.pairs_file:
        listed, view = _pairs_from_file(data, cfg.evaluate.pairs_file)
        on = Path(cfg.evaluate.pairs_file).name
    elif len(data.holdout):
        on, view = "holdout", data.holdout
    else:
        on, view = "test", data.test
    if len(view) == 0:
        return {}
    loader = make_eval_loader(view, cfg.data)
    out: dict[str, Any] = {}
    model.eval()
    with torch.no_grad():
        sample_output = model(view[0]["image"][None].to(device))
    for key, output in sample_output.items():
        if not (isinstance(output, dict) and "embedding" in output):
            continue
        label_key = None if listed is not None else model.tasks[key].label_key
        embeddings, groups = _embeddings(model, key, loader, device, label_key)
        if listed is not None:
            same, folds = pair_labels(listed)
            result = lfw_accuracy(pair_distances(embeddings, listed), same, folds)
            out[key] = {"on": on, **result.to_dict()}
            continue
        if len(np.unique(groups)) < 2:
            out[key] = {"on": on, "skipped": "fewer than two groups to pair"}
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pairs = generate_pairs(
                    groups.tolist(),
                    cfg.evaluate.folds,
                    cfg.evaluate.pairs_per_fold,
                    seed=cfg.data.split.seed,
                )
            except Exception as exc:  # too few samples for the protocol: say so, do not crash
                out[key] = {"on": on, "skipped": str(exc)}
                continue
        same, folds = pair_labels(pairs)
        result = lfw_accuracy(pair_distances(embeddings, pairs), same, folds)
        out[key] = {"on": on, **result.to_dict(), "notes": [str(w.message) for w in caught]}
    return out


def assess(
    model: MultiTaskModel,
    inference_model: MultiTaskModel,
    data: DataBundle,
    cfg: DictConfig,
    device: torch.device,
    *,
    closed_set: bool = True,
) -> dict[str, Any]:
    """Everything after training, for ``results.json``.

    ``closed_set=False`` (data whose classes are not the ones the heads were trained on):
    only verification, on every sample, and latency.
    """
    evaluation = cfg.evaluate
    results: dict[str, Any] = {}
    if closed_set:
        results.update(_closed_set(model, inference_model, data, cfg, device))
    if evaluation.verification:
        results["verification"] = _verification(inference_model, data, cfg, device)
    if evaluation.latency:
        size = cfg.data.image_size
        batches, repeats = list(evaluation.latency_batches), evaluation.latency_repeats
        results["latency"] = {
            name: [r.to_dict() for r in measure_latency(m, size, batches, repeats, device=device)]
            for name, m in (("full", model), ("inference", inference_model))
        }
    return results


def _closed_set(
    model: MultiTaskModel,
    inference_model: MultiTaskModel,
    data: DataBundle,
    cfg: DictConfig,
    device: torch.device,
) -> dict[str, Any]:
    evaluation = cfg.evaluate
    loader = make_eval_loader(data.test, cfg.data)
    results: dict[str, Any] = {
        "test": {
            "full": evaluate_loader(model, loader, device),
            "distilled": evaluate_loader(inference_model, loader, device),
        }
    }
    column = _bin_column(data, cfg)
    outputs = _classification_outputs(inference_model, loader, device, evaluation.bin_label, column)
    results["confusion"] = {
        key: _confusion(o["pred"], o["target"], inference_model.tasks[key].num_classes)
        for key, o in outputs.items()
    }
    if evaluation.get("gallery_where"):
        results["gallery"] = _gallery(inference_model, data, cfg, device, outputs)
    if column is not None:
        results["accuracy_by_bin"] = {
            "label": evaluation.bin_label,
            "component": evaluation.bin_component,
            "tasks": {
                key: [
                    b.to_dict()
                    for b in accuracy_by_bin(
                        o["pred"] == o["target"],
                        o["bin"],
                        evaluation.bin_width,
                        evaluation.bin_low,
                        evaluation.bin_high,
                    )
                ]
                for key, o in outputs.items()
                if len(o.get("bin", ())) == len(o["target"])
            },
        }
    return results


@torch.no_grad()
def _embedding_keys(model: MultiTaskModel, view: TensorView, device: torch.device) -> set[str]:
    """The tasks whose head outputs an ``embedding``."""
    model.eval()
    outputs = model(view[0]["image"][None].to(device))
    return {k for k, o in outputs.items() if isinstance(o, dict) and "embedding" in o}


def _bin_values(data: DataBundle, cfg: DictConfig, rows: np.ndarray) -> np.ndarray | None:
    """The binned component (``evaluate.bin_*``) of each row; NaN where a sample lacks it."""
    column = _bin_column(data, cfg)
    label = cfg.evaluate.bin_label
    if column is None or label not in data.cached.labels:
        return None
    values = np.asarray(data.cached.labels[label][rows, column], dtype=np.float64)
    return np.where(data.cached.present[label][rows], values, np.nan)


def _gallery(
    model: MultiTaskModel,
    data: DataBundle,
    cfg: DictConfig,
    device: torch.device,
    outputs: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Gallery/probe identification of the test split for every task with an embedding whose
    labels the classifier scored (the same samples, in the same order)."""
    evaluation = cfg.evaluate
    raw = evaluation.gallery_where
    ranges = resolve_where(raw, "evaluate.gallery_where", data.label_spaces)
    loader = make_eval_loader(data.test, cfg.data)
    bins = Bins(evaluation.bin_width, evaluation.bin_low, evaluation.bin_high)
    tasks: dict[str, Any] = {}
    embedded = _embedding_keys(model, data.test, device) if len(data.test) else set()
    for key, scored in outputs.items():
        if key not in embedded:
            continue
        label_key = model.tasks[key].label_key
        indices = data.test.indices
        rows = indices[np.asarray(data.cached.present[label_key][indices], dtype=bool)]
        embeddings, groups = _embeddings(model, key, loader, device, label_key)
        if len(groups) != len(scored["target"]) or len(groups) != len(rows):
            continue  # labels the classifier did not score
        gallery, _ = where_mask(ranges, data.cached, rows)
        hit = scored["pred"] == scored["target"]
        values = _bin_values(data, cfg, rows)
        seed = cfg.data.split.seed
        tasks[key] = gallery_section(
            embeddings, groups, gallery, hit, values, bins, evaluation.folds, seed
        )
    out: dict[str, Any] = {
        "where": describe(raw),
        "label": evaluation.bin_label,
        "component": evaluation.bin_component,
        "tasks": tasks,
    }
    empty = sorted(key for key, section in tasks.items() if not section["gallery_samples"])
    if empty:  # nothing enrolled: every rank-1 is missing, which must not pass unnoticed
        out["warning"] = (
            f"evaluate.gallery_where {describe(raw)} selects no test image as gallery "
            f"(task(s) {', '.join(empty)}): no rank-1; widen the range"
        )
        warnings.warn(out["warning"], stacklevel=2)
    return out
