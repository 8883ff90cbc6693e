"""Bad input, tried as a new user would: each case gives one line naming the file and a non-zero exit code,
changes no input and leaves no partial output. One row per defect of issue 17 (the table), then the cases
that need more than one command."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from atbsn import Student
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.images import read_photo, write_image

IMG = np.linspace(30, 220, 24 * 20 * 3).reshape(24, 20, 3).astype(np.uint8)


class _RunsCode:  # a pickle that would run a shell command when loaded
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _model(root: Path) -> str:
    torch.manual_seed(0)
    return str(save(Student("A"), root / "model.safetensors"))


def _photos(root: Path) -> str:
    write_image(root / "in" / "a.png", IMG)
    return str(root / "in")


# ------------------------------------------------------------------------------- setups: each returns argv
def nan_weights(r):
    m = Student("A")
    with torch.no_grad():
        next(m.parameters())[0] = float("nan")
    save(m, r / "nan.safetensors")
    return ["denoise", _photos(r), "-o", str(r / "out"), "-m", str(r / "nan.safetensors")]


def same_name_two_folders(r):
    write_image(r / "a" / "x.png", IMG)
    write_image(r / "b" / "x.png", IMG)
    return ["denoise", str(r / "a" / "x.png"), str(r / "b" / "x.png"), "-o", str(r / "out"), "-m", _model(r)]


def float_tiff_out_of_range(r):
    import tifffile

    (r / "in").mkdir()
    tifffile.imwrite(r / "in" / "f.tif", np.full((8, 8, 3), 7e4, np.float32), photometric="rgb")
    return ["denoise", str(r / "in"), "-o", str(r / "out"), "-m", _model(r)]


def unwritable(command):
    def setup(r):
        (r / "afile").write_text("x")
        bad = str(r / "afile" / "sub")
        photos, model = _photos(r), _model(r)
        pairs = r / "pairs"
        write_image(pairs / "noisy" / "p.png", IMG)
        write_image(pairs / "clean" / "p.png", IMG)
        return {"train": ["train", photos, "-o", bad, "--steps", "1"],
                "distill": ["distill", photos, "--teacher", model, "-o", bad, "--steps", "1"],
                "fit": ["fit", photos, "-o", bad + "/m.safetensors"],
                "export": ["export", "-m", model, "-o", bad + "/m.onnx"],
                "sweep": ["sweep", str(pairs), "-m", model, "-o", bad],
                "submit": ["submit", "sidd", str(r / "none.mat"), "-m", model, "-o", bad + "/s.csv"],
                "evaluate": ["evaluate", str(pairs), "-m", model, "-o", bad],
                "denoise": ["denoise", photos, "-m", model, "-o", bad]}[command]
    return setup


def bad_metadata(kind):
    def setup(r):
        meta = {"format": "atbsn", "format_version": "1", "config": json.dumps({"arch": "A"})}
        tensors = {"enc1.conv.conv.weight": torch.zeros(48, 3, 3, 3)}
        if kind == "no config":
            del meta["config"]
        elif kind == "broken json":
            meta["config"] = "{arch: A"
        elif kind == "future version":
            meta["format_version"] = "9"
        elif kind == "1-D tensor":
            meta = None
            tensors = {"enc1.conv.conv.weight": torch.zeros(48)}
        save_file(tensors, r / "bad.safetensors", metadata=meta)
        return ["info", str(r / "bad.safetensors")]
    return setup


def empty_folder(r):
    (r / "empty").mkdir()
    return ["denoise", str(r / "empty"), "-o", str(r / "out"), "-m", _model(r)]


def unmatched_pairs(r):
    write_image(r / "pairs" / "noisy" / "p.png", IMG)
    write_image(r / "pairs" / "noisy" / "q.png", IMG)
    write_image(r / "pairs" / "clean" / "p.png", IMG)
    return ["evaluate", str(r / "pairs"), "-m", _model(r)]


def empty_sidd_blocks(r):
    from scipy.io import savemat

    savemat(r / "BenchmarkNoisyBlocksSrgb.mat", {"BenchmarkNoisyBlocksSrgb": np.zeros((0, 32, 256, 256, 3), np.uint8)})
    return ["submit", "sidd", str(r / "BenchmarkNoisyBlocksSrgb.mat"), "-m", _model(r), "-o", str(r / "s.csv")]


def pickled_state(r):
    photos = _photos(r)
    run = r / "run"
    main(["train", photos, "-o", str(run), "--steps", "2", "--width", "8", "--crop", "16", "--batch", "1", "-q",
          "--stop-after", "1"])
    with open(run / "state.pt", "wb") as f:
        pickle.dump(_RunsCode(), f)
    return ["train", photos, "-o", str(run), "--resume", "-q"]


def bad_option(flags):
    def setup(r):
        return ["train", _photos(r), "-o", str(r / "run"), *flags]
    return setup


@dataclass
class Case:
    defect: str
    setup: Callable[[Path], list[str]]
    message: str  # the one line must contain this


CASES = [
    Case("1 code in a run folder", pickled_state, "unreadable resume state"),
    Case("2 NaN weights", nan_weights, "NaN or infinite"),
    Case("3 one output name for two inputs", same_name_two_folders, "would both be written"),
    Case("6 float samples beyond any range", float_tiff_out_of_range, "beyond any known range"),
    *[Case(f"8 unwritable -o: {c}", unwritable(c), "cannot write there") for c in
      ("train", "distill", "fit", "export", "sweep", "submit", "evaluate", "denoise")],
    Case("9 --save-every 0", bad_option(["--save-every", "0"]), "--save-every must be at least 1"),
    Case("9 --steps -5", bad_option(["--steps", "-5"]), "--steps must be at least 1"),
    Case("9 --crop 0", bad_option(["--crop", "0"]), "--crop must be at least 8"),
    *[Case(f"10 checkpoint: {k}", bad_metadata(k), f"bad.safetensors: {m}") for k, m in
      (("no config", "atbsn checkpoint without its model configuration"),
       ("broken json", "broken model configuration"), ("future version", "atbsn checkpoint format version '9'"),
       ("1-D tensor", "enc1.conv.conv.weight has shape (48,), not a convolution's 4-D weight"))],
    Case("11 empty folder", empty_folder, "no image files"),
    Case("11 unmatched pair", unmatched_pairs, "no image of the same name"),
    Case("11 no SIDD blocks", empty_sidd_blocks, "holds no blocks"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.defect for c in CASES])
def test_bad_input_gives_one_line_changes_nothing_and_leaves_no_partial_output(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code = main(argv)
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line)
    assert code != 0
    assert case.message in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    after = _snapshot(tmp_path)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, changed  # no input (or anything else that existed) changed
    assert not [p for p in after if p not in before and Path(p).name.startswith(".")]  # no temporaries
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------- cases beyond one command
def test_a_diverging_run_stops_at_the_step_and_keeps_finite_checkpoints(tmp_path):
    from atbsn import Loss, Method, RunConfig, Trainer
    from atbsn.errors import AtbsnError

    class Diverges(Loss):
        def forward(self, model, y, mask):
            out = (model(y) - y).abs().mean()
            return out * float("nan") if self.step >= 2 else out

        def at(self, step, steps):
            self.step = step

    _photos(tmp_path)
    cfg = RunConfig(data=[str(tmp_path / "in")], out=str(tmp_path / "run"), steps=5, batch=1, crop=16, save_every=1)
    trainer = Trainer(cfg, lambda c, d: Method(Student("A"), Diverges(), "diverges"))
    with pytest.raises(AtbsnError, match="loss became nan at step 3"):
        trainer.run(progress=False)
    saved = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert int(saved["step"]) == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_an_existing_output_is_never_replaced_by_a_concurrent_writer(tmp_path):
    write_image(tmp_path / "x.png", IMG)
    before = (tmp_path / "x.png").read_bytes()
    with pytest.raises(FileExistsError):
        write_image(tmp_path / "x.png", IMG[::-1], exclusive=True)
    assert (tmp_path / "x.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_compressed_float_multipage_tiffs_with_profiles_survive_denoising(tmp_path):
    import tifffile

    icc = b"\x00\x00\x02\x0cfake-icc-profile-bytes" * 4
    pages = [np.full((16, 12, 3), 120.0, np.float32), np.full((16, 12, 3), 60.0, np.float32)]  # 0..255 floats
    (tmp_path / "in").mkdir()
    with tifffile.TiffWriter(tmp_path / "in" / "s.tif") as t:
        for p in pages:
            t.write(p, photometric="rgb", compression="zlib", extratags=[(34675, "B", len(icc), icc, True)])
    tifffile.imwrite(tmp_path / "in" / "lzw.tif", IMG, photometric="rgb", compression="lzw")
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", _model(tmp_path), "-q"]) == 0
    out, info = read_photo(tmp_path / "out" / "s.tif")
    assert len(out) == 2 and out[0].dtype == np.float32 and info.icc == icc
    assert out[0].max() > 2.0  # kept on its 0..255 scale, not clipped to 0..1
    assert read_photo(tmp_path / "out" / "lzw.tif")[0][0].shape == (24, 20, 3)


def test_profiles_and_exif_are_kept_and_what_cannot_be_kept_is_said(tmp_path, capsys):
    icc = Image.new("RGB", (1, 1)).info.get("icc_profile") or b"\x00\x00\x01\x00icc" * 8
    im = Image.fromarray(IMG)
    exif = im.getexif()
    exif[0x010F] = "TestCam"  # Make
    (tmp_path / "i").mkdir()
    im.save(tmp_path / "i" / "c.jpg", icc_profile=icc, exif=exif)
    Image.fromarray(IMG).convert("P").save(tmp_path / "i" / "pal.png")
    assert main(["denoise", str(tmp_path / "i"), "-o", str(tmp_path / "o"), "-m", _model(tmp_path), "-q"]) == 0
    with Image.open(tmp_path / "o" / "c.jpg") as out:
        assert out.info.get("icc_profile") == icc and out.getexif().get(0x010F) == "TestCam"
    assert "palette image written as RGB" in capsys.readouterr().out


def test_16_bit_gray_alpha_reads_as_gray_alpha_and_huge_images_are_not_refused(tmp_path, monkeypatch):
    import zlib

    png = tmp_path / "ga.png"  # no common writer makes a 16-bit gray + alpha PNG: built chunk by chunk
    ga = np.stack([np.full((10, 12), 40000), np.full((10, 12), 65535)], -1).astype(">u2")
    raw = b"".join(b"\x00" + ga[y].tobytes() for y in range(10))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (12).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes([16, 4, 0, 0, 0])
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    a = read_photo(png)[0][0]
    assert a.shape == (10, 12, 2) and a.dtype == np.uint16 and a[0, 0, 0] == 40000 and a[0, 0, 1] == 65535
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # as if the photo were over Pillow's 179 MP limit
    write_image(tmp_path / "big.png", IMG)
    assert read_photo(tmp_path / "big.png")[0][0].shape == IMG.shape
    assert Image.MAX_IMAGE_PIXELS == 50  # the limit is lifted for our read only


def test_a_resumed_run_logs_each_step_once_and_clears_stale_temporaries(tmp_path):
    photos = _photos(tmp_path)
    run = tmp_path / "run"
    flags = ["--steps", "4", "--width", "8", "--crop", "16", "--batch", "1", "-q"]
    assert main(["train", photos, "-o", str(run), *flags, "--stop-after", "2"]) == 0
    with open(run / "log.csv", "a") as f:  # a kill after step 3 was logged but before it was saved
        f.write("3,loss,0.5\n")
    (run / ".state.pt.abc.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    assert main(["train", photos, "-o", str(run), "--resume", "-q"]) == 0
    steps = [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()[1:] if ",loss," in line]
    assert steps == ["1", "2", "3", "4"]
    assert not list(run.glob(".*"))
