"""Class ids, names and palette of the masks, plus the surface materials that map onto them.

Class names and colours follow the 14-class Mut1ny head-segmentation edition (design.md s. 2).
"Left" and "right" are as seen in the image of a frontal face: ``left_eye`` is the eye on the
image's left, i.e. the person's own right eye. The label stays attached to that anatomical part
when the head turns, so at yaw +90 (face turned towards the image's right) the visible eye and
ear are ``left_eye`` and ``left_ear``; at yaw -90 they are ``right_eye`` and ``right_ear``.

Materials are finer than classes (an iris is drawn in another colour than the white of the eye
but is labelled as the eye); the renderer paints materials and maps them to classes at the end.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "lips",
    "left_eye",
    "right_eye",
    "nose",
    "skin",
    "hair",
    "left_eyebrow",
    "right_eyebrow",
    "left_ear",
    "right_ear",
    "teeth",
    "facial_hair",
    "spectacles",
)

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # background
    (255, 0, 0),  # lips
    (0, 255, 0),  # left eye
    (0, 128, 0),  # right eye
    (0, 0, 255),  # nose
    (128, 128, 128),  # skin
    (255, 255, 0),  # hair
    (255, 0, 255),  # left eyebrow
    (128, 0, 128),  # right eyebrow
    (0, 255, 255),  # left ear
    (0, 64, 64),  # right ear
    (255, 255, 255),  # teeth
    (255, 192, 192),  # facial hair
    (0, 128, 128),  # spectacles
)

# Materials 0..13 are the classes themselves; the extra ones below are labelled as a class.
BACKGROUND, LIPS, LEFT_EYE, RIGHT_EYE, NOSE, SKIN, HAIR = range(7)
LEFT_BROW, RIGHT_BROW, LEFT_EAR, RIGHT_EAR, TEETH, FACIAL_HAIR, SPECTACLES = range(7, 14)
LEFT_IRIS, RIGHT_IRIS, MOUTH_INSIDE, NECK = range(14, 18)
N_MATERIALS = 18

CLASS_OF_MATERIAL: np.ndarray = np.array(
    [*range(14), LEFT_EYE, RIGHT_EYE, TEETH, SKIN], dtype=np.uint8
)

_PALETTE_ARRAY = np.array(PALETTE, dtype=np.uint8)


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Colour a class-id mask with the palette, to look at it or to save it Mut1ny-style."""
    return _PALETTE_ARRAY[mask]
