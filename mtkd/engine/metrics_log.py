"""``metrics.jsonl``: one JSON line per epoch, appended by rank 0, cut back atomically when a
run resumes from a checkpoint older than its last logged epoch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..utils import distributed

NON_FINITE = "non_finite"  # the keys whose values were NaN/Inf, written as null


def json_line(record: dict[str, Any]) -> str:
    """The record as strict JSON: NaN and Inf are not JSON, so they become ``null`` and their
    keys are listed under ``non_finite`` (a reader can tell "not finite" from "not logged")."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        record = {k: (None if k in bad else v) for k, v in record.items()}
        record[NON_FINITE] = bad
    return json.dumps(record, allow_nan=False)


class MetricsLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path if distributed.is_main() else None  # only rank 0 writes
        self._read_from = path

    def append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json_line(record) + "\n")

    def keep_first(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` records; the file is cut to them (epochs after the checkpoint go)."""
        path = self._read_from
        lines = path.read_text().splitlines()[:n] if path is not None and path.is_file() else []
        distributed.barrier()  # every rank has read the log before rank 0 rewrites it
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in lines))
            os.replace(tmp, self.path)  # a crash leaves the old log or the new, never half
        return [json.loads(line) for line in lines]
