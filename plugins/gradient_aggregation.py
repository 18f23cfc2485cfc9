"""Gradient aggregators (Jacobian descent) through TorchJD: UPGrad, MGDA, PCGrad, CAGrad,
Nash-MTL, IMTL-G, DualProj, GradDrop, Aligned-MTL, ConFIG, random, mean and sum.

A loss weighting scales each task's loss; an aggregator instead looks at every task's
gradient on the shared encoder (one row each of the Jacobian) and picks the update from them,
e.g. by removing the components that conflict. Select one with
``trainer.weighting: {name: aggregate, method: upgrad, ...}``; the other keys are the
TorchJD aggregator's own options. As TorchJD's ``mtl_backward`` does, each head gets its own
task's gradient, and the encoder the aggregate of its Jacobian's rows; mtkd's heads read
nested encoder outputs (taps inside the trunk, and its final features), so the chain rule is
taken in two steps: each task's gradient with respect to those outputs, through its head
alone, then one vmapped ``torchjd.autojac.jac`` through the encoder for all tasks.

- row k is task k's loss x its recipe ``weight`` (``task_weights: false`` drops the weights),
  so ``method: sum`` is the fixed weighting's update and the heads train as they do with it;
- a task no sample of the (global) batch labels has no row that step (with one row left,
  the encoder gets that task's gradient);
- under DDP the Jacobian is averaged over ranks (as DDP averages gradients) and then
  aggregated: the aggregator sees the global batch's conflicts, every rank gets rank 0's
  result, and the ranks stay identical bit for bit (it costs one all-reduce of a gradient
  per task instead of one gradient);
- fp16: rows are scaled by the GradScaler and unscaled before aggregating (not every
  aggregator is scale-equivariant); a non-finite Jacobian is left for the scaler to skip;
- with the encoder frozen each head learns from its own task's loss.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchjd import aggregation as agg
from torchjd.autojac import jac

import mtkd
from mtkd import (
    EncoderOutputs,
    LossWeighting,
    did_you_mean,
    distributed,
    parse_options,
    weighted_sum,
)

KEY = "trainer.weighting"


@dataclass(frozen=True)
class Method:
    """How a recipe's ``method`` builds its TorchJD aggregator."""

    cls: type[agg.Aggregator]
    per_task: tuple[str, ...] = ()  # options with one value per task (kept for the live rows)
    fixed: tuple[str, ...] = ()  # constructor arguments a recipe cannot give (objects)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # for required arguments
    sized: bool = False  # takes n_tasks: the number of rows it is given


METHODS: dict[str, Method] = {
    "upgrad": Method(agg.UPGrad, per_task=("pref_vector",), fixed=("projector",)),
    "mgda": Method(agg.MGDA),
    "pcgrad": Method(agg.PCGrad),
    "cagrad": Method(agg.CAGrad, defaults={"c": 0.5}),  # LibMTL's default radius
    "nash_mtl": Method(agg.NashMTL, sized=True),
    "imtl_g": Method(agg.IMTLG),
    "dualproj": Method(agg.DualProj, per_task=("pref_vector",), fixed=("projector",)),
    "graddrop": Method(agg.GradDrop, per_task=("leak",), fixed=("f",)),
    "aligned_mtl": Method(agg.AlignedMTL, per_task=("pref_vector",)),
    "config": Method(agg.ConFIG, per_task=("pref_vector",)),
    "random": Method(agg.Random),
    "mean": Method(agg.Mean),
    "sum": Method(agg.Sum),
}

OWN_OPTIONS = ("method", "task_weights", "parallel_chunk_size")


@dataclass
class AggregateOptions:
    method: str = "upgrad"  # a key of METHODS
    task_weights: bool = True  # scale each task's row by its recipe weight
    # tasks per vmapped encoder pass; 1: no vmap; null: all on a GPU, 1 on the CPU or in bf16/fp16
    parallel_chunk_size: int | None = None
    aggregator: dict[str, Any] = field(default_factory=dict)  # the method's own options


