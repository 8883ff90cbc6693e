from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

from atbsn import ATBSN, Student
from atbsn.checkpoint import load
from atbsn.errors import AtbsnError
from atbsn.images import read_image
from atbsn.inference import denoise, denoise_255, denoise_tensor, plan_tiles, run_tiled


def _image(h=300, w=517, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_tiled_equals_untiled_when_the_margin_covers_the_receptive_field():
    torch.manual_seed(0)
    model = Student("A")
    img = _image()
    full = denoise(img, model, tile=1024)
    tiled = denoise(img, model, tile=128)
    assert np.abs(full.astype(int) - tiled.astype(int)).max() == 0


def test_tiled_and_untiled_agree_within_one_level_on_a_real_network():
    model = load(shared_path("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth"))
    img = read_image(shared_path("data", "real", "sidd9", "noisy", "sidd_3.png"))[:300, :517]
    full = denoise(img, model, tile=1024)
    tiled = denoise(img, model, tile=128)
    assert np.abs(full.astype(int) - tiled.astype(int)).max() <= 1


def test_every_pixel_comes_from_exactly_one_window():
    x = torch.rand(1, 3, 100, 70)
    calls = []
    out = run_tiled(lambda t: calls.append(t.shape) or t * 2, x, tile=32, margin=16)
    assert torch.equal(out, x * 2) and len(calls) == 4 * 3
    assert max(s[-2] for s in calls) <= 32 + 2 * 16


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_denoise_keeps_dtype_shape_and_alpha(dtype):
    model = Student("A")
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        img = rng.random((33, 21, 4), dtype=np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, size=(33, 21, 4), dtype=dtype)
    out = denoise(img, model)
    assert out.dtype == img.dtype and out.shape == img.shape
    assert np.array_equal(out[..., 3], img[..., 3])


def test_denoise_255_is_denoise_on_an_array_already_on_0_to_255_whatever_its_values():
    """No range read off the data: an array on 0..255 with values beyond it (a recorrupted photo) is denoised as it
    is, with the model's recorded safeguard and colour kept, as denoise does an 8-bit image of the same values."""
    torch.manual_seed(0)
    model = Student("C", width=8)
    model.config.training.update(safeguard=True, keep_colour=True)
    u = np.random.default_rng(0).integers(20, 236, (40, 48, 3)).astype(np.uint8)
    same = denoise_255(u.astype(np.float32), model)
    assert same.dtype == np.float32 and np.abs(np.clip(same, 0, 255) - denoise(u, model)).max() <= 0.5 + 1e-4
    beyond = u.astype(np.float32) * 1.2  # up to 283: denoise would read it as 16-bit samples
    assert beyond.max() > 255 and np.isfinite(denoise_255(beyond, model)).all()
    plain = denoise_255(u.astype(np.float32), model, safeguard=False, keep_colour=False)
    assert np.allclose(plain, denoise_tensor(torch.from_numpy(u.transpose(2, 0, 1).astype(np.float32))[None],
                                             model)[0].permute(1, 2, 0).numpy(), atol=1e-4)


def test_denoise_applies_the_colour_guard_the_model_records_and_the_option_wins():
    """A model that darkens everything by 6 of 255: as recorded ("darkening"), denoise keeps each channel's mean
    within the bound of the input's; --colour-guard off gives the network's output; "any" bounds both ways."""
    from atbsn.adapt import COLOUR_BOUND

    class Darker(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Student("A", width=8).config

        def forward(self, x):
            return x - 6.0

    model = Darker()
    u = np.random.default_rng(0).integers(40, 216, (24, 30, 3)).astype(np.float32)
    move = lambda y: (y - u).reshape(-1, 3).mean(0)  # noqa: E731
    assert np.allclose(move(denoise_255(u, model)), -6.0, atol=1e-3)  # nothing recorded: off
    model.config.training.update(colour_guard="darkening")
    assert np.allclose(move(denoise_255(u, model)), -COLOUR_BOUND, atol=1e-3)
    assert np.allclose(move(denoise_255(u, model, colour_guard="off")), -6.0, atol=1e-3)
    model.forward = lambda x: x + 6.0  # brighter: darkening leaves it, any bounds it
    assert np.allclose(move(denoise_255(u, model)), 6.0, atol=1e-3)
    assert np.allclose(move(denoise_255(u, model, colour_guard="any")), COLOUR_BOUND, atol=1e-3)


def test_gray_images_through_an_rgb_model_and_back():
    out = denoise(np.full((10, 12), 100, np.uint8), Student("A"))
    assert out.shape == (10, 12) and out.dtype == np.uint8


def test_k_is_for_teachers_only():
    with pytest.raises(AtbsnError, match="no blind spot"):
        denoise(np.zeros((8, 8, 3), np.uint8), Student("C"), k=3)
    with pytest.raises(ValueError, match="odd"):
        denoise(np.zeros((8, 8, 3), np.uint8), ATBSN(width=8), k=4)


def test_teacher_uses_its_inference_k_by_default():
    t = ATBSN(width=8)
    x = torch.rand(1, 3, 40, 40) * 255
    assert torch.allclose(denoise_tensor(x, t), denoise_tensor(x, t, k=3))


def test_models_trained_on_small_crops_run_on_windows_of_that_crop():
    s = Student("C")
    s.config.train_crop = 96
    tile, margin = plan_tiles(s, torch.device("cpu"))
    assert tile + 2 * margin == 96
    auto_tile, _ = plan_tiles(Student("C"), torch.device("cpu"), budget=1 << 30)
    assert auto_tile % 32 == 0 and auto_tile >= 128


def test_bf16_runs_on_cpu_close_to_fp32_and_fp16_needs_cuda():
    torch.manual_seed(0)
    model = Student("C")
    x = torch.rand(1, 3, 48, 40) * 255
    a = denoise_tensor(x, model)
    b = denoise_tensor(x, model, precision="bf16")
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.02 * a.abs().mean()
    if not torch.cuda.is_available():
        with pytest.raises(AtbsnError, match="CUDA"):
            denoise_tensor(x, model, precision="fp16")


def test_denoise_ks_equals_one_call_per_k_from_one_backbone_pass():
    from atbsn import ATBSN
    from atbsn.inference import denoise, denoise_ks

    torch.manual_seed(0)
    teacher = ATBSN(width=8)
    image = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)
    together = denoise_ks(image, teacher, [0, 3, 9], tile=32, margin=16)
    for k, out in together.items():
        alone = denoise(image, teacher, k=k, tile=32, margin=16)
        assert out.dtype == np.uint8 and np.abs(out.astype(int) - alone.astype(int)).max() <= 1  # rounding only
