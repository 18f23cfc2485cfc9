"""Latency: the median of timed runs, the threads used, and the model's mode left alone."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mtkd.metrics import latency
from mtkd.metrics.latency import LatencyResult, measure_latency


class Recorder(nn.Module):
    """Counts calls and records input shapes and whether autograd was off."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.shapes: list[tuple[int, ...]] = []
        self.inference: list[bool] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(x.shape))
        self.inference.append(torch.is_inference_mode_enabled())
        return {"out": self.conv(x)}


def test_median_of_timed_runs_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each timed run reads the clock twice: runs of 4, 1, 3 ms (batch 1), then 10, 30, 20 ms.
    durations = [0.004, 0.001, 0.003, 0.010, 0.030, 0.020]
    ticks = itertools.chain.from_iterable((0.0, d) for d in durations)
    monkeypatch.setattr(latency, "perf_counter", lambda: next(ticks))  # only mtkd's clock
    model = Recorder()
    results = measure_latency(model, 8, batch_sizes=(1, 4), repeats=3, warmup=2)
    threads = torch.get_num_threads()
    assert all(isinstance(r, LatencyResult) for r in results)
    assert [(r.batch, r.threads, r.device) for r in results] == [
        (1, threads, "cpu"),
        (4, threads, "cpu"),
    ]
    assert [r.median_ms for r in results] == pytest.approx([3.0, 20.0])
    assert [r.images_per_s for r in results] == pytest.approx([1 / 0.003, 200.0])
    assert model.shapes == [(1, 3, 8, 8)] * 5 + [(4, 3, 8, 8)] * 5  # 2 warm-up + 3 timed each
    assert all(model.inference)
    assert results[0].to_dict()["median_ms"] == pytest.approx(3.0)


def test_real_timing_restores_training_mode() -> None:
    model = Recorder().train()
    (result,) = measure_latency(model, (6, 10), batch_sizes=(2,), repeats=2, warmup=0)
    assert model.training
    assert result.batch == 2 and result.median_ms > 0 and result.images_per_s > 0
    assert model.shapes[-1] == (2, 3, 6, 10)


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch_sizes": (0,)}])
def test_bad_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure_latency(Recorder(), 8, **kwargs)
