"""Where code runs: device choice, precision (autocast), torchrun's process group, progress and messages.

Nothing here knows about networks; everything above imports it. Library code reports through the
``atbsn`` logger (the CLI shows INFO messages on stdout) and :func:`progress_bar`, never ``print``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import AtbsnError

log = logging.getLogger("atbsn")

PRECISIONS = ("fp32", "bf16", "fp16")
AUTO = "auto"  # a precision option's value that asks for bf16 where the device computes it natively


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AtbsnError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AtbsnError(f"device {device!r} requested but CUDA is not available here")
    return dev


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` if it is known and runs on ``device`` (fp16 needs CUDA); ``auto`` is resolved by
    :func:`resolve_precision` once ``device`` is known."""
    if precision == AUTO:
        return resolve_precision(precision, device) if device is not None else precision
    if precision not in PRECISIONS:
        raise AtbsnError(f"unknown precision {precision!r} (use {', '.join((AUTO, *PRECISIONS))})")
    if precision == "fp16" and device is not None and device.type != "cuda":
        raise AtbsnError("fp16 needs a CUDA device; use bf16 on the CPU")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where ``device`` computes it natively (:func:`native_bf16`), else fp32; others checked."""
    return ("bf16" if native_bf16(device) else "fp32") if precision == AUTO else check_precision(precision, device)


# oneDNN's ISA levels in order (ONEDNN_MAX_CPU_ISA caps the kernels it may use); bf16 arithmetic starts at
# AVX512_CORE_BF16. Below it oneDNN still runs bf16, by converting to fp32: slower than fp32 itself.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # the CPU flags (Linux's names) of native bf16 dot products


def onednn_cap() -> str:
    """The ``ONEDNN_MAX_CPU_ISA`` cap (or its older name ``DNNL_MAX_CPU_ISA``), upper case; "" when none."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux names them (``/proc/cpuinfo``), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why. On a CPU: the hardware (AVX512-BF16 or AMX, read from
    its flags) and the kernels allowed (an ``ONEDNN_MAX_CPU_ISA`` cap below AVX512_CORE_BF16, or
    ``ATEN_CPU_CAPABILITY`` at avx2 or below, rules it out). oneDNN itself reports bf16 as supported on every
    AVX-512 CPU, where it emulates it: 1.5x to 1.8x slower than fp32 for fit's teacher (issue 41)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "the GPU " + ("computes bf16" if ok else "has no bf16")
    if device.type != "cpu":
        return False, f"bf16 on {device.type} is not measured by atbsn"
    cap = onednn_cap()
    if cap in ONEDNN_ISAS and ONEDNN_ISAS.index(cap) < ONEDNN_ISAS.index("AVX512_CORE_BF16"):
        return False, f"ONEDNN_MAX_CPU_ISA={cap} allows no native bf16 kernels"
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if aten in ("default", "avx2"):
        return False, f"ATEN_CPU_CAPABILITY={aten} allows no native bf16 kernels"
    flags = cpu_flags()
    if flags is None:  # not Linux: oneDNN's word, and fit's probe times both precisions before it chooses
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            ok = False
        return ok, "oneDNN " + ("runs bf16" if ok else "has no bf16") + " (the CPU's flags are not readable here)"
    native = sorted(BF16_FLAGS & flags)
    if native:
        return True, f"the CPU has {' and '.join(native)}"
    return False, "the CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated, slower than fp32"


INT8_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # int8 dot products in one instruction (VNNI, AMX)


def int8_support() -> tuple[bool, str]:
    """Whether this CPU computes int8 convolutions natively (VNNI or AMX, from its flags), and why. Without VNNI
    the int8 kernels add products in 16 bits and gain at most about 2x over fp32 (AVX2); an ``ONEDNN_MAX_CPU_ISA``
    cap below the VNNI levels (AVX2_VNNI, AVX512_CORE_VNNI) rules it out for OpenVINO, which honours it."""
    cap = onednn_cap()
    if cap in ("SSE41", "AVX", "AVX2", "AVX512_CORE"):
        return False, f"ONEDNN_MAX_CPU_ISA={cap} allows no VNNI kernels"
    flags = cpu_flags()
    if flags is None:
        return False, "the CPU's flags are not readable here"
    native = sorted(INT8_FLAGS & flags)
    if native:
        return True, f"the CPU has {' and '.join(native)}"
    return False, "the CPU has no VNNI or AMX: int8 gains little over fp32 there"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (:func:`bf16_support`): there bf16 autocast about halves a
    training step (2 AVX512-BF16 cores: 0.12 s vs 0.24 s for the fit teacher); elsewhere it is emulated."""
    return bf16_support(device)[0]


def autocast(device: torch.device, precision: str = "fp32"):
    """A context that runs the forward in the requested precision (fp32: no-op; auto: :func:`resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cache_dir() -> Path:
    """Where atbsn keeps what it makes once and reuses (released weights, exported networks, engine choices):
    ``$ATBSN_HOME``, else the platform's user cache folder for atbsn."""
    home = os.environ.get("ATBSN_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("atbsn"))


def available_memory(device: torch.device) -> int:
    """Free memory in bytes on the device (for CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def enable_huge_pages() -> None:
    """Ask PyTorch's CPU allocator to put large tensors on transparent huge pages.

    Called by the ``atbsn`` command, which owns its process; a library must not change its host's
    allocator. The setting is read once, at the first allocation. Page faults on fresh buffers of hundreds
    of MB otherwise dominate big images: measured 1.5x (student C) to 1.9x (student A) faster at 1024^2
    on a 2-core machine. An explicit ``THP_MEM_ALLOC_ENABLE`` in the environment wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


M_ARENA_MAX = -8  # glibc's mallopt parameter


def few_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc at ``arenas`` arenas for this process (returns whether it could).

    For a long-lived server that owns its process (``atbsn ui``): glibc gives each thread that allocates at the same
    time as another an arena of its own and keeps what those arenas free, fragmented, for good; the page's
    request threads each decode a photo. Measured with 8 sessions at once, each a 2.1 MP photo, in rounds: the
    server's memory after the sessions expired grew 301 -> 585 -> 685 MB round after round with glibc's default,
    and stayed at 295 to 300 MB with 2 arenas (lower at its peak too). A no-op where malloc is not glibc's.
    """
    libc = _glibc()
    return bool(libc.mallopt(M_ARENA_MAX, arenas)) if libc is not None else False


def return_memory() -> None:
    """Hand memory freed by Python and PyTorch back to the system (glibc otherwise keeps it in its arenas)."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """glibc, through ctypes; None where the C library is another."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", show: bool = True,
             initial: int = 0, leave: bool = True):
    """A tqdm bar: live on a terminal; in a log file (not a terminal) one line every 30 s at most."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, initial=initial,
                dynamic_ncols=tty, mininterval=0.1 if tty else 30.0, ascii=not tty, leave=leave)


# ----------------------------------------------------------------------------------------------- DDP
@dataclass
class Dist:
    """This process's place in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def leave_process_group(ok: bool) -> None:
    """Wait for every rank, then tear down the torchrun process group (gloo or NCCL)."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()
