from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def documentation() -> list[tuple[str, str]]:
    """(file, text) of the README and of each page in docs/, in the site's order (mkdocs.yml's nav)."""
    nav = re.findall(r"^\s+- [^:]+: ([\w-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = [("README.md", (ROOT / "README.md").read_text())]
    return pages + [(f"docs/{p}", (ROOT / "docs" / p).read_text()) for p in nav if p != "index.md"]


def doc_section(title: str) -> str:
    """The ``## title`` section of whichever documentation file holds it."""
    for _, text in documentation():
        if f"\n## {title}\n" in text:
            return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    raise AssertionError(f"no documentation file has a section '## {title}'")
# The one place tests take their device from: ATBSN_TEST_DEVICE=cuda runs the device tests on a GPU.
DEVICE = torch.device(os.environ.get("ATBSN_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("ATBSN_TEST_DEVICE=cuda but no CUDA device is visible")
    return DEVICE


needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="a CUDA test: run with ATBSN_TEST_DEVICE=cuda")


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or a clean skip when the test data is not beside the clone."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (test data beside the repository)")
    return p


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test gets a cache of its own (released weights, exported ONNX files, the engines' remembered
    choices): nothing is read from or left in the user's cache. Tests that fill one set ATBSN_HOME themselves."""
    monkeypatch.setenv("ATBSN_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def widest_sum(model: torch.nn.Module) -> int:
    """Products summed for one output of the model's widest convolution (in_channels x kernel area)."""
    return max(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
               for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def assert_sums_close(actual: torch.Tensor, expected: torch.Tensor, terms: int, msg: str | None = None) -> None:
    """``actual`` and ``expected`` are the same sums of ``terms`` products, computed in another order (another
    kernel, memory layout or instruction set), in the precision of ``expected``.

    Recursive summation of n terms is off the exact sum by at most (n - 1) * eps * sum|x_i| (Higham, Accuracy
    and Stability of Numerical Algorithms, 4.2), so two orders differ by at most about twice that. Taking the
    tensor's largest magnitude as the scale of the terms, the allowed difference is 2 * terms * eps * max|x|:
    set from the arithmetic, not from one machine's kernels. Measured differences are 10 to 100 times smaller on
    AVX-512 and on AVX2 alike; a wrong pixel, shift or weight is off by the order of the values themselves.
    """
    eps = torch.finfo(expected.dtype).eps
    atol = 2 * terms * eps * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=msg)


def fake_dnd(root, images, boxes):
    """DND's layout: images_srgb/NNNN.mat (v7.3, InoisySRGB) and info.mat (v7.3, info.boundingboxes refs)."""
    (root / "images_srgb").mkdir(parents=True)
    for i, img in enumerate(images):
        with h5py.File(root / "images_srgb" / f"{i + 1:04d}.mat", "w") as f:
            f["InoisySRGB"] = img.T  # MATLAB stores column-major
    with h5py.File(root / "info.mat", "w") as f:
        refs = []
        for i, b in enumerate(boxes):
            ds = f.create_dataset(f"#refs#/b{i}", data=np.asarray(b, np.float64).T)
            refs.append(ds.ref)
        info = f.create_group("info")
        info.create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))


