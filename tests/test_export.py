"""Export (ONNX, TorchScript, safetensors), prediction and embedding from a real tiny run.

One Seg-Distilled-ID run is trained per module (seconds at 32 px); every test reads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rich.console
import torch
from helpers import REPO, run_tiny_synthetic
from mtkd_plugins.synthetic_heads.render import render_view, sample_identities
from PIL import Image

import mtkd
import mtkd.deploy.export
from mtkd.cli import main
from mtkd.deploy.export import TOLERANCE, FlatOutputs, export_run, load_exported
from mtkd.deploy.inference import Predictor
from mtkd.model.embedding import embed_with_flip

QUIET = rich.console.Console(quiet=True)
IDENTITIES = 6  # the tiny profile's people
EXPECTED_OUTPUTS = [
    "identification.logits",
    "identification.embedding",
    "identification.flip_embedding",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-run")
    return run_tiny_synthetic(root, "trainer.max_epochs=1").run_dir


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor(run_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Synthetic heads as PNG files: two people, two views each, one of them grey."""
    folder = tmp_path_factory.mktemp("images")
    people = sample_identities(IDENTITIES, seed=0)
    paths = []
    for person in range(2):
        for view in range(2):
            image, _mask, _ = render_view(people, person, view, size=48, seed=0)
            path = folder / f"person{person}_view{view}.png"
            pil = Image.fromarray(image)
            (pil.convert("L") if (person, view) == (1, 1) else pil).save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def reference(run_dir: Path) -> FlatOutputs:
    """The run's distilled PyTorch model with flat outputs: what every artefact must match."""
    size = int(mtkd.load_recipe(run_dir / "config.yaml").data.image_size)
    return FlatOutputs(mtkd.load_run(run_dir), image_size=size)


