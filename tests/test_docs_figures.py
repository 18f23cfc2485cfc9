"""Figures the docs quote about a shipped profile are the profile's own (issue 27, item 2:
the quickstart said cpu_quick trains 6 epochs after it had become 10)."""

from __future__ import annotations

import re

import yaml
from helpers import RECIPES, REPO

# what a sentence says -> where the profile holds it
FIGURES = {
    r"(\d+) generated people": ("data", "dataset", "identities"),
    r"(\d+) people": ("data", "dataset", "identities"),
    r"(\d+) px": ("data", "image_size"),
    r"batch (\d+)": ("data", "batch_size"),
    r"(?:up to )?(\d+) epochs": ("trainer", "max_epochs"),
    r"patience (\d+)": ("trainer", "patience"),
}


def quoted_figures(text: str) -> dict[tuple[str, ...], int]:
    found: dict[tuple[str, ...], int] = {}
    for pattern, key in FIGURES.items():
        match = re.search(pattern, text)
        if match and key not in found:
            found[key] = int(match.group(1))
    return found


def profile_value(profile: dict, key: tuple[str, ...]) -> object:
    node: object = profile
    for part in key:
        assert isinstance(node, dict) and part in node, f"the profile has no {'.'.join(key)}"
        node = node[part]
    return node


def test_quickstart_quotes_the_figures_of_the_profile_it_names() -> None:
    text = (REPO / "docs" / "quickstart.md").read_text()
    match = re.search(r"`recipes/profiles/(\w+)\.yaml` is an \*overlay\*(.*?)\n\n", text, re.S)
    assert match, "docs/quickstart.md no longer describes its profile"
    profile = yaml.safe_load((RECIPES / "profiles" / f"{match.group(1)}.yaml").read_text())
    quoted = quoted_figures(match.group(2))
    assert ("trainer", "max_epochs") in quoted and ("data", "image_size") in quoted
    for key, value in quoted.items():
        assert profile_value(profile, key) == value, f"quickstart: {'.'.join(key)} is {value}"


def test_the_recipes_page_quotes_each_profiles_own_figures() -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    rows = re.findall(r"^\| `profiles/(\w+)\.yaml` \| (.*?) \|$", text, re.M)
    assert {name for name, _ in rows} >= {"cpu_quick", "tiny"}
    for name, row in rows:
        profile = yaml.safe_load((RECIPES / "profiles" / f"{name}.yaml").read_text())
        for key, value in quoted_figures(row).items():
            assert profile_value(profile, key) == value, f"recipes.md, {name}: {'.'.join(key)}"
