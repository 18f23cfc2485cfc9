"""A run's experiment loggers (``output.loggers``), driven from outside the training loop.

:func:`resolve_loggers` checks the names and that their packages are installed before any
work starts. :class:`Tracking` starts the loggers (fresh or resumed), registers itself as a
plugin for the length of training so that the loop's ``on_epoch_end`` hook feeds them each
epoch, and :meth:`Tracking.finish` hands them the results and files at the end. Only rank 0
logs. ``<run>/tracking.json`` remembers the last epoch handed to the loggers, so a resumed run
sends each epoch once, including any the loop finished just before it was killed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from ..data.build import DataBundle
from ..engine.fit import Interrupted, TrainContext
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..loggers import JsonlLogger, Logger, RunStart, Status
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet
from ..utils.layout import CONFIG, DISTILLED, LABELS, RESULTS, TRACKING
from .mlflow_logger import MlflowLogger
from .tensorboard_logger import TensorBoardLogger

IMAGE_SAMPLES = 4


@hookimpl
def register_loggers(register: Callable[[type[Logger]], None]) -> None:
    """metrics.jsonl (always on), and TensorBoard and MLflow when their extras are installed
    (their packages are imported only when a run asks for them)."""
    for logger in (JsonlLogger, TensorBoardLogger, MlflowLogger):
        register(logger)


def resolve_loggers(cfg: DictConfig, plugins: PluginSet) -> list[type[Logger]]:
    """The classes ``output.loggers`` names; an unknown name or a missing extra fails here."""
    names = [str(name) for name in cfg.output.loggers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"output.loggers: named more than once: {', '.join(twice)}")
    if cfg.output.images_every < 0:
        raise RecipeError(f"output.images_every: must be 0 or more, got {cfg.output.images_every}")
    classes = [plugins.loggers.get(name, key="output.loggers") for name in names]
    for cls in classes:
        cls.check_installed()
    for cls in classes:
        cls.check_reachable(cfg)
    return classes


def learning_rates(optimizer: Any) -> dict[str, float]:
    """``lr/<group name>`` of each parameter group, when the groups' rates differ."""
    rates: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        rates.setdefault(f"lr/{group.get('name', index)}", float(group["lr"]))
    return rates if len(set(rates.values())) > 1 else {}


class Tracking:
    """The loggers of one run (none on ranks other than 0, or with only ``jsonl``)."""

    def __init__(
        self, loggers: list[Logger], run_dir: Path, data: DataBundle | None, images_every: int
    ) -> None:
        self.loggers, self.run_dir, self.data = loggers, run_dir, data
        self.every = images_every
        self.logged = self._read_state()
        self.samples: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.console: Console | None = None

    @classmethod
    def start(
        cls,
        classes: Sequence[type[Logger]],
        cfg: DictConfig,
        run_dir: Path,
        data: DataBundle | None = None,
        *,
        resumed: bool = False,
        console: Console | None = None,
    ) -> Tracking:
        """Instantiate and start the loggers (``classes`` empty: an inactive tracking)."""
        loggers = [c(cfg) for c in classes if c is not JsonlLogger]  # the loop writes jsonl
        experiment = str(cfg.output.experiment or cfg.name)
        run = RunStart(recipe=cfg, run_dir=run_dir, resumed=resumed, experiment=experiment)
        tracking = cls(loggers, run_dir, data, int(cfg.output.images_every))
        tracking.console = console
        for logger in loggers:
            logger.start(run)
            line = logger.describe()
            if console is not None and line:
                console.print(line, highlight=False)
        return tracking

    def _read_state(self) -> int:
        path = self.run_dir / TRACKING
        return int(json.loads(path.read_text())["logged_epoch"]) if path.is_file() else 0

    @contextmanager
    def training(self, plugins: PluginSet) -> Iterator[None]:
        """Receive the loop's epoch records while training; close the loggers if it stops."""
        if not self.loggers:
            yield
            return
        plugins.manager.register(self, name=f"mtkd.tracking.{id(self)}")
        try:
            yield
        except Interrupted:
            self.close("interrupted", quietly=True)
            raise
        except BaseException:
            self.close("failed", quietly=True)
            raise
        finally:
            plugins.manager.unregister(self)

    @hookimpl
    def on_epoch_end(
        self, context: TrainContext[MultiTaskModel], epoch: int, metrics: dict[str, Any]
    ) -> None:
        """Send the loggers every epoch record they have not seen, then images when due."""
        # records the loop wrote before a kill but never handed over; or, when a resume went
        # back to an earlier checkpoint, this epoch again (its new values replace the old)
        pending = [r for r in context.history if int(r["epoch"]) > self.logged] or [metrics]
        for record in pending:
            if record is metrics:
                record = {**record, **learning_rates(context.optimizer)}
            for logger in self.loggers:
                logger.log_epoch(int(record["epoch"]), record)
        if self.every and (epoch == 1 or epoch % self.every == 0):
            self._log_images(context, epoch)
        self.logged = epoch
        (self.run_dir / TRACKING).write_text(json.dumps({"logged_epoch": epoch}) + "\n")

    def _log_images(self, context: TrainContext[MultiTaskModel], epoch: int) -> None:
        """Predicted masks of a few validation samples, for loggers that want images (the
        tasks whose :meth:`~mtkd.Task.class_map` draws one)."""
        from PIL import Image

        from ..viz.figures import pixel_samples, prediction_sheets

        wanting = [logger for logger in self.loggers if logger.wants_images]
        if not wanting or self.data is None:
            return
        if self.samples is None:
            indices = self.data.val.indices
            self.samples = pixel_samples(context.model, self.data, indices, IMAGE_SAMPLES)
        if not self.samples:
            return
        with tempfile.TemporaryDirectory() as tmp:
            sheets = prediction_sheets(
                context.model, self.samples, context.device, Path(tmp), self._warn
            )
            # a task that drew nothing (its output is no class map) or failed (named once in
            # a warning) is not tried again; training goes on either way
            self.samples = {key: self.samples[key] for key in sheets}
            images = {
                f"predictions/{key}": np.asarray(Image.open(path).convert("RGB"))
                for key, path in sheets.items()
            }
        for logger in wanting:
            logger.log_images(epoch, images)

    def _warn(self, line: str) -> None:
        console = self.console or Console(stderr=True)
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)

    def finish(self, results: Mapping[str, Any], figures: Sequence[Path] = ()) -> None:
        """Hand the loggers the results and the run's files, then close them."""
        if not self.loggers:
            return
        run = self.run_dir
        artefacts = [run / RESULTS, run / CONFIG, run / LABELS, *figures, run / DISTILLED]
        try:
            for logger in self.loggers:
                logger.end(results, artefacts)
        except BaseException:
            self.close("failed", quietly=True)
            raise
        self.close("finished")

    def close(self, status: Status, quietly: bool = False) -> None:
        """Close every logger; ``quietly`` (when an error is already on its way up) ignores
        their own errors, so that the error the user sees is the one that stopped the run."""
        for logger in self.loggers:
            try:
                logger.close(status)
            except Exception:
                if not quietly:
                    raise