def _run_reference(reference: FlatOutputs, batch: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(reference(batch))


def _batch(reference: FlatOutputs, n: int = 4) -> torch.Tensor:
    size = reference.image_size
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def _assert_close(names: list[str], want: list[torch.Tensor], got: list[np.ndarray]) -> None:
    assert names == EXPECTED_OUTPUTS  # no segmentation output survives distillation
    for name, w, g in zip(names, want, got, strict=True):
        assert tuple(g.shape) == tuple(w.shape), name
        assert float(np.abs(np.asarray(g) - w.numpy()).max()) < TOLERANCE, name


def _info(path: Path) -> dict:
    return json.loads((path.parent / "export.json").read_text())[path.name]


def test_onnx_round_trip_in_onnxruntime(run_dir: Path, reference: FlatOutputs) -> None:
    import onnxruntime as ort

    path = export_run(run_dir, "onnx", console=QUIET)
    assert path == run_dir / "export" / "model.onnx"
    info = _info(path)
    assert info["input"]["name"] == "image" and info["input"]["shape"][0] == "batch"
    assert [o["name"] for o in info["outputs"]] == EXPECTED_OUTPUTS
    labels = json.loads((run_dir / "labels.json").read_text())["identity"]["names"]
    assert info["outputs"][0]["classes"] == labels and info["outputs"][1]["classes"] is None
    assert all(v < TOLERANCE for v in info["max_abs_diff"].values())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    batch = _batch(reference, 4)  # not the batch size the graph was captured with
    want = _run_reference(reference, batch)
    _assert_close(names, want, session.run(None, {"image": batch.numpy()}))


def test_the_docs_onnxruntime_example_runs_as_written(
    run_dir: Path,
    images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (run_dir / "export" / "model.onnx").is_file():  # normally the test above made it
        export_run(run_dir, "onnx", console=QUIET)
    doc = (REPO / "docs" / "export.md").read_text()
    code = re.search(r"## Using the ONNX model from Python\n\n```python\n(.*?)```", doc, re.S)
    assert code is not None and len(code.group(1).strip().splitlines()) <= 12
    size = int(mtkd.load_recipe(run_dir / "config.yaml").data.image_size)
    Image.open(images[0]).save(run_dir / "face.png")
    monkeypatch.chdir(run_dir)
    exec(compile(code.group(1).replace("128, 128", f"{size}, {size}"), "export.md", "exec"), {})
    assert "person_" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(run_dir: Path, reference: FlatOutputs, tmp_path: Path) -> None:
    path = export_run(run_dir, "torchscript", tmp_path / "ts" / "model.pt", console=QUIET)
    extra = {"mtkd_outputs.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    names = json.loads(extra["mtkd_outputs.json"])
    batch = _batch(reference, 1)
    want = _run_reference(reference, batch)
    with torch.no_grad():
        got = [t.numpy() for t in loaded(batch)]
    _assert_close(names, want, got)
    assert _info(path)["format"] == "torchscript"


def test_safetensors_rebuilds_from_weights_and_sidecar_alone(
    run_dir: Path, reference: FlatOutputs, tmp_path: Path
) -> None:
    path = export_run(run_dir, "safetensors", tmp_path, console=QUIET)  # a folder works too
    assert path == tmp_path / "model.safetensors" and (tmp_path / "model.json").is_file()
    model = load_exported(path)
    assert list(model.tasks) == ["identification"]
    batch = _batch(reference, 2)
    with torch.no_grad():
        got = [t.numpy() for t in FlatOutputs(model, reference.image_size)(batch)]
    _assert_close(list(reference.output_names), _run_reference(reference, batch), got)


def test_a_failed_parity_check_leaves_no_file(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mtkd.deploy.export, "TOLERANCE", 0.0)  # even an exact match now fails
    with pytest.raises(mtkd.MtkdError, match="does not match PyTorch"):
        export_run(run_dir, "safetensors", tmp_path / "model.safetensors", console=QUIET)
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_an_unknown_format(run_dir: Path) -> None:
    with pytest.raises(mtkd.MtkdError, match="onnx, torchscript, safetensors"):
        export_run(run_dir, "tflite", console=QUIET)


def test_embed_gives_unit_vectors_and_flip_changes_them(
    predictor: Predictor, images: list[Path]
) -> None:
    flipped = predictor.embed(images)
    plain = predictor.embed(images, flip=False)
    for emb in (flipped, plain):
        assert emb.shape == (len(images), 128) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(flipped, plain)
    assert predictor.embed([]).shape == (0, 128)


def test_predict_ranks_identities_by_probability(
    predictor: Predictor, images: list[Path], run_dir: Path
) -> None:
    labels = json.loads((run_dir / "labels.json").read_text())["identity"]["names"]
    results = predictor.predict(images, top_k=3)
    assert len(results) == len(images)
    for ranked in results:
        assert len(ranked) == 3 and {name for name, _ in ranked} <= set(labels)
        probs = [p for _, p in ranked]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    everything = predictor.predict(images[:1], top_k=50)[0]  # capped at the identity count
    assert len(everything) == IDENTITIES
    assert sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)


def test_a_corrupt_image_is_a_sample_error_naming_the_file(
    predictor: Predictor, images: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(images[0].read_bytes()[:60])  # a truncated PNG
    with pytest.raises(mtkd.SampleError, match=r"broken\.png") as info:
        predictor.predict([images[0], bad])
    assert info.value.path == str(bad)
    with pytest.raises(mtkd.SampleError, match="not found"):
        predictor.embed([tmp_path / "missing.png"])


def test_an_unknown_task_lists_the_tasks_the_run_has(run_dir: Path) -> None:
    with pytest.raises(mtkd.MtkdError, match=r"no task 'verification'.*identification"):
        Predictor(run_dir, task="verification")


def test_cli_export_embed_and_predict(
    run_dir: Path,
    images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "cli" / "model.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert out.is_file() and str(out) in printed and "max abs diff" in printed

    npy = tmp_path / "emb.npy"
    assert main(["embed", str(run_dir), *map(str, images), "--out", str(npy), "--no-flip"]) == 0
    assert np.load(npy).shape == (len(images), 128)
    assert main(["embed", str(run_dir), str(images[0])]) == 0
    assert "norm 1.000" in capsys.readouterr().out

    monkeypatch.chdir(images[0].parent)  # relative names keep the table narrow
    assert main(["predict", str(run_dir), images[0].name, images[1].name, "--top-k", "2"]) == 0
    table = capsys.readouterr().out
    assert images[0].name in table and images[1].name in table and "person_" in table

    assert main(["predict", str(tmp_path), "face.png"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not a run folder" in err and "Traceback" not in err


def test_mtkd_embed_returns_the_vectors_verification_scores(run_dir: Path, tmp_path: Path) -> None:
    """One embedding rule: the CLI's vectors for image files are the flip-summed, normalised
    embeddings that verification computes for the same images from the data set."""
    cfg = mtkd.load_recipe(run_dir / "config.yaml")
    data = mtkd.build_data(cfg, console=QUIET)
    images = next(iter(mtkd.make_loader(data.test, 4, shuffle=False)))["image"]
    paths = []
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    model = mtkd.load_run(run_dir)
    scored = embed_with_flip(lambda x: model(x)["identification"]["embedding"], images)
    out = tmp_path / "embeddings.npy"
    assert main(["embed", str(run_dir), *map(str, paths), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), scored, rtol=0, atol=1e-6)


def test_the_onnx_flip_embedding_is_mtkd_embeds_vector(
    run_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    """An ONNX user compares faces with the vectors verification scored: the exported
    flip_embedding of an image equals what mtkd embed prints for the same file."""
    import onnxruntime as ort

    path = export_run(run_dir, "onnx", tmp_path / "model.onnx", console=QUIET)
    rule = {o["name"]: o.get("rule") for o in _info(path)["outputs"]}
    assert "mirror" in str(rule["identification.flip_embedding"])
    predictor = Predictor(run_dir)
    batch = torch.stack([predictor.load(p) for p in images]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(["identification.flip_embedding"], {"image": batch})[0]
    out = tmp_path / "embeddings.npy"
    assert main(["embed", str(run_dir), *map(str, images), "--out", str(out)]) == 0
    np.testing.assert_allclose(exported, np.load(out), rtol=0, atol=1e-5)
    single = export_run(
        run_dir, "onnx", tmp_path / "single.onnx", console=QUIET, flip_embedding=False
    )
    outputs = [o.name for o in ort.InferenceSession(str(single)).get_outputs()]
    assert outputs == EXPECTED_OUTPUTS[:2]
