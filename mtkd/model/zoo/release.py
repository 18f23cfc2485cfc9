"""Release a finished run as a model-zoo entry: one fp16 safetensors file and its JSON card.

The run's best checkpoint (the encoder and every head, teachers included) shrinks to what a
zoo in a repository can afford: the encoder always, then the heads that fit the per-file
budget, smallest first (``heads`` names them instead). Floating tensors are stored as fp16,
integer ones (BatchNorm's ``num_batches_tracked``) as they are; a tensor fp16 cannot hold
stays fp32 and the card says so. Loading casts back to the model's dtype. The card records
the file's size and SHA-256, and what the run was trained on (its config.yaml and
results.json), so ``mtkd zoo`` can show it and every load can verify it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from ...errors import MtkdError
from ...pretrained import CARD_FORMAT, CARD_SUFFIX, WEIGHTS_SUFFIX, PretrainedEntry, sha256_of
from ...utils.checkpoint import safetensors_bytes, write_json
from ...utils.layout import CONFIG, RESULTS, best_weights

MB = 1_000_000
ENCODER = "encoder"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ReleaseOptions:
    """What to ship and under which limits; the defaults are the repository's zoo rules."""

    heads: Sequence[str] | None = None  # None: every head that fits, smallest first
    max_mb: float = 10.0  # one entry's file
    zoo_max_mb: float = 25.0  # every weights file in the output folder together
    results: dict[str, Any] = field(default_factory=dict)  # measured transfer results
    recipe: str | None = None  # the recipe that reproduces it (default: recipes/zoo/<name>.yaml)
    notes: str = ""
    force: bool = False  # replace an entry of the same name in the output folder


def part_of(key: str) -> str:
    """``encoder`` for encoder tensors, the task key for ``heads.<key>.…``."""
    parts = key.split(".")
    return parts[1] if parts[0] == "heads" and len(parts) > 2 else ENCODER


def stored_bytes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Bytes each part (encoder, each head) takes once floating tensors are fp16."""
    sizes: dict[str, int] = {}
    for key, tensor in state.items():
        width = 2 if tensor.is_floating_point() else tensor.element_size()
        sizes[part_of(key)] = sizes.get(part_of(key), 0) + tensor.numel() * width
    return sizes


def choose_heads(
    sizes: Mapping[str, int], heads: Sequence[str] | None, budget: int
) -> tuple[list[str], dict[str, int]]:
    """(heads to ship, heads left out with their bytes).

    Named ``heads`` are shipped as asked (an unknown one is an error); otherwise every head
    whose bytes still fit ``budget`` beside the encoder, the smallest first.
    """
    available = sorted((k for k in sizes if k != ENCODER), key=lambda k: (sizes[k], k))
    if heads is not None:
        unknown = sorted(set(heads) - set(available))
        if unknown:
            raise MtkdError(
                f"--heads: the run has no head(s) {unknown} (it has: {', '.join(available)})"
            )
        chosen = set(heads)
    else:
        chosen, total = set(), sizes.get(ENCODER, 0)
        for key in available:
            if total + sizes[key] <= budget:
                chosen.add(key)
                total += sizes[key]
    return sorted(chosen), {k: sizes[k] for k in available if k not in chosen}


def to_fp16(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the tensors with floats in fp16, the keys kept in fp32 because fp16 would overflow)."""
    out: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            out[key] = tensor.contiguous()
            continue
        half = tensor.to(torch.float16)
        overflows = bool(torch.isfinite(tensor).all()) and not bool(torch.isfinite(half).all())
        out[key] = (tensor.to(torch.float32) if overflows else half).contiguous()
        if overflows:
            kept.append(key)
    return out, kept


def _scalar_metrics(test: Mapping[str, Any]) -> dict[str, float]:
    """The full model's test metrics that are single numbers (no losses, no counts)."""
    return {
        key: round(float(value), 4)
        for key, value in test.items()
        if isinstance(value, float) and not key.endswith(("loss", "/count"))
    }


