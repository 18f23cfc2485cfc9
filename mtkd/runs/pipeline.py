"""One run end to end: data → model → training → distillation → evaluation → run folder."""

from __future__ import annotations

import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from ..console import make_console
from ..context import TrainContext
from ..data.augment import AugmentConfig
from ..data.batch_augment import DeviceAugment, augment_place
from ..data.build import (
    DataBundle,
    build_data,
    check_train_batches,
    make_eval_loader,
    make_train_loader,
    rank_share,
    shared_cache_build,
)
from ..data.targets import OnlineTargets
from ..engine.fit import fit
from ..engine.hardware import resolve_device
from ..engine.setup import check_setup
from ..errors import MtkdError, PluginError
from ..metrics.assess import assess
from ..model.build import build_model, check_model_names
from ..model.multitask import MultiTaskModel
from ..model.probe import smallest_train_batch
from ..model.transfer import check_init_from, init_from_recipe
from ..plugins import PluginSet, plugins_for
from ..utils import distributed
from ..utils.checkpoint import write_json
from ..utils.layout import COMPLETED, RESULTS, run_status
from ..utils.rng import seed_everything
from ..utils.run_lock import claim_run_folder
from .folder import check_output_dir, clear_run, new_run_dir, save_distilled, write_run_header
from .resume import settle_resume
from .tracking import Tracking, resolve_loggers


def startup_lines(sizes: dict[str, int], encoder: str, described: dict[str, Any]) -> list[str]:
    """``data: train 360, val 90, test 50`` and ``model: <encoder>; tasks: …``, as a person
    reads them (not a dict's repr); empty splits other than train/val/test are left out."""
    shown = [f"{k} {v}" for k, v in sizes.items() if v or k in ("train", "val", "test")]
    tasks = "; ".join(str(t) for t in described["tasks"].values())
    taps = described.get("taps") or []
    encoder += f" with {len(taps)} taps" if taps else ""
    return [f"data: {', '.join(shown)}", f"model: {encoder}; tasks: {tasks}"]


def distill(model: MultiTaskModel, plugins: PluginSet | None = None) -> MultiTaskModel:
    """The inference model, as the first ``distill`` hook implementation answers."""
    from ..plugins import load_plugins

    plugins = plugins or load_plugins()
    student = plugins.hook.distill(model=model)
    if not isinstance(student, MultiTaskModel):
        raise PluginError(
            f"the distill hook returned {type(student).__name__}, not a MultiTaskModel"
        )
    return student


def train(
    model: MultiTaskModel,
    data: DataBundle,
    cfg: DictConfig,
    *,
    plugins: PluginSet | None = None,
    run_dir: Path | None = None,
    console: Console | None = None,
    resume: bool = False,
) -> TrainContext[MultiTaskModel]:
    """Train ``model`` on ``data.train``, early-stopping on ``data.val`` (library entry point).

    ``resume`` continues from ``run_dir``'s last checkpoint."""
    distributed.setup(cfg.trainer.device)  # joins torchrun's process group, if launched so
    seed_everything(cfg.trainer.seed)
    device = resolve_device(cfg.trainer.device)
    online = isinstance(data.train_collate, OnlineTargets)
    on_device = augment_place(cfg.data.get("augment_on", "host"), device, online_teachers=online)
    train_view, val_view, augment_step = data.train, data.val, None
    if on_device == "device":  # uint8 batches; the step (and validation) convert them
        train_view, val_view = data.train.for_device(), data.val.for_device()
        augment_step = DeviceAugment(data.train.augment or AugmentConfig(), data.label_spaces)
    train_loader = make_train_loader(
        train_view,
        cfg.data.batch_size,
        seed=cfg.trainer.seed,
        num_workers=cfg.data.num_workers,
        min_batch=smallest_train_batch(model, cfg.data.image_size),  # no batch of one for BN
        collate=data.train_collate,
        pin_memory=augment_step is not None and device.type == "cuda",
    )
    val_loader = make_eval_loader(rank_share(val_view), cfg.data)
    return fit(
        model,
        train_loader,
        val_loader,
        cfg,
        plugins=plugins,
        run_dir=run_dir,
        console=console,
        resume=resume,
        on_device=augment_step,
    )


@dataclass
class RunResult:
    run_dir: Path
    model: MultiTaskModel
    inference_model: MultiTaskModel
    results: dict[str, Any]


