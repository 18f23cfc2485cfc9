"""Every hook a plugin may implement is documented with its real parameters and exercised by
a test; and a real test for each hook no other test file exercises.

Presence of each hook in docs/writing-plugins.md is checked by
``test_plugins.py::test_every_hook_is_documented_for_plugin_authors``; here the hooks table is
checked the other way round (no stale rows, the documented parameters are the spec's).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
from helpers import RECIPES, REPO, tiny_overrides

import mtkd
from mtkd import hookspecs

TESTS = Path(__file__).resolve().parent
GUIDE = REPO / "docs" / "writing-plugins.md"

# An implementation: ``@hookimpl`` / ``@mtkd.hookimpl`` / ``@mtkd.hookimpl(trylast=True)``,
# perhaps with other decorators below it, on a function or method named after the hook.
HOOKIMPL_DEF = re.compile(
    r"@(?:\w+\.)*hookimpl\b(?:\([^)]*\))?[ \t]*\n(?:[ \t]*@[^\n]*\n)*[ \t]*(?:async[ \t]+)?"
    r"def[ \t]+(\w+)[ \t]*\("
)
HOOK_CALL = re.compile(r"\bhook\.(\w+)[ \t]*\(")  # a direct call: plugins.hook.distill(model=…)


def hook_names() -> list[str]:
    """Every hook declared in mtkd/hookspecs.py, found the way pluggy finds them."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    return sorted(
        name
        for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
        if pm.parse_hookspec_opts(hookspecs, name) is not None
    )


def exercised_in(text: str) -> set[str]:
    """Names of hooks implemented (decorated functions) or called directly in source text."""
    return set(HOOKIMPL_DEF.findall(text)) | set(HOOK_CALL.findall(text))


def documented_signatures(guide: str) -> dict[str, list[str]]:
    """The guide's generated hook reference: hook name → the parameter names it documents."""
    section = guide.split("\n## Hooks\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^### `((\w+))\(([^)]*)\)`", section, flags=re.MULTILINE)
    assert rows, "docs/writing-plugins.md: no hook reference under '## Hooks'"
    for name, called, _ in rows:
        assert name == called, f"docs/writing-plugins.md: row '{name}' shows '{called}(...)'"
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, _, args in rows}


def test_the_scanner_finds_implementations_and_calls() -> None:
    text = """
class Recorder:
    @mtkd.hookimpl(tryfirst=True)
    @staticmethod
    def alpha_hook(context):
        pass

@hookimpl
def beta_hook(register):
    pass

def gamma_hook(x):  # not decorated: not an implementation
    pass

plugins.hook.delta_hook(model=model)
"""
    assert exercised_in(text) == {"alpha_hook", "beta_hook", "delta_hook"}


def test_the_hooks_table_matches_the_specs() -> None:
    hooks = hook_names()
    assert {"register_tasks", "distill", "on_step_end"} <= set(hooks)
    documented = documented_signatures(GUIDE.read_text())
    stale = sorted(set(documented) - set(hooks))
    assert not stale, f"docs/writing-plugins.md documents hooks that do not exist: {stale}"
    for name in sorted(set(documented) & set(hooks)):
        spec = inspect.signature(getattr(hookspecs, name))
        assert documented[name] == list(spec.parameters), (
            f"docs/writing-plugins.md: `{name}({', '.join(documented[name])})` does not match "
            f"the spec in mtkd/hookspecs.py: {name}{spec}"
        )


def test_every_hook_is_exercised_by_a_test() -> None:
    exercised: dict[str, list[str]] = {}
    for path in sorted(TESTS.glob("*.py")):
        for name in exercised_in(path.read_text()):
            exercised.setdefault(name, []).append(path.name)
    missing = [name for name in hook_names() if name not in exercised]
    assert not missing, (
        f"hooks no test exercises: {', '.join(missing)}; implement each in a test plugin "
        "(an @mtkd.hookimpl function named after it) and assert what it does"
    )


# --- register_preprocessors: a plugin object registers a step used in data.preprocess ---


@dataclass
class FirstPeopleOptions:
    keep: int = 2  # identities below this are kept


class FirstPeople(mtkd.Preprocessor):
    """Keeps the samples of the first ``keep`` identities and darkens their images."""

    name = "first_people"
    Options = FirstPeopleOptions

    def __call__(self, sample: mtkd.Sample) -> mtkd.Sample | None:
        if int(sample["identity"]) >= self.options.keep:
            self.counts["dropped"] += 1
            return None
        self.counts["kept"] += 1
        return {**sample, "image": sample["image"] // 2}


class PreprocessorPlugin:
    @mtkd.hookimpl
    def register_preprocessors(self, register: Any) -> None:
        register(FirstPeople)


def test_register_preprocessors_adds_a_step_that_data_preprocess_can_use(
    tmp_path: Path,
) -> None:
    plugins = mtkd.load_plugins(objects=[("first_people_plugin", PreprocessorPlugin())])
    assert plugins.preprocessors.by_plugin("first_people_plugin") == ["first_people"]
    overrides = tiny_overrides(tmp_path, **{"data.cache": "memory"})
    plain = mtkd.build_data(mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides), plugins)
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        [*overrides, "data.preprocess=[{name: first_people, keep: 3}]"],
    )
    data = mtkd.build_data(cfg, plugins)
    # 4 identities x 6 views: the 6 views of identity 3 are dropped, each counted
    assert len(plain.cached) == 24 and len(data.cached) == 18
    assert data.report.preprocess_counts == {"first_people": {"kept": 18, "dropped": 6}}
    assert set(data.cached.labels["identity"].tolist()) == {0, 1, 2}
    assert data.cached.images.mean() < 0.6 * plain.cached.images.mean()  # darkened, once
