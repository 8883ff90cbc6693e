"""Spatially-Adaptive SSL: the authors' three-stage checkpoint and each network's own file load; every tensor
their code computes (the three networks, the BNN's inner maps, alpha, the three stages' losses, validation
rounding, the 8-fold ensemble) is reproduced; the BNN's blind spot is tested by gradients."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import SHARED, assert_close_to_scale, shared_path

from atbsn.checkpoint import load
from atbsn.config import ModelConfig
from atbsn.inference import denoise_tensor
from atbsn.methods.sasl import _UNDO, BNN, LAN, SASL, ThreeStageL1, _down, alpha, stage_at, stage_cosine
from atbsn.metrics import local_std, psnr


@pytest.fixture(scope="module")
def authors():
    folder = shared_path("fixtures", "sassid")
    return load(folder / "sassid_official_format.pth"), \
        torch.load(folder / "sassid_expected_outputs.pt", weights_only=True)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """Two runs of the authors' code differ by 1.5e-6 of the scale with 2 threads (their README)."""
    assert_close_to_scale(ours, ref, rel)


def _rounded_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Rounded outputs: equal, but for a value at .5 that round-off may flip by one level."""
    assert float((ours - ref).abs().max()) <= 1 and float((ours != ref).float().mean()) < 1e-3


def test_the_three_stage_checkpoint_loads_as_the_method(authors):
    model, _ = authors
    assert model.config.arch == "sasl" and model.config.value_range == 255.0
    # their counts sum the state dicts, where the BNN's last conv appears twice (output_conv, output_block.4)
    counts = [sum(v.numel() for v in m.state_dict().values()) for m in (model.bnn, model.lan, model.unet)]
    assert counts == [1_268_838, 94_939, 1_083_747]


@torch.no_grad()
def test_every_tensor_of_the_authors_code_is_reproduced(authors):
    model, ref = authors
    x = ref["input"]
    _close(model.bnn(x), ref["bnn"])
    maps = model.bnn.features(x)
    _close(torch.cat(maps), ref["bnn_decoder_out_rot4"])
    _close(torch.cat([undo(_down(f, 5)) for undo, f in zip(_UNDO, maps)], 1), ref["bnn_output_block_input"])
    _close(model.lan(x), ref["lan"])
    _close(model(x), ref["unet"])
    _close(model(x), ref["validation_step_unet_stage"])
    _rounded_close(torch.floor(model(x) + 0.5).clamp(0, 255), ref["validate_output"])
    ensemble = denoise_tensor(x, model, ensemble=True, tile=512)
    _close(ensemble, ref["ensemble8"])
    _rounded_close(torch.floor(ensemble + 0.5).clamp(0, 255), ref["test_output"])


@torch.no_grad()
def test_alpha_and_its_texture_measure_are_theirs(authors):
    _, ref = authors
    for name in ("bnn", "input", "probe"):
        image = ref["alpha_probe_input"] if name == "probe" else ref[name]
        _close(local_std(image, gray="mean"), ref[f"std_of_{name}"])
        _close(alpha(image), ref[f"alpha_of_{name}"])
    a = alpha(ref["alpha_probe_input"])  # the probe reaches the three cases: flat, middle, textured
    assert (a < 0.5).any() and (a == 0.5).any() and (a > 0.5).any()


@torch.no_grad()
def test_each_stage_s_loss_is_theirs(authors):
    model, ref = authors
    loss, mask = ThreeStageL1(), torch.ones_like(ref["input"][:, :1])
    for stage, name in enumerate(("bnn", "lan", "unet")):
        loss.at(stage * 400_000, 1_200_000)  # iterations 1, 400001, 800001 of their 1.2M
        assert loss.stage == stage
        value, expected = float(loss(model, ref["input"], mask)), float(ref[f"loss_{name}_stage"])
        assert abs(value - expected) <= 1e-5 * expected


def test_the_stages_split_the_run_in_thirds_each_with_its_own_cosine():
    assert [stage_at(s, 9) for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert stage_cosine(0, 9) == stage_cosine(3, 9) == stage_cosine(6, 9) == 1.0
    assert 0 < stage_cosine(2, 9) < stage_cosine(1, 9) < 1


def test_each_network_s_own_file_loads_as_that_network(authors, tmp_path):
    model, ref = authors
    for part, arch in (("bnn", "sasl-bnn"), ("lan", "sasl-lan"), ("unet", "sasl-unet")):
        path = tmp_path / f"{part}.pth"
        torch.save(getattr(model, part).state_dict(), path)  # their save_net(): a bare state dict
        alone = load(path, part="teacher" if arch == "sasl-bnn" else "auto")
        assert alone.config.arch == arch
        with torch.no_grad():
            _close(alone(ref["input"]), ref[part])


def test_the_released_lan_on_a_real_sidd_block():
    """Their released LAN.pth on a real SIDD block. The weights are not in ../shared (the fixture holds only the
    outputs); put the file at ../shared/fixtures/sassid/LAN.pth to run this."""
    path = SHARED / "fixtures" / "sassid" / "LAN.pth"
    if not path.exists():
        pytest.skip(f"needs {path}: the authors' released LAN weights (sha256 60e9baa2...dacd12)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest.startswith("60e9baa2") and digest.endswith("dacd12")
    ref = torch.load(shared_path("fixtures", "sassid", "sassid_expected_outputs.pt"), weights_only=True)
    lan = load(path)
    with torch.no_grad():
        out = lan(ref["real_input"])
    _close(out, ref["lan_pretrained"])
    _rounded_close(torch.floor(out + 0.5).clamp(0, 255), ref["lan_pretrained_rounded"])
    _close(alpha(out), ref["alpha_of_lan_pretrained"])
    rounded = ref["lan_pretrained_rounded"][0].permute(1, 2, 0).numpy()
    clean = ref["real_clean"][0].permute(1, 2, 0).numpy()
    assert abs(psnr(rounded, clean) - float(ref["psnr_lan_pretrained"])) < 0.01


@pytest.mark.parametrize("k, size, at", [(9, (33, 29), (16, 14)), (9, (33, 29), (0, 28)), (3, (40, 17), (39, 0)),
                                          (1, (21, 35), (10, 34)), (5, (32, 32), (2, 3))])
def test_the_bnn_hides_a_k_by_k_square_and_nothing_else(k, size, at):
    """The k x k square is hidden for every input. Beyond it the network sees everything but, at k = 9, a few
    pixels along the square's edge (its receptive field is a cone, and the rotated cones meet just outside
    the square): everything farther than one pixel from the square is seen, for some input (max-pooling passes
    gradients through the maxima only, so one input leaves some pixels at zero by chance)."""
    torch.manual_seed(k)
    bnn = BNN(ModelConfig("sasl-bnn", width=4, k_infer=k)).double()
    half = k // 2
    square = {(r, c) for r in range(size[0]) for c in range(size[1])
              if abs(r - at[0]) <= half and abs(c - at[1]) <= half}
    seen: set[tuple[int, int]] = set()
    for _ in range(6):
        x = (torch.rand(1, 3, *size, dtype=torch.float64) * 255).requires_grad_(True)
        bnn(x)[0, :, at[0], at[1]].sum().backward()
        g = x.grad.abs().sum(1)[0]
        assert all(g[p] == 0 for p in square)
        seen |= {(int(r), int(c)) for r, c in (g > 0).nonzero()}
    near = {(r, c) for r in range(size[0]) for c in range(size[1])
            if abs(r - at[0]) <= half + 1 and abs(c - at[1]) <= half + 1}
    everything = {(r, c) for r in range(size[0]) for c in range(size[1])}
    assert everything - near <= seen <= everything - square


def test_the_method_trains_all_three_networks_through_one_model():
    model = SASL(ModelConfig("sasl", width=4))
    y, mask = torch.rand(2, 3, 32, 32) * 255, torch.ones(2, 1, 32, 32)
    loss = ThreeStageL1()
    for stage, trained in enumerate(("bnn", "lan", "unet")):
        model.zero_grad(set_to_none=True)
        loss.at(stage * 3, 9)
        loss(model, y, mask).backward()
        touched = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
        assert touched == {trained}  # a stage updates only its network (the others are frozen)
    assert isinstance(LAN(), torch.nn.Module)
