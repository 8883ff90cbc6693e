"""The method registry: every registered network family and training method fills every slot, and goes through
the whole harness (build, a training step, save, load, denoise, tiles, export, sweep) with nothing but its file.
A new method is one file: a method registered from a test trains and denoises through the CLI unchanged."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

from atbsn import methods
from atbsn.checkpoint import _detect, build, load, save
from atbsn.cli import main
from atbsn.config import ModelConfig, RunConfig
from atbsn.errors import AtbsnError
from atbsn.images import write_image
from atbsn.inference import InferenceOptions, denoise
from atbsn.losses import Loss, masked_l1

ARCHS = list(methods.archs())
METHODS = list(methods.methods())
# The walk takes 6 to 28 s a method on 2 cores: the paper's own, AP-BSN and Neighbor2Neighbor run by default (one
# of each kind of network), every method in the slow suite (make test-all, CI's native run).
SLOW_WALKS = {"lgbpn", "tmbsn", "sdap", "sasl", "b2u", "n2n", "apbsn"}  # every walk runs in CI's test-all
RUN_FIELDS = {f.name for f in fields(RunConfig)}


def _tiny(name: str) -> nn.Module:
    """A small network of family ``name`` (width 16: channel attention divides the width by 16)."""
    return build(ModelConfig(name, width=16, k_infer=3, k_train=5))


def test_the_registry_holds_the_paper_and_its_rivals():
    assert {"atbsn", "A", "B", "C", "C102", "apbsn"} <= set(ARCHS)
    assert {"atbsn", "n2n", "b2u", "apbsn"} <= set(METHODS)
    with pytest.raises(AtbsnError, match="unknown architecture 'nope'; expected one of .*atbsn, A, B, C"):
        methods.arch("nope")
    with pytest.raises(AtbsnError, match="--method: 'nope' is not one of"):
        methods.method("nope")


@pytest.mark.parametrize("name", ARCHS)
def test_every_family_fills_every_slot(name):
    family = methods.arch(name)
    model = _tiny(name)
    assert isinstance(model, nn.Module) and model.config.arch == name and family.title
    assert family.bytes_per_pixel > 0 and family.margin >= 0 and isinstance(family.tile_at_train_crop, bool)
    # its checkpoints are recognised: its own state dict is detected as its family (and no other family's)
    config = _detect(model.state_dict(), model.config.value_range, name)
    assert config.arch == name
    if family.knob is not None:
        knob = family.knob
        assert knob.validate(knob.infer) == knob.infer and (knob.validate_train or knob.validate)(knob.train)
        assert knob.sweep and all(knob.validate(v) == v for v in knob.sweep)
        with pytest.raises(AtbsnError):
            knob.validate(-1)
    for flag in family.refinements:
        assert flag in {f.name for f in fields(InferenceOptions)}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_fills_every_slot(name):
    spec = methods.method(name)
    assert spec.arch in ARCHS and spec.title and {"sidd", "cpu"} <= set(spec.presets)
    for preset in spec.presets.values():
        assert set(preset) <= RUN_FIELDS
    config = RunConfig.from_preset("train", "cpu", method=name, width=8, crop=32)
    made = spec.make(config)
    assert isinstance(made, methods.Method) and isinstance(made.loss, Loss) and made.description
    assert made.model.config.arch == spec.arch


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    base = np.linspace(40, 200, 64 * 80).reshape(64, 80, 1).repeat(3, axis=2)
    for i in range(2):
        write_image(root / f"p{i}.png", np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return root


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_WALKS else m for m in METHODS])
def test_every_method_walks_through_the_harness(name, photos, tmp_path, capsys):
    """``atbsn train --method M`` on a photo folder (one step through the one engine), the checkpoint saved and
    loaded by its config alone, denoised at an odd size and in tiles, then evaluated, swept over its own control
    and exported, as a user runs them."""
    spec = methods.method(name)
    family = methods.arch(spec.arch)
    rng = np.random.default_rng(3)
    clean = np.full((48, 40, 3), 128, np.uint8)
    write_image(tmp_path / "pairs" / "clean" / "a.png", clean)
    write_image(tmp_path / "pairs" / "noisy" / "a.png",
                np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8))
    run, path = tmp_path / "run", str(tmp_path / "run" / "last.safetensors")
    tiny = ["--steps", "1", "--width", "8", "--crop", "40", "--batch", "2", "--preset", "cpu", "-q"]
    assert main(["train", str(photos), "-o", str(run), "--method", name, *tiny]) == 0
    model = load(path)  # saved by the engine, loaded by its config alone
    assert model.config.arch == spec.arch and model.config.training["method"] == name
    again = load(save(model, tmp_path / "again.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    image = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
    out = denoise(image, model)
    assert out.shape == image.shape and out.dtype == np.uint8
    wide = rng.integers(0, 256, (70, 330, 3), dtype=np.uint8)  # wider than a window
    windows = []
    tiled = denoise(wide, model, tile=32, progress=lambda done, total: windows.append(total))
    whole = denoise(wide, model, tile=512)
    # several windows, each with the family's context: near the untiled output (a misplaced window is tens of levels
    # off; agreement to 0.05 levels needs trained weights, whose reach the margins were measured on, and these are
    # one step from random: the untrained teacher differs by about 2 levels on average)
    assert windows[-1] > 1 and tiled.shape == whole.shape and np.abs(tiled.astype(float) - whole).mean() < 5

    assert main(["denoise", str(photos / "p0.png"), "-o", str(tmp_path / "out"), "-m", path, "-q"]) == 0
    assert (tmp_path / "out" / "p0.png").exists()
    assert main(["evaluate", str(tmp_path / "pairs"), "-m", path, "-q"]) == 0
    assert "PSNR" in capsys.readouterr().out
    code = main(["sweep", str(tmp_path / "pairs"), "-m", path, "-o", str(tmp_path / "sweep")])
    if family.knob is not None:
        assert code == 0
        rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
        assert [r["k_b"] for r in rows] == list(family.knob.sweep)  # its own control's values
    else:
        err = capsys.readouterr().err  # nothing to sweep, and it says so on one line
        assert code == 2 and "holds no teacher" in err and err.count("\n") == 1
    if name != "atbsn":  # AT-BSN's teacher is exported through the same command in test_export.py (30 s a trace)
        assert main(["export", "-m", path, "-o", str(tmp_path / "m.onnx")]) == 0


def test_k_rules_are_refused_when_the_config_is_built_before_any_folder(tmp_path):
    with pytest.raises(AtbsnError, match="--k-train: invalid blind-spot size k=4"):
        RunConfig(k_train=4, out=str(tmp_path / "run"))
    with pytest.raises(AtbsnError, match="--k-train must be at least 1"):
        RunConfig(k_train=0)
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "run"), "--k-train", "4"]) == 2
    assert not (tmp_path / "run").exists()
    ap = RunConfig(method="apbsn")
    assert (ap.k_train, ap.k_infer) == (5, 2)  # the method's own defaults
    with pytest.raises(AtbsnError, match="--k-infer: invalid PD stride 0"):
        RunConfig(method="apbsn", k_infer=0)


def test_runs_saved_by_atbsn_0_1_read_their_knob_of_its_own_name():
    old = {"task": "train", "method": "apbsn", "k_train": 9, "k_infer": 3, "stride_train": 4, "stride_infer": 3}
    assert (RunConfig.from_saved(old).k_train, RunConfig.from_saved(old).k_infer) == (4, 3)
    teacher = {"task": "train", "method": "atbsn", "k_train": 7, "k_infer": 3, "stride_train": 5, "stride_infer": 2}
    assert RunConfig.from_saved(teacher).k_train == 7


class _Toy(nn.Module):
    """A one-layer denoiser: all a new method needs is a network with a ``config``..."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.in_channels, config.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class _ToyLoss(Loss):
    """... and a loss (this one, a blur target: not a real method, only the shape of one)."""

    def forward(self, model, y, mask):
        return masked_l1(model(y), torch.nn.functional.avg_pool2d(y, 3, 1, 1), mask)


