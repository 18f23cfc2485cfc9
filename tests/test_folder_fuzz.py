"""Random damage to folder data sets, seeded and quick: corrupt and odd images and masks,
symlink loops, dangling and duplicate links, odd file names. Every case ends in a named
one-line error or in counted skips, never a traceback; and every image file listed on disk is
accounted for: a sample (kept or skipped by reason) or an ignored file counted by reason."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import PALETTE, banded_mask, build_folder_data, noise, save_image
from mtkd_plugins.folders.images import is_image_file

import mtkd

PEOPLE = ("ann", "ben", "cat")
VIEWS = 4
SIZE = 12
MASK_FOLDER = {"palette_folder": "masks", "index_folder": "masks", "mut1ny": "labels"}
OPTIONS: dict[str, dict[str, Any]] = {
    "identity_folder": {"images": "images"},
    "palette_folder": {"palette": PALETTE},
    "index_folder": {"classes": list(PALETTE)},
    "mut1ny": {"xml": "none"},  # pairs by folder; the community palette holds PALETTE's colours
}


def label(adapter: str, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """A good label image for ``adapter``: palette colours, or class indices 0..2."""
    colours = banded_mask(height, width)
    if adapter != "index_folder":
        return colours
    lookup = {tuple(c): i for i, c in enumerate(PALETTE.values())}
    return np.vectorize(lambda r, g, b: lookup[(r, g, b)])(*colours.transpose(2, 0, 1)).astype(
        np.uint8
    )


def write_tree(root: Path, adapter: str) -> None:
    for p, person in enumerate(PEOPLE):
        for v in range(VIEWS):
            save_image(root / "images" / person / f"{v}.png", noise(10 * p + v, SIZE))
            if adapter in MASK_FOLDER:
                save_image(root / MASK_FOLDER[adapter] / person / f"{v}.png", label(adapter))


# --- the damage: each picks its file with ``rng`` and changes the tree ------------------------

Damage = Callable[[Path, np.random.Generator, str], None]


def pick(root: Path, rng: np.random.Generator, folder: str = "images") -> Path:
    files = sorted(p for p in (root / folder).rglob("*") if p.is_file() and not p.is_symlink())
    return files[int(rng.integers(len(files)))]


def mask_of(root: Path, image: Path, adapter: str) -> Path | None:
    if adapter not in MASK_FOLDER:
        return None
    relative = image.relative_to(root / "images").with_suffix(".png")
    return root / MASK_FOLDER[adapter] / relative


def truncate(root: Path, rng: np.random.Generator, adapter: str) -> None:
    path = pick(root, rng)
    path.write_bytes(path.read_bytes()[: int(rng.integers(0, 80))])


def garbage(root: Path, rng: np.random.Generator, adapter: str) -> None:
    pick(root, rng).write_bytes(rng.bytes(int(rng.integers(1, 400))))


def odd_image(root: Path, rng: np.random.Generator, adapter: str) -> None:
    """Valid but unusual pixels: grey, 16-bit, palette mode, alpha, one pixel, non-square."""
    path = pick(root, rng)
    kind = int(rng.integers(6))
    from PIL import Image

    base = Image.fromarray(noise(int(rng.integers(1000)), SIZE))
    image = [
        base.convert("L"),
        Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257),
        base.convert("P"),
        base.convert("RGBA"),
        base.resize((1, 1)),
        base.resize((SIZE, SIZE + 3)),
    ][kind]
    image.save(path)


def odd_name(root: Path, rng: np.random.Generator, adapter: str) -> None:
    """Spaces, accents, brackets, percent signs, a leading dash, an upper-case suffix."""
    path = pick(root, rng)
    stem = ["my photo", "Zoë (2)", "[x]%20y", "-rf", "a.b.c", "日本"][int(rng.integers(6))]
    suffix = [".png", ".PNG"][int(rng.integers(2))]
    target = path.with_name(stem + suffix)
    mask = mask_of(root, path, adapter)
    path.rename(target)
    if mask is not None and mask.exists():
        mask.rename(mask.with_name(stem + ".png"))


def loop(root: Path, rng: np.random.Generator, adapter: str) -> None:
    folder = root / "images" / PEOPLE[int(rng.integers(len(PEOPLE)))]
    target = ["..", "../..", "."][int(rng.integers(3))]
    link = folder / f"loop{int(rng.integers(100))}"
    if not link.exists():
        link.symlink_to(target)


def dangling(root: Path, rng: np.random.Generator, adapter: str) -> None:
    folder = root / "images" / PEOPLE[int(rng.integers(len(PEOPLE)))]
    (folder / f"gone{int(rng.integers(100))}.png").symlink_to(folder / "nowhere.png")


def duplicate(root: Path, rng: np.random.Generator, adapter: str) -> None:
    image = pick(root, rng)
    folder = root / "images" / PEOPLE[int(rng.integers(len(PEOPLE)))]
    link = folder / f"copy{int(rng.integers(100))}.png"
    if not link.exists():
        link.symlink_to(image)


def clutter(root: Path, rng: np.random.Generator, adapter: str) -> None:
    """Hidden files, notes, a folder named like an image, an empty sub-folder."""
    folder = root / "images" / PEOPLE[int(rng.integers(len(PEOPLE)))]
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "notes.txt").write_text("not an image")
    (folder / "album.png").mkdir(exist_ok=True)
    (folder / "empty").mkdir(exist_ok=True)


def bad_mask(root: Path, rng: np.random.Generator, adapter: str) -> None:
    """A label image truncated, missing, a few pixels off, far off, with strays or wrong."""
    if adapter not in MASK_FOLDER:
        return truncate(root, rng, adapter)
    path = pick(root, rng, MASK_FOLDER[adapter])
    kind = int(rng.integers(6))
    if kind == 0:
        path.write_bytes(path.read_bytes()[:30])
    elif kind == 1:
        path.unlink()
    elif kind in (2, 3):
        save_image(path, label(adapter, SIZE, SIZE - (1 if kind == 2 else 6)))
    else:
        mask = label(adapter).copy()
        mask[: 1 if kind == 4 else SIZE // 2, 0] = (0, 0, 255) if mask.ndim == 3 else 9
        save_image(path, mask)
    return None


DAMAGE: list[Damage] = [
    truncate,
    garbage,
    odd_image,
    odd_name,
    loop,
    dangling,
    duplicate,
    clutter,
    bad_mask,
    bad_mask,
]


def listed_on_disk(images: Path) -> int:
    """Image files under ``images`` as a user sees them: links to files count, links to
    folders are not entered (a loop's contents are no files of their own), hidden ones not."""
    count = 0
    for here, dirs, names in os.walk(images):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        count += sum(not n.startswith(".") and is_image_file(Path(here, n)) for n in names)
    return count


def check_accounting(data: mtkd.DataBundle, root: Path, adapter: str) -> None:
    report = data.report
    assert report.total == report.kept + sum(report.skipped.values()) + sum(report.dropped.values())
    counts = report.source_counts
    ignored = counts.get("ignored_duplicate_files", 0)
    ignored += counts.get("ignored_images_without_label", 0)  # mut1ny: an image needs a label
    assert listed_on_disk(root / "images") == report.total + ignored, counts
    assert len(data.cached) == report.kept
    assert not any(str(root) in reason for reason in report.skipped)  # counted by fixed phrases


@pytest.mark.parametrize("adapter", sorted(OPTIONS))
@pytest.mark.parametrize("seed", range(6))
def test_random_damage_ends_in_a_named_error_or_counted_skips(
    adapter: str, seed: int, tmp_path: Path
) -> None:
    rng = np.random.default_rng([seed, sorted(OPTIONS).index(adapter)])
    root = tmp_path / "data"
    write_tree(root, adapter)
    for _ in range(int(rng.integers(1, 5))):
        DAMAGE[int(rng.integers(len(DAMAGE)))](root, rng, adapter)
    for policy in ("skip", "fail"):
        try:
            data = build_folder_data(adapter, root, dataset=OPTIONS[adapter], on_error=policy)
        except mtkd.MtkdError as exc:  # anything else fails the test with its traceback
            message = str(exc)
            assert "\n" not in message and message.strip()
            assert policy == "fail" or "no sample is left" in message or "no usable" in message
        else:
            check_accounting(data, root, adapter)


def _tuple_natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """The natural order the folder data sets have always used (digit runs by value, before
    text; text without case), as a tuple of tuples: what the compact key must reproduce."""
    import re

    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p)) if i % 2 else (1, p.lower()) for i, p in enumerate(parts) if p)


def test_the_compact_natural_key_sorts_exactly_as_the_tuple_key() -> None:
    from mtkd_plugins.folders.index import natural_key

    rng = np.random.default_rng(0)
    alphabet = [*list("aAbZ_-./ 0123456789"), "\x00", "\x01", "\x02", "\x03", "é", "٣", "İ"]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))) for _ in range(4000)]
    texts += ["s1", "s2", "s10", "s01", "S1", "s1a", "s1/", "a1b", "a1/b", "007", "7", ""]
    assert sorted(texts, key=natural_key) == sorted(texts, key=_tuple_natural_key)
    for a, b in itertools.pairwise(texts):  # ties are ties in both
        tied = _tuple_natural_key(a) == _tuple_natural_key(b)
        assert tied == (natural_key(a) == natural_key(b))
