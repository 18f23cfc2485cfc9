"""Transfer learning: init_from copies what fits and reports the rest; fine-tuning options
freeze the encoder on schedule and give it its own, layer-wise decaying, learning rates."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from helpers import RECIPES, label_spaces, tiny_overrides
from omegaconf import DictConfig
from rich.console import Console
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import mtkd
from mtkd.engine.finetune import FreezeSchedule, param_groups, set_train_mode
from mtkd.model import transfer
from mtkd.model.transfer import SHAPE, init_from
from mtkd.utils.checkpoint import save_weights
from mtkd.utils.layout import INIT_FROM

STAND_IN = "mobilenetv2_035"
RESNET: dict[str, Any] = {"encoder.name": "test_resnet"}  # tiny_model's overrides: Any values


def tiny_cfg(tmp: Path, **extra: Any) -> DictConfig:
    values: dict[str, Any] = {"encoder.name": STAND_IN, "data.cache": "memory"}
    values.update(extra)
    return mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", tiny_overrides(tmp, **values))


def tiny_model(tmp: Path, identities: int = 5, **extra: Any) -> mtkd.MultiTaskModel:
    return mtkd.build_model(tiny_cfg(tmp, **extra), label_spaces(identities=identities))


QUICK_RUN = {
    "evaluate.latency": False,
    "evaluate.verification": False,
    "output.plots": False,
}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One finished tiny run on 4 identities, shared by the tests that read a run folder."""
    tmp = tmp_path_factory.mktemp("source")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTKD_PLUGINS", raising=False)
        cfg = tiny_cfg(tmp, **QUICK_RUN, **{"data.dataset.identities": 4})
        yield mtkd.run(cfg, console=Console(quiet=True)).run_dir


def encoder_keys(model: torch.nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.startswith("encoder.")]


# --- init_from ---------------------------------------------------------------------------


def test_init_from_a_run_folder_loads_the_encoder_and_skips_a_classifier_of_another_size(
    source_run: Path, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path, identities=6)
    report = init_from(model, source_run)
    assert report.resolved == str(source_run / "checkpoints" / "best.safetensors")
    assert sorted(report.loaded_encoder) == sorted(encoder_keys(model))
    assert "heads.identification.embed.weight" in report.loaded_heads
    shape = {s.key: (s.source_shape, s.model_shape) for s in report.by_reason()[SHAPE]}
    assert shape == {
        "heads.identification.classify.weight": ((4, 128), (6, 128)),
        "heads.identification.classify.bias": ((4,), (6,)),
    }
    source = load_file(str(source_run / "checkpoints" / "best.safetensors"))
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], source[key]), key
    saved = json.loads(report.save(tmp_path).read_text())
    assert saved["counts"][SHAPE] == 2 and saved["counts"]["loaded"] == len(report.loaded)


def test_a_recipe_run_with_init_from_writes_the_report_into_its_run_folder(
    source_run: Path, tmp_path: Path
) -> None:
    more_people = {"data.dataset.identities": 5}  # the source run had 4
    cfg = tiny_cfg(tmp_path, **QUICK_RUN, **more_people, init_from=str(source_run))  # shorthand
    assert cfg.init_from.source == str(source_run) and cfg.init_from.heads
    console = Console(record=True, width=200)
    result = mtkd.run(cfg, console=console)
    report = json.loads((result.run_dir / INIT_FROM).read_text())
    assert report["counts"]["loaded_encoder"] == len(encoder_keys(result.model))
    skipped = {s["key"]: s["reason"] for s in report["skipped"]}
    assert skipped["heads.identification.classify.weight"] == SHAPE
    text = console.export_text()
    assert "init_from" in text and "heads.identification.classify.weight" in text


def test_init_from_a_safetensors_file_loads_every_matching_tensor(tmp_path: Path) -> None:
    trained, fresh = tiny_model(tmp_path), tiny_model(tmp_path, **{"trainer.seed": 1})
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(1.0)
    save_weights(trained, tmp_path / "w.safetensors")
    report = init_from(fresh, tmp_path / "w.safetensors")
    assert report.skipped == []
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_bare_timm_state_dict_in_a_torch_file_loads_the_trunk(tmp_path: Path) -> None:
    trunk = timm.create_model(STAND_IN, num_classes=0)
    torch.save({"state_dict": trunk.state_dict(), "epoch": 3}, tmp_path / "trunk.pth")
    model = tiny_model(tmp_path)
    report = init_from(model, tmp_path / "trunk.pth", heads=True)
    assert sorted(report.loaded_encoder) == sorted(encoder_keys(model))
    reasons = report.by_reason()
    assert {s.key for s in reasons["missing in source"]} == {
        k for k in model.state_dict() if k.startswith("heads.")
    }
    weight = model.state_dict()["encoder.trunk.conv_stem.weight"]
    assert torch.equal(weight, trunk.state_dict()["conv_stem.weight"])


