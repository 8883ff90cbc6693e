from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import shared_path

from atbsn.checkpoint import load
from atbsn.cli import main
from atbsn.fitting import FitConfig
from atbsn.fitting.plan import BF16_GAIN
from atbsn.images import read_image, write_image
from atbsn.noise import add_camera_noise
from atbsn.runtime import bf16_support

TINY = ["--width", "8", "--crop", "32", "--batch", "2", "--teacher-steps", "3", "--student-steps", "2", "-q"]


def _photos(root):
    rng = np.random.default_rng(0)
    for i in range(2):
        clean = np.clip(np.linspace(30, 220, 48 * 64).reshape(48, 64, 1) + rng.normal(0, 10, (48, 64, 3)), 0, 255)
        write_image(root / f"p{i}.png", add_camera_noise(clean.astype(np.uint8), rng=i))
    return root


def test_fit_computes_the_teachers_targets_once_per_photo_where_that_is_less_work(tmp_path, caplog):
    """Enough student steps that the photos' tiled windows are fewer pixels than the batches: the plan says so, its
    estimate holds the pass over the photos, and the student is trained from those targets (the run says so)."""
    photos = _photos(tmp_path / "photos")
    model = tmp_path / "model.safetensors"
    caplog.set_level(logging.INFO, logger="atbsn")
    assert main(["fit", str(photos), "-o", str(model), *TINY, "--student-steps", "40"]) == 0
    plan = json.loads((tmp_path / "model.safetensors.fit" / "plan.json").read_text())
    assert plan["teacher_targets"] == "once per photo" and plan["other_seconds"]["teacher_targets"] > 0
    assert plan["student_steps"] == 40 and load(model).config.arch == "C"
    assert "teacher's targets: once per photo" in caplog.text  # the distillation decided as the plan did


