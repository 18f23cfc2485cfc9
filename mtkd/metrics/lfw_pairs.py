"""LFW-format pairs files (``pairs.txt``), read and checked line by line into pairs.

Any deviation from the format raises :class:`mtkd.DataError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .pairs import NamedKey, Pair, PairList


def _parse_count(token: str, path: Path, line_no: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} must be an integer, got '{token}'") from None
    if value < 1:
        raise DataError(f"{path}:{line_no}: {what} must be at least 1, got {value}")
    return value


def read_lfw_pairs(path: str | Path) -> PairList[NamedKey]:
    """Read an LFW-format ``pairs.txt``.

    The first line is ``<folds> <pairs per fold>`` (view 2: ``10 300``) or a single
    ``<pairs>`` (view 1's ``pairsDevTrain.txt``: ``1100``, read as one fold). Each fold is then
    ``N`` matched lines ``name n1 n2`` followed by ``N`` mismatched lines
    ``name1 n1 name2 n2``; fields are separated by any whitespace and blank lines are skipped.
    Folds are numbered from 0 in file order. Any deviation (wrong field count for the block,
    a non-integer or non-positive image number, a mismatched pair naming one group twice,
    too few or too many lines) raises :class:`mtkd.DataError` naming the file and line.
    """
    path = Path(path)
    lines = _nonblank_lines(path)
    header_no, header = lines[0]
    n_folds, per_fold = _pairs_header(header, path, header_no)
    body = _pair_lines(lines[1:], n_folds * 2 * per_fold, n_folds, per_fold, path, header_no)
    pairs: PairList[NamedKey] = []
    for i, (no, fields) in enumerate(body):
        fold, within = divmod(i, 2 * per_fold)
        if within < per_fold:
            a, b = _matched_pair(fields, path, no, f"pair {within + 1} of fold {fold + 1}")
        else:
            where = f"pair {within - per_fold + 1} of fold {fold + 1}"
            a, b = _mismatched_pair(fields, path, no, where)
        pairs.append(Pair(a, b, within < per_fold, fold))
    return pairs


Line = tuple[int, list[str]]


def _nonblank_lines(path: Path) -> list[Line]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from None
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise DataError(f"{path}: the pairs file is empty")
    return lines


def _pairs_header(header: list[str], path: Path, no: int) -> tuple[int, int]:
    """(folds, pairs per fold) from ``<folds> <pairs per fold>`` or ``<pairs>``."""
    if len(header) == 2:
        n_folds = _parse_count(header[0], path, no, "the number of folds")
        return n_folds, _parse_count(header[1], path, no, "the number of pairs per fold")
    if len(header) == 1:
        return 1, _parse_count(header[0], path, no, "the number of pairs")
    raise DataError(
        f"{path}:{no}: the header must be '<folds> <pairs per fold>' or '<pairs>', "
        f"got {len(header)} fields"
    )


def _pair_lines(
    body: list[Line], expected: int, n_folds: int, per_fold: int, path: Path, header_no: int
) -> list[Line]:
    """The body, which must hold exactly the lines the header promises."""
    if len(body) < expected:
        last = body[-1][0] if body else header_no
        raise DataError(
            f"{path}:{last}: the header promises {n_folds} fold(s) of {per_fold} matched and "
            f"{per_fold} mismatched pairs ({expected} lines), but the file ends after "
            f"{len(body)}"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}:{body[expected][0]}: unexpected line after the {expected} pair lines "
            f"the header promises"
        )
    return body


def _matched_pair(fields: list[str], path: Path, no: int, where: str) -> tuple[NamedKey, NamedKey]:
    if len(fields) != 3:
        raise DataError(
            f"{path}:{no}: expected a matched pair 'name n1 n2' ({where}), got {len(fields)} fields"
        )
    name, n1, n2 = fields
    return (
        (name, _parse_count(n1, path, no, "an image number")),
        (name, _parse_count(n2, path, no, "an image number")),
    )


def _mismatched_pair(
    fields: list[str], path: Path, no: int, where: str
) -> tuple[NamedKey, NamedKey]:
    if len(fields) != 4:
        raise DataError(
            f"{path}:{no}: expected a mismatched pair 'name1 n1 name2 n2' ({where}), "
            f"got {len(fields)} fields"
        )
    name1, n1, name2, n2 = fields
    if name1 == name2:
        raise DataError(f"{path}:{no}: a mismatched pair names '{name1}' twice")
    return (
        (name1, _parse_count(n1, path, no, "an image number")),
        (name2, _parse_count(n2, path, no, "an image number")),
    )
