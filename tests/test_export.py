from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED

from atbsn import ATBSN, AtbsnError, Student, denoise_tensor
from atbsn.checkpoint import load, save
from atbsn.cli import main


@pytest.mark.parametrize("kind", ["student", *(pytest.param(k, marks=pytest.mark.slow) for k in ("teacher", "C102"))])
def test_onnx_matches_pytorch_at_any_size(tmp_path, kind):
    torch.manual_seed(0)
    real = SHARED / "fixtures" / "pretrained" / "aprrd_student_c_sidd_medium.pth"
    if kind == "teacher":
        model, k = ATBSN(width=8), ["--k", "5"]
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
            ref = (model(x, 5) if kind == "teacher" else model(x)).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max() / 255)
    if kind == "teacher":  # the file is a model frozen at its blind spot: it runs there and refuses another
        net = load(tmp_path / "m.onnx")
        assert net.config.k_infer == 5
        x = torch.rand(1, 3, 40, 52) * 255
        assert torch.allclose(denoise_tensor(x, net), denoise_tensor(x, model, k=5, engine="torch"), atol=1e-3,
                              rtol=0)
        with pytest.raises(AtbsnError, match="frozen at k=5"):
            denoise_tensor(x, net, k=3)
