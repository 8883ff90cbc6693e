from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED

from atbsn import ATBSN, Student
from atbsn.checkpoint import load, save
from atbsn.cli import main


@pytest.mark.parametrize("kind", ["student", "teacher", "C102"])
def test_onnx_matches_pytorch_at_any_size(tmp_path, kind):
    torch.manual_seed(0)
    real = SHARED / "fixtures" / "pretrained" / "aprrd_student_c_sidd_medium.pth"
    if kind == "teacher":
        model, k = ATBSN(width=8), ["--k", "3"]
    elif kind == "C102":
        model, k = Student("C102", width=8), []
    else:
        model, k = (load(real) if real.exists() else Student("A")), []
    ckpt = save(model, tmp_path / "m.safetensors")
    assert main(["export", "--model", str(ckpt), "-o", str(tmp_path / "m.onnx"), *k]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model = load(ckpt)
    for shape in [(45, 71), (96, 64)]:
        x = torch.rand(2, 3, *shape) * 255
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = (model(x, 3) if kind == "teacher" else model(x)).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max() / 255)
