"""The synthetic generator: MONAI's volumes without importing MONAI, so synthesize starts fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from monai.data.synthetic import create_test_image_3d


@pytest.mark.parametrize(
    ("seed", "size", "num_objects", "radius", "noise", "num_classes"),
    [(0, 32, 6, (4, 10), 0.3, 1), (7, 40, 9, (3, 8), 0.5, 3), (1, 24, 0, (2, 5), 0.0, 2)],
)
def test_a_seed_gives_monais_volumes_bit_for_bit(
    package_module, seed: int, size: int, num_objects: int, radius: tuple, noise: float, num_classes: int
) -> None:
    ours = package_module("data.synthetic").spheres(
        size, num_objects, radius, noise, num_classes, np.random.RandomState(seed)
    )
    monais = create_test_image_3d(
        size,
        size,
        size,
        num_objs=num_objects,
        rad_min=radius[0],
        rad_max=radius[1],
        noise_max=noise,
        num_seg_classes=num_classes,
        random_state=np.random.RandomState(seed),
    )
    for mine, theirs in zip(ours, monais, strict=True):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


def test_sizes_that_cannot_hold_a_sphere_name_the_key(package_module, user_error) -> None:
    spheres = package_module("data.synthetic").spheres
    with pytest.raises(user_error, match=r"`synthetic.size` \(16\) must exceed twice the largest radius"):
        spheres(16, 1, (4, 10), 0.3, 1, np.random.RandomState(0))
    with pytest.raises(user_error, match=r"`synthetic.radius` must be \[min, max\]"):
        spheres(32, 1, (10, 4), 0.3, 1, np.random.RandomState(0))


def test_the_light_stages_and_the_params_check_import_neither_torch_nor_monai(pkg) -> None:
    modules = ("cli", "config.params", "stages.synthesize", "stages.fingerprint")
    probe = "import importlib, sys\n" + "".join(
        f"importlib.import_module('{pkg.__name__}.{module}')\n" for module in modules
    )
    probe += "print(sorted(name for name in ('torch', 'monai') if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
