"""Synthetic heads: determinism, mask contract, real 3D occlusion, expression and accessories."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from mtkd_plugins.synthetic_heads import render as sh

SIZE = 96


@pytest.fixture(scope="module")
def identities() -> list[sh.Identity]:
    return sh.sample_identities(40, seed=3)


@pytest.fixture(scope="module")
def short_haired(identities: list[sh.Identity]) -> sh.Identity:
    """A person without spectacles whose hair leaves the ears free."""
    return next(i for i in identities if i.hairline[1] > 0.3 and not i.spectacles)


def front_view(**changes: Any) -> sh.Nuisance:
    """A fixed frontal, closed-mouth view; ``changes`` override any field."""
    nuisance = sh.sample_nuisance(np.random.default_rng(0))
    return replace(
        nuisance, **{"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "mouth_open": 0.0, **changes}
    )


def counts(mask: np.ndarray) -> dict[str, int]:
    return dict(zip(sh.CLASS_NAMES, np.bincount(mask.ravel(), minlength=14).tolist(), strict=True))


def test_class_names_and_palette() -> None:
    assert len(sh.CLASS_NAMES) == len(sh.PALETTE) == 14
    assert len(set(sh.PALETTE)) == 14
    assert sh.CLASS_NAMES[0] == "background"
    assert sh.PALETTE[sh.CLASS_NAMES.index("skin")] == (128, 128, 128)


def test_same_seed_same_bytes(identities: list[sh.Identity]) -> None:
    again = sh.sample_identities(40, seed=3)
    assert again == identities
    assert sh.sample_identities(5, seed=3) == identities[:5]
    first = sh.render_view(identities, 7, 11, SIZE, seed=5)
    second = sh.render_view(again, 7, 11, SIZE, seed=5)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].tobytes() == second[1].tobytes()
    assert first[2] == second[2]
    other = sh.render_view(identities, 7, 12, SIZE, seed=5)
    assert other[0].tobytes() != first[0].tobytes()


def test_shapes_dtypes_and_class_range(identities: list[sh.Identity]) -> None:
    for view in range(12):
        image, mask, _ = sh.render_view(identities, view, view, SIZE, seed=1)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert mask.max() < 14
        assert (mask == 0).any() and (mask == sh.CLASS_NAMES.index("skin")).any()
    rgb = sh.mask_to_rgb(mask)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize(
    ("yaw", "near", "far"), [(90.0, "left", "right"), (-90.0, "right", "left")]
)
def test_profile_hides_far_eye_and_ear(
    short_haired: sh.Identity, yaw: float, near: str, far: str
) -> None:
    """Left/right as seen in a frontal image: at yaw +90 the face looks to the image's right."""
    seen = counts(sh.render(short_haired, front_view(yaw=yaw), SIZE)[1])
    assert seen[f"{near}_eye"] > 0 and seen[f"{far}_eye"] == 0
    assert seen[f"{near}_ear"] > 0 and seen[f"{far}_ear"] == 0


def test_frontal_shows_both_eyes_and_ears_alike(short_haired: sh.Identity) -> None:
    seen = counts(sh.render(short_haired, front_view(), SIZE)[1])
    assert seen["left_eye"] > 0 and seen["right_eye"] > 0
    assert abs(seen["left_ear"] - seen["right_ear"]) <= 0.3 * max(seen["left_ear"], 1)
    assert seen["left_ear"] < 0.2 * seen["skin"]


def test_open_mouth_shows_teeth(identities: list[sh.Identity]) -> None:
    person = identities[0]
    assert counts(sh.render(person, front_view(), SIZE)[1])["teeth"] == 0
    assert counts(sh.render(person, front_view(mouth_open=1.0), SIZE)[1])["teeth"] > 0


def test_spectacles_only_on_wearers(identities: list[sh.Identity]) -> None:
    wearers = [i for i in identities if i.spectacles]
    others = [i for i in identities if not i.spectacles]
    assert 0 < len(wearers) < len(others)
    for person in wearers[:3]:
        assert counts(sh.render(person, front_view(), SIZE)[1])["spectacles"] > 0
    for person in others[:3]:
        assert counts(sh.render(person, front_view(), SIZE)[1])["spectacles"] == 0


def test_nuisance_pose_matches_request(identities: list[sh.Identity]) -> None:
    ranges = {"yaw_range": (10.0, 20.0), "pitch_range": (-5.0, 0.0), "roll_range": (0.0, 0.0)}
    for view in range(20):
        _, _, nuisance = sh.render_view(identities, 0, view, 32, seed=2, **ranges)
        assert 10.0 <= nuisance.yaw <= 20.0
        assert -5.0 <= nuisance.pitch <= 0.0
        assert nuisance.roll == 0.0
    fixed = front_view(yaw=-37.5, pitch=12.0, roll=-4.0)
    assert (fixed.yaw, fixed.pitch, fixed.roll) == (-37.5, 12.0, -4.0)
    assert sh.render(identities[0], fixed, 32)[0].shape == (32, 32, 3)


def test_identities_differ_in_geometry(identities: list[sh.Identity]) -> None:
    nuisance = front_view()
    masks = [sh.render(person, nuisance, SIZE)[1] for person in identities[:6]]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.01


def test_colours_are_shared_across_identities(identities: list[sh.Identity]) -> None:
    """Identity must come from geometry: many people share each skin and hair colour."""
    skin_hair = {(i.skin_tone, i.hair_colour) for i in identities}
    assert len({i.skin_tone for i in identities}) <= 6
    assert len({i.hair_colour for i in identities}) <= 6
    assert len(skin_hair) < len(identities)
