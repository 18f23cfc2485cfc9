"""SHA-256 checksums of weights files, kept in a ``SHA256SUMS`` file beside them.

A flipped byte inside a weights file can still parse (safetensors checks its header, not the
numbers), so a corrupt file would silently give NaN losses or wrong predictions. Each weights
file mtkd writes gets a line ``<sha256>  <name>`` in its folder's ``SHA256SUMS`` (the format
``sha256sum -c`` reads), computed from the bytes being written; loading hashes the bytes it
reads anyway and refuses a mismatch. A file without a line (run folders from before
checksums) loads unverified.

A file is replaced in three steps: its line is removed, the file is renamed into place, the
new line is added. A crash between them leaves a file without a line (unverified), never a
good file with a wrong line.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

from ..errors import MtkdError
from .files import write_text_atomic

SUMS = "SHA256SUMS"


class ChecksumError(MtkdError):
    """A file's bytes differ from the checksum recorded when it was written."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: a weights file's identity,
    e.g. in a teacher network's ``weights_fingerprint``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in string.hexdigits for c in text)


def read_sums(folder: Path) -> dict[str, str]:
    """{file name: sha256} of ``folder/SHA256SUMS``; lines that do not parse are ignored."""
    try:
        text = (Path(folder) / SUMS).read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition(" ")
        name = name.lstrip(" *")  # "  name" (text mode) or " *name" (binary mode)
        if sep and name and _is_digest(digest):
            entries[name] = digest.lower()
    return entries


def _write_sums(folder: Path, entries: dict[str, str]) -> None:
    text = "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))
    write_text_atomic(Path(folder) / SUMS, text)


def record(path: Path, digest: str) -> None:
    """Set ``path``'s line in its folder's ``SHA256SUMS``."""
    path = Path(path)
    entries = read_sums(path.parent)
    if entries.get(path.name) != digest:
        entries[path.name] = digest
        _write_sums(path.parent, entries)


def forget(path: Path) -> None:
    """Remove ``path``'s line (before the file is replaced)."""
    path = Path(path)
    entries = read_sums(path.parent)
    if entries.pop(path.name, None) is not None:
        _write_sums(path.parent, entries)


def expected(path: Path) -> str | None:
    path = Path(path)
    return read_sums(path.parent).get(path.name)


def weights_sha256(path: Path) -> str:
    """A weights file's SHA-256 as its folder's ``SHA256SUMS`` records it (what loading
    checks the file against), else hashed now: same value, without reading a large file
    twice."""
    return expected(path) or sha256_file(path)


def verify(path: Path, data: bytes) -> None:
    """Raise :class:`ChecksumError` when ``data`` (``path``'s bytes) differs from its line."""
    want = expected(path)
    if want is not None and sha256_bytes(data) != want:
        raise ChecksumError(
            f"'{path}' is corrupt: its bytes do not match the checksum recorded in "
            f"'{Path(path).parent / SUMS}' when it was written"
        )


def read_verified(path: Path) -> bytes:
    """``path``'s bytes, checked against its recorded checksum (one read, one hash)."""
    data = Path(path).read_bytes()
    verify(path, data)
    return data
