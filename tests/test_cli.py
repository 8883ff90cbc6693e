"""The command line, end to end, on generated files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from atbsn import ATBSN, Student
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.images import read_image, write_image
from atbsn.metrics import psnr


@pytest.fixture
def student(tmp_path):
    torch.manual_seed(0)
    return str(save(Student("A"), tmp_path / "student.safetensors"))


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    return str(save(ATBSN(width=8), tmp_path / "teacher.safetensors"))


def test_denoise_keeps_size_mode_and_bit_depth(tmp_path, student):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    write_image(src / "odd16.tif", rng.integers(0, 65535, (37, 53, 3), dtype=np.uint16))
    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    write_image(src / "sub" / "rgba.png", rgba)
    im = Image.fromarray(rng.integers(0, 255, (24, 40), dtype=np.uint8))
    exif = im.getexif()
    exif[274] = 8
    im.save(src / "gray.jpg", exif=exif)
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", student, "-q"]) == 0
    out16 = read_image(tmp_path / "out" / "odd16.tif")
    assert out16.dtype == np.uint16 and out16.shape == (37, 53, 3)
    out_rgba = read_image(tmp_path / "out" / "sub" / "rgba.png")
    assert out_rgba.shape == (20, 30, 4) and np.array_equal(out_rgba[..., 3], rgba[..., 3])
    gray = Image.open(tmp_path / "out" / "gray.jpg")
    assert gray.mode == "L" and gray.size == (24, 40)  # EXIF rotation applied: 40 x 24 became 24 x 40


def test_bad_inputs_are_reported_and_good_files_still_denoised(tmp_path, student, teacher, capsys):
    src = tmp_path / "in"
    write_image(src / "good.png", np.full((16, 16, 3), 128, np.uint8))
    data = (src / "good.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "text.jpg").write_text("hello")
    out = tmp_path / "out"
    assert main(["denoise", str(src), "-o", str(out), "--model", student, "-q"]) == 1
    err = capsys.readouterr().err
    assert str(src / "truncated.png") in err and str(src / "text.jpg") in err
    assert (out / "good.png").exists() and not (out / "truncated.png").exists()

    assert main(["denoise", str(src / "good.png"), "-o", str(out), "--model", teacher, "--k", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and teacher in err[0] and "k=4" in err[0]

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["denoise", str(src / "good.png"), "-o", str(blocker / "sub"), "--model", student]) == 2
    assert str(blocker / "sub") in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["denoise", str(src / "good.png"), "-o", str(locked), "--model", student]) == 2
        assert "not writable" in capsys.readouterr().err


def test_outputs_are_skipped_unless_overwrite_and_inputs_never_replaced(tmp_path, student, capsys):
    src = tmp_path / "in"
    write_image(src / "a.png", np.full((16, 16, 3), 128, np.uint8))
    before = (src / "a.png").read_bytes()
    assert main(["denoise", str(src), "-o", str(src), "--model", student, "-q"]) == 2  # refused before any work
    assert "is also an input of this command" in capsys.readouterr().err
    assert (src / "a.png").read_bytes() == before
    out = tmp_path / "out"
    write_image(out / "a.png", np.zeros((16, 16, 3), np.uint8))
    main(["denoise", str(src), "-o", str(out), "--model", student, "-q"])
    assert read_image(out / "a.png").max() == 0
    main(["denoise", str(src), "-o", str(out), "--model", student, "-q", "--overwrite"])
    assert read_image(out / "a.png").max() > 0


def test_student_refuses_k(tmp_path, student, capsys):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", student, "--k", "3"]) == 2
    assert "no blind spot" in capsys.readouterr().err


@pytest.mark.slow
def test_real_sidd_student_scores_the_published_psnr(tmp_path, capsys):
    model = str(shared_path("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth"))
    data = shared_path("data", "real", "sidd9")
    assert main(["evaluate", str(data), "--model", model, "-o", str(tmp_path / "ev"), "-q"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert abs(summary["psnr"] - 38.13) < 0.1 and abs(summary["noisy_psnr"] - 24.34) < 0.1
    assert (tmp_path / "ev" / "per_image.csv").read_text().count("\n") == 10
    assert main(["denoise", str(data / "noisy"), "-o", str(tmp_path / "den"), "--model", model, "-q"]) == 0
    scores = [psnr(read_image(tmp_path / "den" / p.name), read_image(data / "clean" / p.name))
              for p in sorted((data / "noisy").iterdir())]
    assert abs(np.mean(scores) - 38.13) < 0.1


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--tile", "0"], "--tile must be at least 32"),
    (["--margin", "-1"], "--margin must be at least 0"),
])
def test_bad_inference_options_fail_once_before_any_work(tmp_path, student, capsys, flags, message):
    write_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "in" / "b.png", np.zeros((8, 8, 3), np.uint8))
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", student, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not any((tmp_path / "out").rglob("*.png"))


def test_the_command_shows_the_library_info_lines_even_after_a_disabled_info_call(tmp_path, capsys):
    """A library call that logged at INFO before (level not yet raised) must not hide the command's lines:
    the logger caches level checks, and only setLevel clears that cache."""
    import logging

    logging.getLogger("atbsn").info("before any command")
    write_image(tmp_path / "in" / "a.png", np.full((40, 48, 3), 128, np.uint8))
    assert main(["train", str(tmp_path / "in"), "-o", str(tmp_path / "run"), "--method", "n2n", "--preset", "dnd",
                 "--steps", "1", "--batch", "1", "--crop", "20", "--width", "4", "-q"]) == 0
    assert "using its authors' SIDD recipe" in capsys.readouterr().out


def test_every_command_is_registered_with_its_arguments_help_and_one_quiet_flag():
    """Each sub-command is a handler registered beside the function that declares its arguments; ``--help``
    lists every one, each with a help line, and ``-q`` is declared by one function."""
    from atbsn import cli

    assert set(cli._ORDER) == set(cli._COMMANDS) and len(cli._ORDER) == len(cli._COMMANDS)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(cli._ORDER)
    for name, p in sub.choices.items():
        args, quiet, raw, func = cli._COMMANDS[name]
        assert func.__name__ == f"cmd_{name}" and (args.__doc__ or "").strip(), name
        assert ("-q" in p._option_string_actions) == quiet, name
        assert ("--raw-wb" in p._option_string_actions) == raw, name
    reading = {n for n, (_, _, raw, _) in cli._COMMANDS.items() if raw}
    assert {"denoise", "fit", "train", "info", "ui", "evaluate", "quantize"} <= reading
