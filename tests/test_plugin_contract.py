"""The plugin contract holds by construction: a plugin class's options are declared once
(the generic parameter sets ``Options``), and the typed view of the hooks equals the specs."""

from __future__ import annotations

import inspect
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import mtkd
from mtkd import hookspecs
from mtkd.options import Configurable

CONTRACTS = (mtkd.Task, mtkd.SampleSource, mtkd.Preprocessor, mtkd.LossWeighting)


@dataclass
class Wide:
    width: int = 4


@dataclass
class Wider(Wide):
    extra: int = 1


@dataclass
class Other:
    depth: int = 2


@pytest.mark.parametrize("base", [*CONTRACTS, mtkd.TeacherNetwork])
def test_the_generic_parameter_sets_options(base: Any) -> None:
    plugin: Any = types.new_class("Plugin", (base[Wide],))
    assert plugin.Options is Wide
    child: Any = types.new_class("Child", (plugin,))
    assert child.Options is Wide  # inherited as it is


def test_options_that_contradict_the_generic_parameter_stop_at_class_creation() -> None:
    with pytest.raises(mtkd.PluginError) as caught:

        class Mismatched(mtkd.Task[Wide]):
            name = "mismatched"
            Options = Other

    message = str(caught.value)
    assert "\n" not in message
    assert "Mismatched (" in message and "test_plugin_contract.py): Options = Other" in message
    assert "declared with options Wide" in message


def test_a_subclass_may_narrow_the_options_but_not_swap_them() -> None:
    class Narrow(mtkd.SampleSource[Wide]):
        Options = Wider  # a subclass of the parameter: every Wider is a Wide

    class Base(mtkd.LossWeighting[Wide]):
        name = "base"

    assert Narrow.Options is Wider
    with pytest.raises(mtkd.PluginError, match=r"Swapped \(.*\): Options = Other"):

        class Swapped(Base):
            Options = Other


def test_a_bare_base_keeps_the_options_it_sets_and_defaults_to_none() -> None:
    class Bare(mtkd.Preprocessor):
        name = "bare"
        Options = Other

    class Plain(mtkd.Task):
        name = "plain"

    assert Bare.Options is Other
    assert Plain.Options is mtkd.NoOptions


def test_a_plugin_file_with_contradicting_options_is_named_when_it_loads(tmp_path: Path) -> None:
    plugin = tmp_path / "contradicts.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            import mtkd

            @dataclass
            class A:
                x: int = 1

            @dataclass
            class B:
                y: int = 1

            class Head(mtkd.Task[A]):
                name = "head"
                Options = B
            """
        )
    )
    with pytest.raises(
        mtkd.PluginError, match=r"Head \(.*contradicts\.py\): Options = B.*options A"
    ):
        mtkd.load_plugins([str(plugin)])


def test_every_built_in_plugin_class_declares_options_that_agree() -> None:
    plugins = mtkd.load_plugins()
    classes: list[type[Configurable[Any]]] = [
        *plugins.tasks.values(),
        *plugins.datasets.values(),
        *plugins.preprocessors.values(),
        *plugins.weightings.values(),
        *plugins.teachers.values(),
    ]
    assert len(classes) > 15
    for cls in classes:
        assert isinstance(cls.Options, type), cls
        for klass in cls.__mro__:
            bound = mtkd.options.bound_options(klass)
            if bound is not None:
                assert issubclass(cls.Options, bound), cls
    generic = [c for c in classes if mtkd.options.bound_options(c) is not None]
    assert len(generic) >= 10  # the built-ins name their options once, as the parameter


def test_the_typed_hook_calls_match_the_hookspecs() -> None:
    """``PluginSet.hook`` is typed by :class:`mtkd.hookspecs.HookCalls`: one method per
    spec, keyword-only with the spec's parameters, returning the list of answers (or the
    first answer, for a first-result hook)."""
    specs = {n: f for n, f in vars(hookspecs).items() if hasattr(f, "mtkd_spec")}
    calls = {
        n: f
        for n, f in vars(hookspecs.HookCalls).items()
        if inspect.isfunction(f) and not n.startswith("_")
    }
    assert sorted(calls) == sorted(specs)
    for name, spec in specs.items():
        signature, typed = inspect.signature(spec), inspect.signature(calls[name])
        params = list(typed.parameters.values())[1:]  # less self
        assert [(p.name, p.annotation) for p in params] == [
            (p.name, p.annotation) for p in signature.parameters.values()
        ], name
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name  # pluggy takes keywords
        first = spec.mtkd_spec.get("firstresult")
        answer = signature.return_annotation
        assert typed.return_annotation == (answer if first else f"list[{answer}]"), name


def test_the_configurable_base_is_every_options_contract() -> None:
    for base in (*CONTRACTS, mtkd.TeacherNetwork):
        assert issubclass(base, Configurable)
        assert base.Options is mtkd.NoOptions


def _contract_generator() -> Any:
    import importlib.util

    from helpers import REPO

    path = REPO / "docs" / "gen_contract_reference.py"
    spec = importlib.util.spec_from_file_location("gen_contracts", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_the_contract_page_is_generated_from_the_classes() -> None:
    """docs/plugin-contracts.md is exactly what docs/gen_contract_reference.py writes from
    the contract classes' source, and it covers every class a registration hook takes."""
    gen = _contract_generator()
    assert gen.PAGE.read_text() == gen.contract_reference(), (
        "run: python docs/gen_contract_reference.py"
    )
    registered = {spec.base.__name__ for spec in mtkd.plugins.REGISTRIES}
    assert {name for name, _ in gen.CONTRACTS} == registered - {"PretrainedEntry"}
    guide = gen.PAGE.with_name("writing-plugins.md").read_text()
    assert "(plugin-contracts.md)" in guide


def test_every_member_of_a_contract_says_what_it_is_for() -> None:
    """A class variable without a comment or a method without a docstring would leave a
    blank row on the generated page."""
    gen = _contract_generator()
    blank = []
    for name, _ in gen.CONTRACTS:
        cls = getattr(mtkd, name)
        blank += [f"{name}.{v}" for v, _, _, meaning in gen.class_variables(cls) if not meaning]
        blank += [f"{name}.{m}" for m, _, doc in gen.methods(cls) if not doc]
    assert blank == []
