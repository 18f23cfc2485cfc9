"""The ``tensorboard`` logger: event files in ``<run>/tensorboard/`` (``mtkd[tensorboard]``).

Scalars per epoch under the record's own keys (``train/loss``, ``val/<task>/<metric>``,
``lr``, ``weight/<task>``), predicted-mask sheets as images, the recipe as text, and at the
end the final test metrics with the recipe as hparams, so ``tensorboard --logdir runs`` lines
up a study's members in the Scalars and HParams tabs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..loggers import Logger, RunStart, Status, final_metrics, flat_recipe, numeric_items
from ..utils.layout import TENSORBOARD


class TensorBoardLogger(Logger):
    """Writes TensorBoard event files into the run folder; a resumed run appends to them."""

    name = "tensorboard"
    requires = ("tensorboard",)
    install = "mtkd[tensorboard]"
    wants_images = True

    def start(self, run: RunStart) -> None:
        self.folder = run.run_dir / TENSORBOARD
        self.run = run
        self.continued = self.folder.is_dir()  # a resumed run that logged here before
        self._writer: Any = None
        self._last_epoch = 0
        if not self.continued:
            text = "\n".join("    " + line for line in _yaml(run).splitlines())
            self.writer(None).add_text("recipe", text, 0)  # indented: shown as code

    def writer(self, first_epoch: int | None) -> Any:
        """The event writer, opened on first use. A continued run opens it at its first epoch
        with ``purge_step``, so that epochs redone after an older checkpoint replace the
        first versions (TensorBoard drops logged steps from there on)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = first_epoch if self.continued else None
            self._writer = SummaryWriter(str(self.folder), purge_step=purge)
        return self._writer

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        writer = self.writer(epoch)
        for key, value in numeric_items(record).items():
            writer.add_scalar(key, value, epoch)
        writer.flush()  # a killed run keeps every epoch it finished
        self._last_epoch = epoch

    def log_images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None:
        writer = self.writer(epoch)
        for tag, image in images.items():
            writer.add_image(tag, image, epoch, dataformats="HWC")
        writer.flush()

    def end(self, results: Mapping[str, Any], artefacts: Sequence[Path]) -> None:
        """The final test metrics as scalars and the recipe as this session's hparams.

        Only the session's start and end summaries are written, no experiment summary: the
        HParams tab then builds its columns from every member of a study, not from one."""
        from torch.utils.tensorboard.summary import hparams

        step = int(results.get("epochs_run") or self._last_epoch)
        writer = self.writer(None)  # nothing to purge: every epoch is logged by now
        metrics = final_metrics(results)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        # output.* says where the run went, not what it computed: left out of the comparison
        recipe = {
            k: v for k, v in flat_recipe(self.run.recipe).items() if not k.startswith("output.")
        }
        _, start, end = hparams(recipe, metrics)
        for summary in (start, end):
            writer.file_writer.add_summary(summary)
        writer.flush()

    def close(self, status: Status) -> None:
        if self._writer is not None:
            self._writer.close()

    def describe(self) -> str:
        return f"tensorboard: {self.folder} (tensorboard --logdir {self.run.run_dir.parent})"


def _yaml(run: RunStart) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(run.recipe)
