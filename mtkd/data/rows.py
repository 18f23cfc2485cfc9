""".npy files written row by row through a small mapped window, so a cache build's memory is
flat in the data-set size.

Pages written through a memory map count in the writing process's resident memory for as
long as the map is open: writing a 50,000-image cache through one ``np.memmap`` grows the
process by the whole file (2.4 GB at 128 px). A :class:`RowFile` maps ``WINDOW_ROWS`` rows at
a time and lets each window go once written; the bytes in the file are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

WINDOW_ROWS = 256  # rows mapped at a time (12 MB of 128 px images)


class RowFile:
    """A new ``.npy`` file of ``shape`` (``create``) or an existing one, written by rows."""

    def __init__(
        self,
        path: Path,
        dtype: np.dtype[Any] | None = None,
        shape: tuple[int, ...] = (),
        *,
        create: bool = True,
        window: int = WINDOW_ROWS,
    ) -> None:
        if create:
            assert dtype is not None
            open_memmap(path, "w+", dtype, shape).flush()  # the header; the rest stays sparse
        header = np.load(path, mmap_mode="r")  # maps nothing it does not read
        self.path, self.dtype, self.shape = path, header.dtype, tuple(header.shape)
        self.offset = int(header.offset)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.window = window
        self._lo, self._rows = -1, np.zeros(0, self.dtype)
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def _rows_at(self, row: int) -> np.ndarray:
        """The mapped window holding ``row``, mapping the next one when needed."""
        lo = row - row % self.window
        if lo != self._lo:
            # let the window go unflushed: its pages stay in the page cache, written out
            # by the kernel (an msync per window would wait on the disk)
            self._lo, self._rows = -1, np.zeros(0, self.dtype)
            count = min(self.window, self.shape[0] - lo)
            self._rows = np.memmap(
                self.path,
                self.dtype,
                "r+",
                self.offset + lo * self.row_bytes,
                (count, *self.shape[1:]),
            )
            self._lo = lo
        return self._rows

    def __setitem__(self, row: int, value: Any) -> None:
        self._rows_at(row)[row - self._lo] = value

    def write(self, start: int, values: np.ndarray) -> None:
        """Rows ``start`` onwards set to ``values`` (a block crossing windows)."""
        done = 0
        while done < len(values):
            rows = self._rows_at(start + done)
            at = start + done - self._lo
            take = min(len(values) - done, len(rows) - at)
            rows[at : at + take] = values[done : done + take]
            done += take

    def take(self, rows: np.ndarray) -> np.ndarray:
        """A copy of the rows at ``rows``: the file is mapped only while they are read."""
        whole: np.ndarray = np.load(self.path, mmap_mode="r")
        out = np.array(whole[rows])
        del whole
        return out

    def close(self) -> None:
        """Write the open window out and unmap it."""
        if isinstance(self._rows, np.memmap):
            self._rows.flush()
        self._lo, self._rows = -1, np.zeros(0, self.dtype)

    def array(self, rows: int | None = None) -> np.ndarray:
        """The file's first ``rows`` rows (all by default), memory-mapped read-only."""
        self.close()
        whole: np.ndarray = np.load(self.path, mmap_mode="r")
        return whole if rows is None else whole[:rows]