def test_heads_false_loads_the_encoder_only(tmp_path: Path) -> None:
    trained, fresh = tiny_model(tmp_path), tiny_model(tmp_path, **{"trainer.seed": 1})
    save_weights(trained, tmp_path / "w.safetensors")
    before = fresh.state_dict()["heads.identification.embed.weight"].clone()
    report = init_from(fresh, tmp_path / "w.safetensors", heads=False)
    assert report.loaded_heads == []
    assert {s.reason for s in report.skipped} == {transfer.EXCLUDED}
    assert torch.equal(fresh.state_dict()["heads.identification.embed.weight"], before)


def test_a_missing_source_is_a_recipe_error_naming_init_from_and_the_path(
    tmp_path: Path,
) -> None:
    with pytest.raises(mtkd.RecipeError, match=r"init_from: '.*nope' not found"):
        init_from(tiny_model(tmp_path), tmp_path / "nope")
    cfg = tiny_cfg(tmp_path, **{"init_from.source": str(tmp_path / "gone.safetensors")})
    with pytest.raises(mtkd.RecipeError, match=r"init_from: '.*gone\.safetensors' not found"):
        mtkd.run(cfg, console=Console(quiet=True))
    assert not (tmp_path / "runs").exists()  # failed before any run folder was made


def test_a_folder_without_weights_and_a_foreign_file_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(mtkd.RecipeError, match=r"init_from: '.*empty' is a folder without"):
        init_from(tiny_model(tmp_path), tmp_path / "empty")
    (tmp_path / "model.onnx").write_bytes(b"\0")
    with pytest.raises(mtkd.RecipeError, match=r"init_from: '.*model\.onnx' is not a weights"):
        init_from(tiny_model(tmp_path), tmp_path / "model.onnx")


def test_a_run_folder_source_prefers_best_then_distilled_then_last(tmp_path: Path) -> None:
    for name in reversed(transfer.RUN_FILES[:3]):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        assert transfer.resolve_source(tmp_path) == path


def test_a_source_that_fits_no_encoder_tensor_is_an_error(tmp_path: Path) -> None:
    save_weights(tiny_model(tmp_path), tmp_path / "mobilenet.safetensors")
    other = tiny_model(tmp_path, **RESNET)
    with pytest.raises(mtkd.RecipeError, match=r"init_from: nothing in .*mobilenet.* fits"):
        init_from(other, tmp_path / "mobilenet.safetensors")


def test_strict_requires_every_encoder_tensor(tmp_path: Path) -> None:
    state = tiny_model(tmp_path).state_dict()
    del state["encoder.trunk.conv_stem.weight"]
    torch.save(state, tmp_path / "partial.pt")
    init_from(tiny_model(tmp_path), tmp_path / "partial.pt")  # not strict: fine
    with pytest.raises(mtkd.RecipeError, match=r"init_from\.strict: 1 encoder tensor"):
        init_from(tiny_model(tmp_path), tmp_path / "partial.pt", strict=True)


def test_timm_source_loads_the_trunks_hub_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, bool]] = []
    hub = timm.create_model("test_resnet", num_classes=0)  # stands in for the download

    def fake_trunk(name: str, pretrained: bool = False, **_: Any) -> torch.nn.Module:
        asked.append((name, pretrained))
        return hub

    monkeypatch.setattr(transfer, "create_timm_trunk", fake_trunk)
    model = tiny_model(tmp_path, **RESNET)
    report = init_from(model, "timm")
    assert asked == [("test_resnet.r160_in1k", True)]
    assert report.resolved == "timm:test_resnet.r160_in1k"
    assert sorted(report.loaded_encoder) == sorted(encoder_keys(model))
    with pytest.raises(mtkd.RecipeError, match="init_from: timm has no pretrained weights"):
        init_from(tiny_model(tmp_path), "timm")  # mobilenetv2_035 has none