def _versions() -> dict[str, str]:
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def throughput(history: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """Training images per second and what it is taken over.

    From 4 epochs on, the median over epochs (a slow outlier does not move it). With 2 or 3
    the median is just the faster (or middle) epoch, a noise pick, so it is the mean of the
    epochs after the first (which warms up: caches, allocator, kernels); with 1 it is that
    epoch's, marked as including the warm-up."""
    values = [float(r[_SPEED]) for r in history if r.get(_SPEED) is not None]
    if not values:
        return None, None
    if len(values) >= 4:
        return sorted(values)[len(values) // 2], f"median of {len(values)} epochs"
    if len(values) >= 2:
        later = values[1:]
        basis = f"mean of epochs 2-{len(values)}" if len(later) > 1 else "epoch 2"
        return round(sum(later) / len(later), 2), f"{basis} (epoch 1 warms up)"
    return values[0], "epoch 1 only (includes warm-up)"


_SPEED = "time_train_images_per_s"


def _check_folder(
    cfg: DictConfig,
    resume_dir: Path | None,
    force: bool,
    main: bool,
    console: Console,
    plugins: PluginSet,
) -> None:
    """Before anything is built: the folder a new run will write, or the run it resumes.

    A resume may change only safe settings (see :mod:`mtkd.runs.resume`); those it changes
    are recorded in the run's config.yaml (by rank 0). Names the recipe gives (encoder,
    tasks, optimizer, scheduler, weighting) are checked here, before the data set is built."""
    check_model_names(cfg, plugins)
    check_setup(cfg, plugins)
    if resume_dir is None:
        check_init_from(cfg, plugins)  # a missing source fails before the data are built
        if main:  # so does a run folder that cannot be written or holds another run
            check_output_dir(cfg, force)
        return
    if run_status(resume_dir) == "finished":  # a crashed one is resumed to finish
        raise MtkdError(f"'{resume_dir}' is a finished run (it has {RESULTS}): nothing to resume")
    for key, (old, new) in settle_resume(resume_dir, cfg, write=main).items():
        console.print(f"resume: {key}: {old!r} → {new!r} (recorded in config.yaml)")


def _run_folder(
    cfg: DictConfig,
    data: DataBundle,
    transfer: Any,
    resume_dir: Path | None,
    force: bool,
    main: bool,
    console: Console | None = None,
) -> Path:
    """The folder this run writes (rank 0 creates a new one), the same path on every rank."""
    run_dir: Path | None = None
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    elif main:
        run_dir = new_run_dir(cfg, force, console)
        write_run_header(run_dir, cfg, dict(data.label_spaces))
        if transfer is not None:
            transfer.save(run_dir)
    return Path(distributed.broadcast_object(str(run_dir) if main else None))


def _run_facts(
    cfg: DictConfig,
    run_dir: Path,
    data: DataBundle,
    ctx: TrainContext[MultiTaskModel],
    train_time: float,
    model: MultiTaskModel,
    inference_model: MultiTaskModel,
) -> dict[str, Any]:
    """What results.json says about the run itself, before the test figures."""
    images_per_s, images_per_s_from = throughput(ctx.history)
    return {
        "recipe": cfg.name,
        "run_dir": str(run_dir),
        "data": data.sizes(),
        "data_report": asdict(data.report),
        "epochs_run": len(ctx.history),
        "best_epoch": ctx.best_epoch,
        "stopped_early": ctx.stopped_early,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": images_per_s,
        "train_images_per_s_from": images_per_s_from,
        "seed": cfg.trainer.seed,
        "versions": _versions(),
        "params": {
            "training": model.parameter_counts().to_dict(),
            "inference": inference_model.parameter_counts().to_dict(),
        },
        "removed_tasks": sorted(set(model.tasks) - set(inference_model.tasks)),
    }


def run(
    cfg: DictConfig,
    *,
    plugins: PluginSet | None = None,
    console: Console | None = None,
    resume_dir: Path | None = None,
    force: bool = False,
) -> RunResult:
    """Train, distil, evaluate and write the run folder for a loaded recipe.

    ``resume_dir``: continue that unfinished run from its last checkpoint instead.
    ``output.dir`` holding another run is refused before anything is built; ``force`` deletes
    that run's files when the new run starts instead.
    Under torchrun every rank trains; rank 0 alone writes the run folder and evaluates.
    """
    distributed.setup(cfg.trainer.device)
    main = distributed.is_main()
    console = console if console is not None and main else make_console(quiet=not main)
    plugins = plugins_for(cfg, plugins)
    loggers = resolve_loggers(cfg, plugins)  # an unknown or uninstalled logger fails first
    # the folder is claimed before it is checked or cleared: a second process aiming at the
    # same folder fails at once instead of writing between this run's checkpoints
    target = resume_dir if resume_dir is not None else (cfg.output.dir or None)
    with claim_run_folder(target) if main and target else nullcontext():
        return _run_in_folder(cfg, plugins, console, loggers, resume_dir, force)


def _run_in_folder(
    cfg: DictConfig,
    plugins: PluginSet,
    console: Console,
    loggers: list[Any],
    resume_dir: Path | None,
    force: bool,
) -> RunResult:
    """:func:`run` once its folder is claimed."""
    main = distributed.is_main()
    _check_folder(cfg, resume_dir, force, main, console, plugins)
    seed_everything(cfg.trainer.seed)
    shared = shared_cache_build(cfg)  # every rank, before the machines part ways
    with distributed.node_main_first():  # one build per machine; the other ranks read it
        data = build_data(cfg, plugins, console, shared)
    model = build_model(cfg, data.label_spaces, plugins)
    # a resumed run loads its own checkpoint; a new one starts from init_from, if named (before
    # the run folder exists, so a source that fits nothing leaves no empty run behind)
    transfer = init_from_recipe(model, cfg, plugins) if resume_dir is None else None
    # a batch the model cannot train on fails here too, before the folder exists
    min_batch = smallest_train_batch(model, cfg.data.image_size)
    check_train_batches(len(data.train), cfg.data.batch_size, min_batch)
    existed = bool(cfg.output.dir) and Path(cfg.output.dir).exists()
    run_dir = _run_folder(cfg, data, transfer, resume_dir, force, main, console)
    console.print(f"[bold]{cfg.name}[/bold] → {run_dir}")
    if transfer is not None:
        transfer.print(console)
    try:
        return _train_and_assess(cfg, plugins, console, data, model, run_dir, resume_dir, loggers)
    except BaseException:
        if resume_dir is None and main:
            _discard_unstarted(run_dir, remove=not existed, console=console)
        raise


def _discard_unstarted(run_dir: Path, remove: bool, console: Console) -> None:
    """A new run that failed before its first checkpoint leaves no folder that blocks the
    corrected rerun (``remove``: the folder too, when this run created it and it is empty)."""
    if run_status(run_dir) != "started":
        return  # a checkpoint exists: resumable; or a results.json: finished
    clear_run(run_dir)
    if remove and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    console.print(f"[yellow]the run stopped before its first epoch ended: '{run_dir}' cleared")


def _train_and_assess(
    cfg: DictConfig,
    plugins: PluginSet,
    console: Console,
    data: DataBundle,
    model: MultiTaskModel,
    run_dir: Path,
    resume_dir: Path | None,
    loggers: list[Any],
) -> RunResult:
    """Training, distillation and evaluation into ``run_dir`` (rank 0 writes results)."""
    main = distributed.is_main()
    for line in startup_lines(data.sizes(), cfg.encoder.name, model.describe()):
        console.print(line, highlight=False, markup=False)
    started = time.perf_counter()
    resume = resume_dir is not None
    tracking = Tracking.start(
        loggers if main else [], cfg, run_dir, data, resumed=resume, console=console
    )
    with tracking.training(plugins):
        ctx = train(
            model, data, cfg, plugins=plugins, run_dir=run_dir, console=console, resume=resume
        )
    train_time = time.perf_counter() - started
    device = resolve_device(cfg.trainer.device)
    inference_model = distill(model, plugins) if cfg.distill.enabled else model
    distributed.barrier()
    distributed.teardown()  # evaluation runs in rank 0 alone, with no collectives
    if not main:
        return RunResult(run_dir=run_dir, model=model, inference_model=inference_model, results={})
    save_distilled(run_dir, inference_model)  # the inference model, whether distilled or not
    results = _run_facts(cfg, run_dir, data, ctx, train_time, model, inference_model)
    results.update(assess(model, inference_model, data, cfg, device))
    # saved before the figures and the loggers, so that nothing is lost if they fail; marked
    # complete only once they are done: a run that crashed after this point is not finished
    results[COMPLETED] = False
    write_json(run_dir / RESULTS, results, list_non_finite=True)
    figures = []
    if cfg.output.plots:
        from ..viz.figures import write_run_figures

        figures = write_run_figures(run_dir, model, data, results, device, console)
    results[COMPLETED] = True
    write_json(run_dir / RESULTS, results, list_non_finite=True)
    try:
        tracking.finish(results, figures)
    except BaseException:
        results[COMPLETED] = False  # the loggers did not get the whole run: not finished
        write_json(run_dir / RESULTS, results, list_non_finite=True)
        raise
    return RunResult(run_dir=run_dir, model=model, inference_model=inference_model, results=results)
