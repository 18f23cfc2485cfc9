"""The model zoo: releasing a run as an entry, listing entries, and starting recipes from one
by name (``encoder.weights=zoo:`` / ``init_from=zoo:``) with the checksum verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

import mtkd
from mtkd.cli import main
from mtkd.model.transfer import SHAPE, check_init_from, init_from
from mtkd.model.zoo.load import ImageSizeWarning
from mtkd.model.zoo.release import MB, ReleaseOptions, release_run, stored_bytes, to_fp16
from mtkd.pretrained import PretrainedEntry, read_cards, sha256_of
from mtkd.utils.layout import INIT_FROM

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ENCODER = "mobilenetv2_035"  # MobileNetV2's module names (the U-Net taps resolve), 0.4M params
TINY = {
    "encoder.name": ENCODER,
    "data.dataset.name": "random_images",
    "data.dataset.identities": 4,
    "data.dataset.views": 6,
    "data.image_size": 32,
    "data.batch_size": 8,
    "data.cache": "memory",
    "trainer.max_epochs": 1,
    "trainer.progress": False,
    "evaluate.latency": False,
    "evaluate.verification": False,
    "output.plots": False,
}


def tiny_recipe(tmp: Path, recipe: str = "seg_distilled_id", **extra: Any) -> DictConfig:
    values = {**TINY, "output.root": str(tmp / "runs"), **extra}
    return mtkd.load_recipe(RECIPES / f"{recipe}.yaml", [f"{k}={v}" for k, v in values.items()])


class ZooFolder:
    """A test plugin: registers every entry whose card lies in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @mtkd.hookimpl
    def register_pretrained(self, register: Callable[[PretrainedEntry], None]) -> None:
        for entry in read_cards(self.folder):
            register(entry)


PLUGIN_FILE = """
from pathlib import Path

import mtkd
from mtkd.pretrained import read_cards


@mtkd.hookimpl
def register_pretrained(register):
    for entry in read_cards(Path(__file__).parent / "zoo"):
        register(entry)
"""


def zoo_plugins(folder: Path) -> mtkd.PluginSet:
    return mtkd.load_plugins(objects=[("test_zoo", ZooFolder(folder))])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished tiny run: identification + segmentation teacher on MobileNetV2-0.35."""
    tmp = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTKD_PLUGINS", raising=False)
        yield mtkd.run(tiny_recipe(tmp), console=Console(quiet=True)).run_dir


@pytest.fixture(scope="module")
def zoo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo folder with the tiny run released as entry ``tiny`` (every head fits)."""
    folder = tmp_path_factory.mktemp("zoo")
    release_run(tiny_run, "tiny", folder, ReleaseOptions(results={"orl_top1": 0.5}))
    return folder


@pytest.fixture
def zoo_copy(zoo: Path, tmp_path: Path) -> Path:
    """A private copy of the zoo folder, for a test that damages it."""
    return Path(shutil.copytree(zoo, tmp_path / "zoo"))


# --- releasing a run -----------------------------------------------------------------------


def test_a_released_entry_is_fp16_with_a_card_whose_checksum_and_facts_match(
    tiny_run: Path, zoo: Path
) -> None:
    card = json.loads((zoo / "tiny.json").read_text())
    weights = zoo / "tiny.safetensors"
    assert card["sha256"] == sha256_of(weights) and card["size"] == weights.stat().st_size
    assert (card["name"], card["encoder"], card["image_size"]) == ("tiny", ENCODER, 32)
    assert card["taps"][0] == "blocks.1.0.bn1" and card["heads"] == [
        "identification",
        "segmentation",
    ]
    run_results = json.loads((tiny_run / "results.json").read_text())
    facts = card["trained_on"]
    assert facts["recipe"] == "seg_distilled_id"  # no recipes/zoo/<name>.yaml: the recipe's name
    assert facts["epochs"] == run_results["epochs_run"] == 1 and facts["seed"] == 0
    assert facts["train_time_s"] == run_results["train_time_s"]
    assert facts["data"]["dataset"]["name"] == "random_images"
    assert "identification/top1" in facts["test"] and card["results"] == {"orl_top1": 0.5}
    best = load_file(str(tiny_run / "checkpoints" / "best.safetensors"))
    shipped = load_file(str(weights))
    assert set(shipped) == set(best)  # every head fitted the default budget
    for key, tensor in shipped.items():
        if best[key].is_floating_point():
            assert tensor.dtype == torch.float16, key
            assert torch.equal(tensor, best[key].half()), key
        else:  # BatchNorm's num_batches_tracked stays an integer
            assert tensor.dtype == best[key].dtype and torch.equal(tensor, best[key]), key
    with safe_open(str(weights), "pt") as handle:
        assert handle.metadata()["encoder"] == ENCODER


