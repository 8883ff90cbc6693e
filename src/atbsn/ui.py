"""``atbsn ui``: a local web page to look at denoising, with the blind spot as a slider.

The page (``ui.html``, plain HTML and JavaScript, nothing fetched from the internet) talks to a small JSON API
served by the standard library's threading HTTP server. Everything heavy runs in background jobs the page polls:
loading a model (a released one is downloaded, verified and cached as ``atbsn denoise`` does, with its
progress), denoising (tiled, with progress; a teacher at every value of its blind-spot control in one pass,
cached per photo so the slider switches at once), OpenCV non-local means for comparison, the full-resolution
file (written by :func:`~atbsn.inference.denoise_files`, the very function behind ``atbsn denoise``), and
``fit`` on the photos of the session. Each browser tab is a session with its own folder: two sessions never see
each other's photos. It listens on 127.0.0.1 unless told otherwise.

Any web page the user opens can send requests to 127.0.0.1, so the server answers only its own page: a request
whose ``Host`` is not the address it listens on is refused (421: a DNS-rebound name), a POST whose ``Origin`` is
another site's, or whose body is not of the type the page sends, is refused (403, 415: no request a foreign page
may send without a CORS preflight passes), and every call needs the random token printed with the page's address
(as Jupyter does). A model path typed on the page that cannot be loaded is "cannot be used", nothing more (the
terminal says why): no page learns which files exist. Resources are bounded (:class:`Limits`): uploads are
streamed to disk and checked for their pixel count before they are decoded, sessions, photos and held images are
capped, idle sessions are dropped with their folders, heavy jobs and fits run one at a time, a request body that
never arrives times out, and the folders of a killed server are removed at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import re
import secrets
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files as package_files
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, urlparse

import numpy as np
import torch
from torch import nn

from . import classical
from .checkpoint import load_parts
from .config import K_RULES
from .demo import PHOTOS, sample_pairs
from .errors import AtbsnError
from .files import OwnedFolder, disk_full, reason
from .fitting import FitConfig, fit
from .images import photo_pixels, read_photo
from .inference import InferenceOptions, denoise, denoise_every_k, denoise_files, resolve_k
from .measure import measure_noise
from .ranges import to_model_range
from .released import entries, table
from .runtime import available_memory, few_malloc_arenas, log, return_memory

NLM = "nlm"  # the model name of the classical comparison
PARTS = ("auto", "student", "teacher")
WILDCARDS = ("0.0.0.0", "::", "")  # --host values that listen on every address (then any Host name is served)


@dataclass
class Limits:
    """What one server holds at most: every resource a page (or a foreign page, or a slow client) can make it use."""

    upload_bytes: int = 2 << 30  # one upload (a 24 MP 16-bit TIFF is about 150 MB)
    pixels: int = 100_000_000  # one photo, all pages: read from its header before it is decoded
    sessions: int = 32  # open sessions (browser tabs); past it the idle ones are dropped first
    photos: int = 40  # photos of one session
    results: int = 6  # results kept per photo (the oldest is dropped)
    memory_bytes: int | None = None  # images and results held by all sessions (default: a quarter of free memory)
    idle_s: float = 3600.0  # a session not used this long is dropped with its folder
    jobs: int = 1  # denoising and export jobs running at once (the others wait their turn; each uses every core)
    decoders: int = 1  # uploads decoded and measured at once (a 4 MP photo takes some 400 MB while it is)
    body_timeout_s: float = 30.0  # a request body that does not arrive in this time closes the connection


class BusyError(AtbsnError):
    """The server is at one of its :class:`Limits`: the request may be retried later (HTTP 503)."""


class RefusedError(AtbsnError):
    """A request this server does not answer (foreign Host or Origin, no token): carries its HTTP status."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------- state
@dataclass
class Photo:
    """One photo of a session: the uploaded file (kept as sent), its first page, and what was computed."""

    id: str
    name: str
    path: Path
    image: np.ndarray  # first page, in its own dtype
    pages: int
    preview: bytes  # the input as an 8-bit PNG
    about: dict = field(default_factory=dict)  # what the page lists: size, depth, measured noise (set once)
    results: dict[str, dict] = field(default_factory=dict)  # result key -> {"ks", "images", "pngs", ...}


