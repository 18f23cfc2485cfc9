"""Inference latency: median wall time of a forward pass per batch size.

The median of repeated runs, after warm-up runs, resists the outliers a shared machine
produces (first-call allocation, another process waking up); the thread count is recorded
because CPU timings mean little without it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LatencyResult:
    """Median milliseconds per batch, the throughput it implies, and the setting measured."""

    batch: int
    median_ms: float
    images_per_s: float
    threads: int
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures the forward pass and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    image_size: int | tuple[int, int],
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str = "cpu",
    channels: int = 3,
) -> list[LatencyResult]:
    """Time ``model`` on random (B, channels, H, W) inputs in [0, 1], for each batch size.

    Each batch size gets ``warmup`` untimed forward passes, then ``repeats`` timed ones
    (``time.perf_counter``, GPU synchronised); the result is their median. Runs use
    ``torch.inference_mode()`` with the model in eval mode (its previous mode is restored).
    ``threads`` is ``torch.get_num_threads()`` at measurement time. The model must already be
    on ``device``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be at least 1, got {list(batch_sizes)}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return [
                _time_batch(model, torch.rand(b, channels, h, w, device=device), repeats, warmup)
                for b in batch_sizes
            ]
    finally:
        model.train(was_training)


def _time_batch(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> LatencyResult:
    """The median of ``repeats`` timed forward passes after ``warmup`` untimed ones."""
    for _ in range(warmup):
        model(x)
    _sync(x.device)
    times: list[float] = []
    for _ in range(repeats):
        start = perf_counter()
        model(x)
        _sync(x.device)
        times.append(perf_counter() - start)
    median_s = statistics.median(times)
    batch = int(x.shape[0])
    return LatencyResult(
        batch=batch,
        median_ms=median_s * 1000.0,
        images_per_s=batch / median_s if median_s > 0 else float("inf"),
        threads=torch.get_num_threads(),
        device=str(x.device),
    )
