"""Data: noisy photo collections for training (any folder, SIDD Medium, DND) and paired sets for scoring.

Everything yields float32 images in 0..255, C x H x W for training patches and H x W x C for pairs.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import clips
from .clips import is_clip
from .errors import AtbsnError
from .files import RunLock, atomic_write, check_apart, reason, remove_stale_temps, write_text
from .images import READABLE, is_image_file, read_image
from .ranges import to_255
from .runtime import progress_bar

log = logging.getLogger("atbsn")


# ----------------------------------------------------------------------------------------------- files
def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Files, folders (recursively) and globs -> sorted (file, path relative to its root) pairs.

    A folder yields its image files; a file is taken as given (even with an unknown suffix, so the
    reader reports the problem); a pattern that matches nothing is an error.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and (is_image_file(f) or is_clip(f))
                           and not f.name.startswith("."))
            found += [(f, f.relative_to(p)) for f in files]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise AtbsnError(f"{item}: no such file, folder or matching pattern")
            found += [(f, Path(f.name)) for f in files]
    return found


def _mat_variable(path: Path, names: Iterable[str]) -> np.ndarray:
    """Read the first of ``names`` from a MATLAB file (v5 through scipy, v7.3 = HDF5 through h5py)."""
    import h5py

    names = list(names)
    if not Path(path).is_file():
        raise AtbsnError(f"{path}: no such file")
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                for n in names:
                    if n in f:
                        return np.asarray(f[n]).transpose()  # MATLAB is column-major
        else:
            from scipy.io import loadmat

            data = loadmat(str(path), variable_names=names)
            for n in names:
                if n in data:
                    return np.asarray(data[n])
    except Exception as e:
        raise AtbsnError(f"{path}: unreadable .mat file ({str(e).splitlines()[0][:120]})") from None
    raise AtbsnError(f"{path}: none of the variables {', '.join(names)} found")


# ----------------------------------------------------------------------------------------------- pairs
@dataclass
class Pair:
    name: str
    noisy: np.ndarray  # H x W x C, uint8 or uint16
    clean: np.ndarray


def _sidd_blocks(path: Path) -> np.ndarray:
    arr = _mat_variable(path, ["ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb", "BenchmarkNoisyBlocksSrgb"])
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise AtbsnError(f"{path}: expected blocks of shape images x blocks x H x W x 3, got {arr.shape}")
    return arr


def load_pairs(source: str | Path, limit: int | None = None) -> list[Pair]:
    """Noisy/clean pairs from a folder (``pairs.csv``, or ``noisy/`` + ``clean/`` matched by name) or
    from SIDD validation blocks (``ValidationNoisyBlocksSrgb.mat`` with ``ValidationGtBlocksSrgb.mat``
    beside it, or the folder holding both)."""
    src = Path(source)
    if src.is_dir() and (src / "ValidationNoisyBlocksSrgb.mat").exists():
        src = src / "ValidationNoisyBlocksSrgb.mat"
    if src.suffix == ".mat":
        gt = src.with_name(src.name.replace("Noisy", "Gt"))
        if not gt.exists():
            raise AtbsnError(f"{src}: clean blocks {gt.name} not found beside it")
        noisy, clean = _sidd_blocks(src), _sidd_blocks(gt)
        pairs = [
            Pair(f"{i:02d}_{j:02d}", noisy[i, j], clean[i, j])
            for i in range(noisy.shape[0]) for j in range(noisy.shape[1])
        ]
        return pairs[:limit]
    if not src.is_dir():
        raise AtbsnError(f"{src}: not a folder of pairs or a SIDD .mat file")
    if (src / "pairs.csv").exists():
        entries = [(Path(n).stem, src / n, src / c) for n, c in _pairs_csv(src / "pairs.csv")]
    elif (src / "noisy").is_dir() and (src / "clean").is_dir():
        clean = {p.stem: p for p in (src / "clean").iterdir() if is_image_file(p)}
        noisy = sorted(p for p in (src / "noisy").iterdir() if is_image_file(p))
        missing = [p for p in noisy if p.stem not in clean] + sorted(
            p for stem, p in clean.items() if stem not in {q.stem for q in noisy})
        if missing:  # an unmatched image would silently leave the score
            side = "clean" if missing[0].parent.name == "noisy" else "noisy"
            raise AtbsnError(f"{missing[0]}: no image of the same name in {src / side} "
                             f"({len(missing)} unmatched); every image needs its pair")
        entries = [(p.stem, p, clean[p.stem]) for p in noisy]
    else:
        raise AtbsnError(f"{src}: expected pairs.csv, or noisy/ and clean/ subfolders with matching names")
    if not entries:
        raise AtbsnError(f"{src}: no noisy/clean pairs found")
    out = []
    for name, n, c in entries[:limit]:
        for f in (n, c):
            if not f.is_file():
                raise AtbsnError(f"{f}: listed in {src / 'pairs.csv'} but not found")
        a, b = read_image(n), read_image(c)
        if a.shape != b.shape:
            raise AtbsnError(f"{n}: shape {a.shape} differs from its clean reference {c} {b.shape}")
        out.append(Pair(name, a, b))
    return out


def _pairs_csv(path: Path) -> list[tuple[str, str]]:
    """(noisy, clean) file names from a ``pairs.csv`` with columns ``noisy`` and ``clean``; one line naming the
    file for anything else (another encoding, other columns, empty cells)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if not {"noisy", "clean"} <= set(columns):
                raise AtbsnError(f"{path}: needs the columns 'noisy' and 'clean' (found: "
                                 f"{', '.join(map(repr, columns)) or 'none'})")
            rows = [(r["noisy"], r["clean"]) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise AtbsnError(f"{path}: not a readable CSV text file ({reason(e)})") from None
    bad = next((i for i, (n, c) in enumerate(rows, 2) if not n or not c), None)
    if bad is not None:
        raise AtbsnError(f"{path}: line {bad} lacks a noisy or clean file name")
    return rows


# ------------------------------------------------------------------------------------ training sources
@dataclass(frozen=True)
class Source:
    """One noisy image to train on: a photo file, a DND ``.mat`` (variable ``InoisySRGB``), or one frame of a
    video clip (frames sampled evenly over it)."""

    path: Path
    kind: str = "image"  # "image" | "dnd" | "store" (an array of a prepared store, read memory-mapped) | "video"
    scale: float | None = None  # store: the factor to 0..255, recorded when it was prepared
    frame: int = 0  # video: which of the clip's sampled frames

    def load(self) -> tuple[np.ndarray, float]:
        """The pixels as stored (H x W x C, alpha dropped; uint8 / uint16 stay compact in the cache) and
        the factor that brings them to 0..255. A store's array is memory-mapped: a crop reads only its bytes."""
        if self.kind == "store":
            try:
                return np.load(self.path, mmap_mode="r"), float(self.scale)
            except (OSError, ValueError) as e:
                raise AtbsnError(f"{self.path}: unreadable prepared array ({reason(e, 120)}); run atbsn prepare "
                                 "again") from None
        if self.kind == "dnd":
            a = _mat_variable(self.path, ["InoisySRGB"]).astype(np.float32)
            return (a if a.ndim == 3 else a[:, :, None]), 255.0
        if self.kind == "video":
            return clips.sampled(self.path, CLIP_FRAMES)[self.frame], 1.0
        a = read_image(self.path)
        if a.shape[2] in (2, 4):
            a = a[:, :, :-1]
        return a, to_255(a)


CLIP_FRAMES = 8  # frames a clip gives to training and to the noise measurement, spread evenly over it


def _clip_sources(path: Path) -> list[Source]:
    return [Source(path, "video", frame=i) for i in range(min(CLIP_FRAMES, clips.probe(path).frames))]


def _sidd_noisy(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "_NOISY_SRGB_" in p.name.upper())


def collect_sources(inputs: Iterable[str | Path]) -> list[Source]:
    """The noisy images in the given files and folders, recognising the usual layouts:

    - SIDD Medium sRGB (scene folders with ``*_NOISY_SRGB_*.PNG`` beside ``*_GT_SRGB_*``): noisy only,
    - DND (``images_srgb/*.mat``): the noisy sRGB images,
    - anything else: every PNG / JPEG / TIFF in the tree (a folder of your own photos).

    A missing path, or a folder with no images, fails at once with a message naming it.
    """
    sources: list[Source] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise AtbsnError(f"{p}: no such file or folder")
        if p.is_dir() and (p / STORE_INDEX).is_file():
            sources += store_sources(p)
            continue
        if p.is_file() and is_clip(p):
            sources += _clip_sources(p)
            continue
        if p.is_file():
            sources.append(Source(p, "dnd" if p.suffix.lower() == ".mat" else "image"))
            continue
        dnd = p / "images_srgb" if (p / "images_srgb").is_dir() else p if p.name == "images_srgb" else None
        if dnd is not None and any(dnd.glob("*.mat")):
            found = [Source(m, "dnd") for m in sorted(dnd.glob("*.mat"))]
        else:
            sidd = _sidd_noisy(p)
            files = sidd or [f for f, _ in expand_inputs([p])]
            found = [s for f in files for s in (_clip_sources(f) if is_clip(f) else [Source(f)])]
        if not found:
            raise AtbsnError(f"{p}: no images found ({READABLE}, SIDD Medium or DND images_srgb/*.mat)")
        sources += found
    if not sources:
        raise AtbsnError("no training data given")
    return sources


# ------------------------------------------------------------------------------------ the prepared store
STORE_INDEX = "atbsn-store.json"
STORE_FORMAT = 1


def prepare(inputs: Iterable[str | Path], out: str | Path, progress: bool = True) -> Path:
    """Decode every training image of ``inputs`` once into ``out``: one uncompressed ``.npy`` per image (as
    the sampler would hold it: alpha dropped, stored dtype kept) and an index. Training on ``out`` then reads
    each crop's bytes from a memory map instead of decoding a whole photo per crop, and every process on a
    machine shares the OS page cache. Rerunning skips arrays already written (a killed run resumes)."""
    out, inputs = Path(out), list(inputs)
    check_apart([out], inputs)
    sources = collect_sources(inputs)
    if any(s.kind == "store" for s in sources):
        raise AtbsnError(f"{out}: the inputs include a prepared store already; prepare from the original photos")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # one process fills a store; what a killed one left half-written is cleared
        remove_stale_temps(out, [f"{i:06d}.npy" for i in range(len(sources))] + [STORE_INDEX])
        return _fill_store(sources, out, progress)


def _fill_store(sources: list[Source], out: Path, progress: bool) -> Path:
    entries = []
    for i, src in enumerate(progress_bar(sources, desc="prepare", unit="img", show=progress)):
        target = out / f"{i:06d}.npy"
        a = _prepared(target)  # written by an earlier, interrupted run
        if a is None:
            a = np.ascontiguousarray(src.load()[0])
            atomic_write(target, lambda tmp, arr=a: np.save(tmp, arr), suffix=".npy")
        entries.append({"file": target.name, "source": str(src.path), "shape": list(a.shape), "dtype": str(a.dtype),
                        "scale": to_255(a)})
    write_text(out / STORE_INDEX, json.dumps({"format": STORE_FORMAT, "images": entries}, indent=1))
    return out


def _prepared(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r") if path.is_file() else None
    except (OSError, ValueError):
        return None


def store_sources(folder: Path) -> list[Source]:
    """The images of a prepared store, checked against its index (one line naming what is wrong)."""
    try:
        index = json.loads((folder / STORE_INDEX).read_text())
        if index.get("format") != STORE_FORMAT:
            raise AtbsnError(f"{folder}: prepared store format {index.get('format')!r}; prepare it again")
        found = [Source(folder / e["file"], "store", float(e["scale"])) for e in index["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise AtbsnError(f"{folder / STORE_INDEX}: broken store index ({reason(e, 100)}); prepare it again") from None
    missing = [s.path for s in found if not s.path.is_file()]
    if missing:
        raise AtbsnError(f"{missing[0]}: missing from the prepared store ({len(missing)} missing); prepare it again")
    if not found:
        raise AtbsnError(f"{folder}: the prepared store holds no images")
    return found


class PatchSampler:
    """Random noisy patches, reproducible from (seed, step, rank) alone.

    Every batch is drawn from its own generator seeded by (seed, step, rank), so a resumed run sees exactly
    the batches an uninterrupted one would, with no sampler state to save; each data-parallel rank draws
    different patches. Patches are C x P x P float32 in 0..255 with random flips and 90-degree rotations.
    Images smaller than the crop are zero-padded and a mask marks the real pixels (zeros keep a blind
    spot honest; a mirrored border would copy the hidden pixel's noise next to it).

    Decoded images are cached up to ``cache_bytes``; an unreadable file is reported (once) and either
    skipped (``on_bad_file="skip"``, another image is drawn) or fails the run (``"fail"``).
    """

    def __init__(self, sources: list[Source], crop: int, channels: int = 3, seed: int = 0, rank: int = 0,
                 cache_bytes: int = 2 << 30, on_bad_file: str = "fail") -> None:
        if on_bad_file not in ("skip", "fail"):
            raise AtbsnError("on_bad_file must be 'skip' or 'fail'")
        self.sources, self.crop, self.channels = sources, crop, channels
        self.seed, self.rank, self.on_bad_file = seed, rank, on_bad_file
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, float]] = {}
        self._cached = 0
        self.bad: set[int] = set()
        # per image index: H x W x T channels cut, rotated and flipped with its patches and appended to them
        # (distillation's targets computed once per photo: atbsn.engine.photo_targets)
        self.extra: dict[int, np.ndarray] = {}

    def size(self, i: int) -> tuple[int, int] | None:
        """Image ``i``'s height and width (None: unreadable, skipped), without a float copy of it."""
        loaded = self._image(i)
        return None if loaded is None else loaded[0].shape[:2]

    def photo(self, i: int) -> np.ndarray | None:
        """Image ``i`` as its patches see it: H x W x channels float32 in 0..255 (None: unreadable, skipped)."""
        loaded = self._image(i)
        if loaded is None:
            return None
        a, scale = loaded
        return self._channels(a.astype(np.float32) * scale)

    def _channels(self, a: np.ndarray) -> np.ndarray:
        c = a.shape[2]
        if c == self.channels:  # else a gray photo for an RGB model, or the reverse
            return a
        return np.repeat(a, self.channels, axis=2) if c == 1 else a.mean(axis=2, keepdims=True)

    def _image(self, i: int) -> tuple[np.ndarray, float] | None:
        if i in self._cache:
            return self._cache[i]
        try:
            a, scale = self.sources[i].load()
        except AtbsnError as e:
            if self.on_bad_file == "fail":
                raise
            if i not in self.bad:
                log.warning("skipping unreadable training file: %s", e)
            self.bad.add(i)
            return None
        if isinstance(a, np.memmap):  # a prepared store: kept mapped, costs no memory of its own
            self._cache[i] = (a, scale)
        elif self._cached + a.nbytes <= self.cache_bytes:
            self._cache[i] = (a, scale)
            self._cached += a.nbytes
        return a, scale

    def _patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(100 * len(self.sources)):
            i = int(rng.integers(len(self.sources)))
            loaded = self._image(i)
            if loaded is not None:
                break
        else:
            raise AtbsnError("no readable training image left")
        a, scale = loaded
        p = self.crop
        h, w = a.shape[:2]
        y = int(rng.integers(h - p + 1)) if h > p else 0
        x = int(rng.integers(w - p + 1)) if w > p else 0
        extra = self.extra.get(i)
        patch = np.zeros((p, p, self.channels + (0 if extra is None else extra.shape[2])), np.float32)
        mask = np.zeros((p, p, 1), np.float32)
        ph, pw = min(p, h), min(p, w)
        patch[:ph, :pw, : self.channels] = self._channels(a[y : y + ph, x : x + pw].astype(np.float32) * scale)
        if extra is not None:
            patch[:ph, :pw, self.channels :] = extra[y : y + ph, x : x + pw]
        mask[:ph, :pw] = 1.0
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        patch, mask = np.rot90(patch, rot), np.rot90(mask, rot)
        if flip:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        return patch.transpose(2, 0, 1), mask.transpose(2, 0, 1)

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(patches N x C x P x P, masks N x 1 x P x P) for training step ``step``."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        pairs = [self._patch(rng) for _ in range(size)]
        return (np.ascontiguousarray(np.stack([p for p, _ in pairs])),
                np.ascontiguousarray(np.stack([m for _, m in pairs])))