def test_a_new_method_is_one_registration(photos, tmp_path, monkeypatch, capsys):
    """Registering a family and a method (what a file in atbsn/methods does) is all it takes: the CLI trains it,
    and the checkpoint denoises, with no other change."""
    monkeypatch.setattr(methods, "_ARCHS", dict(methods.archs()))
    monkeypatch.setattr(methods, "_METHODS", dict(methods.methods()))
    methods.register(methods.Arch("toy", "Toy", _Toy, lambda sd, vr: None, bytes_per_pixel=100, margin=2))
    methods.register(methods.MethodSpec(
        "toy", "Toy", "toy", lambda config, init=None: methods.Method(
            _Toy(ModelConfig("toy", width=config.width)), _ToyLoss(), "training the toy"),
        presets={"sidd": {"steps": 2, "batch": 2, "crop": 32}}))
    run = tmp_path / "run"
    assert main(["train", str(photos), "-o", str(run), "--method", "toy", "-q"]) == 0
    assert "training the toy" in capsys.readouterr().out
    assert main(["denoise", str(photos / "p0.png"), "-o", str(tmp_path / "out"), "-m",
                 str(run / "last.safetensors"), "-q"]) == 0
    assert (tmp_path / "out" / "p0.png").exists()
    with pytest.raises(AtbsnError, match="registered twice"):
        methods.register(methods.Arch("toy", "Toy", _Toy, lambda sd, vr: None, bytes_per_pixel=1, margin=0))
