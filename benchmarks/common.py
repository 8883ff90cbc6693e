"""Shared by the benchmark scripts: timing, machine description, and writing results with their command."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import atbsn
from atbsn.files import write_text

atbsn.enable_huge_pages()  # a benchmark owns its process, as the atbsn command does (read at the first allocation)

RESULTS = Path(__file__).resolve().parent / "results"
# The project's test data and weights, beside the checkout (never copied into it); REAL: the real-noise sets.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        # the ISA cap (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 takes an AVX2 machine's kernels)
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "native_bf16": atbsn.runtime.native_bf16(torch.device("cpu")),
    }


# The device benchmarks run on: ``--device`` of a script sets it, child processes inherit it.
DEVICE = torch.device(os.environ.get("ATBSN_BENCH_DEVICE", "cpu"))


def use_device(name: str) -> torch.device:
    """Set the benchmark device (inherited by child processes); refuses CUDA where there is none."""
    global DEVICE
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA device visible here")
    os.environ["ATBSN_BENCH_DEVICE"] = name
    DEVICE = torch.device(name)
    return DEVICE


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (nothing to wait for on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timeit(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def count_macs(model, x: torch.Tensor, k: int | None = None) -> float:
    """Multiply-accumulates of the convolutions and matrix products (LG-BPN's attention) in one forward (torch's
    FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, k) if k is not None else model(x)
    conv = {"convolution", "_convolution", "conv2d", "cudnn_convolution", "mkldnn_convolution", "mm", "bmm", "addmm",
            "baddbmm"}
    flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op).split(".")[1] in conv)
    return flops / 2


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def strict_json(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None: JSON has no NaN (it marks "not applicable" here)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def spread(values: list[float], digits: int = 2, single: str = "") -> str:
    """``mean +- sd`` (sample standard deviation) of ``values``; one value is written with ``single`` after it."""
    if not values:
        return "-"
    mean = f"{np.mean(values):.{digits}f}"
    return mean + (f" +- {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else single)


def paired_verdict(a: dict[int, float], b: dict[int, float], min_seeds: int = 3) -> tuple[str, str]:
    """Whether a > b, from the differences of two rows paired by seed (seeds only one row has are left out).

    The claim holds (or its opposite is seen) when the mean difference exceeds twice the sample standard
    deviation of the differences over at least ``min_seeds`` seeds; otherwise it cannot be told apart from
    run-to-run noise. Returns (the difference as text, the verdict)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-", "not run yet"
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    mean = float(d.mean())
    if len(seeds) < min_seeds:
        return f"{mean:+.2f} ({len(seeds)} seed{'s' * (len(seeds) > 1)})", f"undecided: fewer than {min_seeds} seeds"
    sd = float(d.std(ddof=1))
    text = f"{mean:+.2f} +- {sd:.2f} ({len(seeds)} seeds)"
    if abs(mean) > 2 * sd:
        return text, "holds" if mean > 0 else "does not hold (the opposite is seen)"
    return text, "cannot be told apart from run-to-run noise"


def write_results(name: str, data: dict, markdown: str) -> None:
    """``results/<name>.json`` and ``results/<name>.md``, both naming the command that made them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = strict_json({"command": command(), "machine": machine(), **data})
    write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md = f"# {name}\n\nCommand: `{command()}`\n\nMachine: {json.dumps(machine())}\n\n{markdown}\n"
    write_text(RESULTS / f"{name}.md", md)
    print(md)
