"""Video clips through FFmpeg's libraries (PyAV, the ``video`` extra): checked, sampled, and rewritten in chunks.

A clip is denoised frame by frame (:func:`atbsn.inference.denoise_clip`); this module reads and writes it. What
it takes: 8-bit video at a constant frame rate (a clip whose frame intervals vary, or with 10-bit or more
samples such as HDR, is refused on one line before any work). What it writes: the input's codec family at a high
quality (H.264 and HEVC at CRF 16, VP9 at CRF 20, FFV1 lossless, others as H.264) or the codec asked for, the
input's size, frame rate and timestamps, and its audio copied packet for packet. Frames are encoded in chunks,
each its own file in a work folder beside the output, so an interrupted clip resumes at its last whole chunk and
memory stays bounded whatever the clip's length; the chunks are joined into the output file only at the end,
atomically.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import AtbsnError
from .files import atomic_write, reason, write_text

# a clip's suffix -> the FFmpeg muxer that writes it (the suffixes atbsn takes as clips)
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# the input's codec family -> the encoder that writes it at a high quality, and each encoder's options (no
# B-frames: each chunk's first packets then never decode before the previous chunk's last ones)
FAMILIES = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "ffv1": "ffv1"}
OPTIONS = {"libx264": {"crf": "16", "preset": "medium", "bf": "0"},
           "libx265": {"crf": "16", "preset": "medium", "bf": "0", "x265-params": "log-level=error"},
           "libvpx-vp9": {"crf": "20", "b": "0"}, "ffv1": {}}
BITEXACT = {"fflags": "+bitexact"}  # the muxers write nothing that varies between runs (no random IDs, no version)
CHUNK_FRAMES = 32  # frames encoded per chunk file: what an interrupted clip can lose, and what memory holds


def is_clip(path: Path) -> bool:
    return path.suffix.lower() in MUXERS


def _av(path: Path):
    try:
        import av
    except ImportError:
        raise AtbsnError(f"{path}: video clips need the 'video' extra: pip install 'atbsn[video]'") from None
    return av


@dataclass(frozen=True)
class ClipInfo:
    """What a clip holds, read from its packets (nothing decoded)."""

    frames: int
    width: int
    height: int
    rate: Fraction  # frames per second
    codec: str
    audio: int  # audio streams

    def describe(self) -> str:
        return (f"{self.frames} frames of {self.width} x {self.height} at {float(self.rate):.3g} fps ({self.codec}"
                + (f", {self.audio} audio stream(s)" if self.audio else ", no audio") + ")")


def probe(path: str | Path) -> ClipInfo:
    """Check a clip and describe it: one video stream of 8-bit samples at a constant frame rate, else one line."""
    path = Path(path)
    av = _av(path)
    if not path.is_file():
        raise AtbsnError(f"{path}: no such file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise AtbsnError(f"{path}: no video stream in this file")
            v = c.streams.video[0]
            ctx = v.codec_context
            fmt = av.VideoFormat(ctx.pix_fmt) if ctx.pix_fmt else None
            if fmt is None or any(comp.bits > 8 for comp in fmt.components):
                raise AtbsnError(f"{path}: {ctx.pix_fmt or 'unknown'} video (more than 8 bits a sample, as HDR "
                                 "clips have) is not supported; convert it to 8-bit first")
            pts = sorted(p.pts for p in c.demux(v) if p.pts is not None and p.size)
            audio = len(c.streams.audio)
            codec, width, height, tb = ctx.name, ctx.width, ctx.height, v.time_base
    except AtbsnError:
        raise
    except Exception as e:  # PyAV's own error types
        raise AtbsnError(f"{path}: unreadable video ({reason(e, 160)})") from None
    if len(pts) < 1:
        raise AtbsnError(f"{path}: the video stream holds no frames")
    steps = np.diff(pts)
    if len(steps) and (steps.max() - steps.min()) > max(2, 0.05 * float(np.median(steps))):  # beyond rounding
        raise AtbsnError(f"{path}: variable frame rate (frames {float(steps.min() * tb):.4g} to "
                         f"{float(steps.max() * tb):.4g} s apart); re-encode it at a constant rate first "
                         "(ffmpeg -i IN -vsync cfr OUT)")
    rate = (1 / (Fraction(int(np.median(steps))) * tb)) if len(steps) else Fraction(1)
    return ClipInfo(len(pts), width, height, rate, codec, audio)


def frames(path: str | Path, start: int = 0) -> Iterator[tuple[int, np.ndarray, object]]:
    """(index, H x W x 3 uint8 RGB, the decoded frame) of every frame from ``start`` on, in display order."""
    path = Path(path)
    av = _av(path)
    try:
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i >= start:
                    yield i, frame.to_ndarray(format="rgb24"), frame
    except AtbsnError:
        raise
    except Exception as e:
        raise AtbsnError(f"{path}: unreadable video ({reason(e, 160)})") from None


@functools.lru_cache(maxsize=4)
def sampled(path: str | Path, count: int = 8) -> tuple[np.ndarray, ...]:
    """``count`` frames spread evenly over the clip (what ``fit`` and ``info`` learn from and measure), decoded once
    for the few clips in use."""
    total = probe(path).frames
    wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
    return tuple(a for i, a, _ in frames(path) if i in wanted)


def _encoder(info: ClipInfo, codec: str | None, crf: int | None) -> tuple[str, dict[str, str]]:
    """The encoder and its options: ``codec`` (a family such as h264, or an encoder such as libx264), else the
    input's family, else H.264; ``crf`` replaces the constant quality. B-frames stay off whatever is asked."""
    name = FAMILIES.get(codec or info.codec, codec or "libx264")
    options = {**OPTIONS.get(name, {}), "bf": "0"}
    if crf is not None:
        options["crf"] = str(crf)
    return name, options


