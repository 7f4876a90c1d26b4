"""Seeded synthetic volumes: noisy spheres with integer labels, standing in for scans.

NumPy only, so that the synthesize stage starts without torch or MONAI. The random draws are
those of MONAI's ``create_test_image_3d``, in its order, so a seed gives the volumes MONAI
would give, bit for bit (tests/test_synthetic.py checks it).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def spheres(
    size: int,
    num_objects: int,
    radius: tuple[int, int],
    noise: float,
    num_classes: int,
    random_state: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray]:
    """One cubic volume of ``size`` voxels and its labels (0 background, 1..num_classes).

    Each sphere has a radius drawn from ``[radius[0], radius[1])`` and a centre at least
    ``radius[1]`` from the border; intensities get uniform noise up to ``noise`` per class,
    and are then rescaled to [0, 1].
    """
    low, high = radius
    if not 1 <= low < high:
        raise UserError(f"`synthetic.radius` must be [min, max] with 1 <= min < max, got {list(radius)}.")
    if size <= 2 * high:
        raise UserError(
            f"`synthetic.size` ({size}) must exceed twice the largest radius ({high}); "
            f"e.g. -S synthetic.size={2 * high + 1}."
        )
    intensity = np.zeros((size, size, size))
    for _ in range(num_objects):
        centre = [random_state.randint(high, size - high) for _axis in range(3)]
        sphere_radius = random_state.randint(low, high)
        x, y, z = np.ogrid[
            -centre[0] : size - centre[0], -centre[1] : size - centre[1], -centre[2] : size - centre[2]
        ]
        inside = x * x + y * y + z * z <= sphere_radius * sphere_radius
        if num_classes > 1:
            intensity[inside] = np.ceil(random_state.random() * num_classes)
        else:
            intensity[inside] = random_state.random() * 0.5 + 0.5
    labels = np.ceil(intensity).astype(np.int32)
    noisy = np.maximum(intensity, random_state.uniform(0, num_classes * noise, size=intensity.shape))
    return _unit_range(noisy.astype(np.float32)), labels


def _unit_range(volume: np.ndarray) -> np.ndarray:
    """Linearly map ``volume`` onto [0, 1]; a constant volume becomes zeros."""
    low, high = volume.min(), volume.max()
    if low == high:
        return volume * 0.0
    return (volume - low) / (high - low)
