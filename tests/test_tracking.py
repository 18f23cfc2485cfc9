"""Experiment loggers (output.loggers): what TensorBoard and MLflow hold is read back through
their own readers; a resumed run continues the same logger run; only rank 0 logs; a plugin
can add a logger; a missing extra or an unknown name is a one-line error."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from helpers import RECIPES, killer_plugin, mtkd_subprocess, tiny_overrides
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mtkd
from mtkd.cli import main
from mtkd.loggers import Logger, RunStart
from mtkd.utils.layout import MLFLOW_RUN

EVERYTHING = {"scalars": 0, "images": 0, "tensors": 0}


def epochs_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=EVERYTHING)
    accumulator.Reload()
    return accumulator


def mlflow_run(run_dir: Path) -> tuple[MlflowClient, Any]:
    saved = json.loads((run_dir / MLFLOW_RUN).read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> mtkd.RunResult:
    """Two epochs of the paper's recipe (a segmentation teacher, learned loss weights) with
    both loggers and an image every epoch."""
    tmp = tmp_path_factory.mktemp("tracked")
    overrides = tiny_overrides(
        tmp,
        **{
            "encoder.name": "mobilenetv2_035",
            "trainer.max_epochs": 2,
            "trainer.weighting.name": "uncertainty",
            "output.loggers": "[jsonl,tensorboard,mlflow]",
            "output.images_every": 1,
            "evaluate.latency": "false",
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", overrides)
    return mtkd.run(cfg, console=Console(quiet=True))


def test_tensorboard_holds_every_epoch_scalar_weights_images_recipe_and_hparams(
    tracked: mtkd.RunResult,
) -> None:
    logged = events(tracked.run_dir)
    records = epochs_of(tracked.run_dir)
    for key in ("train/loss", "val/segmentation/miou", "lr", "weight/segmentation"):
        scalars = logged.Scalars(key)
        assert [s.step for s in scalars] == [1, 2], key
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)
    final = logged.Scalars("test/distilled/identification/top1")
    assert final[0].value == pytest.approx(
        tracked.results["test"]["distilled"]["identification/top1"]
    )
    assert [i.step for i in logged.Images("predictions/segmentation")] == [1, 2]
    recipe = logged.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "seg_distilled_id" in recipe and "uncertainty" in recipe
    hparams = logged.PluginTagToContent("hparams")
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)
    assert b"trainer.weighting.name" in hparams["_hparams_/session_start_info"]


def test_mlflow_holds_the_recipe_as_params_every_epoch_and_the_artefacts(
    tracked: mtkd.RunResult,
) -> None:
    client, run = mlflow_run(tracked.run_dir)
    # the default store: mlruns/ beside the runs root
    assert (tracked.run_dir.parents[1] / "mlruns" / "mlflow.db").is_file()
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "seg_distilled_id"
    assert run.data.tags["seed"] == "0"
    assert run.data.params["trainer.weighting.name"] == "uncertainty"
    assert run.data.params["encoder.name"] == "mobilenetv2_035"
    records = epochs_of(tracked.run_dir)
    for key in ("train/loss", "val/identification/top1", "weight/identification"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in records]
    top1 = tracked.results["test"]["distilled"]["identification/top1"]
    assert run.data.metrics["test/distilled/identification/top1"] == pytest.approx(top1)
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "config.yaml", "curves.png", "predictions-segmentation.png"} <= files
    distilled = {a.path for a in client.list_artifacts(run.info.run_id, "distilled")}
    assert "distilled/model.safetensors" in distilled
    local = Path(client.download_artifacts(run.info.run_id, "results.json"))
    assert json.loads(local.read_text())["test"] == tracked.results["test"]


@pytest.mark.slow  # kills a CLI subprocess mid-run, then resumes it in a second one
def test_a_resumed_run_continues_the_same_tensorboard_and_mlflow_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "data.batch_size": 4,  # 4 steps per epoch
            "trainer.max_epochs": 3,
            "trainer.checkpoint_every": 1,
            "output.loggers": "[tensorboard,mlflow]",
            "evaluate.latency": "false",
            "evaluate.verification": "false",
            "output.plots": "false",
        },
    )
    plugin = killer_plugin(tmp_path)
    args = ["run", str(RECIPES / "mobilenetv2_id.yaml"), *overrides, f"plugins=[{plugin}]"]
    mtkd_subprocess(*args, "--out", str(out), stop_at=6)  # killed in epoch 2, step 2
    client, killed = mlflow_run(out)
    assert killed.info.status == "RUNNING"  # a kill leaves no time to close anything
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "train/loss")] == [1]
    mtkd_subprocess("resume", str(out))
    client, run = mlflow_run(out)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # no second MLflow run
    records = epochs_of(out)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["train/loss"]) for r in records]
    assert [p.name for p in out.iterdir() if p.name == "tensorboard"] == ["tensorboard"]
    scalars = events(out).Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx([r["train/loss"] for r in records])


@pytest.mark.slow  # two torchrun processes
@pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")
def test_under_torchrun_only_rank_0_logs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet_gn",
            "trainer.max_epochs": 1,
            "output.loggers": "[tensorboard]",
            "evaluate.latency": "false",
            "evaluate.verification": "false",
            "output.plots": "false",
        },
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node=2", "-m", "mtkd"]
    args = ["run", str(RECIPES / "mobilenetv2_id.yaml"), *overrides, "--out", str(out)]
    mtkd_subprocess(*args, launcher=torchrun)
    event_files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 1  # one writer: rank 0's
    assert [s.step for s in events(out).Scalars("train/loss")] == [1]


class RecordingLogger(Logger):
    """A plugin's logger that remembers every call it receives."""

    name = "recording"
    calls: list[tuple[str, Any]] = []

    def start(self, run: RunStart) -> None:
        self.calls.append(("start", run))

    def log_epoch(self, epoch: int, record: Any) -> None:
        self.calls.append(("epoch", (epoch, dict(record))))

    def end(self, results: Any, artefacts: Any) -> None:
        self.calls.append(("end", (dict(results), [Path(a) for a in artefacts])))

    def close(self, status: str) -> None:
        self.calls.append(("close", status))


