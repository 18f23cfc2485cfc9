"""The tables and figures of docs/results.md, regenerated from study folders.

Every number comes from the runs' ``results.json`` (through ``mtkd.runs.compare``, as ``mtkd
compare`` prints them); nothing is typed by hand. For each study folder it prints a markdown
section (the table; with several seeds, each seed's test accuracy; for studies with
loss-weighting variants, the learned weights of the last epoch) and copies the study's
accuracy-by-yaw figures to ``--images/<study>/``. ``--paper`` adds the study's networks beside
the figures the Seg-Distilled-ID paper reports in its Table 1 (arXiv 2209.01115).

    python benchmarks/results_tables.py runs/ablation_teachers runs/verification \
        --images docs/images
    python benchmarks/results_tables.py runs/table1_cpu --paper --images docs/images
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from mtkd.runs.compare import comparison_rows, markdown_table, read_results
from mtkd.viz.plots import run_bins

# The paper's Table 1 (ImageNet-pretrained encoders, 67 people, 128 px): test accuracy and
# parameters as published; the only figures in docs/results.md not measured by mtkd.
PAPER_TABLE1: dict[str, tuple[str, str, float]] = {
    # member: (paper's name, parameters as published, test accuracy %)
    "mobilenetv2_id": ("MobileNetV2-ID", "2.4M", 21.9),
    "resnet101_id": ("ResNet-101-ID", "43M", 81.6),
    "vgg19_id": ("VGG-19-ID", "20M", 96.1),
    "inceptionv3_id": ("InceptionV3-ID", "22M", 96.3),
    "seg_distilled_id": ("Seg-Distilled-ID", "6.5M training, 2.4M inference", 99.9),
}


def _top1(result: dict[str, Any]) -> float:
    return float(result["test"]["distilled"]["identification/top1"])


def per_seed_table(results: list[dict[str, Any]], order: list[str]) -> str:
    """Each seed's test accuracy, so a reader sees the spread behind mean ± std."""
    seeds = sorted({int(r["seed"]) for r in results})
    by = {(str(r["recipe"]), int(r["seed"])): r for r in results}
    lines = ["| network | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|" + " --- |" * (len(seeds) + 1))
    for name in order:
        cells = [f"{100 * _top1(by[name, s]):.1f} %" if (name, s) in by else "—" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def by_bin_table(
    results: list[dict[str, Any]],
    merge: int = 2,
    task: str = "identification",
    source: str = "classifier",
) -> str:
    """The accuracy-by-yaw figure as numbers, pooled: every seed's test images in ``merge``
    neighbouring bins count together, so each cell rests on tens of images, not a handful.
    ``source="gallery"``: gallery/probe rank-1 instead of the classifier's accuracy."""
    pooled: dict[str, dict[int, list[float]]] = {}  # recipe -> group -> [correct, images]
    edges: dict[int, list[float]] = {}
    for r in results:
        bins = [b for b in run_bins(r, task, source) if b["low"] is not None]
        bins = [b for b in bins if b["high"] is not None]
        for index, b in enumerate(sorted(bins, key=lambda b: b["low"])):
            group = index // merge
            edges.setdefault(group, []).extend([b["low"], b["high"]])
            cell = pooled.setdefault(str(r["recipe"]), {}).setdefault(group, [0.0, 0.0])
            if b["count"]:
                cell[0] += b["accuracy"] * b["count"]
                cell[1] += b["count"]
    if not pooled:
        return ""
    groups = sorted(edges)
    header = [f"{min(edges[g]):+.0f}…{max(edges[g]):+.0f}°" for g in groups]
    lines = ["| network | " + " | ".join(header) + " |", "|" + " --- |" * (len(groups) + 1)]
    for recipe, cells in pooled.items():
        shown = [
            f"{100 * c[0] / c[1]:.0f} % ({c[1]:.0f})" if (c := cells.get(g)) and c[1] else "—"
            for g in groups
        ]
        lines.append(f"| {recipe} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def band(bins: list[dict[str, Any]], near: float | None, far: float | None) -> float | None:
    """Accuracy pooled over the bins inside ``|value| <= near`` (or, with ``far``, the bins
    at ``|value| >= far``); None when they hold no sample."""
    correct = count = 0.0
    for b in bins:
        low, high = b["low"], b["high"]
        if low is None or high is None or not b["count"]:
            continue
        inside = near is not None and -near <= low and high <= near
        outside = far is not None and (low >= far or high <= -far)
        if inside or outside:
            correct += b["accuracy"] * b["count"]
            count += b["count"]
    return correct / count if count else None


def _mean_se(values: list[float], signed: bool = False) -> str:
    """``mean ± standard error`` in percent (the s.e. over seeds: sample std / sqrt(n));
    ``signed``: a difference, shown with its sign."""
    if not values:
        return "—"
    mean = f"{100 * statistics.fmean(values):{'+' if signed else ''}.1f}"
    if len(values) < 2:
        return f"{mean} %"
    se = 100 * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean} ± {se:.1f} %"


def pose_gap_table(
    results: list[dict[str, Any]],
    order: list[str],
    baseline: str,
    source: str = "classifier",
    near: float = 30.0,
    far: float = 60.0,
    task: str = "identification",
) -> str:
    """Near-frontal against profile accuracy per network, and each network's gain over
    ``baseline`` in both bands, paired by seed (a seed draws the same split for every
    member): mean ± standard error over seeds."""
    by = {(str(r["recipe"]), int(r["seed"])): run_bins(r, task, source) for r in results}
    title = f"|yaw| ≤ {near:g}°", f"|yaw| ≥ {far:g}°"
    lines = [
        f"| network | {title[0]} | {title[1]} | profile - frontal | gain over {baseline}, "
        f"{title[0]} | gain over {baseline}, {title[1]} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in order:
        seeds = sorted(s for n, s in by if n == name)
        rows = [
            _seed_gaps(by[name, s], by.get((baseline, s)) if name != baseline else None, near, far)
            for s in seeds
        ]
        cells = [
            _mean_se([v for row in rows if (v := row[i]) is not None], signed=i >= 2)
            for i in range(5)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _seed_gaps(
    mine: list[dict[str, Any]], base: list[dict[str, Any]] | None, near: float, far: float
) -> tuple[float | None, ...]:
    """One seed: frontal and profile accuracy, profile - frontal, and the gains over the
    baseline's same seed in both bands (None without a baseline)."""
    frontal, profile = band(mine, near, None), band(mine, None, far)
    gains: tuple[float | None, ...] = (None, None)
    if base is not None:
        gains = (_diff(frontal, band(base, near, None)), _diff(profile, band(base, None, far)))
    return (frontal, profile, _diff(profile, frontal), *gains)


def paper_table(results: list[dict[str, Any]], order: list[str]) -> str:
    """The study's networks beside the paper's Table 1 (paper figures as published)."""
    lines = [
        "| network | paper: params | paper: test accuracy | here: params (training / "
        "inference) | here: test accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in order:
        if name not in PAPER_TABLE1:
            continue
        runs = [r for r in results if r["recipe"] == name]
        accuracy = [100 * _top1(r) for r in runs]
        params = runs[0]["params"]
        training = params["training"]["trainable"] / 1e6
        inference = params["inference"]["trainable"] / 1e6
        spread = f" ± {statistics.stdev(accuracy):.1f}" if len(accuracy) > 1 else ""
        paper_name, paper_params, paper_accuracy = PAPER_TABLE1[name]
        lines.append(
            f"| {paper_name} | {paper_params} | {paper_accuracy:.1f} % | {training:.2f}M / "
            f"{inference:.2f}M | {statistics.fmean(accuracy):.1f}{spread} % |"
        )
    return "\n".join(lines) + "\n"


def _final_weights(run_dir: Path) -> dict[str, float]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return {}
    last = json.loads(log.read_text().splitlines()[-1])
    return {k.removeprefix("weight/"): v for k, v in last.items() if k.startswith("weight/")}


def gallery_section(results: list[dict[str, Any]], order: list[str]) -> str:
    """Gallery/probe rank-1 by yaw, and near-frontal against profile for both scores."""
    where = next(r["gallery"]["where"] for r in results if r.get("gallery"))
    with_gallery = [r for r in results if r.get("gallery")]
    lines = [
        f"Gallery/probe rank-1 by yaw (gallery: the test views within {where}; every other "
        "test view a probe), all seeds pooled:",
        "",
        by_bin_table(with_gallery, source="gallery"),
    ]
    baseline = order[0]
    for source, what in (("classifier", "Classifier accuracy"), ("gallery", "Gallery rank-1")):
        lines += [
            f"{what}, near-frontal against profile (mean ± standard error over seeds; gains "
            f"paired by seed against {baseline}):",
            "",
            pose_gap_table(results, order, baseline, source),
        ]
    return "\n".join(lines)


def study_summary(folder: Path) -> dict[str, Any]:
    """The study's ``study.json``; for a study still running (or interrupted), the member
    runs that have finished so far, marked ``unfinished``."""
    if (folder / "study.json").is_file():
        return dict(json.loads((folder / "study.json").read_text()))
    runs = sorted(p.parent for p in folder.glob("*-seed*/results.json"))
    if not runs:
        raise SystemExit(f"'{folder}': no study.json and no finished run in it")
    seeds = sorted({int(r.name.rsplit("-seed", 1)[1]) for r in runs})
    return {"study": folder.name, "seeds": seeds, "runs": runs, "unfinished": True}


def study_section(folder: Path, images: Path | None, paper: bool = False) -> str:
    summary = study_summary(folder)
    runs = [Path(r) for r in summary["runs"]]
    results = [read_results(r) for r in runs]
    order = list(dict.fromkeys(str(r["recipe"]) for r in results))
    lines = [f"### Study `{summary['study']}` (seeds {summary['seeds']})", ""]
    if summary.get("unfinished"):
        lines += [f"(unfinished: the {len(runs)} runs finished so far)", ""]
    lines.append(markdown_table(comparison_rows(results, order=order)))
    if len(summary["seeds"]) > 1:
        lines += ["Test accuracy of each seed (each seed also draws its own split):", ""]
        lines.append(per_seed_table(results, order))
    if any(r.get("accuracy_by_bin") for r in results):
        lines += [
            "Identification accuracy by yaw, all seeds' test images pooled (in brackets: how "
            "many):",
            "",
        ]
        lines.append(by_bin_table([r for r in results if r.get("accuracy_by_bin")]))
    if any(r.get("gallery") for r in results):
        lines.append(gallery_section(results, order))
    if paper:
        lines += ["Beside the paper's Table 1 (its figures as published):", ""]
        lines.append(paper_table(results, order))
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
    parser.add_argument("--paper", action="store_true", help="add the paper's Table 1 beside")
    args = parser.parse_args()
    for folder in args.studies:
        print(study_section(folder, args.images, args.paper))


if __name__ == "__main__":
    main()
