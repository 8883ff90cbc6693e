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


@pytest.fixture
def mixed(tmp_path):
    """Photos of every kind the sampler takes: RGB, 16-bit, gray, RGBA, one smaller than the crop."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    write_image(root / "a.png", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
    write_image(root / "deep.tif", rng.integers(0, 65535, (36, 30, 3), dtype=np.uint16))
    write_image(root / "gray.png", rng.integers(0, 255, (33, 41), dtype=np.uint8))
    write_image(root / "alpha.png", rng.integers(0, 255, (30, 30, 4), dtype=np.uint8))
    write_image(root / "tiny.png", rng.integers(0, 255, (10, 14, 3), dtype=np.uint8))
    return root


def test_a_prepared_store_gives_exactly_the_batches_of_the_photos(mixed, tmp_path):
    from atbsn.datasets import prepare

    store = prepare([mixed], tmp_path / "store", progress=False)
    photos = PatchSampler(collect_sources([mixed]), 16, seed=3, rank=1)
    mapped = PatchSampler(collect_sources([store]), 16, seed=3, rank=1)
    assert all(s.kind == "store" for s in mapped.sources)
    for step in (0, 1, 7):
        a, b = photos.batch(step, 6), mapped.batch(step, 6)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert mapped._cached == 0  # memory-mapped arrays cost the cache nothing


def test_prepare_resumes_and_a_damaged_store_is_one_line(mixed, tmp_path):
    from atbsn.datasets import STORE_INDEX, prepare

    store = prepare([mixed], tmp_path / "store", progress=False)
    first = sorted(store.glob("*.npy"))[0]
    stamp = first.stat().st_mtime_ns
    (store / "000001.npy").unlink()
    prepare([mixed], store, progress=False)
    assert first.stat().st_mtime_ns == stamp and (store / "000001.npy").exists()  # only the missing one redone
    (store / "000002.npy").unlink()
    with pytest.raises(AtbsnError, match="000002.npy: missing from the prepared store"):
        collect_sources([store])
    (store / STORE_INDEX).write_text("{not json")
    with pytest.raises(AtbsnError, match="broken store index"):
        collect_sources([store])


def test_training_on_a_store_with_worker_processes_ends_with_the_weights_of_the_photo_path(mixed, tmp_path):
    import torch

    from atbsn.checkpoint import load
    from atbsn.cli import main

    flags = ["--steps", "3", "--width", "8", "--crop", "16", "--batch", "2", "-q", "--val-every", "100"]
    assert main(["prepare", str(mixed), "-o", str(tmp_path / "store"), "-q"]) == 0
    assert main(["train", str(mixed), "-o", str(tmp_path / "a"), *flags]) == 0
    assert main(["train", str(tmp_path / "store"), "-o", str(tmp_path / "b"), *flags, "--workers", "2",
                 "--stop-after", "2"]) == 0
    assert main(["train", str(tmp_path / "store"), "-o", str(tmp_path / "b"), "--resume", "--workers", "1", "-q"]) == 0
    a, b = (load(tmp_path / run / "last.safetensors").state_dict() for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extra_channels_are_cut_rotated_and_flipped_with_their_patches(mixed):
    """What the sampler appends (distillation's cached targets) lines up with each patch, pixel for pixel, through
    crops, flips, rotations, zero padding and gray photos; the draws are those of a sampler without it."""
    from atbsn.datasets import PatchSampler

    plain = PatchSampler(collect_sources([mixed]), 32, 3, seed=4)
    sampler = PatchSampler(collect_sources([mixed]), 32, 3, seed=4)
    for i in range(len(sampler.sources)):
        photo = sampler.photo(i)
        sampler.extra[i] = np.concatenate([2 * photo, photo + 1], 2)
    for step in range(6):
        xb, mb = sampler.batch(step, 4)
        pb, pm = plain.batch(step, 4)
        assert xb.shape == (4, 9, 32, 32) and np.array_equal(xb[:, :3], pb) and np.array_equal(mb, pm)
        assert np.array_equal(xb[:, 3:6], 2 * xb[:, :3]) and np.array_equal(xb[:, 6:], (xb[:, :3] + 1) * mb)
