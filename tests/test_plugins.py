"""Plugin loading: third-party plugins end to end, and every way a plugin can be wrong."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import RECIPES, tiny_overrides
from rich.console import Console

import mtkd
from mtkd.plugins import CORE_PLUGINS

THIRD_PARTY = '''
"""A third-party plugin: a data set with a brightness label and a task that regresses it."""
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
import mtkd

CALLS = []


@dataclass
class BrightOptions:
    count: int = 24


class BrightSquares(mtkd.SampleSource):
    name = "bright_squares"
    Options = BrightOptions

    def __init__(self, options, image_size, seed):
        super().__init__(options, image_size, seed)
        self.label_spaces = {"brightness": mtkd.LabelSpace(("level",), kind="vector")}

    def __len__(self):
        return self.options.count

    def __getitem__(self, i):
        level = (i % 8) / 8
        image = np.full((self.image_size, self.image_size, 3), int(level * 255), np.uint8)
        return {"image": image, "brightness": np.array([level], np.float32)}


class Brightness(mtkd.Task):
    name = "brightness"
    label_key = "brightness"

    def build_head(self, features):
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return nn.Sequential(pool, nn.Linear(features.final_channels, 1))

    def loss(self, output, target, head):
        return F.mse_loss(output, target)

    def metrics(self):
        return torchmetrics.MetricCollection({"mae": torchmetrics.MeanAbsoluteError()})


@mtkd.hookimpl
def register_tasks(register):
    register(Brightness)


@mtkd.hookimpl
def register_datasets(register):
    register(BrightSquares)


@mtkd.hookimpl
def on_epoch_end(context, epoch, metrics):
    CALLS.append(("epoch_end", epoch, "val/brightness/mae" in metrics))
'''


def write_plugin(tmp_path: Path, text: str, name: str = "third_party.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_third_party_task_plugin_runs_end_to_end(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, THIRD_PARTY)
    overrides = [
        o
        for o in tiny_overrides(tmp_path, **{"trainer.max_epochs": 2})
        if not o.startswith("data.dataset.")
    ]
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        [
            *overrides,
            "encoder.name=test_efficientnet",
            f"plugins=[{plugin}]",
            "data.dataset={name: bright_squares, count: 24}",
            "tasks.identification=null",
            "tasks.brightness.weight=1.0",
        ],
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert "brightness/mae" in saved["test"]["distilled"]
    module = next(m for name, m in __import__("sys").modules.items() if "third_party" in name)
    assert module.CALLS == [("epoch_end", 1, True), ("epoch_end", 2, True)]


def test_builtins_load_through_the_entry_point_group() -> None:
    plugins = mtkd.load_plugins()
    assert {"identification", "segmentation", "random_images"} <= set(plugins.origins)
    assert plugins.origins["identification"].startswith("entry point mtkd_plugins.")
    assert plugins.tasks.by_plugin("segmentation") == ["segmentation"]
    # the core's defaults come from the stages they belong to
    assert plugins.hooks_of("mtkd.model.distill") == ["distill"]
    assert plugins.loggers.by_plugin("mtkd.runs.tracking") == ["jsonl", "mlflow", "tensorboard"]
    assert plugins.weightings.by_plugin("mtkd.engine.setup") == ["fixed"]
    assert {plugins.origins[name] for name in CORE_PLUGINS} == {"mtkd core"}
    assert plugins.weightings.by_plugin("loss_weighting") == ["dwa", "gradnorm", "uncertainty"]


def test_environment_variable_restricts_which_plugins_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTKD_PLUGINS", "identification")
    plugins = mtkd.load_plugins()
    assert plugins.tasks.names() == ["identification"]
    assert plugins.datasets.names() == []


def test_unknown_hook_implementation_is_rejected(tmp_path: Path) -> None:
    plugin = write_plugin(
        tmp_path,
        """
        import mtkd

        @mtkd.hookimpl
        def register_taks(register):
            pass
        """,
        "typo_hook.py",
    )
    with pytest.raises(mtkd.PluginError, match=r"typo_hook\.py.*unknown hook.*register_taks"):
        mtkd.load_plugins([str(plugin)])


def test_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "raise RuntimeError('boom')\n", "broken.py")
    with pytest.raises(mtkd.PluginError, match=r"broken\.py.*RuntimeError: boom"):
        mtkd.load_plugins([str(plugin)])


def test_same_task_name_from_two_plugins_names_both(tmp_path: Path) -> None:
    plugin = write_plugin(
        tmp_path,
        """
        import mtkd

        class Clash(mtkd.Task):
            name = "identification"
            label_key = "identity"

        @mtkd.hookimpl
        def register_tasks(register):
            register(Clash)
        """,
        "clash.py",
    )
    with pytest.raises(
        mtkd.PluginError, match=r"'identification' is registered twice.*identification.*clash\.py"
    ):
        mtkd.load_plugins([str(plugin)])


def test_registering_something_that_is_not_a_task_is_named(tmp_path: Path) -> None:
    plugin = write_plugin(
        tmp_path,
        """
        import mtkd

        @mtkd.hookimpl
        def register_tasks(register):
            register(object)
        """,
        "not_a_task.py",
    )
    with pytest.raises(mtkd.PluginError, match=r"not_a_task\.py.*not a subclass of Task"):
        mtkd.load_plugins([str(plugin)])


def test_a_plugin_can_replace_the_distillation_hook(tmp_path: Path) -> None:
    plugin = write_plugin(
        tmp_path,
        """
        import mtkd

        @mtkd.hookimpl
        def distill(model):
            return model  # keep teachers: a plugin may decide differently from the default
        """,
        "keep_all.py",
    )
    plugins = mtkd.load_plugins([str(plugin)])
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml", ["encoder.name=mobilenetv2_035", "data.image_size=32"]
    )
    from helpers import label_spaces

    model = mtkd.build_model(cfg, label_spaces(), plugins)
    assert set(mtkd.distill(model, plugins).tasks) == {"identification", "segmentation"}
    assert set(mtkd.distill(model).tasks) == {"identification"}


def test_plugin_commands_join_the_cli_and_cannot_shadow_built_ins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtkd import cli
    from mtkd.cli import build_parser

    plugin = write_plugin(
        tmp_path,
        """
        import mtkd

        class Hello(mtkd.Command):
            name = "hello"
            help = "say hello"

            def configure(self, parser):
                parser.add_argument("who")

            def run(self, args, console):
                console.print(f"hello {args.who}")
                return 0

        @mtkd.hookimpl
        def register_commands(register):
            register(Hello)
        """,
        "hello_cmd.py",
    )
    plugins = mtkd.load_plugins([str(plugin)])
    args = build_parser(plugins).parse_args(["hello", "world"])
    assert args.func(args, Console()) == 0
    assert "hello world" in capsys.readouterr().out
    # the built-in commands are registered like a plugin's (by the core plugin mtkd.cli), so
    # one of the same name is refused as any name registered twice is, both plugins named
    with pytest.raises(
        mtkd.PluginError, match=r"command 'run' is registered twice: by plugin 'mtkd\.cli' and by"
    ):
        mtkd.load_plugins(objects=[("shadow", _Shadowing())])
    assert set(cli.BUILT_IN) <= set(plugins.commands.values())  # one mechanism
    assert plugins.commands.by_plugin("mtkd.cli")[:3] == ["compare", "embed", "eval"]


class _ShadowCommand(mtkd.Command):
    name = "run"
    help = "pretends to be run"


class _Shadowing:
    @mtkd.hookimpl
    def register_commands(self, register: Callable[[type[mtkd.Command]], None]) -> None:
        register(_ShadowCommand)


def test_the_hook_reference_in_the_guide_is_generated_from_the_hookspecs() -> None:
    """Each hookspec's docstring (parameters, when it is called, first answer wins) is the
    reference: the guide's section must be exactly what docs/gen_hook_reference.py writes."""
    import importlib.util

    from helpers import REPO

    from mtkd import hookspecs

    spec = importlib.util.spec_from_file_location("gen", REPO / "docs" / "gen_hook_reference.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    assert gen.with_reference(guide) == guide, "run: python docs/gen_hook_reference.py"
    reference = hookspecs.hook_reference()
    names = [n for n, f in vars(hookspecs).items() if hasattr(f, "mtkd_spec")]
    assert len(names) >= 10
    for name in names:
        assert f"### `{name}(" in reference
        doc = getattr(hookspecs, name).__doc__
        assert ":param " in doc and "Called " in doc, f"{name}: say its parameters and when"
    assert "### `distill(model)` — *the first answer wins*" in reference


def test_every_task_method_a_plugin_may_override_is_in_the_guide() -> None:
    from helpers import REPO

    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    public = [n for n in vars(mtkd.Task) if not n.startswith("_") and n not in ("num_classes",)]
    for name in public:
        assert f"`{name}" in guide, f"Task.{name} is not described in docs/writing-plugins.md"


def test_the_guides_first_task_head_runs_on_the_default_data(tmp_path: Path) -> None:
    """The guide's first example (head_yaw.py and its recipe) trains as written on the
    synthetic heads, with the vector target the guide describes (issue 27, item 2)."""
    import re

    from helpers import REPO

    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    section = guide.split("## A new task head in one file", 1)[1].split("### What `target`", 1)[0]
    code = re.search(r"```python\n(# head_yaw\.py.*?)```", section, re.S)
    recipe = re.search(r"```yaml\n(# yaw_teacher\.yaml.*?)```", section, re.S)
    assert code and recipe, "docs/writing-plugins.md: the head_yaw example is missing"
    (tmp_path / "head_yaw.py").write_text(code.group(1))
    (tmp_path / "yaw_teacher.yaml").write_text(recipe.group(1))
    overrides = tiny_overrides(
        tmp_path,
        **{"data.dataset.name": "synthetic_heads", "data.dataset.views_spread": 0},
        **{"encoder.name": "test_efficientnet", "evaluate.latency": False},
    )
    cfg = mtkd.load_recipe(tmp_path / "yaw_teacher.yaml", overrides)
    result = mtkd.run(cfg, console=Console(quiet=True))
    assert result.results["test"]["full"]["head_yaw/mae_deg"] >= 0
    assert result.results["removed_tasks"] == ["head_yaw"]
