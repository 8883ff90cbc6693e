from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_sums_close, shared_path, widest_sum

from atbsn import ATBSN, Student, init_from_teacher
from atbsn.checkpoint import load


@pytest.mark.parametrize(("kind", "params"), [("A", 128_385), ("B", 856_656), ("C", 1_003_011),
                                              ("C102", 1_021_107)])
def test_parameter_counts_match_the_paper(kind, params):
    assert sum(p.numel() for p in Student(kind).parameters()) == params


@pytest.mark.parametrize("kind", ["A", "B", "C", "C102"])
@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (3, 70), (64, 64)])
def test_any_size_in_same_size_out(kind, shape):
    net = Student(kind).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, *shape) * 255).shape == (2, 3, *shape)


def test_students_are_not_blind():
    x = (torch.rand(1, 3, 20, 20) * 255).requires_grad_(True)
    Student("C")(x)[0, :, 10, 10].sum().backward()
    assert x.grad[0, :, 10, 10].abs().sum() > 0


def test_unknown_student_is_refused():
    with pytest.raises(ValueError, match="choose A, B or C"):
        Student("D")


def test_student_c_initialised_from_teacher_shares_all_but_dec1():
    teacher, student = ATBSN(width=48), Student("C")
    init_from_teacher(student, teacher)
    t, s = teacher.unet.state_dict(), student.unet.state_dict()
    for key in s:
        if key.startswith("dec1."):  # freshly initialised (biases are zero in both, so compare weights)
            assert key.endswith("bias") or s[key].shape != t[key].shape or not torch.equal(s[key], t[key])
        else:
            assert torch.equal(s[key], t[key]), key
    with pytest.raises(ValueError):
        init_from_teacher(Student("A"), teacher)


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("atbsn_d_official_format.pth", "student_c"),
        ("student_a_official_format.pth", "student_a"),
        ("student_b_official_format.pth", "student_b"),
    ],
)
def test_reproduces_the_authors_student_outputs(file, name):
    d = shared_path("fixtures", "official")
    expected = torch.load(d / "expected_outputs.pt")
    net = load(d / file)
    with torch.no_grad():
        out = net(expected["input"])
    assert_sums_close(out, expected[name], widest_sum(net))  # the authors' code: the same sums in another order


@pytest.mark.parametrize("kind", ["A", "B", "C"])
def test_fast_path_equals_the_layer_by_layer_reference(kind):
    from atbsn.reference import student_reference

    torch.manual_seed(4)
    net = Student(kind).eval()
    x = torch.rand(2, 3, 64, 96) * 255
    with torch.no_grad():
        ref = student_reference(net, x)
        assert_sums_close(net(x), ref, widest_sum(net))
        cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert_sums_close(cl, ref, widest_sum(net))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_student_a_gradients_equal_the_reference(dtype):
    """Student A's last conv runs on the low-resolution map (phase kernels); distillation trains through it."""
    from atbsn.reference import student_reference

    torch.manual_seed(6)
    net = Student("A").to(dtype)
    x = (torch.rand(2, 3, 36, 52) * 255).to(dtype)
    student_reference(net, x).square().mean().backward()
    ref = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().mean().backward()
    for (name, p), g in zip(net.named_parameters(), ref):
        assert_sums_close(p.grad, g, 2 * 36 * 52, msg=name)  # a weight's gradient sums over the batch's pixels


# The 1.02M student that APR-RD and TM-BSN release, with the PSNR their own code reaches on sidd9, per image
C102_REFERENCE = {
    "tmbsn_nbsn102_sidd.pth": (38.16, [40.72, 38.68, 36.54, 42.39, 30.30, 37.97, 41.86, 43.33, 31.69]),
    "aprrd_student_c102_sidd_medium.pth": (38.08, [40.44, 38.77, 35.74, 42.39, 30.54, 37.77, 42.42, 43.19, 31.45]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(C102_REFERENCE))
def test_released_1_02m_students_score_their_authors_psnr_per_image(name):
    from atbsn.evaluate import evaluate

    model = load(shared_path("fixtures", "pretrained", name))
    assert model.config.arch == "C102" and model.config.value_range == 1.0
    assert sum(p.numel() for p in model.parameters()) == 1_021_107
    rows, summary = evaluate(model, shared_path("data", "real", "sidd9"))
    mean, per_image = C102_REFERENCE[name]
    assert abs(summary["psnr"] - mean) < 0.01
    assert [round(r["psnr"], 2) for r in rows] == pytest.approx(per_image, abs=0.011)


def test_released_1_02m_student_is_the_same_tiled_and_untiled():
    from atbsn.images import read_image
    from atbsn.inference import denoise

    model = load(shared_path("fixtures", "pretrained", "tmbsn_nbsn102_sidd.pth"))
    img = read_image(shared_path("data", "real", "sidd9", "noisy", "sidd_3.png"))[:300, :517]
    full, tiled = denoise(img, model, tile=1024), denoise(img, model, tile=128)
    assert np.abs(full.astype(int) - tiled.astype(int)).max() <= 1


def test_1_02m_student_cannot_start_from_a_teacher():
    from atbsn.errors import AtbsnError

    with pytest.raises(AtbsnError, match="C102"):
        init_from_teacher(Student("C102"), ATBSN(width=48))
