"""Weights files are verified: every one a run writes has a SHA-256 beside it, a flipped byte
or a NaN is refused naming the file, a failed checkpoint write keeps the last good one, and a
resume never crashes on a corrupt best-weights file or counters file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import flip_byte, interrupted_copy, tiny_run
from rich.console import Console
from safetensors.torch import load_file, save_file

import mtkd
from mtkd.cli import main
from mtkd.utils import checkpoint
from mtkd.utils.checksums import SUMS, read_sums


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the terminal width


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("integrity") / "done")


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


# -- item 4: checksums recorded for every weights file, verified on load ---------------------


def test_every_weights_file_of_a_run_has_a_sha256_line_beside_it(copy: Path) -> None:
    mtkd.export_run(copy, "safetensors", console=Console(quiet=True))
    weights = [
        "checkpoints/best.safetensors",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.pt",
        "checkpoints/last/rng.pt",
        "checkpoints/last.previous/model.safetensors",
        "distilled/model.safetensors",
        "export/model.safetensors",
    ]
    for name in weights:
        path = copy / name
        recorded = read_sums(path.parent)[path.name]  # the `sha256sum -c` format
        assert recorded == hashlib.sha256(path.read_bytes()).hexdigest(), name
    assert (copy / "checkpoints" / SUMS).read_text().endswith("  best.safetensors\n")


def test_a_flipped_byte_in_the_best_weights_is_refused_naming_the_file(copy: Path) -> None:
    best = copy / "checkpoints" / "best.safetensors"
    flip_byte(best)
    load_file(str(best))  # still parses: only the checksum can tell
    with pytest.raises(mtkd.MtkdError, match=rf"'{best}' is corrupt: .*checksum"):
        mtkd.load_run(copy, distilled=False)


def test_predict_with_a_flipped_byte_in_the_distilled_model_stops_in_one_line(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    image = tmp_path / "face.png"
    Image.new("RGB", (32, 32), (90, 60, 40)).save(image)
    weights = copy / "distilled" / "model.safetensors"
    flip_byte(weights)
    assert main(["predict", str(copy), str(image)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "model.safetensors' is corrupt" in err


def test_weights_holding_nan_are_refused_naming_the_file(copy: Path) -> None:
    weights = copy / "distilled" / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(weights))  # as an old mtkd wrote it: no checksum line
    (copy / "distilled" / SUMS).unlink()
    with pytest.raises(mtkd.MtkdError, match=rf"'{weights}' holds NaN or Inf values .*{name}"):
        mtkd.load_run(copy)


def test_run_folders_from_before_checksums_still_load(copy: Path) -> None:
    for sums in copy.rglob(SUMS):
        sums.unlink()
    model = mtkd.load_run(copy)
    reference = load_file(str(copy / "distilled" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_a_corrupt_checkpoint_file_falls_back_to_the_checkpoint_before(copy: Path) -> None:
    last = copy / "checkpoints" / "last"
    flip_byte(last / "optimizer.pt", from_end=300)  # inside the tensor data, before the index
    model = mtkd.load_run(copy, distilled=False)
    state, _, _, notes = checkpoint.load_checkpoint(last, model)
    assert state["epoch"] == 1  # last.previous: the end of epoch 1
    assert "optimizer.pt' is corrupt" in notes[0]


# -- item 8: a full disk while checkpointing --------------------------------------------------


def test_a_failing_torch_save_cleans_up_and_names_the_space_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 256)).sum().backward()
    optimizer.step()  # Adam now holds two moments per weight: 3 x 0.26 MB to write
    last = tmp_path / "checkpoints" / "last"
    checkpoint.save_checkpoint(last, model, optimizer, {"epoch": 1})

    def full(*_args: object, **_kwargs: object) -> None:  # what torch.save raises on ENOSPC
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(mtkd.MtkdError) as caught:
        checkpoint.save_checkpoint(last, model, optimizer, {"epoch": 2})
    message = str(caught.value)
    assert f"cannot write a checkpoint in '{last.parent}'" in message
    assert "it needs about 0.8 MB free" in message and "still holds the last good one" in message
    assert "\n" not in message
    assert not last.with_name("last.tmp").exists()
    monkeypatch.undo()
    state, *_ = checkpoint.load_checkpoint(last, model, optimizer, required=("epoch",))
    assert state == {"epoch": 1}


def test_a_full_disk_while_writing_the_best_weights_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    best = tmp_path / "best.safetensors"
    model = torch.nn.Linear(4, 4)
    checkpoint.save_weights(model, best)
    before = best.read_bytes()

    write_bytes = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if not self.name.startswith("best.safetensors"):
            return write_bytes(self, data)
        write_bytes(self, data[: len(data) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(mtkd.MtkdError, match=rf"cannot write '{best}': No space left on device"):
        checkpoint.save_weights(model, best)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMS, "best.safetensors"]  # no .tmp
    assert best.read_bytes() == before
    assert read_sums(tmp_path) == {"best.safetensors": hashlib.sha256(before).hexdigest()}


# -- item 9: a corrupt best file or counters file on resume -----------------------------------


def test_load_best_state_returns_verified_weights_or_stops_in_one_line(copy: Path) -> None:
    best = copy / "checkpoints" / "best.safetensors"
    state = checkpoint.load_best_state(copy, "cpu")
    assert state is not None
    assert all(torch.equal(state[k], v) for k, v in load_file(str(best)).items())
    flip_byte(best)
    with pytest.raises(mtkd.MtkdError, match=rf"cannot resume: '{best}' is corrupt") as caught:
        checkpoint.load_best_state(copy, "cpu")
    assert "\n" not in str(caught.value)
    best.write_bytes(best.read_bytes()[:100])  # torn, in a folder from before checksums
    (best.parent / SUMS).unlink()
    with pytest.raises(mtkd.MtkdError, match=r"cannot resume: .*unreadable or corrupt"):
        checkpoint.load_best_state(copy, "cpu")
    best.unlink()
    assert checkpoint.load_best_state(copy, "cpu") is None


def test_a_state_json_without_its_counters_falls_back_to_the_checkpoint_before(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = interrupted_copy(finished, tmp_path / "killed")
    last = run / "checkpoints" / "last"
    (last / "state.json").write_text("{}")
    assert main(["resume", str(run)]) == 0  # continues from last.previous: epoch 2 again
    out = " ".join(capsys.readouterr().out.split())
    assert "lacks epoch, step" in out and "resumed at epoch 2, step 0" in out
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 2


def test_resume_with_no_readable_counters_stops_in_one_line(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = interrupted_copy(finished, tmp_path / "killed")
    (run / "checkpoints" / "last" / "state.json").write_text("")
    (run / "checkpoints" / "last.previous" / "state.json").write_text("{}")
    assert main(["resume", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "no usable checkpoint" in err


def test_deleting_a_corrupt_best_file_resumes_to_the_best_of_the_epochs_still_to_come(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = interrupted_copy(finished, tmp_path / "killed")  # killed after epoch 2's checkpoint
    for name in ("last", "last.previous"):  # epoch 1 was a best no later epoch can beat
        path = run / "checkpoints" / name / "state.json"
        state = json.loads(path.read_text())
        path.write_text(json.dumps({**state, "best_value": -1e9, "best_epoch": 1}))
    best = run / "checkpoints" / "best.safetensors"
    flip_byte(best)
    assert main(["resume", str(run)]) != 0
    advice = capsys.readouterr()
    assert "delete that file to resume anyway" in advice.out + advice.err
    best.unlink()  # as advised
    assert main(["resume", str(run), "trainer.max_epochs=3"]) == 0
    assert "weights of the best epoch so far (1) are missing" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] == 3  # the best of the epochs that came after, not epoch 1
    assert (
        read_sums(best.parent)["best.safetensors"] == hashlib.sha256(best.read_bytes()).hexdigest()
    )
    ended, kept = load_file(str(run / "distilled" / "model.safetensors")), load_file(str(best))
    assert ended.keys() == kept.keys()  # no teacher: the run ends with the best file's weights
    assert all(torch.equal(ended[k], v) for k, v in kept.items())


def test_a_deleted_best_file_with_no_epoch_left_ends_with_the_last_epoch_and_says_so(
    finished: Path, tmp_path: Path
) -> None:
    run = interrupted_copy(finished, tmp_path / "killed")
    best = run / "checkpoints" / "best.safetensors"
    best.unlink()
    assert main(["resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["best_epoch"] == 2  # the last one
    assert "best.safetensors" not in read_sums(best.parent)  # no line for a file not there
