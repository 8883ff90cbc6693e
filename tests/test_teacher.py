from __future__ import annotations

import pytest
import torch
from conftest import assert_sums_close, shared_path, widest_sum

from atbsn import ATBSN
from atbsn.checkpoint import load

KS = (0, 1, 3, 5, 7, 9, 11)


def test_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in ATBSN().parameters()) == 1_268_547


def test_teachers_equal_one_call_per_k_from_one_backbone_pass(monkeypatch):
    net = ATBSN(width=8).eval()
    x = torch.rand(2, 3, 40, 29) * 255
    calls = []
    original = net.unet.forward
    monkeypatch.setattr(net.unet, "forward", lambda t: calls.append(t.shape) or original(t))
    with torch.no_grad():
        outs = net.teachers(x, KS)
        n_backbone = len(calls)
        for k, out in zip(KS, outs):  # nin_A projected once, then shifted per k: the same up to round-off
            assert_sums_close(out, net(x, k), widest_sum(net))
    assert n_backbone == 4  # one per rotation, not one per k


def test_teachers_for_large_inputs_take_the_banded_head_per_k(monkeypatch):
    import atbsn.teacher as teacher

    torch.manual_seed(1)
    net = ATBSN(width=8).eval()
    x = torch.rand(1, 3, 33, 40) * 255
    sums = []
    original = teacher._shifted_sum
    monkeypatch.setattr(teacher, "_shifted_sum", lambda *a: sums.append(a[1]) or original(*a))
    with torch.no_grad():
        projected = net.teachers(x, KS)
        assert len(sums) == len(KS)  # small input: nin_A projected once, shifted per k
        monkeypatch.setattr(teacher, "_PROJECTED_HEAD_BYTES", 0)
        banded = net.teachers(x, KS)
        assert len(sums) == len(KS)  # over the memory bound: the banded head, not the projections
        for k, a, b in zip(KS, projected, banded):
            assert torch.equal(b, net(x, k))  # the same code path as one forward: bit for bit
            assert_sums_close(a, b, widest_sum(net))


def test_teachers_under_bf16_autocast_stay_close_to_fp32():
    from atbsn.inference import autocast

    torch.manual_seed(2)
    net = ATBSN(width=8).eval()
    x = torch.rand(2, 3, 32, 45) * 255
    with torch.no_grad():
        full = net.teachers(x, KS)
        with autocast(torch.device("cpu"), "bf16"):
            half = net.teachers(x, KS)
    for a, b in zip(full, half):
        assert b.dtype == torch.bfloat16 and b.shape == a.shape
        assert (b.float() - a).abs().mean() < 0.01 * a.abs().mean()  # bf16 keeps ~3 significant digits


def test_features_and_head_compose_to_forward():
    net = ATBSN(width=8).eval()
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        feats = net.features(x)
        assert len(feats) == 4 and all(f.shape == (1, 16, 32, 32) for f in feats)
        assert torch.equal(net.head(feats, 5), net(x, 5))


def test_default_k_is_the_configured_inference_size():
    net = ATBSN(width=8).eval()
    net.config.k_infer = 5
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(net(x), net(x, 5))


def test_grayscale_teacher():
    net = ATBSN(width=8, in_channels=1).eval()
    assert net(torch.rand(1, 1, 20, 30) * 255, 3).shape == (1, 1, 20, 30)


def test_reproduces_the_authors_outputs_at_every_k():
    d = shared_path("fixtures", "official")
    expected = torch.load(d / "expected_outputs.pt")
    net = load(d / "atbsn_official_format.pth")
    assert isinstance(net, ATBSN)
    with torch.no_grad():
        outs = net.teachers(expected["input"], KS)
    for k, out in zip(KS, outs):  # the authors' code on another machine: the same sums in another order
        assert_sums_close(out, expected[f"atbsn_k{k}"], widest_sum(net))


def test_fast_path_equals_the_layer_by_layer_reference():
    from atbsn.reference import teacher_reference

    torch.manual_seed(3)
    net = ATBSN(width=16).eval()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        for k in (0, 1, 3, 9):
            ref = teacher_reference(net, x, k)
            assert_sums_close(net(x, k), ref, widest_sum(net))
            cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), k)
            assert_sums_close(cl, ref, widest_sum(net))
            net.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_path_matches_the_reference_in_outputs_and_gradients(dtype):
    """With gradients on, the teacher takes its training path (padded convolutions, concatenated shifts).

    In float64 the two paths agree to ~1e-14 of the gradients' scale, so any difference in what is computed
    shows; in float32 (the kernels users run) the tolerance follows from the sums involved: a weight's gradient
    sums over every pixel of the batch and its four rotations."""
    from atbsn.reference import teacher_reference

    torch.manual_seed(4)
    x = (torch.rand(2, 3, 64, 64) * 255).to(dtype)
    grad_terms = 2 * 4 * 64 * 64  # batch x rotations x pixels
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(4)
        net = ATBSN(width=16).to(dtype=dtype, memory_format=fmt)
        ref = teacher_reference(net, x, 9)
        ref.abs().mean().backward()
        ref_grads = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        out = net(x.contiguous(memory_format=fmt), 9)
        out.abs().mean().backward()
        assert_sums_close(out, ref, widest_sum(net))
        for (name, p), g in zip(net.named_parameters(), ref_grads):
            assert_sums_close(p.grad, g, grad_terms, msg=name)


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (5, 70)])
def test_banded_inference_head_equals_the_whole_image_head(monkeypatch, shape):
    """Without gradients the head runs band by band; bands of a few rows must not change a pixel."""
    import atbsn.teacher as teacher

    torch.manual_seed(5)
    net = ATBSN(width=8)
    x = torch.rand(2, 3, *shape) * 255
    whole = {k: net(x, k).detach() for k in (0, 1, 3, 9, 11)}  # gradients on: one stack for the image
    monkeypatch.setattr(teacher, "_HEAD_BAND_PIXELS", 3 * shape[1])  # bands of 3 rows
    with torch.no_grad():
        for k, ref in whole.items():
            assert_sums_close(net(x, k), ref, widest_sum(net))
        outs = net.teachers(x, list(whole))
        feats = net.features(x)
        for k, out in zip(whole, outs):
            assert_sums_close(out, whole[k], widest_sum(net))
            assert_sums_close(net.head(feats, k), whole[k], widest_sum(net))
