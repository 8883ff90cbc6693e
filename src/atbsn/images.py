"""Reading and writing photos: PNG, JPEG, TIFF; 8 or 16 bit or float; gray, RGB, with alpha; EXIF
orientation; colour profile, EXIF and every page of a TIFF kept through denoising.

Arrays are H x W x C numpy arrays in the file's own dtype (uint8, uint16 or float32); C is 1 to 4. Pillow
decodes 8-bit files and applies EXIF orientation; OpenCV decodes 16-bit PNG (Pillow silently drops 16-bit
colour PNGs to 8 bit); tifffile (with imagecodecs for LZW, Deflate, JPEG and other compressions) handles
TIFF at any depth. Writes are atomic and never touch an input. What a format cannot carry on write (an
ICC profile in a 16-bit PNG, EXIF in a TIFF, palette colours) is returned as one line of notes, never
dropped silently.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AtbsnError
from .files import atomic_write, reason
from .ranges import float_scale

EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_EXIF_ORIENTATION = 274
_TIFF_ICC = 34675  # InterColorProfile
_TIFF_EXIF_IFD = 34665


@dataclass
class PhotoInfo:
    """What a photo carries besides its pixels, kept on write where the format allows."""

    icc: bytes | None = None
    exif: bytes | None = None
    converted: str | None = None  # the stored mode when it was converted on read (palette, CMYK, 1-bit, ...)
    notes: list[str] = field(default_factory=list)  # what reading already changed


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


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) of a PNG; (8, -1) for anything else."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (head[24], head[25]) if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else (8, -1)


def _as_hwc(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise AtbsnError(f"{path}: unsupported image layout {a.shape} (expected gray, RGB or RGBA)")
    if a.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            float_scale(a, path)  # refuse what cannot be read correctly now, not after denoising
            return a
        raise AtbsnError(f"{path}: unsupported sample type {a.dtype} (expected 8 or 16 bit, or float)")
    return a


@contextlib.contextmanager
def _no_pixel_limit():
    """Pillow refuses images over 179 MP as possible "decompression bombs"; a photo tool reads them (tiles
    bound the memory of denoising), so the limit is lifted while one file is opened."""
    from PIL import Image

    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def photo_pixels(path: str | Path) -> int:
    """The pixels an image file decodes to, all pages together, read from its header alone (nothing decoded): what
    a server checks before it decodes an upload (a small file can hold a huge image)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return sum(int(np.prod(p.shape[:2] if len(p.shape) < 3 or p.shape[2] <= 4 else p.shape[1:]))
                           for p in tif.pages)
        from PIL import Image

        with _no_pixel_limit(), Image.open(path) as im:
            return im.width * im.height  # read_photo decodes the first frame of these formats
    except Exception as e:  # the decoder's own error types
        raise AtbsnError(f"{path}: unreadable image ({reason(e, 160)})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file (its first page) into an upright H x W x C array."""
    return read_photo(path)[0][0]


def read_photo(path: str | Path) -> tuple[list[np.ndarray], PhotoInfo]:
    """Every page of an image file as upright H x W x C arrays, and what else it carries (ICC, EXIF)."""
    path = Path(path)
    if not path.is_file():
        raise AtbsnError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        depth, colour = _png_header(path) if suffix == ".png" else (8, -1)
        if depth == 16:
            return _read_png16(path, colour)
        return _read_pillow(path)
    except AtbsnError:
        raise
    except Exception as e:  # Pillow, tifffile and OpenCV each raise their own types
        raise AtbsnError(f"{path}: unreadable image ({reason(e, 160)})") from None


def _read_tiff(path: Path) -> tuple[list[np.ndarray], PhotoInfo]:
    import tifffile

    pages, info = [], PhotoInfo()
    with tifffile.TiffFile(path) as tif:
        first = tif.pages[0]
        icc = first.tags.get(_TIFF_ICC)
        info.icc = bytes(icc.value) if icc is not None else None
        if first.tags.get(_TIFF_EXIF_IFD) is not None:
            info.notes.append("EXIF of a TIFF is not carried to the output")
        for page in tif.pages:
            a = page.asarray()
            if a.ndim == 3 and a.shape[0] in (1, 2, 3, 4) and a.shape[2] not in (1, 2, 3, 4):
                a = np.moveaxis(a, 0, -1)  # planar storage
            a = _as_hwc(a, path)
            if page.photometric == tifffile.PHOTOMETRIC.SEPARATED and a.shape[2] >= 4:
                a = _cmyk_to_rgb(a)  # ink coverage, not light: never passed through as RGB + alpha
                info.converted = "CMYK"
            tag = page.tags.get(_EXIF_ORIENTATION)
            pages.append(_orient(a, int(tag.value) if tag is not None else 1))
    if info.converted and info.icc:  # a CMYK profile does not describe the RGB output
        info.icc = None
        info.notes.append("its CMYK colour profile is not carried to the RGB output")
    return pages, info


def _cmyk_to_rgb(a: np.ndarray) -> np.ndarray:
    """CMYK samples (0 = no ink) to RGB of the same type: channel = (1 - ink) * (1 - black)."""
    top = 1.0 if a.dtype.kind == "f" else float(np.iinfo(a.dtype).max)
    ink = a[..., :4].astype(np.float64) / top
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:4]) * top
    return rgb.astype(a.dtype) if a.dtype.kind == "f" else np.round(rgb).astype(a.dtype)


