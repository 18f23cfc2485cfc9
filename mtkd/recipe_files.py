"""Where recipe files are found: the user's folder first, then the recipes shipped with mtkd.

A recipe, a study, a profile (an overlay) or a base named under ``defaults:`` is a file path
or a name: ``seg_distilled_id``, ``_base``, ``tiny`` (a profile), ``zoo/mobilenetv2_heads64``.
A name is looked for beside the file that names it (or in the working directory), then among
the recipes installed with mtkd (the package ``mtkd_recipes``, the repository's ``recipes/``),
so ``pip install mtkd`` is enough to run ``mtkd run seg_distilled_id tiny`` anywhere, and a
user's recipe in any folder can say ``defaults: [_base]``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import RecipeError, did_you_mean

SUFFIXES = (".yaml", ".yml")
PROFILES = "profiles"  # the shipped overlays' subfolder: `mtkd run RECIPE tiny`


def shipped_dir() -> Path:
    """The folder of the recipes installed with mtkd."""
    try:
        return Path(str(resources.files("mtkd_recipes")))
    except ModuleNotFoundError:  # a source tree used without installing it
        return Path(__file__).resolve().parents[1] / "recipes"


def _with_suffix(path: Path) -> Path:
    return path if path.suffix in SUFFIXES else path.with_name(path.name + ".yaml")


def _candidates(ref: str, near: Path, profile: bool) -> list[Path]:
    shipped = shipped_dir()
    # `recipes/seg_distilled_id.yaml`, as the docs write it, also names the shipped file
    inner = ref.removeprefix("recipes/")
    found = [near / ref, shipped / inner]
    if profile:
        found += [near / PROFILES / ref, shipped / PROFILES / inner]
    return [_with_suffix(p) for p in found]


def known_names(near: Path, profile: bool = False) -> list[str]:
    """Recipe names a ``did you mean`` offers: the user's folder's and the shipped ones."""
    folders = [near, shipped_dir()]
    if profile:
        folders += [near / PROFILES, shipped_dir() / PROFILES]
    return sorted({p.stem for d in folders if d.is_dir() for p in d.glob("*.y*ml")})


def find_recipe(ref: str | Path, near: Path | None = None, profile: bool = False) -> Path:
    """The file a recipe reference names: ``near/<ref>`` (``near``: the folder of the file
    that names it, or the working directory), else the shipped ``<ref>.yaml`` (and, for a
    ``profile``, the same in ``profiles/``)."""
    near = Path.cwd() if near is None else near
    exact = near / ref  # an absolute ref stays itself
    if exact.is_file():
        return exact
    candidates = (
        [_with_suffix(exact)] if Path(ref).is_absolute() else _candidates(str(ref), near, profile)
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    kind = "profile or overlay" if profile else "recipe"
    raise RecipeError(
        f"{kind} '{ref}' not found (looked in {near} and in mtkd's recipes)"
        + did_you_mean(Path(ref).stem, known_names(near, profile))
    )


def first_comment(path: Path, width: int = 100) -> str:
    """A recipe's one-line description: the first sentence of its opening comment."""
    lines = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped.startswith("#") or stripped.lstrip("#").strip().startswith("mtkd "):
            break
        lines.append(stripped.lstrip("#").strip())
    text = " ".join(lines)
    text = text.split(". ", 1)[0].rstrip(".:")
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + " …"


def kind_of(path: Path) -> str:
    """'profile' (an overlay), 'study' (a ``study:`` file) or 'recipe'."""
    if path.parent.name == PROFILES:
        return "profile"
    if any(line.startswith("study:") for line in path.read_text().splitlines()):
        return "study"
    return "recipe"


def shipped_recipes() -> list[tuple[str, str, str]]:
    """(name, kind, description) of every shipped recipe, study and profile."""
    root = shipped_dir()
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*/*.yaml"))
    return [
        (p.relative_to(root).with_suffix("").as_posix(), kind_of(p), first_comment(p))
        for p in files
    ]
