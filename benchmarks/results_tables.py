"""The tables and figures of docs/results.md, regenerated from study folders.

Every number comes from the runs' ``results.json`` (through ``mtkd.report``, as ``mtkd
compare`` prints them); nothing is typed by hand. For each study folder it prints a markdown
section (the table and, for studies with loss-weighting variants, the learned weights of the
last epoch) and copies the study's accuracy-by-yaw figures to ``--images/<study>/``.

    python benchmarks/results_tables.py runs/ablation_teachers runs/verification \
        --images docs/images
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mtkd.report import comparison_rows, markdown_table, read_results


def _final_weights(run_dir: Path) -> dict[str, float]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return {}
    last = json.loads(log.read_text().splitlines()[-1])
    return {k.removeprefix("weight/"): v for k, v in last.items() if k.startswith("weight/")}


def study_section(folder: Path, images: Path | None) -> str:
    summary = json.loads((folder / "study.json").read_text())
    runs = [Path(r) for r in summary["runs"]]
    results = [read_results(r) for r in runs]
    order = list(dict.fromkeys(str(r["recipe"]) for r in results))
    lines = [f"### Study `{summary['study']}` (seeds {summary['seeds']})", ""]
    lines.append(markdown_table(comparison_rows(results, order=order)))
    weighted = [(r, w) for r in runs if (w := _final_weights(r))]
    if weighted:
        lines += ["Learned task weights at the last epoch:", ""]
        lines += ["| run | weights |", "| --- | --- |"]
        for run, weights in weighted:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(weights.items()))
            lines.append(f"| {run.name} | {shown} |")
        lines.append("")
    if images is not None:
        target = images / summary["study"]
        target.mkdir(parents=True, exist_ok=True)
        for figure in sorted(folder.glob("accuracy_by_bin-*.png")):
            shutil.copy(figure, target / figure.name)
            lines.append(f"![{figure.stem}](images/{summary['study']}/{figure.name})")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (runs/<study>)")
    parser.add_argument("--images", type=Path, help="copy figures under this folder")
    args = parser.parse_args()
    for folder in args.studies:
        print(study_section(folder, args.images))


if __name__ == "__main__":
    main()
