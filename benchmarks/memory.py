"""Peak memory and time to denoise one large photo (default 24 megapixels), tiled, per model.

Each model runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from common import write_results


def child(arch: str, h: int, w: int) -> None:
    from atbsn import ATBSN, Student
    from atbsn.inference import denoise
    from atbsn.tiling import plan_tiles

    torch.manual_seed(0)
    model = ATBSN() if arch == "atbsn" else Student(arch)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tile, margin = plan_tiles(model, torch.device("cpu"))
    t0 = time.perf_counter()
    out = denoise(image, model)
    seconds = time.perf_counter() - t0
    assert out.shape == image.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"arch": arch, "seconds": seconds, "peak_rss_bytes": peak, "rss_before_bytes": base * 1024,
                      "tile": tile, "margin": margin}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--models", nargs="+", default=["C", "atbsn"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.height, a.width)
    rows = []
    for arch in a.models:
        out = subprocess.run([sys.executable, __file__, "--child", arch, "--height", str(a.height), "--width",
                              str(a.width)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    mp = a.height * a.width / 1e6
    md = f"Denoising one {a.width} x {a.height} RGB image ({mp:.1f} MP), CPU, fp32, automatic tiles.\n\n"
    md += "| model | tile + margin | seconds | s / MP | peak RSS (GB) |\n|---|---|---|---|---|\n"
    for r in rows:
        name = "teacher (k = 3)" if r["arch"] == "atbsn" else f"student {r['arch']}"
        md += (f"| {name} | {r['tile']} + {r['margin']} | {r['seconds']:.1f} | {r['seconds'] / mp:.2f} | "
               f"{r['peak_rss_bytes'] / 1e9:.2f} |\n")
    write_results("memory_24mp", {"height": a.height, "width": a.width, "rows": rows}, md)


if __name__ == "__main__":
    main()
