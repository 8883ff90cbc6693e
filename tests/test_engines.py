"""The CPU runtimes: every engine denoises as PyTorch does (tiles, 16-bit, alpha), auto measures once and
remembers, an exported ONNX file is a model, and a wrong request is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atbsn import AtbsnError, Student, denoise, denoise_tensor, export_onnx
from atbsn.checkpoint import load, save
from atbsn.cli import main
from atbsn.deploy import engines
from atbsn.images import read_image, write_image
from atbsn.runtime import cache_dir

RUNTIMES = [e for e in engines.RUNTIMES if engines.installed(e)]
needs_runtimes = pytest.mark.skipif(not RUNTIMES, reason="needs onnxruntime or openvino (pip install 'atbsn[cpu]')")


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return Student("C", width=8).eval()


def _image(h=70, w=93, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return (rng.random((h, w, c)) * top).astype(dtype)


@needs_runtimes
@pytest.mark.parametrize("engine", RUNTIMES)
def test_each_runtime_denoises_as_pytorch_does(student, engine):
    x = torch.rand(1, 3, 70, 93) * 255
    ref = denoise_tensor(x, student, engine="torch")
    got = denoise_tensor(x, student, engine=engine)
    assert torch.allclose(got, ref, atol=1e-3 * max(1.0, ref.abs().max().item() / 255), rtol=0)
    tiled = denoise_tensor(x, student, engine=engine, tile=32, margin=32)
    assert torch.allclose(tiled, denoise_tensor(x, student, engine="torch", tile=32, margin=32), atol=1e-3, rtol=0)


@needs_runtimes
@pytest.mark.parametrize("engine", RUNTIMES)
def test_inputs_too_small_to_reflect_run_as_in_pytorch(student, engine):
    """The graph pads a student to its multiple by reflection, which needs the pad below the size; the network
    replicates instead when it is not (a tiny photo, the last tile's window), and so does the runtime."""
    for h, w in [(15, 15), (16, 40), (40, 9), (17, 17)]:
        x = torch.rand(1, 3, h, w) * 255
        ref = denoise_tensor(x, student, engine="torch")
        assert torch.allclose(denoise_tensor(x, student, engine=engine), ref, atol=1e-3, rtol=0), (h, w)


@needs_runtimes
def test_a_runtime_keeps_16_bit_and_alpha(student):
    img = _image(c=4, dtype=np.uint16)
    out = denoise(img, student, engine=RUNTIMES[-1])
    assert out.dtype == np.uint16 and out.shape == img.shape
    assert np.array_equal(out[..., 3], img[..., 3])
    ref = denoise(img, student, engine="torch")
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 257  # one 8-bit level on the 16-bit scale


@needs_runtimes
def test_auto_measures_once_and_remembers(student, monkeypatch):
    monkeypatch.setattr(engines, "PROBE_PIXELS", 0)
    monkeypatch.setattr(engines, "PROBE_SIDE", 64)
    img = _image()
    first = denoise(img, student)  # engine auto by default
    memory = json.loads((cache_dir() / "engines.json").read_text())
    (entry,) = memory.values()
    assert set(entry["seconds"]) == {"torch", *RUNTIMES} and entry["engine"] in entry["seconds"]
    monkeypatch.setattr(engines, "probe", lambda *a, **kw: pytest.fail("probed again"))
    again = denoise(img, student)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - denoise(img, student, engine="torch").astype(int)).max() <= 1


@pytest.mark.slow
@needs_runtimes
def test_threads_asking_at_once_share_one_export_and_one_choice(monkeypatch):
    """45 row 1: the page's sessions asked for the engine of one network at once and each exported it (parallel
    exports broke each other). Now the first export and probe serve every thread."""
    import threading

    monkeypatch.setattr(engines, "PROBE_PIXELS", 0)
    monkeypatch.setattr(engines, "PROBE_SIDE", 64)
    torch.manual_seed(1)
    net = Student("C", width=4).eval()  # weights no other test exports: this test's export is real
    exports, probes = [], []
    export, probe = engines.export_onnx, engines.probe
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **kw: exports.append(1) or export(*a, **kw))
    monkeypatch.setattr(engines, "probe", lambda *a, **kw: probes.append(1) or probe(*a, **kw))
    got = []
    threads = [threading.Thread(target=lambda: got.append(
        engines.runner(net, None, "auto", "fp32", torch.device("cpu"), 10**7))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len({id(g) for g in got}) == 1  # one runner for all
    assert exports == [1] and probes == [1]


def test_auto_on_a_small_job_is_pytorch_without_a_probe(student, monkeypatch):
    monkeypatch.setattr(engines, "probe", lambda *a, **kw: pytest.fail("a small job probed"))
    img = _image()
    assert np.array_equal(denoise(img, student), denoise(img, student, engine="torch"))
    assert not (cache_dir() / "engines.json").exists()


@needs_runtimes
def test_an_exported_file_is_a_model(tmp_path, student):
    """``atbsn export`` writes the configuration into the file; ``atbsn denoise`` takes the file as a model."""
    ckpt = save(student, tmp_path / "s.safetensors")
    assert main(["export", "-m", str(ckpt), "-o", str(tmp_path / "s.onnx")]) == 0
    write_image(tmp_path / "in" / "a.png", _image())
    assert main(["denoise", str(tmp_path / "in"), "-m", str(tmp_path / "s.onnx"), "-o", str(tmp_path / "o1"),
                 "-q"]) == 0
    assert main(["denoise", str(tmp_path / "in"), "-m", str(ckpt), "--engine", "torch", "-o", str(tmp_path / "o2"),
                 "-q"]) == 0
    a, b = read_image(tmp_path / "o1" / "a.png"), read_image(tmp_path / "o2" / "a.png")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    net = load(tmp_path / "s.onnx")
    assert isinstance(net, engines.OnnxNet) and net.config.arch == student.config.arch


@needs_runtimes
def test_wrong_requests_are_one_line(tmp_path, student, monkeypatch, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(AtbsnError, match="bad.onnx: not a readable ONNX file"):
        load(bad)
    monkeypatch.setattr(engines, "installed", lambda e: e == "torch")
    with pytest.raises(AtbsnError, match="openvino is not installed"):
        denoise(_image(), student, engine="openvino")
    ckpt = save(student, tmp_path / "s.safetensors")
    write_image(tmp_path / "in" / "a.png", _image())
    assert main(["denoise", str(tmp_path / "in"), "-m", str(ckpt), "--engine", "onnxruntime",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime is not installed" in err[0]


@needs_runtimes
def test_r3_and_an_onnx_file_on_a_gpu_are_refused(tmp_path, student):
    with pytest.raises(AtbsnError, match="--r3"):
        engines.check(student, RUNTIMES[0], torch.device("cpu"), True)
    export_onnx(student, tmp_path / "s.onnx")
    with pytest.raises(AtbsnError, match="runs on the CPU"):
        engines.check(load(tmp_path / "s.onnx"), "auto", torch.device("cuda"), False)


@needs_runtimes
def test_an_onnx_file_without_atbsn_metadata_is_refused(tmp_path, student):
    import onnx

    export_onnx(student, tmp_path / "s.onnx")
    m = onnx.load(str(tmp_path / "s.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "plain.onnx"))
    with pytest.raises(AtbsnError, match="without atbsn's model configuration"):
        load(tmp_path / "plain.onnx")
    net = load(tmp_path / "s.onnx")
    with pytest.raises(AtbsnError, match="not PyTorch"):
        denoise(_image(), net, engine="torch")
