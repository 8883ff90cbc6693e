"""AP-BSN: the authors' checkpoint reproduced, PD exactly invertible, a one-pixel blind spot in the PD frame."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_sums_close, shared_path, widest_sum

from atbsn.checkpoint import load, save
from atbsn.config import ModelConfig
from atbsn.errors import AtbsnError
from atbsn.inference import denoise_tensor
from atbsn.methods.apbsn import APBSN, DBSNl, pd_down, pd_up


@pytest.fixture(scope="module")
def official():
    return load(shared_path("fixtures", "apbsn", "apbsn_official_format.pth"))


def test_the_authors_checkpoint_reproduces_their_outputs(official):
    expected = torch.load(shared_path("fixtures", "apbsn", "apbsn_expected_outputs.pt"), weights_only=True)
    x = expected["input"]
    assert official.config.arch == "apbsn" and official.config.width == 128
    assert (official.config.k_train, official.config.k_infer) == (5, 2)
    assert sum(p.numel() for p in official.parameters()) == 3_656_131
    with torch.no_grad():
        got = {"train_pd5": official(x, 5), "denoise_pd2_noR3": official(x),
               "denoise_pd5_noR3": denoise_tensor(x, official, k=5), "bsn_only": official.bsn(x)}
    for name, out in got.items():  # the authors' code on another machine: the same sums in another order
        assert_sums_close(out, expected[name], widest_sum(official), msg=name)


@pytest.mark.parametrize("stride,shape", [(2, (6, 10)), (5, (15, 10)), (3, (9, 9))])
def test_pd_puts_each_phase_in_its_own_padded_block_and_inverts_exactly(stride, shape):
    x = torch.rand(2, 3, *shape)
    mosaic = pd_down(x, stride, pad=2)
    hh, ww = shape[0] // stride + 4, shape[1] // stride + 4
    assert mosaic.shape == (2, 3, stride * hh, stride * ww)
    for i in range(stride):
        for j in range(stride):
            block = mosaic[..., i * hh:(i + 1) * hh, j * ww:(j + 1) * ww]
            assert torch.equal(block[..., 2:-2, 2:-2], x[..., i::stride, j::stride])
            assert block[..., :2, :].abs().sum() == 0 and block[..., :, -2:].abs().sum() == 0
    assert torch.equal(pd_up(mosaic, stride, pad=2), x)


def _grad(fn, shape, y, x, channels=3):
    torch.manual_seed(3)
    inp = (torch.rand(1, channels, *shape, dtype=torch.float64) * 255).requires_grad_(True)
    fn(inp)[0, :, y, x].sum().backward()
    return inp.grad[0].abs().sum(0)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = APBSN(ModelConfig("apbsn", width=8, k_train=5, k_infer=2)).double()
    with torch.no_grad():  # larger weights than the authors' init, so a tiny untrained net is not constant
        for p in net.parameters():
            p.normal_(0.0, 0.4)
    return net


@pytest.mark.parametrize("shape", [(13, 11), (20, 17)])
def test_dbsnl_never_sees_the_pixel_it_predicts_at_any_position(small, shape):
    h, w = shape
    for y, x in [(0, 0), (h - 1, w - 1), (h // 2, w // 2), (1, w - 2)]:
        g = _grad(small.bsn, shape, y, x)
        assert g[y, x] == 0
        near = [g[yy, xx] for yy, xx in [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)] if 0 <= yy < h and 0 <= xx < w]
        assert all(v > 0 for v in near)  # a one-pixel blind spot, no larger


@pytest.mark.parametrize("stride", [2, 5])
def test_in_the_image_frame_the_blind_spot_is_the_pixel_itself_and_same_phase_neighbours_count(small, stride):
    shape = (23, 19)  # not multiples of the stride: padded inside and cropped back
    for y, x in [(0, 0), (11, 9), (22, 18)]:
        g = _grad(lambda t, s=stride: small(t, s), shape, y, x)
        assert g[y, x] == 0
        assert g[min(y + stride, 22) if y + stride < 23 else y - stride, x] > 0  # the PD neighbour is seen


def test_r3_is_reproducible_and_changes_the_output(small):
    x = torch.rand(1, 3, 20, 24, dtype=torch.float64) * 255
    with torch.no_grad():
        a, b, plain = small(x, 2, r3=True), small(x, 2, r3=True), small(x, 2)
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_r3_and_strides_are_checked_and_saved_checkpoints_round_trip(tmp_path, small):
    from atbsn.inference import resolve_k
    from atbsn.students import Student

    with pytest.raises(AtbsnError, match="PD stride"):
        resolve_k(small, 0)
    with pytest.raises(AtbsnError, match="only to AP-BSN"):
        denoise_tensor(torch.zeros(1, 3, 8, 8), Student("A"), r3=True)
    back = load(save(small.float(), tmp_path / "ap.safetensors"))
    assert back.config.arch == "apbsn" and back.config.k_infer == 2
    x = torch.rand(1, 3, 30, 30) * 255
    torch.testing.assert_close(denoise_tensor(x, back, k=5, r3=True), denoise_tensor(x, small.float(), k=5, r3=True))


def test_dbsnl_needs_an_even_width():
    with pytest.raises(AtbsnError, match="even"):
        DBSNl(3, 7)


def test_stride_sweep_and_r3_evaluation_through_the_cli(tmp_path, small, capsys):
    import json

    import numpy as np

    from atbsn.cli import main
    from atbsn.images import write_image

    rng = np.random.default_rng(0)
    clean = np.linspace(40, 200, 40 * 36 * 3).reshape(40, 36, 3).astype(np.uint8)
    write_image(tmp_path / "pairs" / "clean" / "p.png", clean)
    write_image(tmp_path / "pairs" / "noisy" / "p.png", np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255)
                .astype(np.uint8))
    ckpt = str(save(small.float(), tmp_path / "ap.safetensors"))
    assert main(["sweep", str(tmp_path / "pairs"), "-m", ckpt, "-o", str(tmp_path / "sw")]) == 0
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["k_b"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["label"] == "stride_a = 5"
    assert main(["evaluate", str(tmp_path / "pairs"), "-m", ckpt, "--stride", "5", "--r3", "-q"]) == 0
    assert "PSNR" in capsys.readouterr().out