def assert_close_to_scale(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    """``ours`` equals the authors' ``ref`` up to ``rel`` of its largest value (the fixtures' READMEs give the
    spread of two runs of the authors' own code: 1e-6 to 5e-6 of the scale)."""
    ours = ours.detach()
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    err, scale = float((ours - ref).abs().max()), float(ref.abs().max())
    assert err <= rel * scale, f"max difference {err:.3g} on a scale of {scale:.3g}"


def _export_once_per_session() -> None:
    """Each network is exported to ONNX once per test session (the exporter traces for 10 to 60 s; test_engines
    alone exported the same student four times). Later exports of the same weights, configuration, blind spot and
    options write the first file's bytes through ``atomic_write`` again (so a failing disk still fails) and return
    its measured difference. The file is what a new export would write: nothing in it depends on the call."""
    import atexit
    import inspect
    import json
    import shutil
    import sys
    import tempfile

    from atbsn import files
    from atbsn.deploy import export
    from atbsn.deploy.engines import digest

    original = export.export_onnx
    signature = inspect.signature(original)
    store = Path(tempfile.mkdtemp(prefix="atbsn-test-exports-"))
    atexit.register(shutil.rmtree, store, True)
    done: dict[tuple, tuple[Path, float]] = {}

    def export_onnx(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()  # the product's own defaults, whatever they become
        options = {k: v for k, v in call.arguments.items() if k not in ("model", "path")}
        key = (digest(call.arguments["model"]), json.dumps(options, sort_keys=True, default=str))
        if key not in done:
            err = original(*args, **kwargs)
            kept = store / f"{len(done)}.onnx"
            shutil.copyfile(call.arguments["path"], kept)
            done[key] = (kept, err)
            return err
        kept, err = done[key]
        export.check_export(call.arguments["model"], call.arguments["path"])  # the product's refusals, replayed too
        files.atomic_write(call.arguments["path"], lambda tmp: shutil.copyfile(kept, tmp))
        return err

    for name, module in list(sys.modules.items()):
        if (name == "atbsn" or name.startswith("atbsn.")) and getattr(module, "export_onnx", None) is original:
            module.export_onnx = export_onnx


_export_once_per_session()


# ------------------------------------------------------------------ files cameras and phones write
def make_dng(path, h: int = 64, w: int = 96, seed: int = 0, noise: float = 40.0):
    """A DNG of a smooth colour scene with sensor noise: 12 bits, black 64, white 4095, RGGB, camera tags."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([0.3 + 0.2 * np.sin(xx / 9), 0.4 + 0.2 * np.cos(yy / 7), 0.35 + 0.1 * np.sin((xx + yy) / 11)], -1)
    cfa = np.empty((h, w))
    cfa[0::2, 0::2], cfa[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    raw = np.clip(64 + cfa * 1000 + rng.normal(0, noise, cfa.shape), 0, 4095).astype(np.uint16)

    def rational(values, signed=False):
        return [x for v in values for x in (round(v * 10000), 10000)]

    tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50706, "B", 4, (1, 4, 0, 0), True),
            (50708, "s", 0, "atbsn test camera", True), (50714, "H", 1, (64,), True), (50717, "H", 1, (4095,), True),
            (50721, "2i", 9, rational([0.6722, -0.1356, -0.0596, -0.4419, 1.2133, 0.2555, -0.0727, 0.1571, 0.6143]),
             True),
            (50728, "2I", 3, rational([0.5, 1.0, 0.6]), True), (50778, "H", 1, (21,), True),
            (271, "s", 0, "atbsn", True), (272, "s", 0, "test camera", True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, raw, photometric=32803, extratags=tags, subfiletype=0)
    return path


def make_heic(path, h: int = 40, w: int = 52, seed: int = 0, alpha: bool = False):
    """An 8-bit HEIC with EXIF (camera make) and an ICC profile."""
    import pillow_heif
    from PIL import Image, ImageCms

    pillow_heif.register_heif_opener()
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (h, w, 4 if alpha else 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[271] = "phone maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="HEIF", quality=95, exif=exif.tobytes(), icc_profile=icc)
    return path, icc


def make_clip(path, frames: int = 40, w: int = 64, h: int = 48, rate: int = 24, codec: str = "libx264",
              audio: bool = True, pix_fmt: str | None = None, pts=None, seed: int = 0):
    """A clip of a moving colour pattern with noise; ``pts``: the frames' timestamps (1/rate units)."""
    import av

    rng = np.random.default_rng(seed)
    fmt = {".mp4": "mp4", ".mkv": "matroska"}[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(codec, rate=rate)
        v.width, v.height = w, h
        v.pix_fmt = pix_fmt or ("bgr0" if codec == "ffv1" else "yuv420p")
        v.codec_context.thread_count = 1
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(frames):
            img = np.stack([120 + 60 * np.sin(xx / 7 + i / 5 + c) for c in range(3)], -1) + rng.normal(0, 15, (h, w, 3))
            f = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = (pts[i] if pts else i), Fraction(1, rate)
            for p in v.encode(f.reformat(format=v.pix_fmt)):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    if audio:  # a second pass: the same video with an AAC track beside it
        _add_audio(path, frames / rate)
    return path


def _add_audio(path, seconds: float):
    import av

    tmp = path.with_name("a_" + path.name)
    with av.open(str(path)) as inp, av.open(str(tmp), "w", format={".mp4": "mp4", ".mkv": "matroska"}[path.suffix]) \
            as out:
        vout = out.add_stream_from_template(inp.streams.video[0])
        aout = out.add_stream("aac", rate=16000)
        aout.layout = "mono"
        for p in inp.demux(inp.streams.video[0]):
            if p.size:
                p.stream = vout
                out.mux(p)
        n = int(16000 * seconds)
        samples = (0.2 * np.sin(np.arange(n) / 10)).astype(np.float32)[None]
        for s in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(samples[:, s:s + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, s
            for p in aout.encode(af):
                out.mux(p)
        for p in aout.encode():
            out.mux(p)
    tmp.replace(path)
