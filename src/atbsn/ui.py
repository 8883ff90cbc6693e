"""``atbsn ui``: a local web page to look at denoising, with the blind spot as a slider.

The page (``ui.html``, plain HTML and JavaScript, nothing fetched from the internet) talks to a small JSON API
served by the standard library's threading HTTP server. Everything heavy runs in background jobs the page polls:
loading a model (a released one is downloaded, verified and cached as ``atbsn denoise`` does, with its
progress), denoising (tiled, with progress; a teacher at every value of its blind-spot control in one pass,
cached per photo so the slider switches at once), OpenCV non-local means for comparison, the full-resolution
file (written by :func:`~atbsn.inference.denoise_files`, the very function behind ``atbsn denoise``), and
``fit`` on the photos of the session. Each browser tab is a session with its own folder: two sessions never see
each other's photos. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files as package_files
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import numpy as np
from torch import nn

from . import classical
from .checkpoint import load_parts
from .demo import PHOTOS, sample_pairs
from .errors import AtbsnError
from .fit import FitConfig, fit
from .images import read_photo
from .inference import InferenceOptions, denoise, denoise_every_k, denoise_files, resolve_k
from .measure import measure_noise
from .ranges import to_model_range
from .registry import table
from .runtime import log

MAX_UPLOAD = 2 << 30  # bytes of one upload (a 24 MP 16-bit TIFF is about 150 MB)
NLM = "nlm"  # the model name of the classical comparison


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
                 fit_options: dict | None = None, options: InferenceOptions | None = None) -> None:
        self.options = options or InferenceOptions()  # tile, device, precision of every run (k: the slider's)
        self.fit_options = fit_options or {}  # FitConfig fields for "learn from these photos"
        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="atbsn-ui-")
        self.folder = Path(folder or self._tmp.name)
        self.default_model = model
        self.sessions: dict[str, Session] = {}
        self._models: dict[tuple[str, str], nn.Module] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # sessions and photos ------------------------------------------------------------------------
    def new_session(self) -> dict:
        sid = secrets.token_urlsafe(12)
        with self._lock:
            self.sessions[sid] = Session(sid, self.folder / sid)
        self.sessions[sid].folder.mkdir(parents=True)
        models = [{"name": r["name"], "what": r["what"], "cached": r["cached"]} for r in table()]
        return {"session": sid, "models": models, "samples": list(PHOTOS), "default_model": self.default_model}

    def session(self, sid: str | None) -> Session:
        if not sid or sid not in self.sessions:
            raise LookupError("unknown session (reload the page)")
        return self.sessions[sid]

    def photo(self, s: Session, pid: str | None) -> Photo:
        if not pid or pid not in s.photos:
            raise LookupError(f"unknown photo {pid!r} in this session")
        return s.photos[pid]

    def add_photo(self, s: Session, name: str, data: bytes) -> dict:
        """Keep an uploaded file as sent and read it as ``atbsn denoise`` would; a bad file is one line naming
        it, and nothing of it is kept."""
        name = _safe_name(name)
        pid = f"p{len(s.photos) + 1}-{secrets.token_hex(3)}"
        folder = s.folder / "photos" / pid
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(data)
        try:
            pages, info = read_photo(path)
            image = pages[0]
            preview = _png(_display(image))
        except AtbsnError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise AtbsnError(_named(str(e), path, name)) from None
        except Exception as e:  # a decoder's own error: still one line naming the file
            shutil.rmtree(folder, ignore_errors=True)
            raise AtbsnError(f"{name}: cannot read this image ({type(e).__name__}: {e})") from None
        photo = Photo(pid, name, path, image, len(pages), preview)
        photo.about = _about(photo, info.notes)
        with s.lock:
            s.photos[pid] = photo
        return photo.about

    def add_sample(self, s: Session, sample: str) -> dict:
        if sample not in PHOTOS:
            raise AtbsnError(f"unknown sample photo {sample!r} (choose {', '.join(PHOTOS)})")
        ((_, noisy, _),) = sample_pairs(photos=(sample,))  # the demo's photo with its simulated camera noise
        return self.add_photo(s, f"{sample}-noisy.png", _png(noisy))

    # models -------------------------------------------------------------------------------------
    def model(self, source: str, part: str, job: Job | None = None) -> nn.Module:
        """A loaded network, cached for the server's life (networks are only read)."""
        key = (source, part)
        if key not in self._models:
            bar = _Bar(job, source) if job is not None else False
            parts = load_parts(source, progress=bar)
            pick = ("student" if "student" in parts else "teacher") if part == "auto" else part
            if pick not in parts:
                raise AtbsnError(f"{source}: holds no {pick} (it holds: {', '.join(parts)})")
            with self._lock:
                self._models[key] = parts[pick]
        return self._models[key]

    # jobs ---------------------------------------------------------------------------------------
    def start(self, s: Session, kind: str, work: Callable[[Job], dict], watch=None) -> dict:
        job = Job(secrets.token_hex(4), kind, watch=watch)
        s.jobs[job.id] = job

        def run() -> None:
            try:
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
        source = _source(source)

        def work(job: Job) -> dict:
            t0 = time.perf_counter()
            knob = None
            if source == NLM:
                job.message = "OpenCV non-local means"
                images, ks, default = {None: classical.nlm(_display(photo.image))}, [], None
                title = "OpenCV non-local means (h = 10, on the 8-bit picture)"
            else:
                job.message = f"loading {source}"
                model = self.model(source, part, job)
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
            photo.results[key] = {"images": images, "pngs": {}}
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
        source = _source(source)
        if source == NLM:
            raise AtbsnError("non-local means is shown for comparison only; download a network's result")

        def work(job: Job) -> dict:
            model = self.model(source, part, job)
            job.message = f"writing the full-resolution {photo.name}"
            out = s.folder / "exports" / job.id
            written, errors = denoise_files([photo.path], out, model, self.options, progress=False,
                                            k=k if model.config.knob else None)
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

        def work(job: Job) -> dict:
            fit(photos, out, cfg, progress=False, work_dir=work_dir)
            entry = {"source": str(out), "label": f"learned from {len(photos)} photo(s) of this session ({n})"}
            s.models.append(entry)
            return entry

        return self.start(s, "fit", work, watch=lambda job: _watch_fit(job, work_dir))


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