def test_releasing_the_same_run_again_gives_the_same_file(tiny_run: Path, zoo: Path) -> None:
    options = ReleaseOptions(results={"orl_top1": 0.5}, force=True)
    again = release_run(tiny_run, "tiny", zoo, options)
    assert again.sha256 == json.loads((zoo / "tiny.json").read_text())["sha256"]


@pytest.mark.slow
def test_two_processes_releasing_the_same_run_write_the_same_bytes(
    tiny_run: Path, tmp_path: Path
) -> None:
    """safetensors writes its metadata in hash-map order, which changes between processes."""
    files = []
    for n in range(3):
        out = tmp_path / f"zoo{n}"
        command = [sys.executable, "-m", "mtkd", "zoo", "release", str(tiny_run)]
        subprocess.run([*command, "--name", "same", "--out", str(out)], check=True)
        files.append((out / "same.safetensors").read_bytes())
    assert files[0] == files[1] == files[2]


def test_releasing_onto_an_existing_entry_asks_for_force_and_says_what_it_replaced(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["zoo", "release", str(tiny_run), "--name", "one", "--out", str(tmp_path)]
    assert main([*args, "--heads", "identification"]) == 0
    card = json.loads((tmp_path / "one.json").read_text())
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zoo entry 'one'" in err and "--force" in err
    assert json.loads((tmp_path / "one.json").read_text()) == card  # untouched
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert f"replaced zoo entry 'one' in '{tmp_path}'" in printed
    assert card["sha256"][:12] in printed


def test_a_head_that_would_push_the_file_past_the_budget_is_left_out(
    tiny_run: Path, tmp_path: Path
) -> None:
    sizes = stored_bytes(load_file(str(tiny_run / "checkpoints" / "best.safetensors")))
    budget = sizes["encoder"] + sizes["identification"] + sizes["segmentation"] // 2
    entry = release_run(tiny_run, "lean", tmp_path, ReleaseOptions(max_mb=budget / MB))
    assert entry.heads == ("identification",)
    assert entry.left_out == {"segmentation": sizes["segmentation"]}
    assert not any(k.startswith("heads.segmentation") for k in load_file(str(entry.file)))
    named = release_run(tiny_run, "seg", tmp_path, ReleaseOptions(heads=["segmentation"]))
    assert named.heads == ("segmentation",) and set(named.left_out) == {"identification"}


def test_release_refuses_a_file_or_a_zoo_over_budget_and_leaves_nothing_behind(
    tiny_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(mtkd.MtkdError, match=r"--max-mb: 'big.safetensors' would be"):
        release_run(tiny_run, "big", tmp_path, ReleaseOptions(heads=["segmentation"], max_mb=1))
    release_run(tiny_run, "first", tmp_path, ReleaseOptions(heads=[]))
    first = (tmp_path / "first.safetensors").stat().st_size
    with pytest.raises(mtkd.MtkdError, match=r"--zoo-max-mb: .* would total"):
        release_run(tiny_run, "second", tmp_path, ReleaseOptions(zoo_max_mb=1.5 * first / MB))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "first.safetensors"]
    with pytest.raises(mtkd.MtkdError, match=r"--heads: the run has no head\(s\) \['pose'\]"):
        release_run(tiny_run, "x", tmp_path, ReleaseOptions(heads=["pose"]))
    with pytest.raises(mtkd.MtkdError, match="not a finished run folder"):
        release_run(tmp_path, "x", tmp_path)


def test_a_tensor_fp16_cannot_hold_stays_fp32_and_counters_stay_integers() -> None:
    state = {
        "w": torch.tensor([1.0, 2.5]),
        "big": torch.tensor([1e6]),
        "n": torch.tensor(7, dtype=torch.int64),
    }
    out, kept = to_fp16(state)
    assert kept == ["big"] and out["big"].dtype == torch.float32
    assert out["w"].dtype == torch.float16 and out["n"].dtype == torch.int64


def test_the_release_command_writes_the_entry_and_reads_results_from_a_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "measured.json"
    extra.write_text(json.dumps({"orl": {"from_zoo": "95.1 ± 0.8 %"}}))
    out = tmp_path / "zoo"
    args = ["zoo", "release", str(tiny_run), "--name", "cli", "--out", str(out)]
    assert main([*args, "--results", str(extra), "--heads", "identification"]) == 0
    card = json.loads((out / "cli.json").read_text())
    assert card["results"] == {"orl": {"from_zoo": "95.1 ± 0.8 %"}}
    assert card["heads"] == ["identification"] and "segmentation" in card["left_out"]
    printed = capsys.readouterr().out
    assert "left out: head 'segmentation'" in printed and card["sha256"] in printed


# --- registering and listing ---------------------------------------------------------------


def test_a_plugin_registers_entries_and_mtkd_zoo_lists_them_as_a_table_and_as_json(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the table unfolded
    plugins = zoo_plugins(zoo)
    assert plugins.pretrained.by_plugin("test_zoo") == ["tiny"]
    plugin_file = tmp_path / "zoo_plugin.py"
    plugin_file.write_text(PLUGIN_FILE.replace('Path(__file__).parent / "zoo"', repr(str(zoo))))
    assert main(["zoo", "--plugin", str(plugin_file), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)  # the shipped entries, and the test's
    (record,) = [r for r in listed if r["name"] == "tiny"]
    card = json.loads((zoo / "tiny.json").read_text())
    assert {k: record[k] for k in ("name", "encoder", "image_size", "sha256")} == {
        "name": "tiny",
        "encoder": ENCODER,
        "image_size": 32,
        "sha256": card["sha256"],
    }
    assert record["file"] == str(zoo / "tiny.safetensors") and record["plugin"] == str(plugin_file)
    assert main(["zoo", "--plugin", str(plugin_file)]) == 0
    table = capsys.readouterr().out
    for text in (
        "tiny",
        ENCODER,
        "32 px",
        "seg_distilled_id",
        "orl_top1: 0.5",
        card["sha256"][:16],
    ):
        assert text in table, text
    assert f"{card['size'] / MB:.1f} MB" in table


def test_the_built_in_zoo_plugin_registers_every_card_in_its_folder(
    zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtkd_plugins.zoo as builtin

    monkeypatch.setattr(builtin, "FOLDER", zoo)
    assert mtkd.load_plugins().pretrained.by_plugin("zoo") == ["tiny"]


def test_the_shipped_zoo_entries_verify_and_keep_to_the_repository_budget() -> None:
    """Every entry mtkd ships: its file matches its card, at most 10 MB, 25 MB together."""
    from mtkd.model.zoo.load import verify

    plugins = mtkd.load_plugins()
    shipped = [plugins.pretrained.get(n, key="zoo") for n in plugins.pretrained.by_plugin("zoo")]
    for entry in shipped:
        verify(entry, key="zoo")
        assert entry.size <= 10 * MB, entry.name
    assert sum(entry.size for entry in shipped) <= 25 * MB


def test_a_plugin_registering_something_wrong_is_named(zoo: Path, tmp_path: Path) -> None:
    class Wrong:
        @mtkd.hookimpl
        def register_pretrained(self, register: Callable[[Any], None]) -> None:
            register(PretrainedEntry)  # the class, not an entry

    with pytest.raises(mtkd.PluginError, match=r"plugin 'wrong' .* not an instance of Pretrained"):
        mtkd.load_plugins(objects=[("wrong", Wrong())])
    with pytest.raises(mtkd.PluginError, match="'tiny' is registered twice: by plugin 'a'"):
        mtkd.load_plugins(objects=[("a", ZooFolder(zoo)), ("b", ZooFolder(zoo))])
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "encoder": ENCODER}))
    with pytest.raises(mtkd.PluginError, match=r"zoo card '.*bad.json': missing field\(s\) image"):
        zoo_plugins(tmp_path)


# --- starting from an entry ----------------------------------------------------------------


def test_encoder_weights_zoo_loads_exactly_the_entrys_encoder_tensors(
    zoo: Path, tmp_path: Path
) -> None:
    cfg = tiny_recipe(tmp_path, **{"encoder.weights": "zoo:tiny"})
    spaces = {"identity": mtkd.LabelSpace(tuple("abcd")), "mask": mtkd.LabelSpace(tuple("wxyz"))}
    model = mtkd.build_model(cfg, spaces, zoo_plugins(zoo))
    shipped = load_file(str(zoo / "tiny.safetensors"))
    state = model.state_dict()
    encoder_keys = [k for k in state if k.startswith("encoder.")]
    assert encoder_keys and all(k in shipped for k in encoder_keys)
    for key in encoder_keys:
        expected = shipped[key].float() if shipped[key].is_floating_point() else shipped[key]
        assert state[key].dtype == expected.dtype and torch.equal(state[key], expected), key
    head = "heads.identification.embed.weight"  # same shape, but heads are not loaded
    assert not torch.equal(state[head], shipped[head].float())


def test_init_from_zoo_loads_the_heads_whose_names_and_shapes_match(
    zoo: Path, tmp_path: Path
) -> None:
    cfg = tiny_recipe(tmp_path, "mobilenetv2_id")
    model = mtkd.build_model(cfg, {"identity": mtkd.LabelSpace(tuple("abcdef"))})  # 6, not 4
    report = init_from(model, "zoo:tiny", plugins=zoo_plugins(zoo))
    assert report.resolved == str(zoo / "tiny.safetensors") and report.source == "zoo:tiny"
    assert len(report.loaded_encoder) == len([k for k in model.state_dict() if "encoder." in k])
    assert "heads.identification.embed.weight" in report.loaded_heads
    assert {s.key for s in report.by_reason()[SHAPE]} == {
        "heads.identification.classify.weight",
        "heads.identification.classify.bias",
    }
    weight = model.state_dict()["heads.identification.embed.weight"]
    shipped = load_file(str(zoo / "tiny.safetensors"))["heads.identification.embed.weight"]
    assert weight.dtype == torch.float32 and torch.equal(weight, shipped.float())


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_corrupted_copy_is_refused_naming_the_file(
    zoo_copy: Path, tmp_path: Path, damage: str
) -> None:
    weights = zoo_copy / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        del data[-100:]
    else:
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    model = mtkd.build_model(
        tiny_recipe(tmp_path, "mobilenetv2_id"), {"identity": mtkd.LabelSpace(("a", "b"))}
    )
    with pytest.raises(mtkd.RecipeError) as caught:
        init_from(model, "zoo:tiny", plugins=zoo_plugins(zoo_copy))
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message and "corrupt or altered" in message


def test_an_unknown_name_gets_the_list_of_entries(zoo: Path, tmp_path: Path) -> None:
    cfg = tiny_recipe(tmp_path, **{"init_from": "zoo:tiyn"})
    with pytest.raises(
        mtkd.RecipeError,
        match=r"init_from: no zoo entry named 'tiyn' \(did you mean 'tiny'\?\); zoo entries: .*",
    ):
        check_init_from(cfg, zoo_plugins(zoo))
    cfg = tiny_recipe(tmp_path, **{"encoder.weights": "zoo:resnet"})
    with pytest.raises(
        mtkd.RecipeError, match=r"encoder.weights: no zoo entry named 'resnet'; zoo entries: .*tiny"
    ):
        check_init_from(cfg, zoo_plugins(zoo))


def test_an_entry_of_another_encoder_is_refused_naming_both(zoo: Path, tmp_path: Path) -> None:
    plugins = zoo_plugins(zoo)
    for key in ("encoder.weights", "init_from"):
        cfg = tiny_recipe(
            tmp_path, "mobilenetv2_id", **{"encoder.name": "test_efficientnet", key: "zoo:tiny"}
        )
        with pytest.raises(
            mtkd.RecipeError,
            match=rf"{key}: zoo entry 'tiny' holds a '{ENCODER}' encoder, but encoder\.name "
            "is 'test_efficientnet'",
        ):
            mtkd.run(cfg, plugins=plugins, console=Console(quiet=True))
    assert not (tmp_path / "runs").exists()  # refused before anything was built or written


def test_encoder_pretrained_and_a_zoo_entry_together_are_refused(zoo: Path, tmp_path: Path) -> None:
    both = {"encoder.weights": "zoo:tiny", "encoder.pretrained": True}
    cfg = tiny_recipe(tmp_path, "mobilenetv2_id", **both)
    with pytest.raises(mtkd.RecipeError, match=r"encoder\.pretrained: true and encoder\.weights"):
        mtkd.build_model(cfg, {"identity": mtkd.LabelSpace(("a",))}, zoo_plugins(zoo))


def test_another_image_size_is_a_warning_not_an_error(zoo: Path, tmp_path: Path) -> None:
    cfg = tiny_recipe(
        tmp_path, "mobilenetv2_id", **{"encoder.weights": "zoo:tiny", "data.image_size": 64}
    )
    with pytest.warns(ImageSizeWarning, match="trained at 32 px, the model is built for 64 px"):
        mtkd.build_model(cfg, {"identity": mtkd.LabelSpace(("a", "b"))}, zoo_plugins(zoo))


@pytest.mark.parametrize("key", ["encoder.weights", "init_from"])
def test_mtkd_run_starts_from_a_zoo_entry_end_to_end(zoo: Path, tmp_path: Path, key: str) -> None:
    """A recipe-listed plugin file registers the entry; with the encoder frozen for the one
    epoch, the trained model's encoder is still exactly the entry's."""
    shutil.copytree(zoo, tmp_path / "zoo")
    (tmp_path / "zoo_plugin.py").write_text(PLUGIN_FILE)
    out = tmp_path / "run"
    values = {
        **TINY,
        key: "zoo:tiny",
        "plugins": f"[{tmp_path / 'zoo_plugin.py'}]",
        "trainer.freeze_encoder_epochs": 1,
    }
    overrides = [f"{k}={v}" for k, v in values.items()]
    assert main(["run", str(RECIPES / "mobilenetv2_id.yaml"), *overrides, "--out", str(out)]) == 0
    assert (out / "results.json").is_file()
    shipped = load_file(str(tmp_path / "zoo" / "tiny.safetensors"))
    trained = load_file(str(out / "distilled" / "model.safetensors"))
    for name, tensor in trained.items():
        if name.startswith("encoder.") and tensor.is_floating_point():
            assert torch.equal(tensor, shipped[name].float()), name
    shutil.rmtree(tmp_path / "zoo")  # the entry is gone: the run's own weights suffice
    rebuilt = mtkd.load_run(out, trust_plugins=True)  # the recipe names the test's zoo plugin
    assert torch.equal(
        rebuilt.state_dict()["encoder.trunk.conv_stem.weight"],
        trained["encoder.trunk.conv_stem.weight"],
    )
    if key == "init_from":
        report = json.loads((out / INIT_FROM).read_text())
        assert report["source"] == "zoo:tiny" and report["counts"]["loaded_heads"] > 0
