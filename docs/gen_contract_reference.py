"""Write docs/plugin-contracts.md, the reference of the classes plugins subclass, from the code.

    python docs/gen_contract_reference.py

Each class's docstring, its class variables (type, default and the comment beside them) and
its methods (signature and docstring) come from mtkd's own source, so the page and the
contract never drift apart: tests/test_plugin_contract.py fails when the committed page
differs from what this script writes.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import mtkd

PAGE = Path(__file__).with_name("plugin-contracts.md")
# the classes a plugin subclasses, with the hook that registers them, in the guide's order
CONTRACTS: tuple[tuple[str, str], ...] = (
    ("Task", "register_tasks"),
    ("SampleSource", "register_datasets"),
    ("Preprocessor", "register_preprocessors"),
    ("LossWeighting", "register_weightings"),
    ("TeacherNetwork", "register_teacher_networks"),
    ("Logger", "register_loggers"),
    ("Command", "register_commands"),
)
INTRO = """\
# Plugin contracts

The classes a plugin subclasses, generated from their source by
`python docs/gen_contract_reference.py` (a test keeps this page current; edit the docstrings,
not this page). [Writing plugins](writing-plugins.md) shows each one at work.

A class that takes recipe options names their dataclass as its generic parameter, e.g.
`class HeadYaw(mtkd.Task[YawOptions])`: the parameter types `self.options` and sets the
`Options` class variable the engine parses the recipe with. Setting `Options` to a class
that is not the parameter (or a subclass of it) stops at import with one line naming the
class; a bare base (`mtkd.Task`) keeps the `Options` it sets and leaves `self.options`
untyped.
"""


def markdown(doc: str | None) -> str:
    """A reST-flavoured docstring as Markdown: literals, roles and parameter lists."""
    text = inspect.cleandoc(doc or "").replace("``", "`")
    text = re.sub(r":(?:class|meth|attr|func):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r":param (\w+):", r"- `\1`:", text)
    return text.replace(":return:", "- returns:")


def class_variables(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, comment) of each class variable ``cls``'s own body annotates,
    with the comment on its line or the comment lines right above it."""
    source, _ = inspect.getsourcelines(cls)
    lines = [line.rstrip() for line in source]
    body = ast.parse(textwrap.dedent("".join(source))).body[0]
    assert isinstance(body, ast.ClassDef)
    found = []
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = lines[node.lineno - 1]
        comment = line.partition("  # ")[2] if "  # " in line else ""
        above = node.lineno - 2
        while not comment and above >= 0 and lines[above].strip().startswith("#"):
            above -= 1
        if not comment:
            block = lines[above + 1 : node.lineno - 1]
            comment = " ".join(c.strip().lstrip("# ") for c in block)
        annotation = ast.unparse(node.annotation)
        annotation = re.sub(r"^ClassVar\[(.*)\]$", r"\1", annotation)
        default = ast.unparse(node.value) if node.value is not None else ""
        found.append((node.target.id, annotation, default, markdown(comment)))
    return found


def methods(cls: type) -> list[tuple[str, str, str]]:
    """(name, signature, docstring) of the public methods and properties ``cls`` defines."""
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        if isinstance(member, property):
            found.append((name, f"{name} (property)", markdown(member.__doc__)))
        elif inspect.isfunction(function):
            kind = "classmethod " if isinstance(member, classmethod) else ""
            signature = str(inspect.signature(function)).replace("'", "")
            signature = re.sub(r"^\((self|cls)(, )?", "(", signature)
            found.append((name, f"{kind}{name}{signature}", markdown(function.__doc__)))
    return found


def class_section(name: str, hook: str) -> str:
    cls = getattr(mtkd, name)
    parts = [f"## `mtkd.{name}`", f"Registered with `{hook}`.", markdown(cls.__doc__)]
    variables = class_variables(cls)
    if hasattr(cls, "Options"):  # from the options base: the generic parameter sets it
        options = ("Options", "type", "NoOptions", "the options dataclass: the generic parameter")
        variables.insert(1, options)
    if variables:
        rows = ["| class variable | type | default | meaning |", "| --- | --- | --- | --- |"]
        rows += [f"| `{n}` | `{t}` | `{d}` | {c} |" for n, t, d, c in variables]
        parts.append("\n".join(rows))
    for _, signature, doc in methods(cls):
        parts.append(f"### `{signature}`" + (f"\n\n{doc}" if doc else ""))
    return "\n\n".join(parts) + "\n"


def contract_reference() -> str:
    """The whole page."""
    return "\n".join([INTRO, *(class_section(name, hook) for name, hook in CONTRACTS)])


if __name__ == "__main__":
    PAGE.write_text(contract_reference())
    print(f"wrote {PAGE}")
