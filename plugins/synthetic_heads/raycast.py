"""Orthographic ray casting of ellipsoids into a z-buffer, over the whole pixel grid at once.

Rays are parallel to the camera axis, so every ray-ellipsoid discriminant is a quadratic
polynomial of the pixel position: casting one part costs a few float32 array operations over
its projected bounding box, with no loop over pixels. That is what buys hundreds of images per
second on one core while keeping real 3D self-occlusion.

World (camera) coordinates: the image spans [-1, 1] in u (right) and v (up); z points to the
viewer, so the visible surface along a ray is the hit with the largest z.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .identity import Vec3

# Given a hit in the part's unit-sphere coordinates (x, y, z arrays), which hits are solid.
Keep = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
FAR = np.float32(-100.0)  # depth of the empty z-buffer: behind everything


@dataclass(frozen=True)
class Part:
    """An ellipsoid in head coordinates, painted with one material."""

    center: Vec3
    radii: Vec3
    material: int
    axes: tuple[Vec3, Vec3, Vec3] | None = None  # rows: the part's own axes in head coordinates
    keep: Keep | None = None  # cut-outs (hair above the hairline only, spectacle rims)
    see_inside: bool = False  # where the near wall is cut away, show the far wall from inside


@dataclass(frozen=True)
class Pose:
    """Head-to-world transform: world = scale * rotation @ head + (shift, 0)."""

    rotation: np.ndarray
    scale: float
    shift: np.ndarray  # (3,), z component 0

    @classmethod
    def from_angles(
        cls, yaw: float, pitch: float, roll: float, scale: float, shift: tuple[float, float]
    ) -> Pose:
        """Nod (pitch), then turn (yaw), then tilt in the image plane (roll); degrees."""
        y, p, r = np.radians([yaw, -pitch, roll])
        rot_x = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
        rot_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        rot_z = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
        return cls(rot_z @ rot_y @ rot_x, scale, np.array([shift[0], shift[1], 0.0]))


@lru_cache(maxsize=8)
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """World u of each column and v of each row (rows run top to bottom, v upwards)."""
    centres = ((2 * np.arange(size) + 1) / size - 1).astype(np.float32)
    return centres, -centres


class Canvas:
    """The z-buffer, the material of the nearest hit and its cosine to the light."""

    def __init__(self, size: int) -> None:
        self.u, self.v = pixel_centres(size)
        self.depth = np.full((size, size), FAR, dtype=np.float32)
        self.material = np.zeros((size, size), dtype=np.uint8)
        self.shade = np.zeros((size, size), dtype=np.float32)

    def window(self, center: np.ndarray, half: np.ndarray) -> tuple[slice, slice]:
        """Rows and columns of the pixels whose centres may fall inside a world-space box."""
        n = self.depth.shape[0]
        col0 = int(np.floor((center[0] - half[0] + 1) * n / 2 - 0.5))
        col1 = int(np.ceil((center[0] + half[0] + 1) * n / 2 - 0.5)) + 1
        row0 = int(np.floor((1 - center[1] - half[1]) * n / 2 - 0.5))
        row1 = int(np.ceil((1 - center[1] + half[1]) * n / 2 - 0.5)) + 1
        return slice(max(row0, 0), min(row1, n)), slice(max(col0, 0), min(col1, n))


def cast(canvas: Canvas, part: Part, pose: Pose, light: np.ndarray) -> None:
    """Intersect every ray with the part and keep the hits nearer than what is already drawn."""
    axes = np.eye(3) if part.axes is None else np.array(part.axes)
    inv_r = 1.0 / np.array(part.radii)
    # unit-sphere coordinates p = G @ world + k, for world points (u, v, z)
    g_mat = (inv_r[:, None] * axes) @ pose.rotation.T / pose.scale
    k = -g_mat @ pose.shift - inv_r * (axes @ np.array(part.center))
    a_vec, b_vec, g = g_mat[:, 0], g_mat[:, 1], g_mat[:, 2]

    to_world = pose.scale * pose.rotation @ axes.T * np.array(part.radii)
    center = pose.scale * pose.rotation @ np.array(part.center) + pose.shift
    rows, cols = canvas.window(center, np.linalg.norm(to_world, axis=1))
    u, v = canvas.u[cols], canvas.v[rows]
    if u.size == 0 or v.size == 0:
        return

    # |A u + B v + k + g z|^2 = 1 is a quadratic in z; its discriminant is quadratic in (u, v).
    # Coefficients become Python floats so that the float32 arrays stay float32.
    aa = float(g @ g)
    bu, bv, b0 = float(g @ a_vec), float(g @ b_vec), float(g @ k)
    c_uu = bu * bu - aa * float(a_vec @ a_vec)
    c_vv = bv * bv - aa * float(b_vec @ b_vec)
    c_uv = 2 * (bu * bv - aa * float(a_vec @ b_vec))
    c_u = 2 * (bu * b0 - aa * float(a_vec @ k))
    c_v = 2 * (bv * b0 - aa * float(b_vec @ k))
    c_0 = b0 * b0 - aa * (float(k @ k) - 1)
    disc = np.add.outer((c_vv * v + c_v) * v + c_0, (c_uu * u + c_u) * u)
    disc += np.multiply.outer(c_uv * v, u)
    hit = disc > 0
    if not hit.any():
        return
    root = np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
    beta = np.add.outer(bv * v, bu * u + b0)
    depth = (root - beta) * (1 / aa)
    ca, cb, cg, ck = a_vec.tolist(), b_vec.tolist(), g.tolist(), k.tolist()
    p = [np.add.outer(cb[i] * v, ca[i] * u + ck[i]) + cg[i] * depth for i in range(3)]

    facing: np.ndarray | float = 1.0
    if part.keep is not None:
        solid = hit & part.keep(*p)
        if part.see_inside:
            far_depth = (root + beta) * (-1 / aa)
            far = [np.add.outer(cb[i] * v, ca[i] * u + ck[i]) + cg[i] * far_depth for i in range(3)]
            inside = hit & ~solid & part.keep(*far)
            depth = np.where(inside, far_depth, depth)
            p = [np.where(inside, f, n) for f, n in zip(far, p, strict=True)]
            facing = np.where(inside, np.float32(-1), np.float32(1))
            solid |= inside
        hit = solid

    zbuf = canvas.depth[rows, cols]
    update = hit & (depth > zbuf)
    np.copyto(zbuf, depth, where=update)
    np.copyto(canvas.material[rows, cols], part.material, where=update)
    # the outward normal is (inv_r * p) in part axes; its cosine to the light, in world space
    lit = (inv_r * (axes @ (pose.rotation.T @ light))).tolist()
    ir = inv_r.tolist()
    norm = np.sqrt((ir[0] * p[0]) ** 2 + (ir[1] * p[1]) ** 2 + (ir[2] * p[2]) ** 2)
    cosine = (lit[0] * p[0] + lit[1] * p[1] + lit[2] * p[2]) * facing / norm
    np.copyto(canvas.shade[rows, cols], cosine, where=update)


def head_points(
    canvas: Canvas, pose: Pose, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head coordinates of the visible surface points in a window (garbage where empty)."""
    inv_arr = pose.rotation.T / pose.scale
    inv, offset = inv_arr.tolist(), (inv_arr @ pose.shift).tolist()
    u, v, depth = canvas.u[cols], canvas.v[rows], canvas.depth[rows, cols]
    x, y, z = (
        np.add.outer(inv[i][1] * v, inv[i][0] * u - offset[i]) + inv[i][2] * depth for i in range(3)
    )
    return x, y, z