def _read_png16(path: Path, colour: int) -> tuple[list[np.ndarray], PhotoInfo]:
    import cv2
    from PIL import Image

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError("cannot decode")
    if a.ndim == 3:
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]  # BGR(A) -> RGB(A)
        if colour == 4:  # gray + alpha, which OpenCV expands to four channels
            a = np.ascontiguousarray(a[:, :, [0, 3]])
    with _no_pixel_limit(), Image.open(path) as im:  # the header only: the profile and EXIF
        info = PhotoInfo(icc=im.info.get("icc_profile"), exif=_exif_bytes(im))
    return [_as_hwc(a, path)], info


def _exif_bytes(im) -> bytes | None:
    """The image's EXIF with the orientation removed (pixels are stored upright from now on)."""
    exif = im.getexif()
    if _EXIF_ORIENTATION in exif:
        del exif[_EXIF_ORIENTATION]
    return exif.tobytes() if len(exif) else None


def _read_pillow(path: Path) -> tuple[list[np.ndarray], PhotoInfo]:
    from PIL import Image, ImageOps

    with _no_pixel_limit(), Image.open(path) as raw:
        im = ImageOps.exif_transpose(raw)  # before reading the EXIF, whose orientation is then dropped
        info = PhotoInfo(icc=raw.info.get("icc_profile"), exif=_exif_bytes(raw))
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).clip(0, 65535).astype(np.uint16)
        elif im.mode in ("L", "RGB", "RGBA", "LA"):
            a = np.asarray(im)
        elif im.mode in ("P", "PA", "CMYK", "YCbCr", "1"):
            info.converted = {"P": "palette", "PA": "palette", "1": "1-bit"}.get(im.mode, im.mode)
            a = np.asarray(im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB"))
        elif im.mode == "F":
            a = np.asarray(im, dtype=np.float32)
        else:
            raise AtbsnError(f"{path}: unsupported image mode {im.mode}")
    return [_as_hwc(a, path)], info


def write_image(path: str | Path, a: np.ndarray, quality: int = 95, exclusive: bool = False) -> Path:
    """Write an H x W x C (or H x W) array, atomically. The format follows the suffix."""
    write_photo(path, [a], None, quality=quality, exclusive=exclusive)
    return Path(path)


def write_photo(path: str | Path, pages: list[np.ndarray], info: PhotoInfo | None = None, quality: int = 95,
                exclusive: bool = False) -> list[str]:
    """Write pages (several only for TIFF) with the ICC profile and EXIF of ``info`` where the format can hold
    them, atomically (``exclusive``: never replace an existing file). Returns what could not be kept."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise AtbsnError(f"{path}: unsupported output format (use .png, .jpg or .tif)")
    info = info or PhotoInfo()
    notes = list(info.notes)
    if info.converted:
        notes.append(f"{info.converted} image written as {'RGBA' if pages[0].shape[-1] == 4 else 'RGB'}")
    pages = [np.ascontiguousarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a) for a in pages]
    if len(pages) > 1 and suffix not in (".tif", ".tiff"):
        raise AtbsnError(f"{path}: only TIFF holds several pages")
    a = pages[0]
    if a.dtype == np.uint16 and suffix in (".jpg", ".jpeg"):
        raise AtbsnError(f"{path}: JPEG cannot hold 16-bit samples; write .png or .tif instead")
    if a.ndim == 3 and a.shape[2] in (2, 4) and suffix in (".jpg", ".jpeg"):
        raise AtbsnError(f"{path}: JPEG cannot hold an alpha channel; write .png or .tif instead")

    def write(tmp: str) -> None:
        if suffix in (".tif", ".tiff"):
            _write_tiff(tmp, pages, info)
        elif a.dtype != np.uint8 and suffix == ".png":
            _write_png16(tmp, a, info, notes)
        else:
            from PIL import Image

            extra = {k: v for k, v in (("icc_profile", info.icc), ("exif", info.exif)) if v}
            fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "PNG"
            Image.fromarray(a).save(tmp, format=fmt, **extra, **({"quality": quality} if fmt == "JPEG" else {}))

    try:
        atomic_write(path, write, suffix=suffix, exclusive=exclusive)
    except (AtbsnError, FileExistsError):
        raise
    except OSError as e:
        raise AtbsnError(f"{path}: cannot write ({e.strerror or e})") from None
    return notes


def _write_tiff(tmp: str, pages: list[np.ndarray], info: PhotoInfo) -> None:
    import tifffile

    extratags = [(_TIFF_ICC, "B", len(info.icc), info.icc, True)] if info.icc else []
    with tifffile.TiffWriter(tmp) as tif:
        for p in pages:
            rgb = p.ndim == 3 and p.shape[2] in (3, 4)
            tif.write(p, photometric="rgb" if rgb else "minisblack", extratags=extratags,
                      extrasamples=[2] if p.ndim == 3 and p.shape[2] in (2, 4) else None)


def _write_png16(tmp: str, a: np.ndarray, info: PhotoInfo, notes: list[str]) -> None:
    """16-bit PNG through OpenCV, which writes 1, 3 or 4 channels and no metadata."""
    import cv2

    if a.dtype != np.uint16:  # float images into a PNG: 16 bit keeps their precision best
        a = np.round(np.clip(a / float_scale(a), 0.0, 1.0) * 65535).astype(np.uint16)
    if a.ndim == 3 and a.shape[2] == 2:
        a = a[:, :, [0, 0, 0, 1]]
        notes.append("16-bit gray + alpha written as 16-bit RGBA (PNG writer limit)")
    if info.icc or info.exif:
        notes.append("colour profile and EXIF not kept in a 16-bit PNG (write .tif to keep the profile)")
    b = a if a.ndim == 2 else a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    if not cv2.imwrite(tmp, b):  # the temporary name ends in .png
        raise OSError("OpenCV could not encode the PNG")