class FailingLogger(Logger):
    """A logger whose server goes away during the first epoch, and whose close fails too."""

    name = "failing"

    def log_epoch(self, epoch: int, record: Any) -> None:
        raise ConnectionError("tracking server gone")

    def close(self, status: str) -> None:
        raise ConnectionError("still gone")


class LoggerPlugin:
    @mtkd.hookimpl
    def register_loggers(self, register: Any) -> None:
        register(RecordingLogger)
        register(FailingLogger)


def test_register_loggers_adds_a_logger_that_output_loggers_can_name(tmp_path: Path) -> None:
    plugins = mtkd.load_plugins(objects=[("recorder", LoggerPlugin())])
    assert plugins.loggers.by_plugin("recorder") == ["failing", "recording"]
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "trainer.max_epochs": 2,
            "output.loggers": "[recording]",
            "evaluate.latency": "false",
            "evaluate.verification": "false",
            "output.plots": "false",
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    RecordingLogger.calls.clear()
    result = mtkd.run(cfg, plugins=plugins, console=Console(quiet=True))
    kinds = [kind for kind, _ in RecordingLogger.calls]
    assert kinds == ["start", "epoch", "epoch", "end", "close"]
    start: RunStart = RecordingLogger.calls[0][1]
    assert (start.run_dir, start.resumed, start.experiment) == (result.run_dir, False, cfg.name)
    epochs = [payload for kind, payload in RecordingLogger.calls if kind == "epoch"]
    assert [e for e, _ in epochs] == [1, 2]
    assert [record for _, record in epochs] == epochs_of(result.run_dir)
    results, artefacts = RecordingLogger.calls[3][1]
    assert results == json.loads((result.run_dir / "results.json").read_text())
    assert {result.run_dir / "results.json", result.run_dir / "distilled"} <= set(artefacts)
    assert RecordingLogger.calls[4][1] == "finished"
    # the run's plugin set is left as it was: the loggers' hook is gone after the run
    assert [p for p in plugins.manager.get_plugins() if type(p).__name__ == "Tracking"] == []