@dataclass
class Plan:
    """What a clip's work folder holds: kept in ``plan.json`` so that a resumed run writes the same chunks."""

    source: dict  # the input's name, size and modification time: another clip of that name starts anew
    key: str  # what else decides the frames (the network and how it runs): another one starts anew
    frames: int
    chunk: int
    encoder: str
    options: dict

    @property
    def chunks(self) -> int:
        return -(-self.frames // self.chunk)


def rewrite(src: str | Path, dst: str | Path, denoise: Callable[[list[np.ndarray]], list[np.ndarray]],
            codec: str | None = None, crf: int | None = None, progress: Callable[[int], None] | None = None,
            chunk: int = CHUNK_FRAMES, key: str = "", info: ClipInfo | None = None) -> Path:
    """Write ``dst``: ``src`` with every frame through ``denoise`` (a list of frames in, as many out), chunk by
    chunk into a work folder beside ``dst`` (resumed where a run with the same input, ``key`` and options
    stopped), then joined with the input's audio. ``progress(frames)`` is called after each chunk with the
    frames it held (skipped chunks included). ``info``: the clip's :func:`probe`, when the caller has it."""
    src, dst = Path(src), Path(dst)
    av = _av(src)
    info = info or probe(src)
    encoder, options = _encoder(info, codec, crf)
    try:
        av.codec.Codec(encoder, "w")
    except Exception:
        raise AtbsnError(f"{src}: the encoder {encoder} is not in this FFmpeg build (choose another --video-codec)"
                         ) from None
    work = dst.with_name(f".{dst.name}.parts")
    stat = src.stat()
    plan = Plan({"name": src.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}, key, info.frames, chunk,
                encoder, options)
    plan_path = work / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != asdict(plan):
        shutil.rmtree(work)  # a run with other options or another input: its chunks are not this run's
    work.mkdir(parents=True, exist_ok=True)
    write_text(plan_path, json.dumps(asdict(plan)))
    done = {i for i in range(plan.chunks) if (work / f"chunk{i:05d}.nut").is_file()}
    if progress:
        progress(sum(min(chunk, info.frames - i * chunk) for i in done))
    first_todo = min(set(range(plan.chunks)) - done, default=plan.chunks)
    batch: list[tuple[np.ndarray, object]] = []
    for i, rgb, frame in frames(src, start=first_todo * chunk):
        if i // chunk in done:
            continue
        batch.append((rgb, frame))
        if len(batch) == chunk or i == info.frames - 1:
            _write_chunk(av, work / f"chunk{i // chunk:05d}.nut", batch, denoise([a for a, _ in batch]), encoder,
                         options, info)
            if progress:
                progress(len(batch))
            batch = []
    missing = [i for i in range(plan.chunks) if not (work / f"chunk{i:05d}.nut").is_file()]
    if missing:
        raise AtbsnError(f"{src}: decoded fewer frames than its packets promised (chunk {missing[0]} is empty)")
    atomic_write(dst, lambda tmp: _join(av, src, [work / f"chunk{i:05d}.nut" for i in range(plan.chunks)], tmp),
                 suffix=dst.suffix)
    shutil.rmtree(work, ignore_errors=True)
    return dst


def _write_chunk(av, path: Path, batch: list, outputs: list[np.ndarray], encoder: str, options: dict,
                 info: ClipInfo) -> None:
    """One chunk's denoised frames, encoded with the input frames' timestamps, into its own file (atomically)."""

    def write(tmp: str) -> None:
        # NUT keeps the input's time base (Matroska rounds to ms); bitexact: no varying field in the file
        with av.open(tmp, "w", format="nut", options=BITEXACT) as out:
            stream = out.add_stream(encoder, rate=info.rate, options=options)
            stream.width, stream.height = info.width, info.height
            stream.pix_fmt = "bgr0" if encoder == "ffv1" else "yuv420p"  # FFV1: lossless RGB
            stream.time_base = batch[0][1].time_base
            stream.codec_context.time_base = batch[0][1].time_base
            # one thread: FFV1 writes the same bytes on every run, a resume included (x264 not always, under load)
            stream.codec_context.thread_count = 1
            for (_, frame), rgb in zip(batch, outputs):
                new = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                new.pts, new.time_base = frame.pts, frame.time_base
                for packet in stream.encode(new.reformat(format=stream.pix_fmt)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    atomic_write(path, write, suffix=".nut")


def _join(av, src: Path, chunks: list[Path], tmp: str) -> None:
    """The chunks' video packets and the input's audio packets, in time order, into one file."""
    containers = [av.open(str(p)) for p in chunks]
    try:
        with av.open(str(src)) as inp, av.open(tmp, "w", format=_muxer(Path(tmp)), options=BITEXACT) as out:
            vin = containers[0].streams.video[0]
            vout = out.add_stream_from_template(vin)
            vout.time_base = inp.streams.video[0].time_base  # the input's timestamps, unrounded
            audio = {a.index: out.add_stream_from_template(a) for a in inp.streams.audio}

            def video() -> Iterator:
                for c in containers:
                    for packet in c.demux(c.streams.video[0]):
                        if packet.size:
                            packet.stream = vout
                            yield packet

            def sound() -> Iterator:
                for packet in inp.demux(*inp.streams.audio):
                    if packet.size:
                        packet.stream = audio[packet.stream_index]
                        yield packet

            for packet in _by_time(video(), sound()) if audio else video():
                out.mux(packet)
    finally:
        for c in containers:
            c.close()


def _by_time(a: Iterator, b: Iterator) -> Iterator:
    """Two packet streams merged by decoding time (what a muxer wants interleaved)."""

    def key(p) -> float:
        t = p.dts if p.dts is not None else p.pts
        return float((t or 0) * p.time_base)

    pa, pb = next(a, None), next(b, None)
    while pa is not None or pb is not None:
        if pb is None or (pa is not None and key(pa) <= key(pb)):
            yield pa
            pa = next(a, None)
        else:
            yield pb
            pb = next(b, None)


def _muxer(path: Path) -> str:
    return MUXERS.get(path.suffix.lower(), "matroska")
