"""Reading and writing photos: PNG, JPEG, TIFF; 8 or 16 bit; grayscale, RGB, RGBA; EXIF orientation.

Arrays are H x W x C numpy arrays in the file's own dtype (uint8 or uint16); C is 1, 3 or 4. Pillow
decodes 8-bit files and applies EXIF orientation; OpenCV decodes 16-bit PNG (Pillow silently drops 16-bit
colour PNGs to 8 bit); tifffile handles TIFF at any depth. Writes are atomic and never touch an input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AtbsnError
from .files import atomic_write, reason

EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_EXIF_ORIENTATION = 274


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an H x W x C array so that it displays upright."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _as_hwc(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise AtbsnError(f"{path}: unsupported image layout {a.shape} (expected gray, RGB or RGBA)")
    if a.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(a.dtype, np.floating):
            return np.clip(a, 0, 1).astype(np.float32)
        raise AtbsnError(f"{path}: unsupported sample type {a.dtype} (expected 8 or 16 bit)")
    return a


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an upright H x W x C array (uint8 or uint16)."""
    path = Path(path)
    if not path.is_file():
        raise AtbsnError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                a = page.asarray()
                tag = page.tags.get(_EXIF_ORIENTATION)
                orientation = int(tag.value) if tag is not None else 1
            if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
                a = np.moveaxis(a, 0, -1)  # planar storage
            return _orient(_as_hwc(a, path), orientation)
        if suffix == ".png" and _png_bit_depth(path) == 16:
            import cv2

            a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if a is None:
                raise ValueError("cannot decode")
            if a.ndim == 3:
                a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]  # BGR(A) -> RGB(A)
            return _as_hwc(a, path)
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).clip(0, 65535).astype(
                    np.uint16)
            elif im.mode in ("L", "RGB", "RGBA", "LA"):
                a = np.asarray(im)
            elif im.mode in ("P", "PA", "CMYK", "YCbCr", "1"):
                a = np.asarray(im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB"))
            else:
                raise AtbsnError(f"{path}: unsupported image mode {im.mode}")
        return _as_hwc(a, path)
    except AtbsnError:
        raise
    except Exception as e:  # Pillow, tifffile and OpenCV each raise their own types
        raise AtbsnError(f"{path}: unreadable image ({reason(e, 160)})") from None


def write_image(path: str | Path, a: np.ndarray, quality: int = 95) -> Path:
    """Write an H x W x C (or H x W) uint8/uint16 array, atomically. The format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise AtbsnError(f"{path}: unsupported output format (use .png, .jpg or .tif)")
    a = np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]

    def write(tmp: str) -> None:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, a, photometric="minisblack" if a.ndim == 2 else "rgb")
        elif a.dtype == np.uint16 and suffix == ".png":
            import cv2

            b = a if a.ndim == 2 else a[:, :, [2, 1, 0, 3][: a.shape[2]]]
            if not cv2.imwrite(tmp, b):  # the temporary name ends in .png (below)
                raise OSError("OpenCV could not encode the PNG")
        else:
            from PIL import Image

            if a.dtype == np.uint16:  # JPEG is 8 bit only
                raise AtbsnError(f"{path}: JPEG cannot hold 16-bit samples; write .png or .tif instead")
            im = Image.fromarray(a)
            fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "PNG"
            if fmt == "JPEG" and im.mode == "RGBA":
                raise AtbsnError(f"{path}: JPEG cannot hold an alpha channel; write .png or .tif instead")
            im.save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))

    try:
        atomic_write(path, write, suffix=suffix)
    except AtbsnError:
        raise
    except OSError as e:
        raise AtbsnError(f"{path}: cannot write ({e.strerror or e})") from None
    return path