class GradientAggregation(LossWeighting[AggregateOptions]):
    """Jacobian descent on the shared encoder with one of TorchJD's aggregators."""

    name = "aggregate"
    aggregates_gradients = True
    weight_sum: torch.Tensor  # buffers: a mid-epoch checkpoint keeps the epoch's running means
    weight_steps: torch.Tensor
    cos_sum: torch.Tensor
    cos_steps: torch.Tensor
    epoch_weights: torch.Tensor
    epoch_cos: torch.Tensor
    share_sum: torch.Tensor
    epoch_share: torch.Tensor

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> AggregateOptions:
        values = {str(k): _plain(v) for k, v in raw.items()}
        own = {k: values.pop(k) for k in OWN_OPTIONS if k in values}
        options: AggregateOptions = parse_options(AggregateOptions, own, key)
        options.method = known_method(options.method, key)
        options.aggregator = _checked_names(options.method, values, key)
        return options

    def __init__(self, tasks: Any, options: AggregateOptions, shared: Any) -> None:
        super().__init__(tasks, options, shared)
        self.method = METHODS[options.method]
        self.kwargs = _per_task_in_order(self.method, options.aggregator, self.keys)
        self.row_weights = [
            float(t.weight) if options.task_weights else 1.0 for t in self.tasks.values()
        ]
        self._aggregators: dict[tuple[int, ...], agg.Aggregator] = {}
        self._weights_seen: torch.Tensor | None = None
        k = len(self.keys)
        for name, shape in [("weight", (k,)), ("cos", (k, k))]:
            self.register_buffer(f"{name}_sum", torch.zeros(shape))
            self.register_buffer(f"{name}_steps", torch.zeros(shape))
        self.register_buffer("epoch_weights", torch.full((k,), float("nan")))
        self.register_buffer("epoch_cos", torch.full((k, k), float("nan")))
        self.register_buffer("share_sum", torch.zeros(k))  # steps counted in weight_steps
        self.register_buffer("epoch_share", torch.full((k,), float("nan")))
        # options the TorchJD class refuses fail now, naming their key
        build_aggregator(self.method, self.kwargs, tuple(range(k)), torch.device("cpu"))

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        """The rows' sum (``method: sum``'s update); :meth:`backward` does not use it."""
        return weighted_sum(losses, dict(zip(self.keys, self.row_weights, strict=True)))

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        counts: Mapping[str, int],
        scaler: torch.amp.GradScaler | None = None,
        features: EncoderOutputs | None = None,
    ) -> None:
        rows = [losses[k] * w for k, w in zip(self.keys, self.row_weights, strict=True)]
        if scaler is not None:  # fp16: every gradient carries the scaler's scale
            rows = [scaler.scale(row) for row in rows]
        scale = 1.0 if scaler is None else float(scaler.get_scale())
        shared = [p for p in self.shared if p.requires_grad]
        live = [i for i, f in enumerate(features.outputs) if f.requires_grad] if features else []
        if not shared or not live:  # the encoder is frozen: each head learns from its own task
            torch.stack([r.float() for r in rows]).sum().backward()
            return
        assert features is not None
        outputs = [features.outputs[i] for i in live]
        through_heads = _head_backward(rows, [features.cut[i] for i in live])
        chunk = self.options.parallel_chunk_size or _chunk_for(outputs)
        blocks = jac(outputs, shared, jac_outputs=through_heads, parallel_chunk_size=chunk)
        jacobian = torch.cat([b.reshape(b.shape[0], -1).float() for b in blocks], 1).div_(scale)
        jacobian, active = _over_ranks(jacobian, [counts[k] for k in self.keys])
        update = self._aggregate(jacobian, active)
        _set_gradients(shared, update.mul_(scale))

    def _aggregate(self, jacobian: torch.Tensor, active: tuple[int, ...]) -> torch.Tensor:
        """The encoder's update from the rows of the labelled tasks (the same on every rank)."""
        rows = jacobian[list(active)]
        if not active or not bool(torch.isfinite(rows).all()):
            return jacobian.sum(0)  # nothing to aggregate, or infinities the GradScaler skips
        if len(active) == 1:  # one labelled task: its gradient, whatever the method
            self._record(rows, active, rows.new_ones(1))
            return rows[0]
        self._weights_seen = None
        try:
            with warnings.catch_warnings():  # cvxpy's note that Nash-MTL's problem is not DPP
                warnings.filterwarnings("ignore", message=".*not DPP", category=UserWarning)
                update = self._aggregator(active)(rows)
        except Exception as exc:  # a solver that failed on these gradients
            raise mtkd.MtkdError(
                f"{KEY}.method={self.options.method}: the aggregator failed on this step's "
                f"task gradients: {type(exc).__name__}: {exc}"
            ) from exc
        weights = self._weights_seen
        packed = torch.cat([update, weights.to(update)]) if weights is not None else update
        distributed.broadcast_tensor(packed)  # one answer, even from a randomised method
        update = packed[: update.numel()]
        self._record(rows, active, packed[update.numel() :] if weights is not None else None)
        return update

    def _aggregator(self, active: tuple[int, ...]) -> agg.Aggregator:
        """One aggregator per set of live rows: a stateful one (Nash-MTL) keeps a state each."""
        if active not in self._aggregators:
            aggregator = build_aggregator(self.method, self.kwargs, active, self.epoch_cos.device)
            if isinstance(aggregator, agg.WeightedAggregator):
                aggregator.weighting.register_forward_hook(self._keep_weights)
            self._aggregators[active] = aggregator
        return self._aggregators[active]

    def _keep_weights(self, _module: Any, _inputs: Any, weights: torch.Tensor) -> None:
        self._weights_seen = weights.detach()

    @torch.no_grad()
    def _record(
        self, rows: torch.Tensor, active: tuple[int, ...], weights: torch.Tensor | None
    ) -> None:
        """Running sums of the effective task weights and of the task gradients' cosines."""
        idx = torch.tensor(active, device=self.cos_sum.device)
        gram = (rows.double() @ rows.double().T).to(self.cos_sum)
        norms = gram.diagonal().sqrt()
        valid = (norms[:, None] > 0) & (norms[None, :] > 0)
        cos = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
        grid = (idx[:, None], idx[None, :])
        self.cos_sum[grid] += torch.where(valid, cos, torch.zeros_like(cos))
        self.cos_steps[grid] += valid.to(self.cos_steps)
        if weights is not None:
            row_weights = torch.tensor(self.row_weights, device=idx.device)[idx]
            self.weight_sum[idx] += weights.to(self.weight_sum) * row_weights
            self.weight_steps[idx] += 1
            # each row's part of the update: |its coefficient| x its length, as a share
            part = weights.to(norms).abs() * norms
            self.share_sum[idx] += part / part.sum().clamp_min(1e-30)

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        self.epoch_weights.copy_(self.weight_sum / self.weight_steps)  # 0/0: NaN, not logged
        self.epoch_share.copy_(self.share_sum / self.weight_steps)
        self.epoch_cos.copy_(self.cos_sum / self.cos_steps)
        running = (self.weight_sum, self.weight_steps, self.share_sum, self.cos_sum, self.cos_steps)
        for values in running:
            values.zero_()

    def current_weights(self) -> dict[str, float]:
        """The epoch's mean weight on each task's loss: its coefficient in the encoder's
        update (update = sum of weight x the loss's gradient; aggregator weight x recipe
        weight). A coefficient, not a share: a method that projects (PCGrad) puts a large one
        on a row that is much shorter than a row it conflicts with; ``update_share`` says how
        much of the update each task made."""
        return _finite(zip(self.keys, self.epoch_weights.tolist(), strict=True))

    def epoch_metrics(self) -> dict[str, float]:
        """``grad_cos/<a>__<b>``: the epoch's mean cosine between two tasks' gradients on the
        encoder (negative: they conflict); ``update_share/<task>``: the epoch's mean share of
        the update that came from the task's row (|coefficient| x row length, over the sum of
        those; comparable across methods, whatever their coefficients' scale)."""
        pairs = [
            (f"grad_cos/{a}__{b}", float(self.epoch_cos[i, j]))
            for i, a in enumerate(self.keys)
            for j, b in enumerate(self.keys)
            if i < j
        ]
        shares = [
            (f"update_share/{k}", v)
            for k, v in zip(self.keys, self.epoch_share.tolist(), strict=True)
        ]
        return _finite(pairs + shares)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Checkpoints from before ``update_share`` lack its buffers: they start empty."""
        for name, value in (("share_sum", 0.0), ("epoch_share", float("nan"))):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        """Nash-MTL's state (its last weights and step), per set of live rows."""
        return {
            ",".join(map(str, rows)): nash_state(aggregator)
            for rows, aggregator in self._aggregators.items()
            if isinstance(aggregator, agg.NashMTL)
        }

    def set_extra_state(self, state: Any) -> None:
        for name, saved in dict(state).items():
            rows = tuple(int(i) for i in name.split(",")) if name else ()
            restore_nash_state(self._aggregator(rows), saved)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _finite(pairs: Any) -> dict[str, float]:
    return {key: value for key, value in pairs if np.isfinite(value)}


