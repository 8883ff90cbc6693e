"""Reading and writing photos: PNG, JPEG, TIFF, HEIC; 8 or 16 bit or float; gray, RGB, with alpha; EXIF
orientation; colour profile, EXIF and every page of a TIFF kept through denoising. Camera RAW files are read,
developed once by LibRaw (:class:`RawDevelopment`), and written as 16-bit TIFF.

Arrays are H x W x C numpy arrays in the file's own dtype (uint8, uint16 or float32); C is 1 to 4. Pillow
decodes 8-bit files and applies EXIF orientation; OpenCV decodes 16-bit PNG (Pillow silently drops 16-bit
colour PNGs to 8 bit); tifffile (with imagecodecs for LZW, Deflate, JPEG and other compressions) handles
TIFF at any depth. Writes are atomic and never touch an input. What a format cannot carry on write (an
ICC profile in a 16-bit PNG, EXIF in a TIFF, palette colours) is returned as one line of notes, never
dropped silently. HEIC needs ``pillow-heif`` and RAW ``rawpy`` (the ``heic`` and ``raw`` extras): without them
such a file is one line naming the extra.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import AtbsnError
from .files import atomic_write, reason
from .ranges import float_scale

HEIF = {".heic", ".heif"}  # phones' photos (pillow-heif)
RAW = {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef",
       ".srw", ".rwl", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw", ".x3f"}  # camera RAW (LibRaw via rawpy)
WRITABLE = {".png", ".jpg", ".jpeg", ".tif", ".tiff"} | HEIF
EXTENSIONS = WRITABLE | RAW
READABLE = "PNG, JPEG, TIFF, HEIC, camera RAW"  # what EXTENSIONS are, in words
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
    description: str | None = None  # a TIFF's ImageDescription: how a RAW file was developed, and its camera
    camera: dict[int, str] = field(default_factory=dict)  # TIFF baseline tags from a RAW (Make, Model, DateTime)


RAW_WB = ("camera", "auto")  # the white balances a RAW file can be developed with
RAW_BRIGHT = (0.05, 20.0)  # the brightness scales accepted


@dataclass(frozen=True)
class RawDevelopment:
    """How a camera RAW file becomes the sRGB photo atbsn denoises (LibRaw through rawpy): the camera's white
    balance (``wb="auto"``: LibRaw's grey world), sRGB primaries and gamma, 16 bits, no automatic brightening
    (``bright`` scales linearly), no noise reduction by LibRaw (the network's job), full size (``half_size``:
    one pixel per 2 x 2 sensor cell, 4x fewer pixels and no demosaicing). Recorded in every output."""

    wb: str = "camera"
    bright: float = 1.0
    half_size: bool = False

    def __post_init__(self) -> None:
        if self.wb not in RAW_WB:
            raise AtbsnError(f"--raw-wb {self.wb}: use {' or '.join(RAW_WB)}")
        if not RAW_BRIGHT[0] <= self.bright <= RAW_BRIGHT[1]:
            raise AtbsnError(f"--raw-bright {self.bright}: use a scale between {RAW_BRIGHT[0]:g} and {RAW_BRIGHT[1]:g}")


_DEVELOPMENT = [RawDevelopment()]  # what read_photo develops RAW files with (the CLI sets it per command)


def set_raw_development(development: RawDevelopment) -> None:
    """How RAW files are developed from now on, wherever they are read (denoise, fit, train, info, the page)."""
    _DEVELOPMENT[0] = development


def raw_development() -> RawDevelopment:
    return _DEVELOPMENT[0]


def output_suffix(path: Path) -> str:
    """The output format for an input file: its own, except a RAW file's (never written): 16-bit TIFF."""
    return ".tif" if path.suffix.lower() in RAW else path.suffix


def _need(module: str, extra: str, what: str, path: Path):
    """The optional package ``module``, or one line naming the extra that installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise AtbsnError(f"{path}: {what} need the '{extra}' extra: pip install 'atbsn[{extra}]'") from None


_HEIF_OPENER: list[bool] = []  # pillow-heif registered with Pillow (once per process)


def _heif(path: Path) -> None:
    """Pillow reads and writes HEIC once pillow-heif registers itself with it."""
    heif = _need("pillow_heif", "heic", "HEIC files", path)
    if not _HEIF_OPENER:
        heif.register_heif_opener()
        _HEIF_OPENER.append(True)


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
    suffix = path.suffix.lower()
    if suffix in HEIF:
        _heif(path)
    rawpy = _need("rawpy", "raw", "camera RAW files", path) if suffix in RAW else None
    try:
        if rawpy is not None:
            with rawpy.imread(str(path)) as raw:
                return raw.sizes.iheight * raw.sizes.iwidth
        if suffix in (".tif", ".tiff"):
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
    if suffix in RAW:
        return _read_raw(path)
    if suffix in HEIF:
        _heif(path)
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


def _read_raw(path: Path) -> tuple[list[np.ndarray], PhotoInfo]:
    """A camera RAW file developed by LibRaw as :func:`raw_development` says: H x W x 3 uint16, upright."""
    rawpy = _need("rawpy", "raw", "camera RAW files", path)
    dev = raw_development()
    try:
        with rawpy.imread(str(path)) as raw:
            a = raw.postprocess(use_camera_wb=dev.wb == "camera", use_auto_wb=dev.wb == "auto", no_auto_bright=True,
                                bright=dev.bright, output_bps=16, output_color=rawpy.ColorSpace.sRGB,
                                half_size=dev.half_size, median_filter_passes=0,
                                fbdd_noise_reduction=rawpy.FBDDNoiseReductionMode.Off)
    except rawpy.LibRawFileUnsupportedError:
        raise AtbsnError(f"{path}: not a RAW file LibRaw can read (an unsupported camera, or another format)") from None
    except (rawpy.LibRawError, OSError) as e:
        raise AtbsnError(f"{path}: unreadable RAW file, truncated or damaged ({reason(e, 120)})") from None
    version = ".".join(map(str, rawpy.libraw_version))
    camera, exif = _raw_camera(path)
    developed = {"developed_from": path.name, "by": f"LibRaw {version} (rawpy)", **asdict(dev), "colour": "sRGB",
                 "bits": 16, **({"exif": exif} if exif else {})}
    return [np.ascontiguousarray(a)], PhotoInfo(description=json.dumps(developed), camera=camera)


_CAMERA_TAGS = {271: "Make", 272: "Model", 306: "DateTime", 315: "Artist", 33432: "Copyright"}
_EXIF_KEPT = ("ExposureTime", "FNumber", "ISOSpeedRatings", "PhotographicSensitivity", "DateTimeOriginal",
              "FocalLength", "LensModel", "ExposureBiasValue")


def _raw_camera(path: Path) -> tuple[dict[int, str], dict[str, str]]:
    """What a TIFF-based RAW (DNG, NEF, ARW, CR2, ORF, RW2, PEF...) says of its camera: IFD0's camera tags (kept as
    the output TIFF's own) and the exposure from its EXIF (kept in the description); empty where unreadable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            camera = {code: _ascii(tags[code].value) for code in _CAMERA_TAGS if code in tags}
            sub = tags.get(_TIFF_EXIF_IFD)
            values = sub.value if sub is not None and isinstance(sub.value, dict) else {}
    except Exception:  # not TIFF-based (CR3, RAF, X3F...): the development is still recorded
        return {}, {}
    exif = {k: _ascii(v) for k, v in values.items() if k in _EXIF_KEPT}
    return {k: v for k, v in camera.items() if v}, exif


def _ascii(value: object) -> str:
    """A tag value as the ASCII text a TIFF tag holds."""
    return str(value).strip("\x00 ").encode("ascii", "replace").decode()


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
    if suffix not in WRITABLE:
        raise AtbsnError(f"{path}: unsupported output format (use .png, .jpg, .tif or .heic)")
    if suffix in HEIF:
        _heif(path)
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
    if a.dtype != np.uint8 and suffix in HEIF:
        raise AtbsnError(f"{path}: HEIC is written with 8-bit samples here; write .png or .tif instead")
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
            fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "HEIF" if suffix in HEIF else "PNG"
            Image.fromarray(a).save(tmp, format=fmt, **extra, **({"quality": quality} if fmt != "PNG" else {}))

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
    extratags += [(code, "s", 0, value, True) for code, value in info.camera.items()]
    with tifffile.TiffWriter(tmp) as tif:
        for p in pages:
            rgb = p.ndim == 3 and p.shape[2] in (3, 4)
            tif.write(p, photometric="rgb" if rgb else "minisblack", extratags=extratags,
                      extrasamples=[2] if p.ndim == 3 and p.shape[2] in (2, 4) else None,
                      description=info.description, metadata=None)


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