def test_a_missing_extra_is_a_one_line_error_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    overrides = tiny_overrides(tmp_path, **{"output.loggers": "[jsonl,mlflow]"})
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    with pytest.raises(mtkd.RecipeError) as error:
        mtkd.run(cfg, console=Console(quiet=True))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("output.loggers: the 'mlflow' logger needs")
    assert str(error.value).endswith("pip install 'mtkd[mlflow]'")
    assert not (tmp_path / "runs").exists()  # it failed before a run folder was made
    # the command prints it as written (the brackets are not taken for markup)
    assert main(["run", str(RECIPES / "mobilenetv2_id.yaml"), *overrides]) == 2
    assert "pip install 'mtkd[mlflow]'" in " ".join(capsys.readouterr().err.split())


def test_an_unknown_logger_name_suggests_the_closest(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, **{"output.loggers": "[jsonl,tensorbord]"})
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    with pytest.raises(
        mtkd.PluginError,
        match=r"output\.loggers: unknown logger 'tensorbord' \(did you mean 'tensorboard'\?\)",
    ):
        mtkd.run(cfg, console=Console(quiet=True))
    assert not (tmp_path / "runs").exists()


def test_a_study_member_is_reused_when_only_its_loggers_or_study_name_changed(
    tmp_path: Path,
) -> None:
    from mtkd.runs.study import _check_same_settings

    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", tiny_overrides(tmp_path))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    cfg.output.loggers = ["jsonl", "tensorboard"]
    cfg.output.experiment = "renamed_study"
    _check_same_settings(tmp_path, cfg)  # where it is logged changes nothing it computed
    cfg.trainer.lr = 0.5
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.lr: 0\.001 → 0\.5"):
        _check_same_settings(tmp_path, cfg)


def test_the_logger_example_in_the_tracking_guide_works(tmp_path: Path) -> None:
    import re
    import types

    from helpers import REPO

    guide = (REPO / "docs" / "tracking.md").read_text()
    code = re.search(r"## Writing a logger\n.*?```python\n(.*?)```", guide, re.S)
    assert code is not None
    module = types.ModuleType("csv_logger")
    exec(compile(code.group(1), "docs/tracking.md", "exec"), module.__dict__)
    plugins = mtkd.load_plugins(objects=[("csv_logger", module)])
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", tiny_overrides(tmp_path))
    logger = plugins.loggers.get("csv", key="output.loggers")(cfg)
    logger.start(RunStart(recipe=cfg, run_dir=tmp_path, resumed=False, experiment="x"))
    logger.log_epoch(1, {"epoch": 1, "lr": 0.001, "train/loss": 2.5, "best": True})
    assert (tmp_path / "epochs.csv").read_text().strip() == "1,0.001,2.5"


def test_a_logger_failing_mid_run_stops_it_with_its_own_error_and_closes_the_others(
    tmp_path: Path,
) -> None:
    plugins = mtkd.load_plugins(objects=[("recorder", LoggerPlugin())])
    overrides = tiny_overrides(
        tmp_path, **{"encoder.name": "test_efficientnet", "output.loggers": "[recording,failing]"}
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    RecordingLogger.calls.clear()
    with pytest.raises(ConnectionError, match="tracking server gone"):  # not close's error
        mtkd.run(cfg, plugins=plugins, console=Console(quiet=True))
    assert [kind for kind, _ in RecordingLogger.calls] == ["start", "epoch", "close"]
    assert RecordingLogger.calls[-1][1] == "failed"
    assert list((tmp_path / "runs").glob("*/checkpoints/last/state.json"))  # resumable
    assert [p for p in plugins.manager.get_plugins() if type(p).__name__ == "Tracking"] == []


def test_force_into_a_folder_with_an_mlflow_run_tags_the_old_run_replaced(tmp_path: Path) -> None:
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "output.loggers": "[jsonl,mlflow]",
            "output.dir": str(tmp_path / "run"),
            "evaluate.latency": "false",
            "evaluate.verification": "false",
            "output.plots": "false",
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    first = mtkd.run(cfg, console=Console(quiet=True))
    client, old = mlflow_run(first.run_dir)
    console = Console(record=True, width=300)
    second = mtkd.run(cfg, console=console, force=True)
    _, new = mlflow_run(second.run_dir)
    assert new.info.run_id != old.info.run_id
    tags = client.get_run(old.info.run_id).data.tags
    assert tags["mtkd.replaced"] == "true" and "started a new run in" in tags["mlflow.note.content"]
    assert "mtkd.replaced" not in new.data.tags
    assert f"run {old.info.run_id} tagged mtkd.replaced=true" in console.export_text()
