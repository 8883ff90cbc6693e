"""Released weights by name: the table (``models.json``, data), download, verification and cache.

``fetch("tmbsn-c102-sidd")`` returns the path of a verified local copy. The first use downloads the file from
its authors' repository, pinned to a commit, with a progress bar, into the cache (``$ATBSN_HOME``, else the
platform's user cache folder, e.g. ``~/.cache/atbsn``). Pooch does the download and cache: it writes to a
temporary file and renames it into place, and checks the sha256 where the table has one. Every use then
checks the file's git blob id (SHA-1 of ``b"blob <size>\\0" + content``, what ``git hash-object`` prints),
known for every row: a mismatch removes the file and is one line. Afterwards the file is used offline.
``$ATBSN_REGISTRY_URL`` replaces ``https://github.com`` (a mirror, or a test server).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from functools import cache
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlparse

from .errors import AtbsnError
from .files import OwnedFolder, reason
from .runtime import cache_dir, log

DEFAULT_BASE = "https://github.com"


@dataclass(frozen=True)
class Entry:
    """One released file: where it is, how to check it, what it holds and what its authors report."""

    name: str
    what: str
    repo: str
    commit: str
    path: str
    git_blob: str
    sha256: str | None
    kind: str  # "teacher" | "student" | "bundle" (a student with its teacher)
    arch: str
    value_range: float
    trained_on: str
    reported: str | None
    licence: str
    measured: str | None = None

    def url(self, base: str | None = None) -> str:
        base = (base or os.environ.get("ATBSN_REGISTRY_URL") or DEFAULT_BASE).rstrip("/")
        return f"{base}/{self.repo}/raw/{self.commit}/{self.path}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.git_blob[:10]}{Path(self.path).suffix}"


@cache
def entries() -> dict[str, Entry]:
    """The registry, by name."""
    table = json.loads(files("atbsn").joinpath("models.json").read_text())
    known = {f.name for f in fields(Entry)}
    return {row["name"]: Entry(**{k: v for k, v in row.items() if k in known}) for row in table["models"]}


def cached_path(name: str) -> Path:
    return cache_dir() / entries()[name].filename


def is_cached(name: str) -> bool:
    return cached_path(name).is_file()


def git_blob_id(path: Path) -> str:
    """What ``git hash-object`` prints for a file."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, entry: Entry) -> None:
    got = git_blob_id(path)
    if got != entry.git_blob:
        path.unlink(missing_ok=True)
        raise AtbsnError(f"{entry.name}: downloaded file fails verification (git blob {got[:12]}, expected "
                         f"{entry.git_blob[:12]}); it was removed, nothing is used")


def unknown(name: str) -> AtbsnError:
    return AtbsnError(f"{name}: checkpoint not found, and no released model has that name (atbsn models lists "
                      f"{', '.join(entries())})")


def fetch(name: str, progress: bool = True, base_url: str | None = None) -> Path:
    """A verified local copy of the released file ``name``, downloaded on first use."""
    if name not in entries():
        raise unknown(name)
    entry = entries()[name]
    target = cached_path(name)
    if not target.is_file():
        import pooch
        import requests

        url = entry.url(base_url)
        scheme = urlparse(url)
        if scheme.scheme not in ("http", "https", "ftp", "sftp", "doi") or not scheme.netloc:
            where = "ATBSN_REGISTRY_URL" if not base_url and os.environ.get("ATBSN_REGISTRY_URL") else "the base"
            raise AtbsnError(f"{name}: cannot download from {url!r}: {where} is not a URL (http:// or https://); "
                             "nothing was downloaded")
        log.info(f"{name}: downloading {url} into {target.parent}")
        try:
            # into a folder of this process's: what a killed download leaves is removed by the next one
            with OwnedFolder(".download-", target.parent) as part:
                got = pooch.retrieve(url, known_hash=f"sha256:{entry.sha256}" if entry.sha256 else None,
                                     fname=target.name, path=part, progressbar=progress)
                os.replace(got, target)
        except requests.RequestException as e:
            raise AtbsnError(f"{name}: download from {url} failed ({reason(e)})") from None
        except ValueError as e:  # pooch: the sha256 differs (the download is not kept)
            raise AtbsnError(f"{name}: downloaded file fails verification ({reason(e)}); nothing is used") from None
        except OSError as e:
            raise AtbsnError(f"{name}: cannot write into the cache {target.parent} ({reason(e)})") from None
    _check(target, entry)
    return target


def resolve(source: str | os.PathLike, progress: bool = True) -> tuple[Path, Entry | None]:
    """A checkpoint given as a path or a registry name -> (local file, its registry entry or None)."""
    path = Path(source)
    if path.exists() or str(source) not in entries():
        return path, None
    return fetch(str(source), progress=progress), entries()[str(source)]


def table() -> list[dict]:
    """Every entry as a row for listing, with whether it is in the cache."""
    return [{"name": e.name, "what": e.what, "kind": e.kind, "arch": e.arch, "trained_on": e.trained_on,
             "reported": e.reported or "", "measured": e.measured or "", "licence": e.licence,
             "cached": is_cached(e.name), "url": e.url()} for e in entries().values()]
