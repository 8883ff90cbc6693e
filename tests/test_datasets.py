from __future__ import annotations

import h5py
import numpy as np
import pytest

from atbsn.datasets import PatchSampler, collect_sources, expand_inputs
from atbsn.errors import AtbsnError
from atbsn.images import write_image


def test_sidd_medium_layout_gives_the_noisy_images_only(tmp_path):
    rng = np.random.default_rng(0)
    for scene in ("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N"):
        for kind in ("NOISY", "GT"):
            for n in ("010", "011"):
                write_image(tmp_path / scene / f"0001_{kind}_SRGB_{n}.PNG", rng.integers(0, 255, (40, 40, 3),
                                                                                          dtype=np.uint8))
    sources = collect_sources([tmp_path])
    assert len(sources) == 4 and all("_NOISY_" in s.path.name for s in sources)


def test_dnd_images_srgb_are_training_sources(tmp_path):
    (tmp_path / "images_srgb").mkdir()
    img = np.random.default_rng(0).random((50, 60, 3))
    with h5py.File(tmp_path / "images_srgb" / "0001.mat", "w") as f:
        f["InoisySRGB"] = img.T
    sources = collect_sources([tmp_path])
    assert [s.kind for s in sources] == ["dnd"]
    x, m = PatchSampler(sources, 32).batch(0, 2)
    assert x.shape == (2, 3, 32, 32) and m.all() and 0 <= x.min() and x.max() <= 255


def test_inputs_expand_folders_recursively_and_globs(tmp_path):
    write_image(tmp_path / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "a" / "b" / "y.jpg", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    found = expand_inputs([tmp_path / "a"])
    assert [str(r) for _, r in found] == ["b/y.jpg", "x.png"]
    assert len(expand_inputs([str(tmp_path / "a" / "*.png")])) == 1
    with pytest.raises(AtbsnError, match="no such file"):
        expand_inputs([tmp_path / "missing*.png"])
