"""Files: atomic writes and one-line reasons for errors. The bottom floor: imports nothing of atbsn.

An atomic write goes to a temporary file in the destination's folder, is flushed to disk (fsync) and then
renamed over the destination, so a reader sees the old file or the new one, never half of one. The
temporary file gets the mode an ordinary ``open()`` would (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import AtbsnError

# What writers say when the disk is full: OSError's errno, and the words of torch.save and safetensors (which
# raise RuntimeError or their own error type around the OS error).
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# torch.save's zip writer on a full disk: "iostream error ... unexpected pos"; numpy's tofile (np.save): "N requested
# and M written".
_FULL_WORDS = ("no space left", "storagefull", "code: 28", "disk quota", "file write failed", "unexpected pos")
_FULL_PATTERN = re.compile(r"\d+ requested and \d+ written")


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, (KeyboardInterrupt, SystemExit)) and disk_full(e):

            raise AtbsnError(f"{path}: the disk is full ({reason(e)}); nothing was replaced, the partial file "
                             "was removed: free space and run again") from None
        raise
    return path


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what it wraps) says the disk or the user's quota is full."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(w in text for w in _FULL_WORDS) or _FULL_PATTERN.search(text):
            return True
        e = e.__cause__ or e.__context__
    return False


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


def source_of(model: object) -> str | None:
    """The file a loaded network came from (``atbsn.load`` records it; an ONNX model's own path), else None."""
    return getattr(model, "source", None) or (str(model.path) if getattr(model, "runs_on", None) else None)


def check_apart(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """Refuse, before any work, an output that is an input, lies inside an input folder, or holds an input:
    no command may write over, or into the tree of, what it reads (a second run would also read its own
    outputs). Names that are not local paths (a released model's name) and outputs not given are skipped."""

    ins = [(str(i), Path(i).resolve()) for i in inputs if i is not None and Path(i).exists()]
    for out in outputs:
        if out is None:
            continue
        o = Path(out).resolve()
        for shown, i in ins:
            if o == i:
                raise AtbsnError(f"{out}: is also an input of this command ({shown}); write the output elsewhere")
            if i.is_dir() and i in o.parents:
                raise AtbsnError(f"{out}: lies inside the input folder {shown}; a later run would read its own "
                                 "outputs as inputs: write them elsewhere")
            if o in i.parents:
                raise AtbsnError(f"{out}: holds the input {shown}; write the output elsewhere")


class RunLock:
    """A lock file (``.lock``: owner pid and host) for a folder one process works in: a second process is
    refused with one line; a lock left by a process that died on this host is taken over. A context manager,
    or :meth:`acquire` and :meth:`release` for a lock held across calls."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.held = False

    def acquire(self) -> RunLock:

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or not _alive(*owner):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise AtbsnError(f"{self.path.parent}: in use by process {owner[0]} on {owner[1]} (its lock "
                                 f"{self.path}); wait for it, or stop it, or use another folder") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()} {_started(os.getpid()) or ''}".rstrip() + "\n")
            self.held = True
            return self
        raise AtbsnError(f"{self.path}: cannot take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> tuple[int, str, str | None] | None:
        """(pid, host, the process's start time when recorded) of the lock's owner, or None."""
        try:
            pid, host, *started = self.path.read_text().split()
            return int(pid), host, started[0] if started else None
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int, host: str, started: str | None = None) -> bool:
    """Whether the process that wrote a lock still runs (on another host: assumed to, as it cannot be asked). A
    pid is reused once its process is gone: a live process with that pid is the owner only if it started when the
    lock says (Linux: /proc); a lock that does not say (older atbsn) is owned by a Python process only."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _started(pid)
    if now is None:
        return True  # nothing more to ask here (not Linux)
    if started is not None:
        return started == now
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True
    return b"python" in command or b"atbsn" in command


def _started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks after boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class OwnedFolder:
    """A scratch folder that one process owns (its lock names the process), for work whose leftovers a kill would
    otherwise leave behind: every folder of the same ``prefix`` in ``parent`` whose owner died is removed first.
    :meth:`cleanup` removes it (also at exit of the ``with`` block)."""

    def __init__(self, prefix: str, parent: str | Path | None = None) -> None:
        parent = Path(parent or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(parent, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._lock = RunLock(self.path).acquire()

    def cleanup(self) -> None:
        self._lock.release()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def remove_abandoned(parent: str | Path, prefix: str, grace_s: float = 300.0) -> int:
    """Remove the folders ``parent/prefix*`` that :class:`OwnedFolder` made for processes that are gone (killed:
    SIGKILL cannot be caught); a folder without a lock is left ``grace_s`` seconds to its maker. Returns how many."""
    removed = 0
    for folder in Path(parent).glob(f"{prefix}*"):
        if not folder.is_dir():
            continue
        owner = RunLock(folder)._owner()
        try:
            young = time.time() - folder.stat().st_mtime < grace_s
        except OSError:
            continue
        if (owner is None and not young) or (owner is not None and not _alive(*owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def file_sha256(path: str | Path, shown: str | None = None) -> str:
    """The sha256 of a file's bytes; a missing or unreadable file is one line naming it (``shown``)."""
    import hashlib


    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise AtbsnError(f"{shown or path}: cannot read it ({e.strerror or reason(e)})") from None
    return digest.hexdigest()


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
