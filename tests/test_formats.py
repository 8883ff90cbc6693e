"""What cameras and phones write: camera RAW (LibRaw through rawpy) and HEIC (pillow-heif), on files the tests make.

The DNG is a 12-bit RGGB mosaic written by tifffile with the tags LibRaw needs (DNGVersion, CFARepeatPatternDim,
CFAPattern, BlackLevel, WhiteLevel, ColorMatrix1, AsShotNeutral); the HEIC files are written by pillow-heif.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import make_dng, make_heic

from atbsn import Student
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.images import RawDevelopment, read_photo, set_raw_development

rawpy = pytest.importorskip("rawpy")
pillow_heif = pytest.importorskip("pillow_heif")


@pytest.fixture
def student(tmp_path):
    torch.manual_seed(0)
    return str(save(Student("A"), tmp_path / "student.safetensors"))


@pytest.fixture(autouse=True)
def _default_development():
    yield
    set_raw_development(RawDevelopment())


def test_a_raw_file_is_developed_as_librraw_does_with_the_documented_defaults(tmp_path):
    """Camera white balance, sRGB, 16 bits, no automatic brightening, no LibRaw noise reduction: pixel for pixel
    what rawpy's own postprocess gives with those settings; the development and camera recorded."""
    dng = make_dng(tmp_path / "x.dng")
    (a,), info = read_photo(dng)
    with rawpy.imread(str(dng)) as raw:
        ref = raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16,
                              output_color=rawpy.ColorSpace.sRGB)
    assert a.dtype == np.uint16 and a.shape == (64, 96, 3) and np.array_equal(a, ref)
    developed = json.loads(info.description)
    assert developed["wb"] == "camera" and developed["bits"] == 16 and developed["by"].startswith("LibRaw")
    assert info.camera == {271: "atbsn", 272: "test camera"}


def test_the_raw_options_change_the_development(tmp_path):
    dng = make_dng(tmp_path / "x.dng")
    base = read_photo(dng)[0][0]
    set_raw_development(RawDevelopment(half_size=True))
    assert read_photo(dng)[0][0].shape == (32, 48, 3)
    set_raw_development(RawDevelopment(wb="auto"))
    assert not np.array_equal(read_photo(dng)[0][0], base)
    set_raw_development(RawDevelopment(bright=2.0))
    assert read_photo(dng)[0][0].astype(float).mean() > 1.2 * base.astype(float).mean()  # 2x linear, gamma-encoded


def test_denoise_a_raw_file_writes_a_16_bit_tiff_with_its_development_and_camera(tmp_path, student, capsys):
    import tifffile

    dng = make_dng(tmp_path / "photos" / "x.dng")
    assert main(["denoise", str(dng), "-o", str(tmp_path / "out"), "--model", student, "-q", "--raw-half"]) == 0
    out = tmp_path / "out" / "x.tif"
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.asarray().dtype == np.uint16 and page.shape == (32, 48, 3)
        assert page.tags[271].value == "atbsn" and page.tags[272].value == "test camera"
        assert json.loads(page.description)["half_size"] is True
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["x.dng"]  # never a RAW written


def test_fit_on_a_folder_of_raw_files_and_info_on_one(tmp_path, capsys):
    for i in range(2):
        make_dng(tmp_path / "raws" / f"r{i}.dng", 96, 128, seed=i)
    assert main(["info", str(tmp_path / "raws" / "r0.dng")]) == 0
    assert "noise sigma" in capsys.readouterr().out
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(tmp_path / "raws"), "-o", str(model), "--width", "4", "--crop", "32", "--batch", "2",
                 "--teacher-steps", "2", "--student-steps", "2", "--precision", "fp32", "-q"]) == 0
    assert model.exists()


@pytest.mark.parametrize(("content", "says"), [(b"II*\x00\x08\x00\x00\x00" + b"\x00" * 40, "RAW"),
                                                (b"not a raw file at all", "RAW")])
def test_a_bad_raw_file_is_one_line_naming_it(tmp_path, student, capsys, content, says):
    bad = tmp_path / "photos" / "bad.nef"
    bad.parent.mkdir()
    bad.write_bytes(content)
    assert main(["denoise", str(bad), "-o", str(tmp_path / "out"), "--model", student, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and says in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_truncated_raw_file_is_one_line_naming_it(tmp_path, student, capsys):
    dng = make_dng(tmp_path / "photos" / "cut.dng")
    dng.write_bytes(dng.read_bytes()[:3000])
    assert main(["denoise", str(dng), "-o", str(tmp_path / "out"), "--model", student, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(dng) in err[0]


def test_a_missing_extra_is_one_line_naming_it(tmp_path, student, capsys, monkeypatch):
    dng = make_dng(tmp_path / "photos" / "x.dng")
    heic, _ = make_heic(tmp_path / "photos" / "y.heic")
    monkeypatch.setitem(sys.modules, "rawpy", None)  # an import of it now fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    import atbsn.images

    monkeypatch.setattr(atbsn.images, "_HEIF_OPENER", [])
    assert main(["denoise", str(dng), str(heic), "-o", str(tmp_path / "out"), "--model", student, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any(str(dng) in line and "pip install 'atbsn[raw]'" in line for line in err)
    assert any(str(heic) in line and "pip install 'atbsn[heic]'" in line for line in err)


def test_heic_in_heic_out_with_exif_and_colour_profile(tmp_path, student):
    from PIL import Image

    heic, icc = make_heic(tmp_path / "photos" / "y.heic")
    assert main(["denoise", str(heic), "-o", str(tmp_path / "out"), "--model", student, "-q"]) == 0
    out = tmp_path / "out" / "y.heic"
    with Image.open(out) as im:
        assert im.format == "HEIF" and im.size == (52, 40) and im.mode == "RGB"
        assert im.getexif()[271] == "phone maker" and im.info.get("icc_profile") == icc
    (a,), info = read_photo(heic)
    assert a.shape == (40, 52, 3) and a.dtype == np.uint8 and info.icc == icc


def test_heic_with_alpha_keeps_it_and_16_bit_output_is_refused_on_one_line(tmp_path, student):
    from atbsn.errors import AtbsnError
    from atbsn.images import write_photo

    heic, _ = make_heic(tmp_path / "photos" / "a.heic", alpha=True)
    (a,), _ = read_photo(heic)
    assert a.shape[2] == 4
    with pytest.raises(AtbsnError, match="8-bit samples"):
        write_photo(tmp_path / "deep.heic", [np.zeros((8, 8, 3), np.uint16)])


def test_the_page_takes_raw_and_heic_uploads_and_downloads_their_results(tmp_path, student):
    """A RAW upload is developed as denoise develops it (its preview too) and its full-resolution result is a
    16-bit TIFF; a HEIC upload's result is a HEIC."""
    import time

    from atbsn.ui import App

    dng = make_dng(tmp_path / "x.dng")
    heic, _ = make_heic(tmp_path / "y.heic")
    app = App()
    try:
        s = app.session(app.new_session()["session"])
        names = {}
        for path in (dng, heic):
            photo = app.photo(s, app.add_photo(s, path.name, path.read_bytes())["id"])
            assert np.array_equal(photo.image, read_photo(path)[0][0]) and photo.preview.startswith(b"\x89PNG")
            jid = app.export(s, photo, student)["job"]
            for _ in range(600):
                state = app.job(s, jid)
                if state["finished"]:
                    break
                time.sleep(0.05)
            assert state["error"] is None, state
            names[path.suffix] = state["result"]["name"]
        assert names == {".dng": "x.tif", ".heic": "y.heic"}
    finally:
        app.close()