def test_fit_leaves_one_file_that_denoise_takes_and_resumes(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    model = tmp_path / "model.safetensors"
    assert main(["fit", str(photos), "-o", str(model), *TINY]) == 0
    out = capsys.readouterr().out
    assert "teacher AT-BSN" in out and "student C" in out and "min" in out  # the plan, with a time estimate
    # minutes of training: the student learns from the teacher at k_b on flat areas and k = 0 on textured ones, in
    # the precision the probe chose:
    # fp32 wherever bf16 is not native (no AVX512-BF16 or AMX, or a cap below them: CI runs this under both caps)
    assert "distilled at k in [3, 0] (partition loss)" in out
    plan = json.loads((tmp_path / "model.safetensors.fit" / "plan.json").read_text())
    native, why = bf16_support(torch.device("cpu"))
    assert plan["precision_why"].startswith(why) and f"on cpu ({plan['precision']})" in out
    assert set(plan["step_seconds"]) == ({"bf16", "fp32"} if native else {"fp32"})  # both timed where bf16 is native
    if native:  # the faster of the two for this run's steps (the teacher's dominate)
        cost = {p: 3 * s["teacher"] + 2 * s["student"] for p, s in plan["step_seconds"].items()}
        assert plan["precision"] == ("bf16" if cost["bf16"] * BF16_GAIN < cost["fp32"] else "fp32")
    else:
        assert plan["precision"] == "fp32"
    # the estimate printed at the start covers the whole run, and the end prints the actual time beside it
    seconds = json.loads((tmp_path / "model.safetensors.fit" / "fit.json").read_text())["seconds"]
    assert 0 < seconds["estimated"] == pytest.approx(plan["estimate_seconds"], abs=0.1) and seconds["wall"] > 0
    assert "min in all" in out and f"(estimated {seconds['estimated'] / 60:.1f})" in out
    assert set(plan["other_seconds"]) == {"output_check"}  # heavy noise: no stop, so no looks
    assert plan["teacher_targets"] == "every batch"  # 2 student steps: fewer pixels than the photos' windows
    assert "candidates" not in json.loads((tmp_path / "model.safetensors.fit" / "fit.json").read_text())  # no cache
    student, teacher = load(model), load(model, part="teacher")
    assert student.config.arch == "C" and teacher.config.arch == "atbsn" and teacher.config.k_train == 9
    assert student.config.training["colour_guard"] == "darkening"  # heavy noise: denoise bounds darkening
    assert main(["denoise", str(photos), "-o", str(tmp_path / "den"), "--model", str(model), "-q"]) == 0
    assert read_image(tmp_path / "den" / "p0.png").shape == (48, 64, 3)
    assert main(["denoise", str(photos / "p0.png"), "-o", str(tmp_path / "den_t"), "--model", str(model), "-q"]) == 0
    assert main(["denoise", str(photos / "p0.png"), "-o", str(tmp_path / "den_any"), "--model", str(model), "-q",
                 "--colour-guard", "any"]) == 0

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
    assert "distilled at k in [0, 1, 3, 5, 7, 9, 11] (multi loss)" in out  # a released teacher is converged
    report = json.loads((tmp_path / "mine.safetensors.fit" / "fit.json").read_text())
    assert report["removed_over_noise"] > 0  # the no-clean-image check ran on the fitted student
    assert "the photos' noise: noise sigma" in out  # measured before training, printed and recorded
    assert report["noise"]["set"]["sigma"] > 0 and len(report["noise"]["images"]) == len(list(photos.iterdir()))
    assert "--safeguard on the first" in out and all("safeguard" in p for p in report["photos"])
    for part in ("teacher", "student"):
        assert report[part]["kept"] in ("start", "result")
        assert min(report[part]["start_loss"], report[part]["result_loss"]) <= report[part]["start_loss"]
    fitted_teacher = load(model, part="teacher")
    assert fitted_teacher.config.width == 8 and fitted_teacher.config.k_train == 9
    kept_start = report["teacher"]["kept"] == "start"
    same = all(torch.equal(a, b) for a, b in zip(fitted_teacher.state_dict().values(), teacher.state_dict().values()))
    assert same == kept_start


def test_fit_from_a_student_alone_trains_its_own_and_keeps_it_without_evidence_against_it(tmp_path, capsys):
    """``--from`` a file with a student and no teacher: the teacher is trained from scratch (nothing to fine-tune)
    and the file's student is scored beside the fitted one on the photos (no clean image); two photos are too few
    to show the other one better, so the output holds the fitted one, and fit.json says each one's estimate, how
    likely the other is better (p) and which was chosen."""
    from atbsn import Student, save

    photos = _photos(tmp_path / "photos")
    torch.manual_seed(0)
    only = save(Student("A", width=8), tmp_path / "a.safetensors")
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(photos), "-o", str(model), "--from", str(only), *TINY, "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())
    rows = {r["name"]: r for r in report["candidates"]}
    assert set(rows) == {"fitted", str(only)} and sum(r["chosen"] for r in rows.values()) == 1
    assert report["choice"]["chosen"]["k_train"] == 9  # from scratch: the rule chooses the blind spot
    assert {r["colour_guard"] for r in rows.values()} == {"darkening"}  # each scored as the file would run it
    assert rows["fitted"]["chosen"] and rows[str(only)]["p_better"] == 1 and "<- chosen" in out and "estimated" in out
    assert load(model).config.arch == "C"
    assert load(model, part="teacher").config.k_train == 9  # the teacher trained on the photos, either way


@pytest.mark.slow
def test_fit_ends_with_a_released_student_in_the_cache_where_it_is_clearly_better(tmp_path, monkeypatch, capsys):
    """A released SIDD student in the cache and a few SIDD photos: a fit of seconds cannot match it, and the
    estimate on the photos (no clean image) says so: the file holds the released student with the fitted teacher;
    ``--fitted-only`` writes the fitted one (as a fit without a cache does: today's path)."""
    import shutil

    from atbsn.datasets import load_pairs
    from atbsn.released import cached_path

    pairs = load_pairs(shared_path("data", "real", "sidd9"), 7)  # the choice needs five photos at least
    for p in pairs:
        write_image(tmp_path / "photos" / f"{p.name}.png", p.noisy[:96, :128])
    monkeypatch.setenv("ATBSN_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    shutil.copyfile(shared_path("fixtures", "pretrained", "tmbsn_nbsn102_sidd.pth"), cached_path("tmbsn-c102-sidd"))
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(tmp_path / "photos"), "-o", str(model), *TINY, "--precision", "fp32"]) == 0
    report = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())
    chosen = [r for r in report["candidates"] if r["chosen"]]
    assert [r["name"] for r in chosen] == ["tmbsn-c102-sidd"], report["candidates"]
    student = load(model)
    assert student.config.arch == "C102" and load(model, part="teacher").config.arch == "atbsn"
    released = load("tmbsn-c102-sidd")
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), released.state_dict().values()))
    assert "candidates" in json.loads((tmp_path / "m.safetensors.fit" / "plan.json").read_text())["other_seconds"]
    own = tmp_path / "own.safetensors"  # --fitted-only: the fitted student, nothing weighed
    assert main(["fit", str(tmp_path / "photos"), "-o", str(own), *TINY, "--precision", "fp32", "--fitted-only"]) == 0
    assert load(own).config.arch == "C"
    assert "candidates" not in json.loads((tmp_path / "own.safetensors.fit" / "fit.json").read_text())


