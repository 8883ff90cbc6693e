"""Options are defined once: the CLI is generated from the config dataclasses and every value is checked."""

from __future__ import annotations

import dataclasses

import pytest

from atbsn.cli import build_parser, main
from atbsn.config import RunConfig
from atbsn.errors import AtbsnError
from atbsn.fitting import FitConfig
from atbsn.inference import InferenceOptions


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("command, cls, skip", [
    ("train", RunConfig, {"task", "data", "out", "teacher", "teacher_sha256", "student", "ks", "loss",
                          "texture_threshold", "nlm_h", "nlm_weight", "bm3d_sigma", "bm3d_weight", "init_from_teacher",
                          "cache_targets"}),
    ("distill", RunConfig, {"task", "data", "out", "teacher_sha256", "method", "width", "k_train", "k_infer"}),
    ("fit", FitConfig, {"init_from_teacher", "cache_targets"}),
    ("denoise", InferenceOptions, set()),
])
def test_every_option_of_the_config_is_a_flag(command, cls, skip):
    flags = _flags(command)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            assert (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in flags, f.name


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--save-every", "0"], "--save-every must be at least 1"),
    (["--crop", "0"], "--crop must be at least 8"),
    (["--width", "0"], "--width must be at least 1"),
])
def test_out_of_range_options_fail_with_one_line_before_any_work(tmp_path, capsys, argv, message):
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "run").exists()


def test_configs_check_their_values_from_python_too():
    with pytest.raises(AtbsnError, match="--ks"):
        RunConfig(ks=[-1])
    with pytest.raises(AtbsnError, match="--precision"):
        InferenceOptions(precision="fp8")
    with pytest.raises(AtbsnError, match="--minutes"):
        FitConfig(minutes=0)
    with pytest.raises(TypeError, match="unknown inference option"):
        InferenceOptions.of(kk=3)
