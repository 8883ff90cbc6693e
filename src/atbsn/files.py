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


def atomic_write(path: str | Path, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``: a kill never leaves a half-written file.

    ``suffix`` is the temporary file's extension, for writers that choose the format by it.
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def reason(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line error reports."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