def test_a_released_student_replaces_the_fitted_one_only_on_evidence_from_enough_photos():
    """fit keeps the student made for the photos unless another's estimated errors are lower photo by photo by the
    one-sided signed-rank test (p < 0.05, five photos at least); then it writes the least estimate of those that
    are. Ranks, so one photo far off (an estimate below zero) does not decide it."""
    from atbsn.fitting.candidates import EVIDENCE, FITTED, evidence, pick

    own = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    mixed = [2.0, 21.0, 24.0, 44.0, 49.0, 63.0]  # lower on average (203 against 210), higher on half the photos
    clear = [9.0, 18.0, 27.0, 37.0, 46.0, 55.0]  # lower on every photo
    clearer = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    outlier = [-90.0, 21.0, 31.0, 41.0, 51.0, 61.0]  # far lower on one photo, higher on the rest
    assert evidence(own, clear) < EVIDENCE < evidence(own, mixed) and evidence(own, outlier) > 0.5
    assert pick({FITTED: own, "mixed": mixed}) == FITTED
    assert pick({FITTED: own, "outlier": outlier}) == FITTED  # its mean is the least, but on one photo only
    assert pick({FITTED: own, "mixed": mixed, "clear": clear}) == "clear"
    assert pick({FITTED: own, "clear": clear, "clearer": clearer}) == "clearer"
    assert pick({FITTED: own[:4], "clearer": clearer[:4]}) == FITTED  # four photos: too few to tell
    assert evidence(own, own) == 1.0
    assert pick({"a": own, "b": clear}) == "b"  # nothing fitted (a student given alone): the least estimate