@dataclass
class Job:
    """Work running in a thread; the page polls :meth:`state`."""

    id: str
    kind: str
    message: str = "starting"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.perf_counter)
    error: str | None = None
    result: dict | None = None
    finished: bool = False
    watch: Callable[[Job], None] | None = None  # refreshes done/total/message from files (fit)

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        self.done, self.total = done, total
        if message is not None:
            self.message = message

    def state(self) -> dict:
        if self.watch is not None and not self.finished:
            self.watch(self)
        elapsed = time.perf_counter() - self.started
        eta = None
        if self.total and 0 < self.done < self.total:
            eta = elapsed * (self.total - self.done) / self.done
        return {"id": self.id, "kind": self.kind, "message": self.message, "done": self.done, "total": self.total,
                "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1),
                "finished": self.finished, "error": self.error, "result": self.result}


@dataclass
class Session:
    id: str
    folder: Path
    photos: dict[str, Photo] = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)  # models fitted in this session
    jobs: dict[str, Job] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: float = field(default_factory=time.monotonic)  # last request
    uploading: int = 0  # uploads in progress (one may wait minutes for its turn to be decoded)

    @property
    def busy(self) -> bool:
        return self.uploading > 0 or any(not j.finished for j in self.jobs.values())

    def held(self) -> int:
        """Bytes of images this session holds in memory (photos and results)."""
        return sum(p.image.nbytes + len(p.preview) + sum(a.nbytes for r in p.results.values()
                                                         for a in r["images"].values()) for p in self.photos.values())