def _about(p: Photo, notes: list[str]) -> dict:
    """A photo as the page lists it; its noise measured once, on upload."""
    a = p.image
    depth = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}.get(a.dtype, f"{a.dtype}")
    return {"id": p.id, "name": p.name, "width": a.shape[1], "height": a.shape[0], "depth": depth,
            "channels": 1 if a.ndim == 2 else a.shape[2], "pages": p.pages, "notes": notes,
            "noise": measure_noise(a).as_dict() if min(a.shape[:2]) >= 48 else None}


def _source(source: str) -> str:
    source = (source or "").strip()
    if not source:
        raise AtbsnError("choose a model: a released name, a checkpoint file, or learn one from the photos")
    return source


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
class _Handler(BaseHTTPRequestHandler):
    app: App  # set on the class made by :func:`make_server`
    server_version = "atbsn-ui"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # requests are not logged; errors are

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        app = self.app
        try:
            if method == "GET" and url.path == "/":
                return self._send(HTTPStatus.OK, PAGE(), "text/html; charset=utf-8")
            if method == "GET" and url.path == "/api/setup":
                return self._json(app.new_session())
            s = app.session(q.get("session"))
            if method == "POST" and url.path == "/api/photo":
                return self._json(app.add_photo(s, q.get("name", "photo"), self._body()))
            if method == "POST" and url.path == "/api/sample":
                return self._json(app.add_sample(s, q.get("name", "")))
            if method == "GET" and url.path == "/api/photos":
                return self._json({"photos": [p.about for p in s.photos.values()], "models": s.models})
            if method == "POST" and url.path in ("/api/denoise", "/api/export"):
                body = json.loads(self._body() or b"{}")
                photo = app.photo(s, q.get("photo"))
                if url.path == "/api/denoise":
                    return self._json(app.denoise(s, photo, body.get("model", ""), body.get("part", "auto")))
                return self._json(app.export(s, photo, body.get("model", ""), body.get("part", "auto"),
                                             body.get("k")))
            if method == "POST" and url.path == "/api/fit":
                body = json.loads(self._body() or b"{}")
                minutes = body.get("minutes")
                return self._json(app.fit(s, None if minutes is None else float(minutes)))
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
        except AtbsnError as e:
            self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)
        except LookupError as e:
            self._json({"error": str(e.args[0] if e.args else e)}, HTTPStatus.NOT_FOUND)
        except (ValueError, json.JSONDecodeError) as e:
            self._json({"error": f"bad request: {e}"}, HTTPStatus.BAD_REQUEST)
        except Exception as e:  # the server keeps running; the page shows one line
            log.error("ui: %s %s failed:\n%s", method, url.path, traceback.format_exc())
            self._json({"error": f"internal error: {type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_UPLOAD:
            raise AtbsnError(f"upload of {n / 1e9:.1f} GB refused (at most {MAX_UPLOAD / 1e9:.1f} GB)")
        return self.rfile.read(n)

    def _json(self, data: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: HTTPStatus, data: bytes | str, kind: str, cache: bool = False,
              disposition: str | None = None) -> None:
        body = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        self.wfile.write(body)


def PAGE() -> str:  # noqa: N802 - a constant read once per request so an edited page shows on reload
    return package_files("atbsn").joinpath("ui.html").read_text(encoding="utf-8")


def make_server(app: App, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """The HTTP server for ``app`` (not started); port 0 takes a free one."""
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise AtbsnError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    server.daemon_threads = True
    return server


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, open_browser: bool = False,
          options: InferenceOptions | None = None) -> None:
    """Run the page until interrupted (``options``: tile, device and precision of every run)."""
    app = App(model, options=options)
    server = make_server(app, host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_address[1]}/"
    local = host in ("127.0.0.1", "localhost", "::1")
    log.info(f"atbsn ui: {url}" + (" (this machine only; --host 0.0.0.0 to share it on the network)" if local else
                                  f" (listening on {host}: anyone who can reach this machine can use it)"))
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.close()
