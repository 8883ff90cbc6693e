"""Training and distillation end to end through the CLI, exact resume, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atbsn.checkpoint import load
from atbsn.cli import main
from atbsn.config import SIDD_KS
from atbsn.datasets import PatchSampler, collect_sources
from atbsn.errors import AtbsnError
from atbsn.images import write_image
from atbsn.inference import denoise

TINY = ["--width", "8", "--crop", "32", "--batch", "2", "-q"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of noisy photos of mixed kinds: RGB, 16-bit, gray, RGBA, one smaller than the crop."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    base = np.linspace(40, 200, 70 * 90).reshape(70, 90, 1).repeat(3, axis=2)
    for i in range(2):
        write_image(root / f"a{i}.png", np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
    write_image(root / "sub" / "deep16.tif", rng.integers(0, 65535, (50, 60, 3), dtype=np.uint16))
    write_image(root / "gray.jpg", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    write_image(root / "alpha.png", rng.integers(0, 255, (36, 36, 4), dtype=np.uint8))
    write_image(root / "tiny.png", rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load(path).state_dict()


def test_train_then_distill_end_to_end(tmp_path, photos):
    run = tmp_path / "teacher"
    assert main(["train", str(photos), "-o", str(run), "--steps", "4", "--val-every", "2", *TINY]) == 0
    for name in ("last.safetensors", "best.safetensors", "state.pt", "log.csv", "summary.json"):
        assert (run / name).exists(), name
    teacher = load(run / "best.safetensors")
    assert teacher.config.arch == "atbsn" and teacher.config.k_train == 9 and teacher.config.train_crop == 32
    assert teacher.config.training["completed_steps"] == 4

    srun = tmp_path / "student"
    assert main(["distill", str(photos), "--teacher", str(run / "last.safetensors"), "-o", str(srun),
                 "--steps", "3", "--student", "C", "--init-from-teacher", "--ks", "0", "3", "9", "--crop", "32",
                 "--batch", "2", "-q"]) == 0
    student = load(srun / "last.safetensors")
    assert student.config.arch == "C" and student.config.ks == [0, 3, 9]
    out = denoise(np.full((45, 37, 3), 120, np.uint8), student)
    assert out.shape == (45, 37, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("loss", ["mean", "partition"])
def test_mean_and_partition_losses_and_student_a(tmp_path, photos, loss):
    teacher = tmp_path / "t"
    main(["train", str(photos), "-o", str(teacher), "--steps", "1", *TINY])
    assert main(["distill", str(photos), "--teacher", str(teacher / "last.safetensors"), "-o", str(tmp_path / "s"),
                 "--steps", "2", "--student", "A", "--loss", loss, "--crop", "32", "--batch", "2", "-q"]) == 0
    student = load(tmp_path / "s" / "best.safetensors")
    assert student.config.arch == "A" and student.config.ks == ([9, 0] if loss == "partition" else list(SIDD_KS))


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, photos):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(photos), "-o", str(straight), "--steps", "6", "--val-every", "100", *TINY]) == 0
    assert main(["train", str(photos), "-o", str(resumed), "--steps", "6", "--val-every", "100", "--stop-after", "3",
                 *TINY]) == 0
    assert json.loads((resumed / "summary.json").read_text())["step"] == 3
    a, b = _weights(straight / "last.safetensors"), _weights(resumed / "last.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # stopped half-way: not yet the same
    assert main(["train", str(photos), "-o", str(resumed), "--resume", "-q"]) == 0
    b = _weights(resumed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["n2n", "b2u", "apbsn"])
def test_rival_methods_train_resume_exactly_and_denoise_like_any_model(tmp_path, photos, method):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--method", method, "--steps", "4", "--val-every", "2", *TINY]
    assert main(["train", str(photos), "-o", str(straight), *flags]) == 0
    assert main(["train", str(photos), "-o", str(resumed), *flags, "--stop-after", "2"]) == 0
    assert main(["train", str(photos), "-o", str(resumed), "--resume", "-q"]) == 0
    a, b = _weights(straight / "last.safetensors"), _weights(resumed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the schedule and random pairs follow the step
    model = load(straight / "best.safetensors")
    assert model.config.training["method"] == method
    assert model.config.arch == ("apbsn" if method == "apbsn" else "C")
    out = denoise(np.full((45, 37, 3), 120, np.uint8), model)
    assert out.shape == (45, 37, 3) and out.dtype == np.uint8
    extra = ["--stride", "5", "--r3"] if method == "apbsn" else []
    assert main(["denoise", str(photos / "a0.png"), "-o", str(tmp_path / "out"), "-m",
                 str(straight / "best.safetensors"), "-q", *extra]) == 0
    assert (tmp_path / "out" / "a0.png").exists()


def test_rival_presets_are_their_authors_recipes_and_cpu_is_one_budget():
    from atbsn.engine import RunConfig

    ap = RunConfig.from_preset("train", None, method="apbsn")
    assert (ap.width, ap.crop, ap.lr, ap.k_train, ap.k_infer) == (128, 120, 1e-4, 5, 2)
    assert RunConfig.from_preset("train", None, method="n2n").batch == 4
    cpu = {m: RunConfig.from_preset("train", "cpu", method=m) for m in ("atbsn", "n2n", "b2u", "apbsn")}
    assert len({(c.steps, c.batch) for c in cpu.values()}) == 1
    with pytest.raises(AtbsnError, match="--method"):
        RunConfig.from_preset("train", None, method="noise2void")


def test_a_second_run_into_the_same_folder_needs_resume(tmp_path, photos, capsys):
    run = tmp_path / "r"
    main(["train", str(photos), "-o", str(run), "--steps", "1", *TINY])
    assert main(["train", str(photos), "-o", str(run), "--steps", "1", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_data_fails_fast_or_is_skipped(tmp_path, photos, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "-o", str(tmp_path / "r1"), *TINY]) == 2
    assert "no images found" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    write_image(bad / "ok.png", np.full((40, 40, 3), 100, np.uint8))
    sampler = PatchSampler(collect_sources([bad]), 32, seed=0, on_bad_file="fail")
    with pytest.raises(AtbsnError, match="broken.png"):
        for step in range(20):
            sampler.batch(step, 2)
    assert main(["train", str(bad), "-o", str(tmp_path / "r2"), "--steps", "2", "--on-bad-file", "skip", *TINY]) == 0


def test_even_k_and_a_student_as_teacher_fail_with_one_line_and_write_nothing(tmp_path, photos, capsys):
    from atbsn import Student, save

    run = tmp_path / "even"
    assert main(["train", str(photos), "-o", str(run), "--k-train", "4", "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "k=4" in err and len(err.splitlines()) == 1
    assert not (run / "last.safetensors").exists() and not (run / "state.pt").exists()
    student = save(Student("C", width=8), tmp_path / "student.safetensors")
    run = tmp_path / "wrong_teacher"
    assert main(["distill", str(photos), "--teacher", str(student), "-o", str(run), "--steps", "1", "--crop", "32",
                 "--batch", "2", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "student.safetensors" in err and "no teacher" in err and len(err.splitlines()) == 1
    assert not (run / "last.safetensors").exists()


def test_patches_are_reproducible_and_small_images_are_masked(photos):
    sources = collect_sources([photos])
    assert len(sources) == 6
    a = PatchSampler(sources, 32, seed=3).batch(7, 4)
    b = PatchSampler(sources, 32, seed=3).batch(7, 4)
    c = PatchSampler(sources, 32, seed=3, rank=1).batch(7, 4)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    x, m = PatchSampler([s for s in sources if s.path.name == "tiny.png"], 32).batch(0, 2)
    assert x.shape == (2, 3, 32, 32) and m.sum() == 2 * 12 * 20 and (x * (1 - m) == 0).all()
    assert 0 <= x.min() and x.max() <= 255


def test_presets_and_overrides():
    from atbsn.engine import RunConfig

    c = RunConfig.from_preset("train", "sidd", steps=10)
    assert (c.steps, c.batch, c.crop, c.k_train, c.k_infer, c.lr) == (10, 8, 256, 9, 3, 3e-4)
    d = RunConfig.from_preset("distill", "dnd")
    assert d.ks == [0, 1, 3, 5, 7, 9] and d.crop == 128 and d.steps == 100_000


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo, tested on Linux")
@pytest.mark.parametrize("source", [pytest.param("photos", marks=pytest.mark.slow), "prepared store"])
def test_two_process_data_parallel_training_keeps_ranks_identical(tmp_path, photos, source):
    run = tmp_path / "ddp"
    data = photos
    if source == "prepared store":
        assert main(["prepare", str(photos), "-o", str(tmp_path / "store"), "-q"]) == 0
        data = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "atbsn",
           "train", str(data), "-o", str(run), "--steps", "3", "--device", "cpu", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    digests = summary["rank_weight_digests"]
    assert summary["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert load(run / "last.safetensors").config.training["completed_steps"] == 3


def test_distill_into_the_1_02m_student(tmp_path, photos):
    teacher = tmp_path / "t"
    main(["train", str(photos), "-o", str(teacher), "--steps", "1", *TINY])
    assert main(["distill", str(photos), "--teacher", str(teacher / "last.safetensors"), "-o", str(tmp_path / "s"),
                 "--steps", "2", "--student", "C102", "--crop", "32", "--batch", "2", "-q"]) == 0
    student = load(tmp_path / "s" / "last.safetensors")
    assert student.config.arch == "C102" and student.config.value_range == 1.0


@pytest.mark.parametrize("preset", ["cpu", "sidd", "dnd"])
@pytest.mark.parametrize("method", ["atbsn", "n2n", "b2u", "apbsn"])
def test_every_preset_starts_for_every_method_and_resumes(tmp_path, preset, method, capsys):
    """`atbsn train DIR -o OUT --preset P [--method M]`, then --resume with the preset again (issue 25)."""
    from atbsn.cli import main

    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "a.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    tiny = ["--steps", "2", "--batch", "1", "--crop", "20", "--width", "4", "-q"]
    argv = ["train", str(tmp_path / "in"), "-o", str(tmp_path / "run"), "--preset", preset, "--method", method, *tiny]
    assert main([*argv, "--stop-after", "1"]) == 0
    assert main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert ("using its authors' SIDD recipe" in out) == (preset == "dnd" and method != "atbsn")


@pytest.mark.parametrize("preset", ["cpu", "sidd", "dnd"])
def test_every_distill_preset_starts_and_resumes_and_partition_says_what_it_takes(tmp_path, preset, capsys):
    from atbsn import ATBSN
    from atbsn.checkpoint import save
    from atbsn.cli import main

    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "a.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    teacher = str(save(ATBSN(width=4), tmp_path / "t.safetensors"))
    tiny = ["--steps", "2", "--batch", "1", "--crop", "20", "-q"]
    argv = ["distill", str(tmp_path / "in"), "--teacher", teacher, "-o", str(tmp_path / "d"), "--preset", preset, *tiny]
    assert main([*argv, "--stop-after", "1"]) == 0
    assert main([*argv, "--resume"]) == 0
    argv = ["distill", str(tmp_path / "in"), "--teacher", teacher, "-o", str(tmp_path / "p"), "--preset", preset,
            "--loss", "partition", *tiny]
    assert main(argv) == 0
    assert "--loss partition: k = 9 (flat) and 0 (textured), not the preset's" in capsys.readouterr().out
    from atbsn.checkpoint import load

    assert load(tmp_path / "p" / "last.safetensors").config.ks == [9, 0]


def test_a_typed_ks_is_kept_with_the_partition_loss():
    from atbsn.config import RunConfig

    assert RunConfig.from_preset("distill", "sidd", loss="partition", ks=[7, 1]).ks == [7, 1]
    assert RunConfig.from_preset("distill", "sidd", loss="partition").ks == [9, 0]
    assert RunConfig.from_preset("distill", None, loss="partition").ks == [9, 0]
    assert RunConfig.from_preset("distill", "dnd").ks == [0, 1, 3, 5, 7, 9]


@pytest.mark.slow
def test_distillation_from_targets_cached_per_photo_resumes_exactly_and_says_so(tmp_path, photos, capsys):
    """--cache-targets: the teacher runs once per photo (its tiles at its training crop) and the targets are cut
    with the patches; the run resumes to the same weights, and it learns from other targets than per batch."""
    teacher = tmp_path / "t"
    assert main(["train", str(photos), "-o", str(teacher), "--steps", "1", *TINY]) == 0
    flags = ["--teacher", str(teacher / "last.safetensors"), "--steps", "40", "--val-every", "100", "--loss",
             "partition", "--ks", "3", "0", "--crop", "32", "--batch", "2"]
    straight, resumed, per_batch = tmp_path / "straight", tmp_path / "resumed", tmp_path / "per_batch"
    assert main(["distill", str(photos), "-o", str(straight), *flags, "--cache-targets"]) == 0
    assert "teacher's targets: once per photo" in capsys.readouterr().out
    assert main(["distill", str(photos), "-o", str(resumed), *flags, "--cache-targets", "--stop-after", "20",
                 "-q"]) == 0
    assert main(["distill", str(photos), "-o", str(resumed), "--resume", "-q"]) == 0
    assert main(["distill", str(photos), "-o", str(per_batch), *flags, "-q"]) == 0
    a, b, c = (_weights(r / "last.safetensors") for r in (straight, resumed, per_batch))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert main(["distill", str(photos), "-o", str(tmp_path / "few"), *flags[:2], "--steps", "2", "--cache-targets",
                 "--crop", "32", "--batch", "2"]) == 0  # 2 steps: fewer pixels than the photos' windows
    assert "teacher's targets: on every batch" in capsys.readouterr().out
