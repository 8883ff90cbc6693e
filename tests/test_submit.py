"""Submissions read back into exactly the blocks that were denoised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fake_dnd
from scipy.io import loadmat, savemat

from atbsn import Student
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.inference import denoise
from atbsn.submit import read_dnd_boxes, read_sidd_csv


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = Student("A")
    return model, str(save(model, tmp_path / "a.safetensors"))


def test_sidd_csv_and_legacy_mat(tmp_path, model_file, capsys):
    model, path = model_file
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(2, 3, 256, 256, 3), dtype=np.uint8)
    savemat(tmp_path / "BenchmarkNoisyBlocksSrgb.mat", {"BenchmarkNoisyBlocksSrgb": blocks})
    csv_path = tmp_path / "SubmitSrgb.csv"
    assert main(["submit", "sidd", str(tmp_path / "BenchmarkNoisyBlocksSrgb.mat"), "-o", str(csv_path),
                 "--model", path, "-q"]) == 0
    assert "for the Kaggle re-host of the SIDD benchmark" in capsys.readouterr().out  # which protocol it is for
    back = read_sidd_csv(csv_path)
    assert sorted(back) == list(range(6))
    for i in range(2):
        for j in range(3):
            assert np.array_equal(back[i * 3 + j], denoise(blocks[i, j], model))
    mat_path = tmp_path / "SubmitSrgb.mat"
    assert main(["submit", "sidd", str(tmp_path / "BenchmarkNoisyBlocksSrgb.mat"), "-o", str(mat_path),
                 "--model", path, "-q"]) == 0
    assert "the original SIDD server's format" in capsys.readouterr().out
    cells = loadmat(mat_path)["DenoisedBlocksSrgb"]
    assert cells.shape == (2, 3) and np.array_equal(cells[1, 2], back[5])


def test_dnd_bundle(tmp_path, model_file):
    model, path = model_file
    rng = np.random.default_rng(1)
    images = [rng.random((100, 120, 3), dtype=np.float32) for _ in range(2)]
    # 1-based inclusive (row0, col0, row1, col1), as DND's info.mat stores them
    boxes = [[[1, 1, 40, 50], [11, 21, 74, 84]], [[30, 40, 93, 103], [61, 1, 100, 32]]]
    fake_dnd(tmp_path / "dnd", images, boxes)
    assert read_dnd_boxes(tmp_path / "dnd" / "info.mat")[0][1].tolist() == [10, 74, 20, 84]
    assert main(["submit", "dnd", str(tmp_path / "dnd"), "-o", str(tmp_path / "out"), "--model", path, "-q"]) == 0
    for i, (img, bb) in enumerate(zip(images, boxes)):
        m = loadmat(tmp_path / "out" / f"{i + 1:04d}.mat")
        assert m["israw"].item() == 0 and m["eval_version"].item() == "1.0"
        crops = m["Idenoised"].ravel()
        assert len(crops) == len(bb)
        for crop, (r0, c0, r1, c1) in zip(crops, bb):
            expected = denoise(np.ascontiguousarray(img[r0 - 1 : r1, c0 - 1 : c1]), model)
            assert crop.shape == expected.shape and np.allclose(crop, expected, atol=1e-6)
