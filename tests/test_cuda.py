"""Device code on the device the tests are given (``ATBSN_TEST_DEVICE``, CPU by default): training and
inference run there; on CUDA, outputs match the CPU's and the precisions and tile plan behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import needs_cuda, shared_path

from atbsn import APBSN, ATBSN, Student
from atbsn.checkpoint import load, save
from atbsn.cli import main
from atbsn.images import write_image
from atbsn.inference import denoise_tensor


def _photos(root):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(root / f"p{i}.png", rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return root


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_and_denoising_run_on_the_test_device(tmp_path, device, precision):
    photos = _photos(tmp_path / "photos")
    run = tmp_path / "run"
    assert main(["train", str(photos), "-o", str(run), "--steps", "3", "--width", "8", "--crop", "32", "--batch", "2",
                 "--device", str(device), "--precision", precision, "-q"]) == 0
    model = load(run / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = denoise_tensor(torch.rand(1, 3, 40, 36) * 255, model, device=str(device), precision=precision)
    assert out.shape == (1, 3, 40, 36) and torch.isfinite(out).all()


NETS = {"teacher": lambda: ATBSN(width=8), "A": lambda: Student("A"), "B": lambda: Student("B"),
        "C": lambda: Student("C", width=8), "apbsn": lambda: APBSN(None)}


@needs_cuda
@pytest.mark.parametrize("name", list(NETS))
def test_cuda_fp32_matches_the_cpu(name, device):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    x = torch.rand(1, 3, 70, 53) * 255
    with torch.no_grad():
        cpu = denoise_tensor(x, net, device="cpu")
        gpu = denoise_tensor(x.to(device), net, device=str(device)).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())
        if name == "teacher":
            ks = (0, 3, 9)
            ref = net.cpu().teachers(x, ks)
            got = [t.cpu() for t in net.to(device).teachers(x.to(device), ks)]
            for a, b in zip(ref, got):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@needs_cuda
@pytest.mark.parametrize("precision, tolerance_db", [("bf16", 0.3), ("fp16", 0.05)])
def test_reduced_precision_keeps_the_released_student_s_psnr(tmp_path, device, precision, tolerance_db):
    model = str(shared_path("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth"))
    data = str(shared_path("data", "real", "sidd9"))
    scores = {}
    for p in ("fp32", precision):
        assert main(["evaluate", data, "-m", model, "--device", str(device), "--precision", p, "-o",
                     str(tmp_path / p), "-q"]) == 0
        scores[p] = json.loads((tmp_path / p / "summary.json").read_text())["psnr"]
    assert abs(scores[precision] - scores["fp32"]) < tolerance_db


@needs_cuda
def test_fp16_training_uses_the_gradient_scaler(tmp_path, device):
    photos = _photos(tmp_path / "photos")
    run = tmp_path / "run"
    assert main(["train", str(photos), "-o", str(run), "--steps", "4", "--width", "8", "--crop", "32", "--batch", "2",
                 "--device", str(device), "--precision", "fp16", "-q"]) == 0
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler ran and its state resumes


@needs_cuda
def test_tiles_are_planned_from_the_gpu_s_free_memory(device, tmp_path):
    from atbsn.tiling import plan_tiles

    model = load(save(Student("C"), tmp_path / "c.safetensors"))
    free, _ = torch.cuda.mem_get_info(device)
    tile, margin = plan_tiles(model, device)
    small, _ = plan_tiles(model, device, budget=free // 64)
    assert tile >= small and tile % 32 == 0 and margin > 0
