"""Pretrained encoders that plugins ship (the model zoo): what an entry is, and its card.

An entry is one weights file (an mtkd model's tensors in fp16 safetensors: the encoder, perhaps
some heads) with a JSON card beside it that says what it is, what it was trained on and what
it measured. A plugin registers entries through the ``register_pretrained`` hook, usually by
reading the cards it ships: ``for entry in read_cards(folder): register(entry)``.
``mtkd.model.zoo.load`` resolves ``zoo:<name>``, verifies the checksum and loads the tensors;
``mtkd zoo`` lists the entries and ``mtkd zoo release`` turns a finished run into one (both
in :mod:`mtkd.model.zoo`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PluginError
from .utils.files import read_json_object

CARD_FORMAT = "mtkd-zoo/1"
CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"
REQUIRED = ("name", "encoder", "image_size", "sha256", "size")


@dataclass(frozen=True)
class PretrainedEntry:
    """One zoo entry: a weights file, its checksum, and the facts of its card."""

    name: str  # what recipes use: encoder.weights=zoo:<name>
    encoder: str  # the timm model name the weights belong to (a recipe's encoder.name)
    image_size: int  # the input size it was trained at, in pixels
    file: Path  # the weights file (safetensors, mtkd model tensor names)
    sha256: str  # of the file: verified on every load
    size: int  # of the file, in bytes
    taps: tuple[str, ...] = ()  # the encoder taps its heads were trained with
    heads: tuple[str, ...] = ()  # the task heads the file holds besides the encoder
    trained_on: dict[str, Any] = field(default_factory=dict)  # recipe, data, epochs, seed, ...
    results: dict[str, Any] = field(default_factory=dict)  # measured transfer results
    left_out: dict[str, int] = field(default_factory=dict)  # heads not shipped: their bytes
    notes: str = ""
    card: Path | None = None  # the card it was read from

    def to_card(self) -> dict[str, Any]:
        """The card as JSON data; ``file`` is written relative to the card's folder."""
        return {
            "format": CARD_FORMAT,
            "name": self.name,
            "encoder": self.encoder,
            "image_size": self.image_size,
            "file": self.file.name,
            "sha256": self.sha256,
            "size": self.size,
            "taps": list(self.taps),
            "heads": list(self.heads),
            "left_out": dict(self.left_out),
            "trained_on": self.trained_on,
            "results": self.results,
            "notes": self.notes,
        }

    @classmethod
    def from_card(cls, path: str | Path) -> PretrainedEntry:
        """Read a card; a missing or mistyped field is a :class:`PluginError` naming the card."""
        path = Path(path)
        data = read_json_object(path, "zoo card", PluginError)
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise PluginError(f"zoo card '{path}': missing field(s) {', '.join(missing)}")
        try:
            return cls(
                name=str(data["name"]),
                encoder=str(data["encoder"]),
                image_size=int(data["image_size"]),
                file=path.parent / str(data.get("file") or path.stem + WEIGHTS_SUFFIX),
                sha256=str(data["sha256"]).lower(),
                size=int(data["size"]),
                taps=tuple(str(t) for t in data.get("taps") or ()),
                heads=tuple(str(h) for h in data.get("heads") or ()),
                trained_on=dict(data.get("trained_on") or {}),
                results=dict(data.get("results") or {}),
                left_out={str(k): int(v) for k, v in (data.get("left_out") or {}).items()},
                notes=str(data.get("notes") or ""),
                card=path,
            )
        except (TypeError, ValueError) as exc:
            raise PluginError(f"zoo card '{path}': a field has the wrong type: {exc}") from exc


def read_cards(folder: str | Path) -> list[PretrainedEntry]:
    """Every entry whose card (``*.json``) lies in ``folder``, by file name."""
    return [PretrainedEntry.from_card(p) for p in sorted(Path(folder).glob("*" + CARD_SUFFIX))]


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