class _Bar:
    """A tqdm-like object for pooch's download progress, reporting into a job."""

    def __init__(self, job: Job, name: str) -> None:
        self.job, self.name, self.total, self.n = job, name, 0, 0

    def update(self, n: int) -> None:
        self.n += n
        mb = f"{self.n / 1e6:.1f} of {self.total / 1e6:.1f} MB" if self.total else f"{self.n / 1e6:.1f} MB"
        self.job.progress(self.n, self.total or 0, f"downloading {self.name}: {mb}")

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- app
class App:
    """The page's state and actions, independent of HTTP (the handler below only routes)."""

    def __init__(self, model: str | None = None, folder: str | Path | None = None,
                 fit_options: dict | None = None, options: InferenceOptions | None = None,
                 limits: Limits | None = None, token: bool = True) -> None:
        self.options = options or InferenceOptions()  # tile, device, precision of every run (k: the slider's)
        self.fit_options = fit_options or {}  # FitConfig fields for "learn from these photos"
        self.limits = limits or Limits()
        if self.limits.memory_bytes is None:
            self.limits.memory_bytes = max(512 << 20, available_memory(torch.device("cpu")) // 4)
        self.token = secrets.token_urlsafe(24) if token else None  # required on every call (None: --no-token)
        # a folder of this process's, removed on close; a killed server's are removed here, at the next start
        self._tmp = None if folder else OwnedFolder("atbsn-ui-")
        self.folder = Path(folder) if folder else self._tmp.path
        self.default_model = model
        self.sessions: dict[str, Session] = {}
        self._models: dict[tuple[str, str], nn.Module] = {}
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one model loaded (or downloaded) at a time, each once
        self._workers = threading.BoundedSemaphore(self.limits.jobs)
        self._decoding = threading.BoundedSemaphore(self.limits.decoders)
        self._fitting = threading.Lock()  # one fit per server: it uses every core for minutes
        self._expired_at = 0.0  # when idle sessions were last looked for

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # sessions and photos ------------------------------------------------------------------------
    def new_session(self) -> dict:
        self.expire()
        with self._lock:
            if len(self.sessions) >= self.limits.sessions:
                raise BusyError(f"{len(self.sessions)} sessions are open, the most this page holds; close a tab "
                                f"or wait for one to be idle for {self.limits.idle_s / 60:g} minutes")
            sid = secrets.token_urlsafe(12)
            session = self.sessions[sid] = Session(sid, self.folder / sid)
        session.folder.mkdir(parents=True)
        models = [{"name": r["name"], "what": r["what"], "cached": r["cached"]} for r in table()]
        return {"session": sid, "models": models, "samples": list(PHOTOS), "default_model": self.default_model}

    def session(self, sid: str | None) -> Session:
        s = self.sessions.get(sid or "")
        if s is None:
            raise LookupError("unknown session (reload the page)")
        s.seen = time.monotonic()
        return s

    def expire(self, now: float | None = None) -> int:
        """Drop the sessions idle for ``limits.idle_s`` (none with a job running), with their folders and the
        memory they held; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [s for s in self.sessions.values() if now - s.seen >= self.limits.idle_s and not s.busy]
            for s in idle:
                del self.sessions[s.id]
        for s in idle:
            shutil.rmtree(s.folder, ignore_errors=True)
            s.photos.clear()
        if idle:
            return_memory()
        return len(idle)

    def expire_now_and_then(self) -> None:
        """:meth:`expire`, at most once a minute (called on every request: a quiet server needs no timer)."""
        now = time.monotonic()
        if now - self._expired_at >= min(60.0, self.limits.idle_s):
            self._expired_at = now
            self.expire(now)

    def held(self) -> int:
        """Bytes of images held by every session."""
        return sum(s.held() for s in list(self.sessions.values()))

    def _room(self) -> None:
        """Refuse new work while the images held by every session are at :attr:`Limits.memory_bytes`."""
        held = self.held()
        if held > self.limits.memory_bytes:
            raise BusyError(f"the page holds {held / 2**20:.0f} MB of photos and results, its limit is "
                            f"{self.limits.memory_bytes / 2**20:.0f} MB; close other tabs or wait for them to expire")

    def photo(self, s: Session, pid: str | None) -> Photo:
        if not pid or pid not in s.photos:
            raise LookupError(f"unknown photo {pid!r} in this session")
        return s.photos[pid]

    def add_photo(self, s: Session, name: str, data: bytes | BinaryIO, size: int | None = None) -> dict:
        """Keep an uploaded file as sent (``data``: its bytes, or a stream of ``size`` bytes copied to disk in
        blocks) and read it as ``atbsn denoise`` would; a bad file, a full disk or a photo past the limits is one
        line naming it, and nothing of it is kept."""
        with s.lock:
            s.uploading += 1
        try:
            return self._add_photo(s, _safe_name(name), data, size)
        finally:
            with s.lock:
                s.uploading -= 1
                s.seen = time.monotonic()

    def _add_photo(self, s: Session, name: str, data: bytes | BinaryIO, size: int | None) -> dict:
        if len(s.photos) >= self.limits.photos:
            raise BusyError(f"{name}: this session holds {len(s.photos)} photos, the most it takes; reload the "
                            "page to start a new one")
        self._room()
        size = len(data) if isinstance(data, bytes) else size
        if size is None or size > self.limits.upload_bytes:
            raise AtbsnError(f"{name}: an upload of {(size or 0) / 1e9:.1f} GB is refused (at most "
                             f"{self.limits.upload_bytes / 1e9:.1f} GB)")
        pid = f"p{len(s.photos) + 1}-{secrets.token_hex(3)}"
        folder = s.folder / "photos" / pid
        path = folder / name
        try:
            folder.mkdir(parents=True)
            _receive(path, data, size)
            pixels = photo_pixels(path)
            if pixels > self.limits.pixels:
                raise AtbsnError(f"{path}: {pixels / 1e6:.0f} megapixels, more than the page takes "
                                 f"({self.limits.pixels / 1e6:.0f}); denoise it with atbsn denoise")
            with self._decoding:  # uploads arrive together; decoding them together took 8 GB for 20 photos
                self._room()
                pages, info = read_photo(path)
                image = pages[0]
                preview = _png(_display(image))
                noise = measure_noise(image).as_dict() if min(image.shape[:2]) >= 48 else None
        except AtbsnError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise AtbsnError(_named(str(e), path, name)) from None
        except Exception as e:  # a full disk, a client gone, a decoder's own error: one line naming the file
            shutil.rmtree(folder, ignore_errors=True)
            if disk_full(e):
                raise AtbsnError(f"{name}: the server's disk is full ({reason(e)}); nothing of it was kept") from None
            if isinstance(e, (TimeoutError, ConnectionError)):
                raise
            raise AtbsnError(f"{name}: cannot read this image ({type(e).__name__}: {reason(e)})") from None
        photo = Photo(pid, name, path, image, len(pages), preview)
        photo.about = _about(photo, info.notes, noise)
        with s.lock:
            s.photos[pid] = photo
        return photo.about

    def add_sample(self, s: Session, sample: str) -> dict:
        if sample not in PHOTOS:
            raise AtbsnError(f"unknown sample photo {sample!r} (choose {', '.join(PHOTOS)})")
        ((_, noisy, _),) = sample_pairs(photos=(sample,))  # the demo's photo with its simulated camera noise
        return self.add_photo(s, f"{sample}-noisy.png", _png(noisy))

    # models -------------------------------------------------------------------------------------
    def model(self, source: str, part: str, job: Job | None = None, s: Session | None = None) -> nn.Module:
        """A loaded network, cached for the server's life (networks are only read). A file typed on the page that
        cannot be loaded is "cannot be used" and nothing more: the reason (no such file, not readable, not a
        checkpoint) goes to the terminal, never to the page, so no page learns what exists on this machine."""
        key = (source, part)
        with self._loading:
            if key in self._models:
                return self._models[key]
            known = (source in entries() or source == self.default_model
                     or (s is not None and any(m["source"] == source for m in s.models)))
            bar = _Bar(job, source) if job is not None else False
            try:
                parts = load_parts(source, progress=bar)
            except Exception as e:
                if known:
                    raise
                log.warning("ui: %s cannot be used as a model: %s", source, reason(e))
                raise AtbsnError(f"{source}: cannot be used as a model (the terminal running atbsn ui says "
                                 "why)") from None
            pick = ("student" if "student" in parts else "teacher") if part == "auto" else part
            if pick not in parts:
                raise AtbsnError(f"{source}: holds no {pick} (it holds: {', '.join(parts)})")
            self._models[key] = parts[pick]
            return parts[pick]

    # jobs ---------------------------------------------------------------------------------------
    def start(self, s: Session, kind: str, work: Callable[[Job], dict], watch=None, heavy: bool = True) -> dict:
        """Run ``work`` in a thread as a job of session ``s``; a ``heavy`` one waits for a free worker
        (``limits.jobs``: each already uses every core, more at once only add memory)."""
        job = Job(secrets.token_hex(4), kind, watch=watch, message="waiting for the jobs before it" if heavy
                  else "starting")
        s.jobs[job.id] = job

        def run() -> None:
            try:
                if heavy:
                    with self._workers:
                        job.message = "starting"
                        job.result = work(job)
                else:
                    job.result = work(job)
                job.message = "done"
            except AtbsnError as e:
                job.error = str(e)
            except Exception as e:  # reported on the page; the server keeps running
                log.error("ui: %s job failed:\n%s", kind, traceback.format_exc())
                job.error = f"{kind} failed: {type(e).__name__}: {e}"
            finally:
                job.finished = True

        threading.Thread(target=run, name=f"atbsn-ui-{kind}", daemon=True).start()
        return {"job": job.id}

    def job(self, s: Session, jid: str | None) -> dict:
        if not jid or jid not in s.jobs:
            raise LookupError(f"unknown job {jid!r} in this session")
        return s.jobs[jid].state()

    def denoise(self, s: Session, photo: Photo, source: str, part: str = "auto") -> dict:
        """Start denoising ``photo``: a teacher at every value of its control (one pass), else once."""
        source, part = _source(source), _part(part)
        self._room()

        def work(job: Job) -> dict:
            t0 = time.perf_counter()
            knob = None
            if source == NLM:
                job.message = "OpenCV non-local means"
                images, ks, default = {None: classical.nlm(_display(photo.image))}, [], None
                title = "OpenCV non-local means (h = 10, on the 8-bit picture)"
            else:
                job.message = f"loading {source}"
                model = self.model(source, part, job, s)
                title = _title(model, source)
                control = model.config.family.knob
                knob = f"{control.name} ({control.what})" if control else None
                job.progress(0, 0, f"denoising with {title}" + (f" at every {knob}" if knob else ""))
                report = lambda done, total: job.progress(done, total)  # noqa: E731
                if control:  # every value that fits the image, then "auto" and "adaptive", from one pass
                    images = denoise_every_k(photo.image, model, self.options, progress=report)
                    ks, default = list(images), resolve_k(model, None)
                else:
                    images = {None: denoise(photo.image, model, self.options, progress=report)}
                    ks, default = [], None
            key = hashlib.sha1(f"{source}|{part}".encode()).hexdigest()[:10]
            seconds = time.perf_counter() - t0
            photo.results.pop(key, None)
            photo.results[key] = {"images": images, "pngs": {}}
            while len(photo.results) > self.limits.results:  # the oldest result goes
                photo.results.pop(next(iter(photo.results)))
            return {"key": key, "ks": ks, "k": default, "knob": knob,
                    "model": title, "seconds": round(seconds, 2), "source": source, "part": part}

        return self.start(s, "denoise", work)

    def image(self, photo: Photo, key: str, k: int | None) -> bytes:
        """The PNG the page shows: the input, or one result at one k."""
        if key == "input":
            return photo.preview
        if key not in photo.results:
            raise LookupError(f"no result {key!r} for {photo.name} yet")
        r = photo.results[key]
        if k not in r["images"]:
            raise LookupError(f"no result at k={k} for {photo.name}")
        if k not in r["pngs"]:
            r["pngs"][k] = _png(_display(r["images"][k]))
        return r["pngs"][k]

    def export(self, s: Session, photo: Photo, source: str, part: str = "auto", k: int | None = None) -> dict:
        """Start writing the full-resolution result with ``atbsn denoise``'s own function (same format, bit
        depth, alpha, colour profile, EXIF and pages)."""
        source, part, k = _source(source), _part(part), _k(k)
        if source == NLM:
            raise AtbsnError("non-local means is shown for comparison only; download a network's result")

        def work(job: Job) -> dict:
            model = self.model(source, part, job, s)
            if k is not None and not model.config.knob:
                raise AtbsnError(f"{source}: k={k} given, but this network is non-blind and has no blind spot")
            job.message = f"writing the full-resolution {photo.name}"
            out = s.folder / "exports" / job.id
            written, errors = denoise_files([photo.path], out, model, self.options, progress=False, k=k)
            if errors:
                raise AtbsnError(_named(errors[0], photo.path, photo.name))
            return {"file": f"/api/file?session={s.id}&job={job.id}", "name": written[0].name}

        return self.start(s, "export", work)

    def file(self, s: Session, jid: str | None) -> tuple[str, bytes]:
        job = s.jobs.get(jid or "")
        if job is None or not job.finished or job.error or job.kind != "export":
            raise LookupError("no finished download with that id")
        path = next((s.folder / "exports" / job.id).iterdir())
        return path.name, path.read_bytes()

    def fit(self, s: Session, minutes: float | None) -> dict:
        """Start ``fit`` on every photo of this session (for ``minutes``, else the app's fit options); the new
        model joins the session's list."""
        photos = [p.path for p in s.photos.values()]
        if not photos:
            raise AtbsnError("add at least one photo to learn from")
        n = len(s.models) + 1
        out, work_dir = s.folder / f"fitted-{n}.safetensors", s.folder / f"fit-{n}"
        cfg = FitConfig(**{**self.fit_options, **({"minutes": minutes} if minutes is not None else {})})
        if not self._fitting.acquire(blocking=False):
            raise BusyError("a fit is already running on this page (one at a time: each uses every core); wait for it")

        def work(job: Job) -> dict:
            try:
                fit(photos, out, cfg, progress=False, work_dir=work_dir)
            finally:
                self._fitting.release()
            entry = {"source": str(out), "label": f"learned from {len(photos)} photo(s) of this session ({n})"}
            s.models.append(entry)
            return entry

        try:
            return self.start(s, "fit", work, watch=lambda job: _watch_fit(job, work_dir), heavy=False)
        except BaseException:
            self._fitting.release()
            raise


def _watch_fit(job: Job, work: Path) -> None:
    """Progress of a fit from its files: the plan's step counts and the steps each phase logged."""
    plan = work / "plan.json"
    if not plan.exists():
        job.message = "measuring this machine's step time"
        return
    p = json.loads(plan.read_text())
    t, s = _logged_step(work / "teacher" / "log.csv"), _logged_step(work / "student" / "log.csv")
    job.total = p["teacher_steps"] + p["student_steps"]
    job.done = t + s
    job.message = (f"teacher step {t} of {p['teacher_steps']}" if s == 0 and t < p["teacher_steps"]
                   else f"student step {s} of {p['student_steps']}")


def _logged_step(path: Path) -> int:
    if not path.exists():
        return 0
    lines = path.read_text().strip().splitlines()
    last = lines[-1].split(",", 1)[0] if len(lines) > 1 else "0"
    return int(last) if last.isdigit() else 0


def _about(p: Photo, notes: list[str], noise: dict | None) -> dict:
    """A photo as the page lists it, with its noise (measured once, on upload; None: too small to measure)."""
    a = p.image
    depth = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}.get(a.dtype, f"{a.dtype}")
    return {"id": p.id, "name": p.name, "width": a.shape[1], "height": a.shape[0], "depth": depth,
            "channels": 1 if a.ndim == 2 else a.shape[2], "pages": p.pages, "notes": notes,
            "noise": noise}


