from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atbsn.errors import AtbsnError
from atbsn.images import _orient, read_image, write_image


@pytest.mark.parametrize(
    ("name", "shape", "dtype"),
    [
        ("a.png", (5, 7, 3), np.uint8),
        ("a.png", (5, 7, 3), np.uint16),
        ("a.png", (5, 7, 4), np.uint8),
        ("a.png", (5, 7, 4), np.uint16),
        ("g.png", (5, 7, 1), np.uint16),
        ("a.tif", (9, 11, 3), np.uint16),
        ("a.tif", (9, 11, 1), np.uint8),
    ],
)
def test_lossless_formats_round_trip_exactly(tmp_path, name, shape, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    write_image(tmp_path / name, a)
    b = read_image(tmp_path / name)
    assert b.dtype == dtype and b.shape == shape and np.array_equal(a, b)


def test_exif_orientation_is_applied_on_read(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[0, 0] = 255  # marker in the top-left corner of the stored pixels
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[274] = 6  # display = stored rotated 90 degrees clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    b = read_image(tmp_path / "r.jpg")
    assert b.shape == (6, 4, 3)
    assert b[0, -1].mean() > 128  # top-left moved to top-right


def test_orientation_table_matches_pillow():
    a = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    t = Image.Transpose
    ops = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
           7: t.TRANSVERSE, 8: t.ROTATE_90}
    for o, op in ops.items():
        assert np.array_equal(np.asarray(Image.fromarray(a).transpose(op)), _orient(a, o)), o


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    write_image(tmp_path / "ok.png", np.zeros((64, 64, 3), np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("text.jpg", "cut.png", "missing.png"):
        with pytest.raises(AtbsnError) as info:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_write_is_atomic_and_refuses_impossible_formats(tmp_path):
    with pytest.raises(AtbsnError, match="16-bit"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint16))
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left behind
