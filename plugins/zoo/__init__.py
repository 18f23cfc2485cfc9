"""zoo: mtkd's own pretrained face encoders (the model zoo), shipped with the package.

Each entry is a pair of files in this folder: ``<name>.safetensors`` (fp16 weights: the
encoder and the small heads) and ``<name>.json`` (its card: encoder, input size, taps,
checksum, what it was trained on, measured results). ``mtkd zoo release RUN --name NAME
--out plugins/zoo`` writes both from a finished run; docs/zoo.md lists the entries. The core
(``mtkd.model.zoo.load``) verifies the checksum and loads an entry for ``encoder.weights=zoo:NAME``
or ``init_from=zoo:NAME``; this plugin only tells it which entries exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mtkd
from mtkd import PretrainedEntry, read_cards

FOLDER = Path(__file__).resolve().parent


@mtkd.hookimpl
def register_pretrained(register: Callable[[PretrainedEntry], None]) -> None:
    """Every entry whose card lies in this folder."""
    for entry in read_cards(FOLDER):
        register(entry)
