"""Distributed data parallel through PyTorch's own engine: ``torchrun`` starts the processes,
``torch.distributed`` connects them, ``DistributedDataParallel`` averages the gradients.

mtkd only decides who does what: every rank trains on its share of each global batch; rank 0
alone logs, writes checkpoints and the run folder, and evaluates once training is over.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RecipeError


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher following its convention) sets WORLD_SIZE for each process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str = "auto") -> torch.device | None:
    """Join the process group torchrun announced (gloo on the CPU, NCCL on GPUs).

    Returns this rank's device, or None when the process was not started by torchrun.
    """
    if not launched_by_torchrun():
        return None
    if not dist.is_available():
        raise RecipeError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=collective_timeout())
    global _LONG_WAIT
    # every rank calls setup, so every rank creates the group (new_group is collective); a
    # torch without gloo keeps the plain barrier and its timeout
    if _LONG_WAIT is None and dist.is_gloo_available():
        _LONG_WAIT = dist.new_group(backend="gloo", timeout=LONG_WAIT)
    return device


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for a rank that does not come: ``$MTKD_DIST_TIMEOUT_S``
    seconds, by default 30 minutes."""
    raw = os.environ.get("MTKD_DIST_TIMEOUT_S", "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise RecipeError(f"MTKD_DIST_TIMEOUT_S: '{raw}' is not a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


# A wait that may outlast a collective's timeout (the other ranks wait while each machine's
# local rank 0 builds the sample cache, which for a big data set with a face crop can take
# an hour): a gloo group of its own, whose barrier waits this long.
LONG_WAIT = datetime.timedelta(hours=24)
_LONG_WAIT: Any = None


def teardown() -> None:
    global _LONG_WAIT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _LONG_WAIT = None


def barrier() -> None:
    if is_active():
        dist.barrier()


def long_barrier() -> None:
    """A barrier that waits up to :data:`LONG_WAIT` (a plain one where :func:`setup` did not
    join the process group)."""
    if not is_active():
        return
    if _LONG_WAIT is not None:
        dist.barrier(group=_LONG_WAIT)
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process)."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(values: Sequence[torch.Tensor | float], device: torch.device) -> list[float]:
    """Sum a few scalars over ranks in one collective, in float64 so counts stay exact (in a
    single process: the values themselves)."""
    packed = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
    return [float(v) for v in all_reduce_sum(packed).tolist()]


def gather_from_ranks(
    values: Sequence[torch.Tensor | float], device: torch.device
) -> list[list[float]]:
    """Every rank's ``values`` (a few scalars, in float64), in rank order: one collective (in
    a single process: ``[values]``)."""
    packed = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
    if not is_active():
        return [[float(v) for v in packed.tolist()]]
    parts = [torch.empty_like(packed) for _ in range(world_size())]
    dist.all_gather(parts, packed)
    return [[float(v) for v in part.tolist()] for part in parts]


def average_gradients(parameters: Any) -> None:
    """Average gradients DDP does not manage (a loss-weighting strategy's own weights)."""
    if not is_active():
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= dist.get_world_size()


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts them at the start of each forward pass, so after an epoch's last step each
    rank holds statistics updated by its own share; validation, the best checkpoint and the
    distilled model must all see one set.
    """
    if is_active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    if is_active():
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor, src=0)


def broadcast_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's values in ``tensor`` on every rank, in place (a no-op in a single process)."""
    if is_active():
        dist.broadcast(tensor, src=0)
    return tensor


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run folder it created)."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_rank() -> int:
    """This process's rank on its own machine (torchrun's ``LOCAL_RANK``), 0 alone."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_active() else 0


def local_world_size() -> int:
    """Ranks on this process's machine (torchrun's ``LOCAL_WORLD_SIZE``), 1 alone."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_active() else 1


@contextmanager
def node_main_first() -> Iterator[None]:
    """Each machine's local rank 0 runs the block first, all machines at once, then every
    other rank. For the sample cache: one process per machine builds it, with that machine's
    cores (``data.cache_workers``), so machines without a shared file system each get their
    own; on a shared one they split the build (``data.cache_fs: shared``) or race safely (the
    first to finish is kept, the cache is the same bytes), and the other ranks read it."""
    if local_rank() == 0:
        yield
        long_barrier()
    else:
        long_barrier()  # however long the build takes (see LONG_WAIT)
        yield


def shard(indices: list[int], batch_size: int) -> list[int]:
    """This rank's share of an epoch's order: a strided slice of each global batch.

    A global batch of ``batch_size`` samples is split evenly, so the averaged gradient of a
    step equals that of one process seeing the whole batch. A final batch smaller than the
    number of ranks is dropped (a rank with nothing to do would stall the others).
    """
    ranks, me = world_size(), rank()
    if ranks == 1:
        return indices
    if batch_size % ranks:
        raise RecipeError(
            f"data.batch_size: the global batch ({batch_size}) must divide evenly over "
            f"{ranks} processes"
        )
    out: list[int] = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        if len(batch) < ranks:
            break
        out.extend(batch[me::ranks])
    return out