# --- recipe keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.freeze_encoder_epochs=-1", "trainer.freeze_encoder_epochs"),
        ("trainer.layer_decay=0", "trainer.layer_decay"),
        ("trainer.layer_decay=1.5", "trainer.layer_decay"),
        ("trainer.encoder_lr=-0.1", "trainer.encoder_lr"),
        ("init_from.sorce=x", "init_from.sorce"),
    ],
)
def test_out_of_range_fine_tuning_keys_are_named(override: str, key: str) -> None:
    with pytest.raises(mtkd.RecipeError, match=key.replace(".", r"\.")):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", [override])


def test_init_from_shorthand_and_full_form_agree() -> None:
    short = mtkd.recipe_from_dict({"init_from": "runs/a"})
    full = mtkd.recipe_from_dict({"init_from": {"source": "runs/a"}})
    assert short.init_from == full.init_from
    assert short.init_from.heads is True and short.init_from.strict is False
    assert mtkd.recipe_from_dict({}).init_from.source is None


# --- fine-tuning ---------------------------------------------------------------------------


def trainer_cfg(**values: Any) -> DictConfig:
    return mtkd.recipe_from_dict({"trainer": values}).trainer


def train_step(model: mtkd.MultiTaskModel, optimizer: torch.optim.Optimizer) -> None:
    images = torch.rand(4, 3, 32, 32)
    target = torch.randint(0, 5, (4,))
    loss = model.task_loss("identification", model(images)["identification"], target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def snapshot(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    now = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(now[k], v)}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_frozen_encoder_keeps_weights_and_bn_statistics_then_unfreezes_on_schedule(
    optimizer: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = tiny_model(tmp_path)
    trainer = trainer_cfg(optimizer=optimizer, weight_decay=0.05, freeze_encoder_epochs=1)
    opt = create_optimizer_v2(param_groups(model, trainer), opt=optimizer, lr=0.01)
    freeze = FreezeSchedule.from_trainer(trainer)

    freeze.set_train_mode(model, 0)  # frozen epoch
    encoder, heads = snapshot(model, "encoder."), snapshot(model, "heads.")
    train_step(model, opt)
    assert changed(encoder, model) == set()  # weights, running_mean/var, num_batches_tracked
    assert changed(heads, model) == set(heads)

    freeze.set_train_mode(model, 1)  # unfrozen
    encoder = snapshot(model, "encoder.")
    train_step(model, opt)
    moved = changed(encoder, model)
    assert "encoder.trunk.conv_stem.weight" in moved
    assert "encoder.trunk.bn1.running_mean" in moved


def test_freezing_depends_only_on_the_epoch(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    freeze = FreezeSchedule(2)
    for epoch, frozen in [(3, False), (1, True), (2, False), (0, True)]:  # e.g. resumed runs
        freeze.set_train_mode(model, epoch)
        assert all(p.requires_grad != frozen for p in model.encoder.parameters())
        assert all(p.requires_grad for p in model.heads.parameters())
        assert model.encoder.trunk.get_submodule("bn1").training != frozen and model.heads.training
    freeze.release(model)
    assert all(p.requires_grad for p in model.parameters())


def test_no_freezing_leaves_requires_grad_alone(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    model.encoder.trunk.get_parameter("conv_stem.weight").requires_grad_(
        False
    )  # someone else's choice
    set_train_mode(model, 0, trainer_cfg())
    assert not model.encoder.trunk.get_parameter("conv_stem.weight").requires_grad
    assert model.training and model.encoder.trunk.get_submodule("bn1").training


def lr_of(groups: list[dict[str, Any]], model: torch.nn.Module) -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_every_parameter_is_in_exactly_one_group_frozen_or_not(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    FreezeSchedule(1).apply(model, 0)
    groups = param_groups(model, trainer_cfg(encoder_lr=1e-4, layer_decay=0.8))
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_encoder_lr_gives_the_encoder_group_its_lr(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    trainer = trainer_cfg(lr=1e-3, encoder_lr=1e-4, weight_decay=0.01)
    opt = create_optimizer_v2(
        param_groups(model, trainer), opt="adamw", lr=trainer.lr, weight_decay=0.01
    )
    lrs = lr_of(opt.param_groups, model)
    assert {lr for n, lr in lrs.items() if n.startswith("encoder.")} == {1e-4}
    assert {lr for n, lr in lrs.items() if n.startswith("heads.")} == {1e-3}
    assert opt.param_groups[0]["lr"] == 1e-3  # what the training log reports
    for group in opt.param_groups:  # biases and norm scales are never decayed
        if group["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in group["params"])


def test_layer_decay_gives_decreasing_lrs_from_head_to_stem(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    groups = param_groups(model, trainer_cfg(lr=1e-3, encoder_lr=5e-4, layer_decay=0.5))
    lrs = lr_of(groups, model)
    encoder = [lr for n, lr in lrs.items() if n.startswith("encoder.")]  # stem first
    assert encoder == sorted(encoder) and len(set(encoder)) == 18  # stem, 17 blocks (+ conv_head)
    assert lrs["encoder.trunk.conv_head.weight"] == pytest.approx(5e-4 * 0.5)
    assert lrs["encoder.trunk.conv_stem.weight"] == pytest.approx(5e-4 * 0.5**18)
    assert {lr for n, lr in lrs.items() if n.startswith("heads.")} == {1e-3}
    assert [g["lr"] for g in groups] == sorted((g["lr"] for g in groups), reverse=True)


def test_a_timm_scheduler_keeps_the_groups_ratios(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    opt = create_optimizer_v2(
        param_groups(model, trainer_cfg(lr=1e-3, layer_decay=0.5)), opt="adam", lr=1e-3
    )
    before = [g["lr"] for g in opt.param_groups]
    scheduler, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=10)
    scheduler.step(5)
    after = [g["lr"] for g in opt.param_groups]
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios)) and ratios[0] < 1


def test_default_groups_are_timms_so_older_checkpoints_resume(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    for weight_decay in (0.0, 0.01):
        ours = param_groups(model, trainer_cfg(weight_decay=weight_decay))
        timms = create_optimizer_v2(model, opt="adam", weight_decay=weight_decay).param_groups
        assert [[id(p) for p in g["params"]] for g in ours] == [
            [id(p) for p in g["params"]] for g in timms
        ]
        assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in timms]


def test_fine_tuning_helpers_refuse_out_of_range_values() -> None:
    bad: Callable[[], object]
    for bad in (
        lambda: FreezeSchedule.from_trainer(type("T", (), {"freeze_encoder_epochs": -2})()),
        lambda: param_groups(
            torch.nn.Linear(2, 2),
            type("T", (), {"lr": 1.0, "weight_decay": 0.0, "layer_decay": 2.0})(),
        ),
    ):
        with pytest.raises(mtkd.RecipeError, match=r"trainer\."):
            bad()


def test_a_run_with_freeze_encoder_epochs_trains_only_the_heads_first(tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tmp_path,
        **QUICK_RUN,
        **{
            "trainer.freeze_encoder_epochs": 1,
            "trainer.max_epochs": 2,
            "trainer.patience": 0,
            "trainer.optimizer": "adamw",
            "trainer.weight_decay": 0.05,
        },
    )
    quiet = Console(quiet=True)
    data = mtkd.build_data(cfg, console=quiet)
    model = mtkd.build_model(cfg, data.label_spaces)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    one = cfg.copy()
    one.trainer.max_epochs = 1
    mtkd.train(model, data, one, run_dir=run_dir, console=quiet)
    # the last checkpoint, not the returned model (which holds the best epoch's weights)
    after1 = load_file(str(run_dir / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(after1[k], v) for k, v in start.items() if k.startswith("encoder."))
    assert not any(torch.equal(after1[k], v) for k, v in start.items() if k.startswith("heads."))
    assert all(p.requires_grad for p in model.parameters())  # released after training
    mtkd.train(model, data, cfg, run_dir=run_dir, console=quiet, resume=True)
    after2 = load_file(str(run_dir / "checkpoints/last/model.safetensors"))
    for key in ("encoder.trunk.conv_stem.weight", "encoder.trunk.bn1.running_mean"):
        assert not torch.equal(after2[key], start[key])


def test_encoder_lr_and_layer_decay_reach_the_optimizer(tmp_path: Path) -> None:
    from mtkd.engine.setup import make_optimizer

    cfg = tiny_cfg(tmp_path, **{"trainer.encoder_lr": 1e-4, "trainer.layer_decay": 0.5})
    model = mtkd.build_model(cfg, label_spaces())
    groups = make_optimizer(model, cfg.trainer).param_groups
    assert groups[0]["lr"] == cfg.trainer.lr
    assert min(g["lr"] for g in groups) == pytest.approx(1e-4 * 0.5**18)