def test_removal_ratio_tells_a_denoiser_that_takes_signal_from_one_that_takes_noise(tmp_path):
    """No clean image needed: what a model removes, over the noise level of the flattest areas, is about 1 for
    a model that removes just the noise and far above ``REMOVAL_LIMIT`` for one that removes detail too."""
    from atbsn import Student
    from atbsn.datasets import collect_sources
    from atbsn.fitting import REMOVAL_LIMIT, removal_ratio

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    clean = np.where(xx < 48, 120.0, 120 + 50 * np.sin(xx / 1.7) * np.cos(yy / 2.3))[:, :, None].repeat(3, 2)
    noisy = np.clip(clean + rng.normal(0, 6.0, clean.shape), 0, 255).astype(np.uint8)
    write_image(tmp_path / "p.png", noisy)
    sources = collect_sources([tmp_path / "p.png"])

    class Fixed(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn, self.config, self.w = fn, Student("C", width=4).config, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.fn(x)

    as_tensor = torch.from_numpy(clean.transpose(2, 0, 1).copy()).float()[None]
    cpu = torch.device("cpu")
    assert 0.8 < removal_ratio(Fixed(lambda x: as_tensor), sources, cpu) < 1.3  # removes the noise exactly
    assert removal_ratio(Fixed(lambda x: x.mean((2, 3), keepdim=True).expand_as(x)), sources, cpu) > REMOVAL_LIMIT
    assert removal_ratio(Fixed(lambda x: x), sources, cpu) == 0.0
    from atbsn.fitting import centre_crops, target_ratio  # the same measure on the distillation targets (the stop)

    crops = centre_crops(sources, 4, 256)
    assert 0.8 < target_ratio(Fixed(lambda x: as_tensor), [], crops, cpu) < 1.3
    assert target_ratio(Fixed(lambda x: x), [], crops, cpu) == 0.0
    from atbsn.fitting import output_check

    assert output_check(Fixed(lambda x: as_tensor), sources, cpu)[1][0]["safeguard"] == "keeps the output"
    flat = output_check(Fixed(lambda x: x.mean((2, 3), keepdim=True).expand_as(x)), sources, cpu)[1][0]
    assert flat["safeguard"].startswith("blends 0.")  # took the texture: the safeguard moves toward the input


@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE_VNNI"])
def test_fit_chooses_fp32_where_bf16_is_not_native_under_either_cap(tmp_path, cap):
    """The kernels of an AVX2 machine (most laptops) and of AVX-512 without bf16 (most cloud servers): bf16 is
    emulated there, slower than fp32, so ``--precision auto`` trains in fp32 and says why (plan.json too)."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(tmp_path / "photos" / f"{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    aten = "avx2" if cap == "AVX2" else "avx512"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": cap}
    out = subprocess.run([sys.executable, "-m", "atbsn", "fit", str(tmp_path / "photos"), "-o",
                          str(tmp_path / "m.safetensors"), "--width", "4", "--crop", "16", "--batch", "2",
                          "--teacher-steps", "2", "--student-steps", "2", "-q"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads((tmp_path / "m.safetensors.fit" / "plan.json").read_text())
    assert plan["precision"] == "fp32" and set(plan["step_seconds"]) == {"fp32"}
    assert f"ONEDNN_MAX_CPU_ISA={cap} allows no native bf16 kernels" in plan["precision_why"]
    assert f"precision fp32: ONEDNN_MAX_CPU_ISA={cap}" in out.stdout


def test_the_blind_spot_follows_the_measured_noise_and_what_the_user_gives_wins():
    """Heavy noise: the paper's k_a = 9 / k_b = 3; mild noise: a small blind spot. An option the user gave is kept;
    fine-tuning a released teacher only the safeguard is chosen (its own blind spot is kept)."""
    from atbsn.fitting import HEAVY, MILD, MILD_SIGMA, FitConfig, choose
    from atbsn.measure import NoiseEstimate

    heavy, mild = NoiseEstimate(MILD_SIGMA * 2, (0.5,), 1, 10), NoiseEstimate(MILD_SIGMA / 2, (0.7,), 1, 10)
    cfg, choice = choose(FitConfig(), heavy)
    assert (cfg.k_train, cfg.k_infer, cfg.ks, cfg.loss, cfg.safeguard, cfg.keep_colour, cfg.colour_guard) == (
        9, 3, [3, 0], "partition", False, False, "darkening")
    # no step cap on heavy noise; the partition's k: flat areas from k_b, textured ones from 0
    assert choice["chosen"] == {**{f: v for f, v in HEAVY.items() if v is not None}, "ks": [3, 0]}
    cfg, choice = choose(FitConfig(), mild)
    assert cfg.k_train == MILD["k_train"] < 9 and "mild noise" in choice["rule"]
    assert (cfg.loss, cfg.ks) == ("partition", [MILD["k_infer"], 0])
    cfg, choice = choose(FitConfig(k_train=5, loss="multi"), mild)
    assert (cfg.k_train, cfg.loss, cfg.k_infer, cfg.ks) == (5, "multi", MILD["k_infer"], [0, 1])
    assert choice["given"] == {"k_train": 5, "loss": "multi"} and "k_train" not in choice["chosen"]
    cfg, choice = choose(FitConfig(from_model="x.safetensors"), mild, fine_tune=True)
    assert cfg.k_train is None and choice["chosen"] == {"safeguard": True, "keep_colour": True,
                                                         "colour_guard": "off"}  # its blind spot kept
    cfg, choice = choose(FitConfig(colour_guard="any"), heavy)
    assert cfg.colour_guard == "any" and choice["given"] == {"colour_guard": "any"}
    from atbsn.errors import AtbsnError

    with pytest.raises(AtbsnError, match="--step-cap takes two numbers"):
        FitConfig(step_cap=[800])


def test_the_partition_loss_takes_flat_areas_from_the_teachers_k_b_and_textured_ones_from_k_0():
    """``--loss partition`` without ``--ks``: (k_b, 0), whatever blind spot the noise chose or the user gave; with
    ``--ks`` exactly two k, refused before any training."""
    from atbsn.errors import AtbsnError
    from atbsn.fitting import MILD, MILD_SIGMA, FitConfig, choose
    from atbsn.measure import NoiseEstimate

    heavy, mild = NoiseEstimate(MILD_SIGMA * 2, (0.5,), 1, 10), NoiseEstimate(MILD_SIGMA / 2, (0.7,), 1, 10)
    assert choose(FitConfig(loss="partition"), heavy)[0].ks == [3, 0]
    assert choose(FitConfig(loss="partition"), mild)[0].ks == [MILD["k_infer"], 0]
    assert choose(FitConfig(loss="partition", k_infer=5), heavy)[0].ks == [5, 0]
    assert choose(FitConfig(loss="partition", ks=[1, 0]), heavy)[0].ks == [1, 0]
    assert (choose(FitConfig(ks=[3]), heavy)[0].loss, choose(FitConfig(ks=[3]), heavy)[0].ks) == ("mean", [3])
    with pytest.raises(AtbsnError, match="--loss partition takes two k"):
        FitConfig(loss="partition", ks=[3, 1, 0])


@pytest.mark.slow  # a whole fit (about 15 s); the classical targets themselves: tests/test_losses.py
@pytest.mark.parametrize("method, words, option, strength", [("nlm", "NLM at h =", "nlm_h", "NLM_STRENGTH"),
                                                              ("bm3d", "BM3D at sigma", "bm3d_sigma", "BM3D_STRENGTH")])
def test_fit_with_a_classical_teacher_sets_its_strength_from_the_photos_measured_noise(tmp_path, capsys, method,
                                                                                         words, option, strength):
    """``--nlm-weight`` / ``--bm3d-weight``: the student's targets move toward non-local means or BM3D at a multiple
    of the measured sigma, said at the start and recorded with the student's run; both at once is refused."""
    from atbsn import fitting

    model = tmp_path / "m.safetensors"
    photos = str(_photos(tmp_path / "photos"))
    assert main(["fit", photos, "-o", str(model), *TINY, f"--{method}-weight", "0.5"]) == 0
    report = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())
    level = getattr(fitting, strength) * report["noise"]["set"]["sigma"]
    assert f"0.5 of the way to {words} {level:.1f}" in capsys.readouterr().out
    assert report["choice"]["given"][f"{method}_weight"] == 0.5
    run = load(model).config.training  # the student's run, recorded in the file
    assert run[f"{method}_weight"] == 0.5 and run[option] == pytest.approx(level, rel=1e-3)  # fit.json rounds sigma
    assert main(["fit", photos, "-o", str(tmp_path / "two.safetensors"), *TINY, "--nlm-weight", "0.5",
                 "--bm3d-weight", "0.5"]) != 0
    assert "give one classical teacher" in capsys.readouterr().err


