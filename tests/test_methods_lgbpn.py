"""LG-BPN: the authors' checkpoint and every tensor their code computes (inference with its shrunk sampling and
no mask, the symmetric and DND settings, R3 with its draws, the training path with its masks applied in place),
reproduced; the masked patches tested by gradients at borders and odd sizes, and the network's leak through
its global paths measured."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_scale, shared_path

from atbsn.checkpoint import load
from atbsn.config import ModelConfig
from atbsn.errors import AtbsnError
from atbsn.losses import SelfL1
from atbsn.methods.lgbpn import (
    LGBPN,
    R3_P,
    R3_T,
    SETTINGS,
    MaskedConv,
    global_mask,
    local_mask,
    validate_setting,
)

FOLDER = ("fixtures", "lgbpn")


def _load() -> LGBPN:
    return load(shared_path(*FOLDER, "lgbpn_official_format.pth"), part="teacher")


@pytest.fixture(scope="module")
def ref():
    return torch.load(shared_path(*FOLDER, "lgbpn_expected_outputs.pt"), weights_only=True)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """The README's suggestion (a bilinear sampler written differently may need 1e-4); measured here: <= 5e-6."""
    assert_close_to_scale(ours, ref, rel)


def _hooked(model: LGBPN) -> dict[str, torch.Tensor]:
    """Each named module's output in the model's first forward (hooks that return nothing change nothing)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:
        if name not in seen:
            seen[name] = output.detach()

    for name, module in (("head", model.bsn.head), ("maskconv1", model.bsn.branch1.Maskconv),
                         ("maskconv2", model.bsn.branch2.Maskconv), ("branch1", model.bsn.branch1),
                         ("branch2", model.bsn.branch2)):
        module.register_forward_hook(lambda m, i, o, name=name: keep(name, o))
    return seen


def test_the_authors_checkpoint_loads_as_lgbpn(ref):
    model = _load()
    assert model.config.arch == "lgbpn" and (model.config.k_train, model.config.k_infer) == (4, 3)
    assert sum(p.numel() for p in model.parameters()) == 4_558_879
    assert torch.equal(model.bsn.branch1.Maskconv.mask[0, 0], ref["mask_local"]) and torch.equal(
        local_mask(), ref["mask_local"])
    assert torch.equal(global_mask(), ref["mask_global"])


@torch.no_grad()
def test_every_inference_tensor_is_reproduced(ref):
    model = _load()
    seen = _hooked(model)
    _close(model(ref["input"]), ref["infer_noR3"])
    for name in ("head", "maskconv1", "maskconv2", "branch1", "branch2"):
        _close(seen[name], ref[f"infer_{name}"])
    _close(model(ref["input_odd"]), ref["infer_noR3_odd"])
    _close(model(ref["input"], 4), ref["infer_symmetric_noR3"])  # ratio 1: the last row and column count twice
    _close(model(ref["input"], 2), ref["infer_noR3_dnd_settings"])


@pytest.mark.slow
@torch.no_grad()
def test_r3_is_their_draws_and_refinements(ref):
    """R3 on the masks their call drew (stored in the fixture, so its seed does not matter)."""
    model = _load()
    x, masks = ref["input"], ref["r3_masks"]
    assert len(masks) == R3_T and abs(float(masks.float().mean()) - R3_P) < 0.02  # T draws of a share p
    y = model(x)
    out = model._refine(x, y, SETTINGS[3][1], masks=masks)
    _close(out, ref["infer_R3"])
    for keep, refined in zip(masks, ref["r3_refine_outputs"]):
        z = torch.nn.functional.pad(torch.where(keep, x, y), (2,) * 4, mode="reflect")
        _close(model.bsn(z, *SETTINGS[3][1]), refined)
    rounded = torch.floor(out + 0.5)
    assert float((rounded - ref["test_output"]).abs().max()) <= 1
    assert float((rounded != ref["test_output"]).float().mean()) < 1e-3


def test_the_training_path_masks_in_place_as_theirs(ref):
    model = _load().train()
    seen = _hooked(model)
    out = model(ref["input"])
    _close(out, ref["train_forward"])
    for name in ("head", "maskconv1", "maskconv2", "branch1", "branch2"):
        _close(seen[name], ref[f"train_{name}"])
    loss = SelfL1()(model, ref["input"], torch.ones_like(ref["input"][:, :1])).detach()
    assert abs(float(loss) - float(ref["train_loss_self_L1"])) <= 1e-5 * float(ref["train_loss_self_L1"])
    _close(model(ref["input_odd"]), ref["train_forward_odd"])
    assert float(model.bsn.branch1.Maskconv.weight.detach()[:, :, 4, 4].abs().max()) == 0  # zeroed in place
    with torch.no_grad():
        _close(model.eval()(ref["input"]), ref["infer_noR3_after_mask"])


@pytest.mark.parametrize("mask, size, at", [("local", (17, 23), (8, 11)), ("local", (17, 23), (0, 22)),
                                            ("global", (25, 31), (12, 15)), ("global", (25, 31), (24, 0))])
def test_a_masked_convolution_never_sees_its_patch(mask, size, at):
    """Training's masked convolutions by gradients: the output at a pixel depends on no input in the hidden
    patch (local: the diamond of radius 4; global: also every tap off the stride-2 grid), at the borders too
    (reflect padding folds the kernel onto the image: checked against the folded mask)."""
    torch.manual_seed(0)
    m = local_mask() if mask == "local" else global_mask()
    conv = MaskedConv(2, 3, m).double().train()
    x = torch.rand(1, 2, *size, dtype=torch.float64, requires_grad=True)
    conv(x)[0, :, at[0], at[1]].sum().backward()
    seen = x.grad.abs().sum(1)[0] > 0
    k = m.shape[0] // 2
    expected = torch.zeros(size, dtype=torch.bool)
    for a in range(m.shape[0]):
        for b in range(m.shape[1]):
            if m[a, b]:
                r, c = at[0] + a - k, at[1] + b - k
                r = -r if r < 0 else 2 * (size[0] - 1) - r if r >= size[0] else r  # reflection
                c = -c if c < 0 else 2 * (size[1] - 1) - c if c >= size[1] else c
                expected[r, c] = True
    assert torch.equal(seen, expected)


def test_the_network_leaks_its_patch_only_through_global_statistics():
    """The whole training path is not exactly blind, by the authors' design: the transformer's channel attention
    sums over every pixel of a sub-image, and the local body mixes neighbouring sub-images across the mosaic's
    seams, so the diamond around a pixel reaches its output through those sums. Measured: the largest gradient
    inside the diamond is well under 2% of the largest outside (0.7% at this size)."""
    torch.manual_seed(0)
    model = LGBPN(ModelConfig("lgbpn", width=8, k_train=4, k_infer=3)).double().train()
    x = (torch.rand(1, 3, 40, 40, dtype=torch.float64) * 255).requires_grad_(True)
    p = (20, 21)
    model(x)[0, :, p[0], p[1]].sum().backward()
    g = x.grad.abs().sum(1)[0]
    r = torch.arange(40)
    inside = ((r[:, None] - p[0]).abs() + (r[None, :] - p[1]).abs()) <= 4
    assert float(g[inside].max()) < 0.02 * float(g[~inside].max())


def test_settings_are_checked():
    assert [validate_setting(s) for s in (2, 3, 4)] == [2, 3, 4]
    for bad in (1, 5, True, "3"):
        with pytest.raises(AtbsnError, match="LG-BPN setting"):
            validate_setting(bad)
