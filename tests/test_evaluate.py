from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.io import savemat

from atbsn import ATBSN, Student
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.datasets import load_pairs
from atbsn.evaluate import evaluate
from atbsn.images import write_image


def _pairs_folder(root, n=2, size=(40, 50)):
    rng = np.random.default_rng(0)
    for i in range(n):
        clean = rng.integers(60, 200, size=(*size, 3)).astype(np.uint8)
        noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
        write_image(root / "noisy" / f"im{i}.png", noisy)
        write_image(root / "clean" / f"im{i}.png", clean)
    return root


def test_pairs_by_name_by_csv_and_sidd_mat(tmp_path):
    folder = _pairs_folder(tmp_path / "f")
    assert [p.name for p in load_pairs(folder)] == ["im0", "im1"]
    (folder / "pairs.csv").write_text("noisy,clean\nnoisy/im1.png,clean/im1.png\n")
    assert [p.name for p in load_pairs(folder)] == ["im1"]
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
    savemat(tmp_path / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": blocks})
    savemat(tmp_path / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": blocks[::-1]})
    pairs = load_pairs(tmp_path / "ValidationNoisyBlocksSrgb.mat")
    assert len(pairs) == 4 and np.array_equal(pairs[1].clean, blocks[1, 1])


def test_evaluate_reports_both_ssim_conventions_and_the_noisy_scores(tmp_path):
    folder = _pairs_folder(tmp_path)
    rows, summary = evaluate(Student("A"), folder)
    assert len(rows) == 2
    for key in ("psnr", "ssim_rgb", "ssim_y", "noisy_psnr", "noisy_ssim_rgb", "noisy_ssim_y"):
        assert np.isfinite(summary[key])
    assert 18 < summary["noisy_psnr"] < 25  # sigma 20 noise


def test_sweep_table_plot_heatmap_and_crops(tmp_path, capsys):
    folder = _pairs_folder(tmp_path / "d", n=1)
    paths = []
    for k_a in (1, 9):
        torch.manual_seed(k_a)
        t = ATBSN(width=8)
        t.config.k_train = k_a
        paths.append(str(save(t, tmp_path / f"t{k_a}.safetensors")))
    out = tmp_path / "sweep"
    assert main(["sweep", str(folder), "--model", *paths, "--k", "0", "3", "9", "-o", str(out), "--crops"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["k_a"], r["k_b"]) for r in rows] == [(1, 0), (1, 3), (1, 9), (9, 0), (9, 3), (9, 9)]
    for name in ("sweep.png", "heatmap.png", "crops.png"):
        assert (out / name).stat().st_size > 1000
    assert "k_b" in capsys.readouterr().out


def test_bad_pairs_folder_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    model = str(save(Student("A"), tmp_path / "a.safetensors"))
    assert main(["evaluate", str(tmp_path / "empty"), "--model", model]) == 2


@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 16)])
def test_metrics_known_values(shape):
    from atbsn.metrics import psnr, ssim_rgb, ssim_y

    a = np.full(shape, 100, np.uint8)
    b = a.copy()
    b[0, 0] = 110
    mse = 100 / a.size * (3 if len(shape) == 3 else 1)
    assert psnr(b, a) == pytest.approx(10 * np.log10(255**2 / mse))
    assert ssim_rgb(a, a) == pytest.approx(1.0) and ssim_y(a, a) == pytest.approx(1.0)
    assert psnr(a.astype(np.float32) + 0.4, a) == float("inf")  # rounded to uint8 first