@pytest.mark.slow  # the rule itself: test_the_blind_spot_follows...
def test_fit_on_mildly_noisy_photos_chooses_a_small_blind_spot_and_says_so(tmp_path, capsys):
    import json

    from atbsn.fitting import MILD

    root = tmp_path / "mild"
    for i in range(2):  # smooth photos: what the measure sees is the noise
        clean = np.broadcast_to(np.linspace(30, 220, 48 * 64).reshape(48, 64, 1), (48, 64, 3)) + 5 * i
        write_image(root / f"p{i}.png", add_camera_noise(clean.astype(np.uint8), "phone-indoor", rng=i))
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(root), "-o", str(model), *TINY]) == 0
    out = capsys.readouterr().out
    assert f"chose k_train = {MILD['k_train']}" in out and "mild noise (sigma" in out
    report = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())
    assert report["choice"]["chosen"]["k_train"] == MILD["k_train"] and report["noise"]["set"]["sigma"] > 0
    assert report["choice"]["chosen"]["step_cap"] == MILD["step_cap"]  # longer mild fits lose (stop_curve.md)
    assert load(model, part="teacher").config.k_train == MILD["k_train"]
    # the file asks denoise for the safeguard, which says per photo what it did; --no-safeguard declines; and for
    # the input's local mean colour kept (--no-keep-colour declines)
    assert load(model).config.training["safeguard"] is True and load(model).config.training["keep_colour"] is True
    assert main(["denoise", str(root), "-o", str(tmp_path / "den"), "--model", str(model)]) == 0
    assert "safeguard kept" in capsys.readouterr().out
    assert main(["denoise", str(root), "-o", str(tmp_path / "den2"), "--model", str(model), "--no-safeguard"]) == 0
    assert "safeguard kept" not in capsys.readouterr().out
    assert main(["denoise", str(root), "-o", str(tmp_path / "den3"), "--model", str(model), "--no-safeguard",
                 "--no-keep-colour"]) == 0
    kept, raw = read_image(tmp_path / "den2" / "p0.png"), read_image(tmp_path / "den3" / "p0.png")
    noisy = read_image(root / "p0.png").astype(np.float64)
    assert not np.array_equal(kept, raw)
    assert np.abs((noisy - kept).mean((0, 1))).max() <= np.abs((noisy - raw).mean((0, 1))).max() + 0.5
    capped = tmp_path / "capped.safetensors"  # the cap holds whatever the step counts (or --minutes) say
    assert main(["fit", str(root), "-o", str(capped), *TINY[:-5], "--teacher-steps", "9", "--student-steps", "2",
                 "--step-cap", "4", "3", "-q"]) == 0
    plan = json.loads((tmp_path / "capped.safetensors.fit" / "plan.json").read_text())
    assert (plan["teacher_steps"], plan["student_steps"]) == (4, 2)
    assert "at most 4 teacher and 3 student steps (--step-cap; 9 and 2 otherwise)" in capsys.readouterr().out


