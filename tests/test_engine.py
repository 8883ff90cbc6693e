"""The trainer runs any network with any loss; its state on disk holds no code; resume keeps the run's options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from atbsn.checkpoint import read_metadata
from atbsn.cli import main
from atbsn.config import ModelConfig, RunConfig
from atbsn.engine import Method, Trainer, targets_once
from atbsn.images import write_image
from atbsn.losses import Loss, masked_l1
from atbsn.students import Student

TINY = ["--width", "8", "--crop", "32", "--batch", "2", "-q"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(2):
        write_image(root / f"p{i}.png", rng.integers(0, 255, (48, 56, 3), dtype=np.uint8))
    return root


class _ToMean(Loss):
    """A loss the trainer has never heard of: pull the output towards the batch's mean colour."""

    def forward(self, model: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_l1(model(y), y.mean(dim=(2, 3), keepdim=True).expand_as(y), mask)


def test_the_trainer_takes_a_network_and_a_loss(tmp_path, photos):
    def method(config: RunConfig, device: torch.device) -> Method:  # noqa: ARG001
        return Method(Student("A"), _ToMean(), "student A pulled towards the mean colour")

    config = RunConfig(data=[str(photos)], out=str(tmp_path / "run"), steps=4, batch=2, crop=32, val_every=2)
    summary = Trainer(config, method).run(progress=False)
    assert summary["finished"] and summary["step"] == 4 and summary["best"]["step"] in (2, 4)
    assert (tmp_path / "run" / "best.safetensors").exists()


def test_resume_state_loads_without_unpickling_code(tmp_path, photos):
    run = tmp_path / "r"
    assert main(["train", str(photos), "-o", str(run), "--steps", "2", *TINY]) == 0
    state = torch.load(run / "state.pt", weights_only=True)  # raises if anything but plain data is inside
    assert RunConfig(**json.loads(state["config"])).steps == 2


def test_resume_refuses_options_that_change_the_run(tmp_path, photos, capsys):
    run = tmp_path / "r"
    assert main(["train", str(photos), "-o", str(run), "--steps", "4", "--stop-after", "1", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", str(photos), "-o", str(run), "--resume", "--steps", "20", "-q"]) == 2
    err = capsys.readouterr().err
    assert "steps 4 -> 20" in err and err.count("\n") == 1
    # options that do not change what is computed may differ; the others come from the saved run
    assert main(["train", str(photos), "-o", str(run), "--resume", "--device", "cpu", "--cache-gb", "1", "-q"]) == 0


def test_model_config_survives_a_run(tmp_path, photos):
    assert main(["train", str(photos), "-o", str(tmp_path / "t"), "--steps", "1", *TINY]) == 0
    cfg = ModelConfig.from_json(read_metadata(tmp_path / "t" / "last.safetensors")["config"])
    assert cfg.train_crop == 32 and cfg.training["steps"] == 1


def test_the_schedule_fit_reads_is_the_one_the_trainer_runs():
    """``engine.cosine_lr`` (what ``fit``'s cool-down starts from) equals the Trainer's scheduler at every step."""
    from atbsn.engine import cosine_lr

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=37, eta_min=0.0)
    for step in range(1, 38):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(cosine_lr(2e-3, step, 37), rel=1e-9, abs=1e-15)


def test_targets_are_cached_per_photo_only_where_that_is_less_work_and_fits_in_memory():
    """Two 100 x 100 photos in tiles of 32 with 16 of context: 4x their pixels of windows (80,000), against the
    run's batches (steps x batch x crop^2); the targets (3 channels of float32) must fit in --cache-gb."""
    on = RunConfig(task="distill", steps=100, batch=2, crop=32, cache_targets=True)
    once, windows, batches = targets_once([100 * 100] * 2, (32, 16), on, 3)
    assert once and windows == 80_000 and batches == 204_800
    assert not targets_once([100 * 100] * 2, (32, 16), RunConfig(task="distill", steps=30, batch=2, crop=32,
                                                                 cache_targets=True), 3)[0]  # 61,440 < 80,000
    assert not targets_once([100 * 100] * 2, (32, 16), RunConfig(task="distill", steps=100, batch=2, crop=32,
                                                                 cache_targets=True, cache_gb=1e-4), 3)[0]
    assert not targets_once([100 * 100] * 2, (32, 16), RunConfig(task="distill", steps=100, batch=2, crop=32), 3)[0]