def known_method(name: str, key: str) -> str:
    """The METHODS key a recipe's ``method`` names (case and dashes ignored)."""
    normal = str(name).lower().replace("-", "_")
    if normal not in METHODS:
        raise mtkd.RecipeError(
            f"{key}.method: unknown gradient aggregator '{name}'" + did_you_mean(normal, METHODS)
        )
    return normal


def _checked_names(method: str, values: dict[str, Any], key: str) -> dict[str, Any]:
    """The method's options, every name one its TorchJD class takes from a recipe."""
    spec = METHODS[method]
    params = inspect.signature(spec.cls).parameters
    settable = [n for n in params if n not in spec.fixed and n != "n_tasks"]
    for name in values:
        if name not in settable:
            takes = ", ".join(settable) or "no options of its own"
            raise mtkd.RecipeError(
                f"unknown key '{key}.{name}': method '{method}' takes {takes}"
                + did_you_mean(name, [*settable, *OWN_OPTIONS])
            )
    return {**spec.defaults, **values}


def _per_task_in_order(method: Method, options: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Per-task options (a mapping by task, or a list in the recipe's task order) as lists."""
    out = dict(options)
    for name in method.per_task:
        value = out.get(name)
        if isinstance(value, Mapping):
            if set(value) != set(keys):
                raise mtkd.RecipeError(
                    f"{KEY}.{name}: needs one value per task, for exactly {', '.join(keys)} "
                    f"(got {', '.join(map(str, value))})"
                )
            out[name] = [float(value[k]) for k in keys]
        elif value is not None:
            if not isinstance(value, Sequence) or len(value) != len(keys):
                raise mtkd.RecipeError(
                    f"{KEY}.{name}: needs one value per task ({', '.join(keys)}), "
                    f"as a list in that order or a mapping by task; got {value!r}"
                )
            out[name] = [float(v) for v in value]
    return out


def build_aggregator(
    method: Method, kwargs: dict[str, Any], rows: tuple[int, ...], device: torch.device
) -> agg.Aggregator:
    """The TorchJD aggregator for these live rows; a refused option names its recipe key."""
    values = dict(kwargs)
    for name in method.per_task:
        if values.get(name) is not None:
            values[name] = torch.tensor([values[name][i] for i in rows], device=device)
    if method.sized:
        values["n_tasks"] = max(len(rows), 1)
    try:
        return method.cls(**values)
    except ImportError as exc:  # CAGrad, Nash-MTL and the dual-cone projector's solvers
        raise mtkd.RecipeError(f"{KEY}.method: {exc}") from exc
    except (ValueError, TypeError) as exc:
        named = [n for n in kwargs if n in str(exc)]
        where = f"{KEY}.{named[0]}" if named else f"{KEY} ({', '.join(kwargs) or 'defaults'})"
        raise mtkd.RecipeError(f"{where}: {exc}") from exc


def nash_state(aggregator: agg.NashMTL) -> dict[str, Any]:
    """The part of Nash-MTL's state that carries over steps: its step count and last weights."""
    inner = _nash_internals(aggregator)
    return {"step": float(inner.step), "alpha": torch.as_tensor(np.array(inner.prvs_alpha))}


def restore_nash_state(aggregator: agg.Aggregator, saved: Mapping[str, Any]) -> None:
    inner = _nash_internals(aggregator)
    inner.prvs_alpha = saved["alpha"].numpy()
    inner.step = float(saved["step"])
    if inner.step > 0:  # TorchJD builds its solver's problem on step 0 only
        inner._init_optim_problem()


def _nash_internals(aggregator: agg.Aggregator) -> Any:
    inner = getattr(aggregator, "weighting", None)
    needed = ("step", "prvs_alpha", "_init_optim_problem")
    if inner is None or not all(hasattr(inner, name) for name in needed):
        raise mtkd.MtkdError(
            f"{KEY}.method=nash_mtl: this TorchJD version keeps Nash-MTL's state elsewhere, so "
            "a checkpoint cannot hold it; install the torchjd version pyproject.toml names"
        )
    return inner


def _chunk_for(outputs: list[torch.Tensor]) -> int | None:
    """All tasks in one vmapped encoder pass on a GPU; one at a time on the CPU (measured
    faster there: docs/benchmarks.md) and under bf16/fp16 autocast, where vmap cannot batch
    BatchNorm's mixed-precision backward (PyTorch 2.14)."""
    reduced = any(o.dtype in (torch.float16, torch.bfloat16) for o in outputs)
    on_cpu = any(o.device.type == "cpu" for o in outputs)
    return 1 if reduced or on_cpu else None


def _head_backward(rows: list[torch.Tensor], cut: list[torch.Tensor]) -> list[torch.Tensor]:
    """Backpropagate each task's row through its head alone: the heads' gradients accumulate,
    and each feature's Jacobian (one row per task) comes back, for the encoder's chain rule."""
    per_task = []
    for i, row in enumerate(rows):
        for leaf in cut:
            leaf.grad = None
        if row.requires_grad:
            row.backward(retain_graph=i < len(rows) - 1)
        per_task.append([torch.zeros_like(c) if c.grad is None else c.grad for c in cut])
    return [torch.stack([grads[j] for grads in per_task]) for j in range(len(cut))]


def _over_ranks(jacobian: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The Jacobian averaged over ranks and the rows some rank's batch labels (one all-reduce)."""
    if not distributed.is_active():
        return jacobian, tuple(i for i, n in enumerate(counts) if n > 0)
    labelled = torch.tensor(counts, dtype=jacobian.dtype, device=jacobian.device)
    packed = distributed.all_reduce_sum(torch.cat([jacobian, labelled[:, None]], dim=1))
    active = tuple(i for i, n in enumerate(packed[:, -1].tolist()) if n > 0)
    return packed[:, :-1] / distributed.world_size(), active


def _set_gradients(shared: list[torch.nn.Parameter], update: torch.Tensor) -> None:
    """Split the encoder's update into its parameters' ``.grad`` (in their memory format)."""
    start = 0
    for p in shared:
        piece = update[start : start + p.numel()].view(p.shape)
        start += p.numel()
        grad = torch.empty_like(p).copy_(piece)
        p.grad = grad if p.grad is None else p.grad + grad


@mtkd.hookimpl
def register_weightings(register: Any) -> None:
    register(GradientAggregation)