def test_stop_at_noise_keeps_the_last_teacher_that_removed_the_noise_and_a_rerun_skips_the_phase(tmp_path, capsys,
                                                                                                  monkeypatch):
    """The discrepancy principle: the teacher is looked at every STOP_EVERY steps; once its targets remove less
    than the noise, training stops; the teacher of the last look above it, cooled down (its learning rate taken to 0
    from where it was), is the one distilled."""
    import importlib
    import json

    fit_module = importlib.import_module("atbsn.fitting.stop")  # the stop at the noise: its constants, its calls
    photos = _photos(tmp_path / "photos")
    monkeypatch.setattr(fit_module, "STOP_EVERY", 2)
    r = fit_module.STOP_RATIO
    seen = iter([1.6 * r, 1.1 * r, 0.7 * r, 0.9 * r])  # the teacher at steps 2, 4, 6, then step 4's cooled down
    looked = []

    def scripted(teacher, ks, crops, device):
        looked.append({k: v.clone() for k, v in teacher.state_dict().items()})
        return next(seen)

    monkeypatch.setattr(fit_module, "target_ratio", scripted)
    model = tmp_path / "m.safetensors"
    steps = [*TINY[:-5], "--teacher-steps", "10", "--student-steps", "2", "--stop-at-noise", "-q"]
    assert main(["fit", str(photos), "-o", str(model), *steps]) == 0
    assert "teacher stopped at step 6 of 10" in capsys.readouterr().out
    work = tmp_path / "m.safetensors.fit"
    stop = json.loads((work / "fit.json").read_text())["teacher_stop"]
    assert [lk["step"] for lk in stop["looks"]] == [2, 4, 6] and stop["kept_step"] == 4 and stop["stopped_at"] == 6
    lr = FitConfig().lr  # the teacher's rate, decayed by the cosine schedule to step 4 of 10
    cooled = {"steps": 2, "lr": pytest.approx(fit_module.cosine_lr(lr, 4, 10)),
              "removed_over_noise": pytest.approx(0.9 * r, abs=1e-3)}
    assert stop["cooled"] == cooled
    assert json.loads((work / "teacher-cool" / "summary.json").read_text())["step"] == 2
    taught = load(work / "teacher.safetensors").state_dict()  # what the student learned from: the cooled teacher
    assert all(torch.equal(v, looked[3][k]) for k, v in taught.items())
    assert not all(torch.equal(v, looked[1][k]) for k, v in taught.items())
    assert main(["fit", str(photos), "-o", str(model), *steps]) == 0  # resumes: nothing trained or looked at again
    assert len(looked) == 4


