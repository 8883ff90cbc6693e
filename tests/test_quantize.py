"""int8 models from noisy photos: the error bound holds, the file is a model ``denoise`` takes (16-bit, alpha,
tiles), its provenance is inside, and bad requests are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atbsn import AtbsnError, Student, denoise, denoise_tensor
from atbsn.checkpoint import load, save
from atbsn.cli import main
from atbsn.deploy import engines
from atbsn.deploy.quantize import _refill, calibration_crops, quantize, split_concat_convs
from atbsn.images import read_image, write_image

pytestmark = pytest.mark.skipif(not engines.installed("onnxruntime"), reason="needs onnxruntime (atbsn[cpu])")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    for i in range(3):
        clean = np.stack([120 + 50 * np.sin(xx / (5 + i) + c) * np.cos(yy / 8) for c in range(3)], -1)
        write_image(folder / f"p{i}.png", np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return Student("C", width=8).eval()


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.clamp(0, 255) - b.clamp(0, 255)) ** 2).mean().sqrt())


@pytest.mark.slow
def test_the_error_bound_decides_what_stays_in_fp32(tmp_path, photos, student):
    loose = quantize(student, [photos], tmp_path / "loose.onnx", max_error=1e6, crop=48, progress=False)
    strict = quantize(student, [photos], tmp_path / "strict.onnx", max_error=1e-4, crop=48, finetune_steps=0,
                      progress=False)
    ql, qs = loose["quantization"], strict["quantization"]
    assert ql["int8_convs"] == ql["convs"] and not ql["fp32_convs"]
    assert qs["int8_convs"] == 0 and len(qs["fp32_convs"]) == qs["convs"]
    crops = [torch.from_numpy(c) for c in calibration_crops([photos], crop=48)]
    ref = [denoise_tensor(c, student, engine="torch") for c in crops]
    for name, q in (("loose", ql), ("strict", qs)):
        net = load(tmp_path / f"{name}.onnx")  # measured with onnxruntime, as quantize measures it
        err = float(np.sqrt(np.mean([_rms(denoise_tensor(c, net, engine="onnxruntime"), r) ** 2
                                     for c, r in zip(crops, ref)])))
        assert err == pytest.approx(q["rms_error_vs_fp32"], abs=1e-3)  # what the file says is what it does
    assert qs["rms_error_vs_fp32"] < 1e-3 < ql["rms_error_vs_fp32"]


def test_the_refill_puts_back_the_costliest_convolutions_the_bound_still_allows(tmp_path):
    """After the removal, what fits the bound again goes back into int8, costliest first (errors here add in
    quadrature, as the removal assumes)."""
    cost = {"a": 1.0, "big": 40.0, "mid": 10.0, "bad": 5.0, "c": 2.0}
    sens = {"a": 0.1, "big": 0.2, "mid": 0.2, "bad": 2.0, "c": 0.05}
    built = []

    def build(nodes, name):
        built.append(list(nodes))
        return tmp_path / name

    def measure(path):
        return float(np.sqrt(sum(sens[n] ** 2 for n in built[-1])))

    kept, path, err = _refill(["a", "c"], list(cost), cost, sens, tmp_path / "int8.onnx", 0.112, 0.25, build, measure)
    assert kept == ["a", "big", "c"]  # "mid" no longer fits beside "big"; "bad" never fits and is never built
    assert err == pytest.approx(np.sqrt(0.1**2 + 0.2**2 + 0.05**2)) and err <= 0.25
    assert ["a", "bad", "c"] not in built and path.name.startswith("refill")
    none, same, e = _refill([], ["bad"], cost, sens, tmp_path / "fp32.onnx", 0.0, 0.25, build, measure)
    assert none == [] and same == tmp_path / "fp32.onnx" and e == 0.0


def test_the_concat_split_is_the_same_function(tmp_path, student):
    import onnx
    import onnxruntime as ort

    from atbsn import export_onnx

    export_onnx(student, tmp_path / "s.onnx")
    m = onnx.load(str(tmp_path / "s.onnx"))
    del m.graph.value_info[:]
    split = split_concat_convs(m, 3)
    ops = [n.op_type for n in split.graph.node]
    assert "Concat" not in ops or ops.count("Conv") > 17
    x = (np.random.default_rng(0).random((1, 3, 45, 61)) * 255).astype(np.float32)
    a = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"image": x})[0]
    b = ort.InferenceSession(split.SerializeToString()).run(None, {"image": x})[0]
    assert np.abs(a - b).max() <= 1e-3 * max(1, np.abs(a).max() / 255)


def test_atbsn_quantize_then_denoise(tmp_path, photos, student, capsys):
    ckpt = save(student, tmp_path / "s.safetensors")
    assert main(["quantize", str(photos), "-m", str(ckpt), "-o", str(tmp_path / "s-int8"), "--max-error", "0.5",
                 "--crops", "3", "--finetune-steps", "10", "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    net = load(tmp_path / "s-int8.onnx")
    prov = net.provenance
    assert prov["made_by"] == "atbsn quantize" and prov["quantization"]["calibration_crops"] == 3
    assert prov["quantization"]["rms_error_vs_fp32"] <= 0.5 and net.config.arch == "C"
    img = np.concatenate([read_image(photos / "p0.png").astype(np.uint16) * 257,
                          np.full((80, 96, 1), 4000, np.uint16)], 2)
    write_image(tmp_path / "in" / "a.png", img)
    assert main(["denoise", str(tmp_path / "in"), "-m", str(tmp_path / "s-int8.onnx"), "--tile", "32",
                 "-o", str(tmp_path / "out"), "-q"]) == 0
    out = read_image(tmp_path / "out" / "a.png")
    assert out.dtype == np.uint16 and out.shape == img.shape and np.array_equal(out[..., 3], img[..., 3])
    ref = denoise(img, student, engine="torch")
    # the photo is one of the calibration crops: the error the file states is the error it makes, on whichever
    # runtime ``denoise`` picked (OpenVINO on an AVX2 CPU without VNNI once made 2.5x the stated error)
    assert np.sqrt(np.mean((out[..., :3] / 257.0 - ref[..., :3] / 257.0) ** 2)) < 1.25 * prov["quantization"][
        "rms_error_vs_fp32"]
    runs = [denoise(img, net, engine=e).astype(float) for e in prov["quantization"]["runs_on"]]
    assert all(np.abs(r - runs[0]).max() <= 257 for r in runs)  # every runtime the file names agrees to 1/255
    assert main(["info", str(tmp_path / "s-int8.onnx")]) == 0
    assert json.dumps(prov)  # provenance is plain JSON


def test_all_int8_never_falls_back_and_fine_tuning_is_kept_only_if_it_helps(tmp_path, photos, student):
    ckpt = save(student, tmp_path / "s.safetensors")
    assert main(["quantize", str(photos), "-m", str(ckpt), "-o", str(tmp_path / "all"), "--all-int8",
                 "--max-error", "0.001", "--crops", "3", "--finetune-steps", "10", "-q"]) == 0
    q = load(tmp_path / "all.onnx").provenance["quantization"]
    assert q["int8_convs"] == q["convs"] and not q["fp32_convs"] and q["max_error"] is None
    # the file is the fine-tuned one only where fine-tuning lowered the measured error
    assert (q["finetune_steps"] == 10) == (q["rms_error_vs_fp32"] < q["rms_error_before_finetuning"])
    assert q["finetune_steps"] or q["rms_error_vs_fp32"] == q["rms_error_before_finetuning"]


def test_quantize_refusals_are_one_line(tmp_path, photos, student, capsys):
    ckpt = save(student, tmp_path / "s.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["quantize", str(empty), "-m", str(ckpt), "-o", str(tmp_path / "q")]) == 2
    assert main(["quantize", str(photos), "-m", str(ckpt), "-o", str(photos / "q.onnx")]) == 2
    assert main(["quantize", str(photos), "-m", str(ckpt), "-o", str(tmp_path / "q"), "--max-error", "0"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 3 and "no image files" in err[0] and all(ln.startswith("error:") for ln in err)
    with pytest.raises(AtbsnError, match="non-blind"):
        quantize(student, [photos], tmp_path / "q.onnx", k=3)


@pytest.mark.parametrize("native", [True, False])
def test_engine_auto_runs_the_int8_file_only_where_the_cpu_has_vnni(tmp_path, photos, student, capsys, monkeypatch,
                                                                     native):
    """``atbsn quantize`` records its file for the network; ``--engine auto`` then runs it where the CPU computes
    int8 natively (VNNI or AMX) and fp32 elsewhere; ``info`` and ``denoise -v`` say which and why."""

    ckpt = save(student, tmp_path / "s.safetensors")
    assert main(["quantize", str(photos), "-m", str(ckpt), "-o", str(tmp_path / "s-int8"), "--max-error", "0.5",
                 "--crops", "3", "-q"]) == 0
    why = "the CPU has avx512_vnni" if native else "the CPU has no VNNI or AMX: int8 gains little over fp32 there"
    monkeypatch.setattr(engines, "int8_support", lambda: (native, why))
    monkeypatch.setattr(engines, "_SAID", set())
    capsys.readouterr()
    assert main(["info", str(ckpt)]) == 0
    said = json.loads(capsys.readouterr().out)["cpu_engine"]
    assert ("s-int8.onnx" in said) and said.startswith("int8" if native else "fp32") and why in said
    assert main(["denoise", str(photos / "p0.png"), "-m", str(ckpt), "-o", str(tmp_path / "out"), "-v"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("engine: int8" if native else "engine: fp32")
    assert ("engine: int8, s-int8.onnx" in out) == native
    got = read_image(tmp_path / "out" / "p0.png")
    img = read_image(photos / "p0.png")
    int8 = denoise(img, load(tmp_path / "s-int8.onnx"))
    assert np.array_equal(got, int8) == native  # the int8 file's output exactly, or not at all


@pytest.mark.parametrize(("flags", "cap", "native"), [({"avx512_vnni"}, None, True), ({"avx_vnni"}, None, True),
                                                      ({"amx_int8"}, None, True), ({"avx2", "fma"}, None, False),
                                                      ({"avx512_vnni"}, "AVX2", False),
                                                      ({"avx512_vnni"}, "AVX512_CORE_VNNI", True)])
def test_int8_is_native_only_with_vnni_or_amx_and_the_cap_is_honoured(monkeypatch, flags, cap, native):
    from atbsn import runtime

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    ok, why = runtime.int8_support()
    assert ok is native and why