def _source(source: object) -> str:
    if source is not None and not isinstance(source, str):
        raise AtbsnError(f"bad request: 'model' must be a name or a path, not {json.dumps(source)[:40]}")
    source = (source or "").strip()
    if not source:
        raise AtbsnError("choose a model: a released name, a checkpoint file, or learn one from the photos")
    return source


def _part(part: object) -> str:
    if part not in PARTS:
        raise AtbsnError(f"bad request: 'part' must be one of {', '.join(PARTS)}, not {json.dumps(part)[:40]}")
    return part


def _k(k: object) -> int | str | None:
    """The blind spot asked for: None, a whole number >= 0, or a rule of ``--k``."""
    if k is None or k in K_RULES or (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        return k
    raise AtbsnError(f"bad request: 'k' must be a whole number >= 0 or one of {', '.join(K_RULES)}, "
                     f"not {json.dumps(k)[:40]}")


def _minutes(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AtbsnError(f"bad request: 'minutes' must be a number, not {json.dumps(value)[:40]}")
    return float(value)


def _receive(path: Path, data: bytes | BinaryIO, size: int) -> None:
    """Write an upload to ``path``: its bytes, or ``size`` bytes read from a stream in blocks (never the whole
    file in memory); a stream that ends early is an error (the client is gone)."""
    with open(path, "wb") as f:
        if isinstance(data, bytes):
            f.write(data)
            return
        left = size
        while left:
            block = data.read(min(left, 1 << 20))
            if not block:
                raise ConnectionError(f"the upload ended after {size - left} of {size} bytes")
            f.write(block)
            left -= len(block)


def _title(model: nn.Module, source: str) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{model.config.family.title} ({n:,} parameters) from {Path(source).name}"


def _display(a: np.ndarray) -> np.ndarray:
    """Any image this package reads -> 8-bit RGB for the screen (alpha dropped, gray repeated)."""
    a = a[:, :, None] if a.ndim == 2 else a
    colour = a[:, :, :-1] if a.shape[2] in (2, 4) else a
    if colour.dtype != np.uint8:
        colour = np.clip(np.round(to_model_range(colour)[0]), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _safe_name(name: str) -> str:
    """A file name from the browser, reduced to its last part and safe characters."""
    base = re.sub(r"[^\w.\-+ ]", "_", Path(name.replace("\\", "/")).name).strip(". ")
    return base[:120] or "photo"


def _named(message: str, path: Path, name: str) -> str:
    """An error about the session's copy of a file, naming the file the user gave."""
    message = message.replace(str(path), name)
    return message if name in message else f"{name}: {message}"


# -------------------------------------------------------------------------------------------- HTTP
JSON = "application/json"
UPLOAD = "application/octet-stream"  # the page's uploads; a form post (multipart, text/plain) is refused
REFUSAL_PAGE = ("<!doctype html><title>atbsn ui</title><p>Open the address <code>atbsn ui</code> printed in its "
                "terminal: it carries this page's token.</p>")


class _Handler(BaseHTTPRequestHandler):
    app: App  # set on the class made by :func:`make_server`
    hosts: frozenset[str] | None  # the Host values served (None: any, when listening on every address)
    server_version = "atbsn-ui"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # requests are not logged; errors are

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _guard(self, method: str, path: str, q: dict[str, str]) -> None:
        """Refuse what the page itself never sends: a foreign Host (DNS rebinding), a cross-site request, a
        POST from another origin or of a type a foreign page may send without a preflight, a missing token."""
        host = (self.headers.get("Host") or "").lower()
        if self.hosts is not None and host not in self.hosts:
            raise RefusedError(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only "
                               f"{' or '.join(sorted(self.hosts))}, not Host {host[:80]!r}")
        if (self.headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
            raise RefusedError(HTTPStatus.FORBIDDEN, "a request from another site is refused")
        origin = self.headers.get("Origin")
        if method == "POST" and origin is not None and origin.lower() != f"http://{host}":
            raise RefusedError(HTTPStatus.FORBIDDEN, f"a request from {origin[:80]!r} is refused (only this page's)")
        token = self.app.token
        if token is not None and not secrets.compare_digest(q.get("token", "").encode(), token.encode()):
            raise RefusedError(HTTPStatus.FORBIDDEN, "missing or wrong token: open the address atbsn ui printed")
        if method == "POST":
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            want = UPLOAD if path == "/api/photo" else JSON
            if kind != want:
                raise RefusedError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"{path} takes Content-Type {want}, not {kind!r}")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        app = self.app
        try:
            self._guard(method, url.path, q)
            app.expire_now_and_then()
            if method == "GET" and url.path == "/":
                return self._send(HTTPStatus.OK, PAGE(), "text/html; charset=utf-8")
            if method == "GET" and url.path == "/api/setup":
                return self._json(app.new_session())
            s = app.session(q.get("session"))
            if method == "POST" and url.path == "/api/photo":
                return self._json(app.add_photo(s, q.get("name", "photo"), self.rfile, self._length()))
            body = self._fields() if method == "POST" else {}
            if method == "POST" and url.path == "/api/sample":
                return self._json(app.add_sample(s, q.get("name", "")))
            if method == "GET" and url.path == "/api/photos":
                return self._json({"photos": [p.about for p in s.photos.values()], "models": s.models})
            if method == "POST" and url.path in ("/api/denoise", "/api/export"):
                photo = app.photo(s, q.get("photo"))
                if url.path == "/api/denoise":
                    return self._json(app.denoise(s, photo, body.get("model", ""), body.get("part", "auto")))
                return self._json(app.export(s, photo, body.get("model", ""), body.get("part", "auto"),
                                             body.get("k")))
            if method == "POST" and url.path == "/api/fit":
                return self._json(app.fit(s, _minutes(body.get("minutes"))))
            if method == "GET" and url.path == "/api/job":
                return self._json(app.job(s, q.get("job")))
            if method == "GET" and url.path == "/api/image":
                k = q.get("k")
                png = app.image(app.photo(s, q.get("photo")), q.get("key", "input"),
                                int(k) if k and k.isdigit() else k or None)
                return self._send(HTTPStatus.OK, png, "image/png", cache=True)
            if method == "GET" and url.path == "/api/file":
                name, data = app.file(s, q.get("job"))
                return self._send(HTTPStatus.OK, data, "application/octet-stream",
                                  disposition=f"attachment; filename*=UTF-8''{quote(name)}")
            self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)
        except RefusedError as e:
            self.close_connection = True  # what was refused may have a body we do not read
            if url.path == "/" and e.status == HTTPStatus.FORBIDDEN:
                return self._send(e.status, REFUSAL_PAGE, "text/html; charset=utf-8")
            self._json({"error": str(e)}, e.status)
        except BusyError as e:
            self._json({"error": str(e)}, HTTPStatus.SERVICE_UNAVAILABLE)
        except AtbsnError as e:
            self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)
        except LookupError as e:
            self._json({"error": str(e.args[0] if e.args else e)}, HTTPStatus.NOT_FOUND)
        except (TimeoutError, ConnectionError):  # a body that never came, or a client gone: drop the connection
            self.close_connection = True
        except Exception as e:  # the server keeps running; the page shows one line
            log.error("ui: %s %s failed:\n%s", method, url.path, traceback.format_exc())
            self._json({"error": f"internal error: {type(e).__name__}: {reason(e)}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _length(self) -> int:
        """The body's declared length; none, a negative or a non-number is refused before anything is read."""
        text = self.headers.get("Content-Length")
        if text is None or not text.strip().isdigit():
            self.close_connection = True
            raise AtbsnError(f"bad request: Content-Length {text!r} (a body needs its length)")
        n = int(text)
        if n > self.app.limits.upload_bytes:
            self.close_connection = True
            raise AtbsnError(f"an upload of {n / 1e9:.1f} GB is refused (at most "
                             f"{self.app.limits.upload_bytes / 1e9:.1f} GB)")
        return n

    def _fields(self) -> dict:
        """A POST's JSON body, which must be an object (small: the page sends a few fields)."""
        n = self._length()
        if n > 1 << 16:
            self.close_connection = True
            raise AtbsnError(f"bad request: a body of {n} bytes (the page sends a few fields)")
        data = self.rfile.read(n)
        if len(data) < n:
            raise ConnectionError("the body ended early")
        try:
            fields = json.loads(data or b"{}")
        except ValueError:
            raise AtbsnError("bad request: the body is not JSON") from None
        if not isinstance(fields, dict):
            raise AtbsnError(f"bad request: the body must be a JSON object, not a {type(fields).__name__}")
        return fields

    def _json(self, data: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), JSON)

    def _send(self, status: HTTPStatus, data: bytes | str, kind: str, cache: bool = False,
              disposition: str | None = None) -> None:
        body = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")  # no other site may frame the page
        self.send_header("Referrer-Policy", "no-referrer")  # the token never leaves in a Referer
        if self.close_connection:
            self.send_header("Connection", "close")
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        self.wfile.write(body)


def PAGE() -> str:  # noqa: N802 - a constant read once per request so an edited page shows on reload
    return package_files("atbsn").joinpath("ui.html").read_text(encoding="utf-8")


def served_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values a server on ``host``:``port`` answers: its loopback names and ``host`` itself;
    None (any) when it listens on every address, where the token is the guard."""
    if host in WILDCARDS:
        return None
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return frozenset(f"{n.lower()}:{port}" for n in names)


def make_server(app: App, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """The HTTP server for ``app`` (not started); port 0 takes a free one."""
    if not 0 <= port <= 65535:
        raise AtbsnError(f"--port {port}: a port is a number from 0 to 65535")
    handler = type("Handler", (_Handler,), {"app": app, "hosts": None, "timeout": app.limits.body_timeout_s})
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": _family(host)})
    try:
        server = server_class((host, port), handler)
    except OSError as e:
        raise AtbsnError(_listen_error(host, port, e)) from None
    server.daemon_threads = True
    handler.hosts = served_hosts(host, server.server_address[1])
    return server


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _listen_error(host: str, port: int, e: OSError) -> str:
    """Why the server cannot listen, with the fix that fits the cause."""
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine ({e.strerror or e}); check --host"
    if e.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the port is in use; choose another --port"
    if e.errno == errno.EACCES:
        return (f"cannot listen on {host}:{port}: not permitted (ports below 1024 need privileges); "
                "choose another --port")
    return f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port"


def page_url(app: App, server: ThreadingHTTPServer, host: str) -> str:
    """The address to open: the page with its token (a bookmark works for this run of the server)."""
    shown = "127.0.0.1" if host in WILDCARDS else host
    url = f"http://{shown if ':' not in shown else f'[{shown}]'}:{server.server_address[1]}/"
    return url + (f"?token={app.token}" if app.token else "")


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, open_browser: bool = False,
          options: InferenceOptions | None = None, token: bool = True, limits: Limits | None = None) -> None:
    """Run the page until interrupted (``options``: tile, device and precision of every run; ``token``: require
    the printed token on every call)."""
    few_malloc_arenas()  # this process is the server's: what the sessions free comes back (see runtime)
    app = App(model, options=options, token=token, limits=limits)
    try:
        server = make_server(app, host, port)
    except BaseException:
        app.close()
        raise
    before = None  # SIGTERM ends the server as Ctrl-C does (cleaned up), from before the address is printed
    if threading.current_thread() is threading.main_thread():
        before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        url = page_url(app, server, host)
        local = host in ("127.0.0.1", "localhost", "::1")
        log.info(f"atbsn ui: {url}" + (" (this machine only; --host 0.0.0.0 to share it on the network)" if local
                                      else f" (listening on {host}: anyone who can reach this machine and has the "
                                      "address with its token can use it)"))
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        server.serve_forever()
    finally:
        server.server_close()
        app.close()
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    raise KeyboardInterrupt
