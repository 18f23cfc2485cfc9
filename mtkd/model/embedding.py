"""The one embedding rule: an image's embedding is its own plus its mirror image's, summed,
then L2-normalised (InsightFace's verification rule).

Verification and the gallery score these vectors, and ``mtkd embed`` and
``Predictor.embed`` hand out the same ones; the rule lives in the model stage so that both
the metrics and deployment import it downward.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (as ``F.normalize`` does)."""
    x = np.asarray(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def embed_with_flip(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | np.ndarray,
    batch_size: int | None = None,
    *,
    flip: bool = True,
) -> np.ndarray:
    """Embeddings of ``images`` (N, C, H, W), each summed with its horizontal flip's, L2-normalised.

    InsightFace's verification (``arcface_torch/eval/verification.py``) does exactly this:
    ``normalize(f(x) + f(flip(x)))`` — the raw embeddings are summed, then normalised once.
    ``model_fn`` maps a batch to (N, D) embeddings; it runs under ``torch.inference_mode``
    in chunks of ``batch_size`` (all at once when ``None``). Returns float32 (N, D).
    The one embedding rule of mtkd: verification, ``mtkd embed`` and ``Predictor.embed`` all
    call it, so the vectors a user gets are the ones verification scored (``flip=False``:
    the image alone, normalised).
    """
    batch = torch.as_tensor(images)
    if batch.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(batch.shape)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    step = batch_size or max(batch.shape[0], 1)
    chunks: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, batch.shape[0], step):
            x = batch[start : start + step]
            summed = model_fn(x)
            if flip:
                summed = summed + model_fn(torch.flip(x, dims=(-1,)))
            chunks.append(summed.detach().float().cpu().reshape(x.shape[0], -1))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return l2_normalize(torch.cat(chunks).numpy().astype(np.float32))