def test_a_teacher_killed_between_looks_stops_fit_and_the_same_command_finishes_it(tmp_path, monkeypatch):
    """A kill inside a look's chunk (the engine's ``interrupted``) stops fit; the rerun resumes from the saved
    step, however far it is from the next look, and finishes."""
    import importlib
    import json

    fit_module = importlib.import_module("atbsn.fitting.stop")
    photos = _photos(tmp_path / "photos")
    monkeypatch.setattr(fit_module, "STOP_EVERY", 2)
    monkeypatch.setattr(fit_module, "target_ratio", lambda *a: 2 * fit_module.STOP_RATIO)  # never stops early
    real, calls = fit_module.train, []

    def killed_once(cfg, **kw):
        calls.append(1)
        return real(cfg, **{**kw, "stop_after": 1}) | {"interrupted": True} if len(calls) == 2 else real(cfg, **kw)

    monkeypatch.setattr(fit_module, "train", killed_once)
    model = tmp_path / "m.safetensors"
    steps = [*TINY[:-5], "--teacher-steps", "7", "--student-steps", "2", "--stop-at-noise", "-q"]
    assert main(["fit", str(photos), "-o", str(model), *steps]) != 0 and not model.exists()
    assert main(["fit", str(photos), "-o", str(model), *steps]) == 0
    stop = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())["teacher_stop"]
    assert [lk["step"] for lk in stop["looks"]] == [2, 5, 7] and stop["stopped_at"] == 7 == stop["kept_step"]


def test_from_best_without_a_network_weighs_what_the_cache_has_and_never_fails(tmp_path, monkeypatch, caplog):
    """``--from best`` fetches every released student to weigh; where none can be fetched (no network), each is
    left out with a line saying why and the fit goes on with what the cache holds (here nothing: today's path)."""
    from atbsn.fitting.candidates import BEST, gather
    from atbsn.released import entries

    monkeypatch.setenv("ATBSN_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATBSN_REGISTRY_URL", "http://127.0.0.1:9")  # nothing listens there
    with caplog.at_level("WARNING", logger="atbsn"):
        assert gather(BEST, {}) == []
    students = [n for n, e in entries().items() if e.kind in ("student", "bundle")]
    assert all(any(n in r.message and "left out" in r.message for r in caplog.records) for n in students)
    assert gather(None, {}) == []  # the cache is empty: nothing to weigh


def test_bm3d_joins_as_a_teacher_by_itself_only_on_mild_noise_when_it_fits_the_budget(monkeypatch):
    """fit adds BM3D as the classical teacher on its own only for mild noise, with a budget in minutes, the bm3d
    package installed, and its pass over the photos within BM3D_SHARE of the budget; heavy noise gives no reason."""
    import importlib.util

    from atbsn.fitting import rule
    from atbsn.measure import NoiseEstimate

    mild, heavy = (NoiseEstimate(s, (0.1,) * 3, 1, 10) for s in (rule.MILD_SIGMA / 2, rule.MILD_SIGMA * 2))
    monkeypatch.setattr(rule.os, "cpu_count", lambda: 2)
    four = 4 * 512 * 512  # the study's four photos: about 2.2 min on 2 cores
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert rule.bm3d_teacher_for(heavy, four, 5) == (False, None)
    yes, why = rule.bm3d_teacher_for(mild, four, 5)
    assert yes and "about 2.2 min" in why
    assert not rule.bm3d_teacher_for(mild, four, 4)[0]  # over half of 4 minutes
    assert "would take about 22.4 min" in rule.bm3d_teacher_for(mild, 10 * four, 5)[1]
    assert not rule.bm3d_teacher_for(mild, None, 5)[0] and not rule.bm3d_teacher_for(mild, four, None)[0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    yes, why = rule.bm3d_teacher_for(mild, four, 5)
    assert not yes and "pip install 'atbsn[baselines]'" in why


@pytest.mark.slow  # a fit of half a minute, BM3D included
def test_fit_on_a_few_mildly_noisy_photos_takes_bm3d_as_a_teacher_by_itself(tmp_path, capsys):
    root = tmp_path / "mild"
    for i in range(2):
        clean = np.broadcast_to(np.linspace(30, 220, 48 * 64).reshape(48, 64, 1), (48, 64, 3)) + 5 * i
        write_image(root / f"p{i}.png", add_camera_noise(clean.astype(np.uint8), "phone-indoor", rng=i))
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(root), "-o", str(model), "--width", "8", "--crop", "32", "--batch", "2", "--minutes",
                 "0.4"]) == 0
    assert "BM3D as the student's classical teacher: yes" in capsys.readouterr().out
    report = json.loads((tmp_path / "m.safetensors.fit" / "fit.json").read_text())
    assert report["choice"]["chosen"]["bm3d_weight"] == 0.5 and report["noise"]["pixels"] == 2 * 48 * 64
    assert load(model).config.training["bm3d_sigma"] > 0