def test_texture_split_groups_flat_and_textured_regions_and_scores_each():
    from atbsn.datasets import Pair
    from atbsn.evaluate import TextureSplit, evaluate
    from atbsn.students import Student

    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    textured = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    both = np.concatenate([flat, textured], axis=1)  # left half flat, right half texture
    pairs = [Pair("flat", flat, flat), Pair("tex", textured, textured), Pair("both", both, both)]
    whole = TextureSplit.of(pairs)
    assert [pairs[r[0]].name for r in whole.groups["flat"]] == ["flat", "both"]
    assert [pairs[r[0]].name for r in whole.groups["textured"]] == ["tex"]
    crops = TextureSplit.of(pairs, crop=32, threshold=10.0)
    assert len(crops.groups["flat"]) == 4 + 4 and len(crops.groups["textured"]) == 4 + 4  # per 32 x 32 crop
    assert all(x < 64 for i, _, x, _, _ in crops.groups["flat"] if pairs[i].name == "both")
    _, summary = evaluate(Student("A"), pairs, split=crops)
    assert summary["groups"]["flat"]["regions"] == 8 and "psnr" in summary["groups"]["textured"]


def test_sweep_by_texture_group_draws_a_heatmap_and_crops_per_group(tmp_path):
    from atbsn import ATBSN
    from atbsn.checkpoint import save
    from atbsn.cli import main
    from atbsn.images import write_image

    rng = np.random.default_rng(1)
    clean = np.concatenate([np.full((64, 64, 3), 100, np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)], 1)
    write_image(tmp_path / "pairs" / "clean" / "a.png", clean)
    write_image(tmp_path / "pairs" / "noisy" / "a.png", np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255)
                .astype(np.uint8))
    models = []
    for ka in (1, 9):
        t = ATBSN(width=8)
        t.config.k_train = ka
        models.append(str(save(t, tmp_path / f"t{ka}.safetensors")))
    out = tmp_path / "sweep"
    assert main(["sweep", str(tmp_path / "pairs"), "-m", *models, "--k", "0", "3", "-o", str(out), "--texture-groups",
                 "--group-crop", "32", "--crops", "--crop-size", "24"]) == 0
    for name in ("heatmap_flat", "heatmap_textured", "sweep_flat", "crops_flat", "crops_textured", "heatmap"):
        assert (out / f"{name}.png").exists(), name


def test_crops_by_k_are_the_crops_of_one_denoise_per_k():
    from atbsn.evaluate import crops_by_k
    from atbsn.inference import denoise

    torch.manual_seed(0)
    teacher = ATBSN(width=8)
    image = np.random.default_rng(2).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    box = (5, 17, 20, 30)
    crops = crops_by_k(teacher, image, box, [0, 3, 9])
    for k, crop in zip([0, 3, 9], crops):
        whole = denoise(image, teacher, k=k)[5:25, 17:47]
        assert crop.shape == whole.shape and crop.dtype == whole.dtype
        assert np.abs(crop.astype(int) - whole.astype(int)).max() <= 1  # one backbone pass: float round-off only


def test_the_colour_shift_says_how_far_an_output_moves_the_mean_colour():
    """Noise has zero mean: a denoiser that tints its output is caught by how much further its mean colour sits from
    the reference's than the input's did (``colour_moved``, on 0..255)."""
    from atbsn.datasets import Pair
    from atbsn.evaluate import score_outputs
    from atbsn.metrics import colour_excess, colour_shift

    rng = np.random.default_rng(0)
    clean = np.full((16, 16, 3), 100, np.uint8)
    noisy = np.clip(clean + rng.normal(0, 5, clean.shape), 0, 255).astype(np.uint8)
    assert colour_shift(clean, clean) == 0.0
    tinted = clean.copy()
    tinted[..., 2] += 3  # 3 of 255 bluer
    assert colour_shift(tinted, clean) == pytest.approx(3.0)
    _, good = score_outputs([clean], [Pair("a", noisy, clean)])
    _, bad = score_outputs([tinted], [Pair("a", noisy, clean)])
    assert good["colour_moved"] <= 0 < bad["colour_moved"] and bad["colour_moved"] == pytest.approx(
        3.0 - colour_shift(noisy, clean))
    assert colour_excess(tinted, noisy, clean) == pytest.approx(bad["colour_moved"])  # the benchmarks' measure
