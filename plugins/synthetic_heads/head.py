"""An identity's head as 3D parts, and the surface decals painted on its skin.

Solid parts (skull, jaw, neck, nose, ears, hair volume, spectacle frames) are ellipsoids that
the ray caster z-buffers, so they occlude each other for real. Flat features (eyes, brows, lips,
teeth, beard, scalp hair) are regions of the skin classified from the visible surface point in
head coordinates, so they turn with the head and vanish behind it like the solids do.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import labels as m
from .identity import FACIAL_HAIR_STYLES, Identity, Vec3
from .raycast import Canvas, Keep, Part, Pose, cast, head_points

_ORIGIN: Vec3 = (0.0, 0.0, 0.0)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """Right-handed rotation about a coordinate axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def _axes(rot: np.ndarray) -> tuple[Vec3, Vec3, Vec3]:
    """A part's local axes as rows, from the rotation taking part to head coordinates."""
    x, y, z = rot.T.tolist()
    return (x[0], x[1], x[2]), (y[0], y[1], y[2]), (z[0], z[1], z[2])


def _segment(start: np.ndarray, end: np.ndarray, radius: float, material: int) -> Part:
    """A thin rod from start to end (spectacle temples and hinges)."""
    along = (end - start) / np.linalg.norm(end - start)
    side = np.cross((0.0, 1.0, 0.0), along)
    side /= np.linalg.norm(side)
    rot = np.stack([side, np.cross(along, side), along], axis=1)
    center = (start + end) / 2
    half = float(np.linalg.norm(end - start)) / 2
    return Part(
        (float(center[0]), float(center[1]), float(center[2])),
        (radius, radius, half),
        material,
        _axes(rot),
    )


