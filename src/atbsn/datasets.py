"""Data: noisy photo collections for training (any folder, SIDD Medium, DND) and paired sets for scoring.

Everything yields float32 images in 0..255, C x H x W for training patches and H x W x C for pairs.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AtbsnError
from .images import is_image_file, read_image

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
            files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f) and not f.name.startswith("."))
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
        with open(src / "pairs.csv", newline="") as f:
            rows = [(r["noisy"], r["clean"]) for r in csv.DictReader(f)]
        entries = [(Path(n).stem, src / n, src / c) for n, c in rows]
    elif (src / "noisy").is_dir() and (src / "clean").is_dir():
        clean = {p.stem: p for p in (src / "clean").iterdir() if is_image_file(p)}
        noisy = sorted(p for p in (src / "noisy").iterdir() if is_image_file(p))
        entries = [(p.stem, p, clean[p.stem]) for p in noisy if p.stem in clean]
    else:
        raise AtbsnError(f"{src}: expected pairs.csv, or noisy/ and clean/ subfolders with matching names")
    if not entries:
        raise AtbsnError(f"{src}: no noisy/clean pairs found")
    out = []
    for name, n, c in entries[:limit]:
        a, b = read_image(n), read_image(c)
        if a.shape != b.shape:
            raise AtbsnError(f"{n}: shape {a.shape} differs from its clean reference {c} {b.shape}")
        out.append(Pair(name, a, b))
    return out
