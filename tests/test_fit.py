from __future__ import annotations

import numpy as np

from atbsn.checkpoint import load
from atbsn.cli import main
from atbsn.images import read_image, write_image
from atbsn.noise import add_camera_noise

TINY = ["--width", "8", "--crop", "32", "--batch", "2", "--teacher-steps", "3", "--student-steps", "2", "-q"]


def _photos(root):
    rng = np.random.default_rng(0)
    for i in range(2):
        clean = np.clip(np.linspace(30, 220, 48 * 64).reshape(48, 64, 1) + rng.normal(0, 10, (48, 64, 3)), 0, 255)
        write_image(root / f"p{i}.png", add_camera_noise(clean.astype(np.uint8), rng=i))
    return root


def test_fit_leaves_one_file_that_denoise_takes_and_resumes(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    model = tmp_path / "model.safetensors"
    assert main(["fit", str(photos), "-o", str(model), *TINY]) == 0
    out = capsys.readouterr().out
    assert "teacher AT-BSN" in out and "student C" in out and "min" in out  # the plan, with a time estimate
    student, teacher = load(model), load(model, part="teacher")
    assert student.config.arch == "C" and teacher.config.arch == "atbsn" and teacher.config.k_train == 9
    assert main(["denoise", str(photos), "-o", str(tmp_path / "den"), "--model", str(model), "-q"]) == 0
    assert read_image(tmp_path / "den" / "p0.png").shape == (48, 64, 3)
    assert main(["denoise", str(photos / "p0.png"), "-o", str(tmp_path / "den_t"), "--model", str(model), "-q"]) == 0

    assert main(["fit", str(photos), "-o", str(model), *TINY]) == 0  # again: both phases are kept, not redone
    assert capsys.readouterr().out.count("already finished") == 2


def test_fit_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    assert main(["fit", str(tmp_path / "none"), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_fit_from_a_released_model_fine_tunes_and_never_ends_worse(tmp_path, capsys):
    """``--from`` an AT-BSN(D)-like bundle: the teacher is fine-tuned, the student starts from the file's student,
    and each is the better of start and result by the held-out self-supervised loss."""
    import json

    import torch

    from atbsn import ATBSN, Student, save

    photos = _photos(tmp_path / "photos")
    torch.manual_seed(1)
    teacher, student = ATBSN(width=8), Student("C", width=8)
    released = save(student, tmp_path / "released.safetensors", teacher=teacher)
    model = tmp_path / "mine.safetensors"
    steps = ["--crop", "32", "--batch", "2", "--teacher-steps", "3", "--student-steps", "2", "-q"]
    assert main(["fit", str(photos), "-o", str(model), "--from", str(released), *steps]) == 0
    out = capsys.readouterr().out
    assert f"starting from {released}" in out and "held-out loss" in out
    report = json.loads((tmp_path / "mine.safetensors.fit" / "fit.json").read_text())
    for part in ("teacher", "student"):
        assert report[part]["kept"] in ("start", "result")
        assert min(report[part]["start_loss"], report[part]["result_loss"]) <= report[part]["start_loss"]
    fitted_teacher = load(model, part="teacher")
    assert fitted_teacher.config.width == 8 and fitted_teacher.config.k_train == 9
    kept_start = report["teacher"]["kept"] == "start"
    same = all(torch.equal(a, b) for a, b in zip(fitted_teacher.state_dict().values(), teacher.state_dict().values()))
    assert same == kept_start


def test_fit_from_a_student_only_file_says_what_it_needs(tmp_path, capsys):
    from atbsn import Student, save

    photos = _photos(tmp_path / "photos")
    only = save(Student("A"), tmp_path / "a.safetensors")
    assert main(["fit", str(photos), "-o", str(tmp_path / "m.safetensors"), "--from", str(only)]) == 2
    assert "holds no teacher to fine-tune" in capsys.readouterr().err
