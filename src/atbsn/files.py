"""Files: atomic writes and one-line reasons for errors. The bottom floor: imports nothing of atbsn.

An atomic write goes to a temporary file in the destination's folder, is flushed to disk (fsync) and then
renamed over the destination, so a reader sees the old file or the new one, never half of one. The
temporary file gets the mode an ordinary ``open()`` would (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object], suffix: str = ".tmp",
                 exclusive: bool = False) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``: a kill never leaves a half-written file.

    ``suffix`` is the temporary file's extension, for writers that choose the format by it. ``exclusive``:
    never replace an existing ``path``, even one another process creates meanwhile (``FileExistsError``);
    the file is linked into place, which fails atomically if the name exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # FileExistsError if the name is taken
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(folder: str | Path, names: list[str]) -> int:
    """Delete temporary files that :func:`atomic_write` left for ``names`` in ``folder`` when a process was
    killed (SIGKILL cannot be caught); returns how many. Only for folders one process owns (a run folder)."""
    removed = 0
    for name in names:
        for stale in Path(folder).glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Fail now, with one line, if ``path`` (a file, or a ``folder``) cannot be written: before any work.

    Creates the folder (or the file's folder) and a probe file in it, which is what writing needs; permission
    bits alone do not say it (root, read-only mounts, a file where a folder should be).
    """
    from .errors import AtbsnError

    p = Path(path)
    where = p if folder else p.parent
    if folder and p.exists() and not p.is_dir():
        raise AtbsnError(f"{p}: exists and is not a folder")
    if not folder and p.is_dir():
        raise AtbsnError(f"{p}: is a folder; give a file name")
    blocker = next((a for a in [where, *where.parents] if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise AtbsnError(f"{p}: cannot write there ({blocker} is a file, not a folder)")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise AtbsnError(f"{p}: cannot write there ({e.strerror or reason(e)})") from None
    return p


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def reason(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line error reports; a long line is
    cut at a word and marked with an ellipsis, never mid-word."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else line[:limit]).rstrip(" ,;:") + " ..."