def trained_on(
    config: Mapping[str, Any], results: Mapping[str, Any], recipe: str
) -> dict[str, Any]:
    """The card's ``trained_on``: recipe, data, tasks, epochs, seed, time, versions, test."""
    data = config.get("data") or {}
    return {
        "recipe": recipe,
        "data": {
            "dataset": data.get("dataset"),
            "image_size": data.get("image_size"),
            "samples": results.get("data"),
            "augment": data.get("augment"),
        },
        "tasks": config.get("tasks"),
        "epochs": results.get("epochs_run"),
        "best_epoch": results.get("best_epoch"),
        "seed": (config.get("trainer") or {}).get("seed"),
        "train_time_s": results.get("train_time_s"),
        "versions": results.get("versions"),
        "test": _scalar_metrics(((results.get("test") or {}).get("full")) or {}),
    }


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(config.yaml, results.json, best checkpoint) of a finished run."""
    paths = [run_dir / CONFIG, run_dir / RESULTS, best_weights(run_dir)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MtkdError(f"'{run_dir}' is not a finished run folder (missing {', '.join(missing)})")
    try:
        config = yaml.safe_load(paths[0].read_text()) or {}
        results = json.loads(paths[1].read_text())
        state = load_file(str(paths[2]))
    except Exception as exc:
        raise MtkdError(f"'{run_dir}': unreadable run files: {type(exc).__name__}: {exc}") from exc
    return config, results, state


def _default_recipe(config: Mapping[str, Any]) -> str:
    name = str(config.get("name") or "")
    shipped = Path("recipes") / "zoo" / f"{name}.yaml"
    return str(shipped) if shipped.is_file() else name


def _check_zoo_total(out: Path, name: str, new_size: int, limit_mb: float) -> None:
    others = [p for p in out.glob("*" + WEIGHTS_SUFFIX) if p.name != name + WEIGHTS_SUFFIX]
    total = new_size + sum(p.stat().st_size for p in others)
    if total > limit_mb * MB:
        raise MtkdError(
            f"--zoo-max-mb: the weights files in '{out}' would total {total / MB:.1f} MB with "
            f"'{name}' ({new_size / MB:.1f} MB), over {limit_mb:g} MB; ship fewer heads "
            "(--heads) or retire an entry"
        )


def _write_weights(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], options: ReleaseOptions
) -> int:
    """Write through a temporary file, checked against both budgets before it is renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(safetensors_bytes(tensors, metadata))  # byte for byte the same each time
    tmp.chmod(0o644)  # a file to ship: readable by all, like the rest of the package
    size = tmp.stat().st_size
    try:
        if size > options.max_mb * MB:
            raise MtkdError(
                f"--max-mb: '{path.name}' would be {size / MB:.1f} MB, over {options.max_mb:g} MB;"
                " ship fewer heads (--heads)"
            )
        _check_zoo_total(
            path.parent, path.name.removesuffix(WEIGHTS_SUFFIX), size, options.zoo_max_mb
        )
    except MtkdError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return size


def _draft(name: str, config: Mapping[str, Any], heads: list[str], out: Path) -> PretrainedEntry:
    """The entry's facts known before its file is written (no checksum yet)."""
    encoder_cfg = config.get("encoder") or {}
    taps = encoder_cfg.get("taps")
    return PretrainedEntry(
        name=name,
        encoder=str(encoder_cfg.get("name")),
        image_size=int((config.get("data") or {}).get("image_size") or 0),
        file=out / (name + WEIGHTS_SUFFIX),
        sha256="",
        size=0,
        taps=tuple(str(t) for t in taps) if isinstance(taps, list) else (),
        heads=tuple(heads),
        card=out / (name + CARD_SUFFIX),
    )


def _metadata(entry: PretrainedEntry) -> dict[str, str]:
    """The safetensors header's metadata: the file says what it is even without its card."""
    return {
        "format": CARD_FORMAT,
        "name": entry.name,
        "encoder": entry.encoder,
        "image_size": str(entry.image_size),
        "taps": json.dumps(list(entry.taps)),
        "heads": json.dumps(list(entry.heads)),
    }


def existing_entry(out: str | Path, name: str) -> str | None:
    """What a release named ``name`` into ``out`` would replace (None: nothing)."""
    out = Path(out)
    weights, card = out / (name + WEIGHTS_SUFFIX), out / (name + CARD_SUFFIX)
    if not weights.exists() and not card.exists():
        return None
    try:
        old = json.loads(card.read_text())
        facts = f"sha256 {str(old.get('sha256'))[:12]}…, {int(old.get('size') or 0) / MB:.2f} MB"
    except (OSError, ValueError, AttributeError):
        facts = "no readable card"
    files = ", ".join(p.name for p in (weights, card) if p.exists())
    return f"zoo entry '{name}' in '{out}' ({files}; {facts})"


def release_run(
    run_dir: str | Path, name: str, out: str | Path, options: ReleaseOptions | None = None
) -> PretrainedEntry:
    """Write ``<out>/<name>.safetensors`` and ``<out>/<name>.json`` from a finished run."""
    options = options or ReleaseOptions()
    if not NAME.match(name):
        raise MtkdError(f"--name: '{name}' must be letters, digits, '_', '.' or '-'")
    run_dir, out = Path(run_dir), Path(out)
    replaced = existing_entry(out, name)
    if replaced and not options.force:
        raise MtkdError(f"{replaced} exists; pass --force to replace it, or choose another --name")
    config, results, state = _read_run(run_dir)
    chosen, left_out = choose_heads(stored_bytes(state), options.heads, int(options.max_mb * MB))
    tensors, kept_fp32 = to_fp16(
        {k: v for k, v in state.items() if part_of(k) in (ENCODER, *chosen)}
    )
    draft = _draft(name, config, chosen, out)
    out.mkdir(parents=True, exist_ok=True)
    size = _write_weights(draft.file, tensors, _metadata(draft), options)
    notes = options.notes
    if kept_fp32:
        notes = f"{notes} Kept in fp32 (fp16 would overflow): {', '.join(kept_fp32)}.".strip()
    entry = replace(
        draft,
        sha256=sha256_of(draft.file),
        size=size,
        trained_on=trained_on(config, results, options.recipe or _default_recipe(config)),
        results=dict(options.results),
        left_out=left_out,
        notes=notes,
    )
    write_json(out / (name + CARD_SUFFIX), entry.to_card())
    return entry