def hair_region(identity: Identity, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Points above the identity's hairline, which runs from front over the sides to the back."""
    front, side, back = identity.hairline
    cos_azimuth = z / np.sqrt(x * x + z * z + 1e-6)  # 1 at the face, 0 at the ears, -1 at the back
    to_front = np.clip((cos_azimuth - 0.25) * (1 / 0.45), 0, 1)  # the temples take the turn
    line = np.where(
        cos_azimuth > 0, side + (front - side) * to_front, side - (back - side) * cos_azimuth
    )
    line += (identity.hair_slant * x + identity.temple_recess * x * x) * to_front
    return y > line


def _head_surface_z(identity: Identity, x: float, y: float) -> float:
    """Depth of the front of the face (skull or jaw, whichever sticks out) at (x, y)."""
    best = 0.0
    for center, radii in ((_ORIGIN, identity.head_radii), _jaw(identity)):
        inside = 1 - ((x - center[0]) / radii[0]) ** 2 - ((y - center[1]) / radii[1]) ** 2
        if inside > 0:
            best = max(best, center[2] + radii[2] * float(np.sqrt(inside)))
    return best


def _head_half_width(identity: Identity, y: float, z: float) -> float:
    """Half width of the skull at height y and depth z."""
    rx, ry, rz = identity.head_radii
    return rx * float(np.sqrt(max(1 - (y / ry) ** 2 - (z / rz) ** 2, 0.0)))


def _jaw(identity: Identity) -> tuple[Vec3, Vec3]:
    """Centre and radii of the jaw: a second ellipsoid that shapes chin and cheeks."""
    return (0.0, -identity.chin_drop, 0.1), identity.jaw_radii


def _hair_cap(identity: Identity) -> Part:
    """Hair volume: a shell a little larger than the skull, solid only above the hairline."""
    vol = identity.hair_volume
    rx, ry, rz = identity.head_radii
    center: Vec3 = (0.0, 0.6 * vol, -0.4 * vol)
    covers_ears = identity.hairline[1] < identity.ear_height - identity.ear_size[1]
    width = rx * (1 + vol) + (0.16 if covers_ears else 0.02)
    radii: Vec3 = (width, ry * (1 + vol) + 0.01, rz * (1 + vol) + 0.02)

    def keep(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return hair_region(
            identity, radii[0] * x, center[1] + radii[1] * y, center[2] + radii[2] * z
        )

    return Part(center, radii, m.HAIR, keep=keep, see_inside=True)


def _rim(inner: float) -> Keep:
    """Spectacle frame: the rim of a flat lens-shaped ellipsoid; the glass is see-through."""

    def keep(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return x * x + y * y > inner * inner

    return keep


def _spectacles(identity: Identity) -> list[Part]:
    """Two rims, a bridge, and temples running back to the top of the ears."""
    lens_w, lens_h = identity.lens_size
    ex, ey = identity.eye_spacing, identity.eye_height
    lens_z = _head_surface_z(identity, ex, ey) + 0.1
    parts = [
        Part(
            (side * ex, ey, lens_z),
            (lens_w, lens_h, 0.02),
            m.SPECTACLES,
            _axes(_rotation(1, side * 12.0)),
            keep=_rim(0.78),
        )
        for side in (-1.0, 1.0)
    ]
    parts.append(
        Part((0.0, ey + 0.02, lens_z + 0.01), (ex - lens_w + 0.03, 0.015, 0.015), m.SPECTACLES)
    )
    ear_top = identity.ear_height + 0.6 * identity.ear_size[1]
    for side in (-1.0, 1.0):
        corner = np.array([side * (ex + 0.95 * lens_w), ey, lens_z - 0.02])
        hinge = np.array([side * (_head_half_width(identity, ey, 0.25) + 0.03), ey, 0.25])
        back = np.array(
            [side * (_head_half_width(identity, ear_top, -0.15) + 0.03), ear_top, -0.15]
        )
        parts += [
            _segment(corner, hinge, 0.015, m.SPECTACLES),
            _segment(hinge, back, 0.015, m.SPECTACLES),
        ]
    return parts


@lru_cache(maxsize=4096)
def head_parts(identity: Identity) -> tuple[Part, ...]:
    """Every solid of the identity's head, in head coordinates."""
    jaw_center, jaw_radii = _jaw(identity)
    nw, nl, nd = identity.nose_size
    nose_z = _head_surface_z(identity, 0.0, identity.nose_height) - 0.3 * nd
    neck = identity.neck_width
    parts = [
        Part(_ORIGIN, identity.head_radii, m.SKIN),
        Part(jaw_center, jaw_radii, m.SKIN),
        Part((0.0, -1.25, -0.18), (0.45 * neck, 0.95, 0.45 * neck), m.NECK),
        Part(
            (0.0, identity.nose_height, nose_z),
            (nw, nl, nd),
            m.NOSE,
            _axes(_rotation(0, -identity.nose_tilt)),
        ),
        _hair_cap(identity),
    ]
    ear_z = -0.08
    for side, material in ((-1.0, m.LEFT_EAR), (1.0, m.RIGHT_EAR)):
        x = side * (_head_half_width(identity, identity.ear_height, ear_z) + 0.005)
        rot = _rotation(1, -side * identity.ear_flare) @ _rotation(0, -12.0)
        parts.append(Part((x, identity.ear_height, ear_z), identity.ear_size, material, _axes(rot)))
    if identity.spectacles:
        parts += _spectacles(identity)
    return tuple(parts)


def paint_face(identity: Identity, canvas: Canvas, pose: Pose, mouth_open: float) -> None:
    """Paint eyes, brows, lips, teeth, facial hair and scalp hair onto the visible skin."""
    skin_pixels = canvas.material == m.SKIN
    rows_any, cols_any = skin_pixels.any(axis=1), skin_pixels.any(axis=0)
    if not rows_any.any():
        return
    r = np.flatnonzero(rows_any)
    c = np.flatnonzero(cols_any)
    rows, cols = slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
    material = canvas.material[rows, cols]
    skin = skin_pixels[rows, cols]
    x, y, z = head_points(canvas, pose, rows, cols)
    front = skin & (z > 0)

    def paint(region: np.ndarray, value: int) -> None:
        material[region] = value

    # mouth: lips around an opening that shows teeth and the dark inside of the mouth
    lip_w, lip_h = identity.lip_size
    gap = 0.16 * mouth_open
    my = identity.mouth_height - gap / 2
    dy = y - my
    style = FACIAL_HAIR_STYLES[identity.facial_hair]
    if style != "none":  # every style has the moustache; a goatee adds the chin, a beard the jaw
        beard = (np.abs(x) < 1.15 * lip_w) & (dy > 0) & (dy < lip_h + gap / 2 + 0.08)
        if style == "goatee":
            beard |= (np.abs(x) < 0.9 * lip_w) & (dy < 0) & (y > my - lip_h - 0.35)
        if style == "beard":
            cos_azimuth = z / np.sqrt(x * x + z * z + 1e-6)
            beard |= (y < my + 0.12 + 0.45 * (1 - cos_azimuth)) & (cos_azimuth > -0.2)
        paint(skin & (z > -0.3) & beard, m.FACIAL_HAIR)
    lips = (x / lip_w) ** 2 + (dy / (lip_h + gap / 2)) ** 2 < 1
    paint(front & lips, m.LIPS)
    if gap > 0:
        inside = front & ((x / (0.8 * lip_w)) ** 2 + (dy / (gap / 2)) ** 2 < 1)
        paint(inside, m.MOUTH_INSIDE)
        paint(inside & ((dy > -0.1 * gap) | (dy < -0.38 * gap)), m.TEETH)

    ew, eh = identity.eye_size
    bw, bh = identity.brow_size
    for side, eye, iris, brow in (
        (-1.0, m.LEFT_EYE, m.LEFT_IRIS, m.LEFT_BROW),
        (1.0, m.RIGHT_EYE, m.RIGHT_IRIS, m.RIGHT_BROW),
    ):
        dx = x - side * identity.eye_spacing
        dy = y - identity.eye_height - side * identity.eye_tilt * dx
        almond = (dx / ew) ** 2 + (dy / eh) ** 2 < 1
        paint(front & almond, eye)
        paint(front & almond & (dx * dx + dy * dy < (1.1 * eh) ** 2), iris)
        bx = x - side * (identity.eye_spacing + 0.01)
        arch = identity.eye_height + identity.brow_raise + identity.brow_arch * (1 - (bx / bw) ** 2)
        paint(front & (np.abs(bx) < bw) & (np.abs(y - arch) < bh), brow)

    paint(skin & hair_region(identity, x, y, z), m.HAIR)


def render_materials(
    identity: Identity, pose: Pose, light: np.ndarray, size: int, mouth_open: float
) -> Canvas:
    """Ray-cast the head parts and paint the face: the material and shading of every pixel."""
    canvas = Canvas(size)
    for part in head_parts(identity):
        cast(canvas, part, pose, light)
    paint_face(identity, canvas, pose, mouth_open)
    return canvas
