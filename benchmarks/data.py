"""How fast the data path feeds training: crops per second from photos vs from a prepared store.

    python benchmarks/data.py [--images 40] [--device cpu|cuda]

Makes ``--images`` synthetic SIDD-sized noisy PNGs (5328 x 3000, 16 MP; noise does not compress, as real
sensor noise does not) in ``results/work_data``, more than the sampler's cache holds (``CACHE_GB``), prepares
a store from them, and measures crops/s of 256^2 and 128^2 (batches of 8) for the photo path and the
prepared store, in the trainer's background thread and in 1 and 2 worker processes. Then one training step
(the ``cpu`` preset teacher at 128^2, batch 8) with batches from the store against the same step on one
fixed batch: the data path's share of a step. Results: ``results/data.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_results

from atbsn.config import RunConfig
from atbsn.datasets import PatchSampler, collect_sources, prepare
from atbsn.engine import Trainer, _StepBatches, _thread_batches
from atbsn.images import write_image
from atbsn.methods import method

SIZE = (3000, 5328)  # SIDD Medium's full-size photos
CACHE_GB = 1.0  # smaller than the set: the photo path decodes most crops, as on SIDD Medium (15 GB)
BATCH = 8


def make_photos(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    base = np.linspace(30, 220, SIZE[1], dtype=np.float32)[None, :, None]
    for i in range(n):
        path = folder / f"photo_{i:03d}.png"
        if not path.exists():
            noisy = base + rng.normal(0, 18, (SIZE[0], SIZE[1], 3)).astype(np.float32)
            write_image(path, np.clip(noisy, 0, 255).astype(np.uint8))
    return folder


def crops_per_second(sampler: PatchSampler, workers: int, seconds: float) -> tuple[float, int]:
    """Crops/s drawing whole batches for about ``seconds`` (at least two batches)."""
    n, t0 = 0, time.perf_counter()
    if workers == 0:
        batches = _thread_batches(sampler, 0, 10**9, BATCH, pin=False)
    else:
        loader = torch.utils.data.DataLoader(_StepBatches(sampler, 0, 10**9, BATCH), batch_size=None,
                                             num_workers=workers, prefetch_factor=2)
        batches = iter(loader)
    t0 = time.perf_counter()
    for x, _ in batches:
        n += x.shape[0]
        if n >= 2 * BATCH and time.perf_counter() - t0 > seconds:
            break
    rate = n / (time.perf_counter() - t0)
    del batches
    return rate, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per row")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    work = RESULTS / "work_data"
    photos = make_photos(work / "photos", a.images)
    t = time.perf_counter()
    store = prepare([photos], work / "store", progress=False)
    prepare_s = time.perf_counter() - t
    set_gb = sum(p.stat().st_size for p in store.glob("*.npy")) / 2**30
    rows = []
    for crop in (256, 128):
        for name, src in (("photos (PNG decode)", photos), ("prepared store (mmap)", store)):
            for workers in (0, 1, 2):
                sampler = PatchSampler(collect_sources([src]), crop, seed=0, cache_bytes=int(CACHE_GB * 2**30))
                rate, n = crops_per_second(sampler, workers, a.seconds)
                rows.append({"crop": crop, "source": name, "workers": workers, "crops_per_s": rate, "crops": n})
                print(rows[-1], flush=True)

    # the data path's share of a training step
    cfg = RunConfig.from_preset("train", "cpu", data=[str(store)], out=str(work / "run"), crop=128, batch=BATCH,
                                device=a.device)
    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = Trainer(cfg, lambda config, device: method("atbsn").make(config))
    fixed = trainer.sampler.batch(0, BATCH)
    steps = 6
    trainer._step(*fixed)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        trainer._step(*fixed)
    synthetic = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for batch in trainer._batches(1, 1 + steps):
        trainer._step(*batch)
    real = (time.perf_counter() - t) / steps
    step = {"synthetic_s": synthetic, "store_s": real, "data_share": max(0.0, 1 - synthetic / real)}
    shutil.rmtree(cfg.out, ignore_errors=True)

    lines = ["| crop | source | workers | crops/s |", "|---|---|---|---|"]
    lines += [f"| {r['crop']} | {r['source']} | {r['workers'] or 'thread'} | {r['crops_per_s']:.1f} |" for r in rows]
    md = (f"{a.images} synthetic noisy PNGs of {SIZE[1]} x {SIZE[0]} (16 MP), {set_gb:.2f} GB decoded, sampler cache "
          f"{CACHE_GB} GB per process (smaller than the set). Prepared in {prepare_s:.0f} s. Batches of {BATCH}; "
          f"'thread' is the trainer's default (one background thread), 1 and 2 are worker processes. The store's "
          "files were in the OS page cache (just written), as they are after the first epoch.\n\n" + "\n".join(lines)
          + f"\n\nTraining step (cpu preset teacher, width {cfg.width}, batch {BATCH} x 128^2, {a.device}): "
          f"{synthetic:.3f} s on one fixed batch, {real:.3f} s with batches from the store: the data path's share "
          f"is {100 * step['data_share']:.0f}%.")
    name = "data" if a.device == "cpu" else "data_cuda"
    write_results(name, {"images": a.images, "size": SIZE, "decoded_gb": set_gb, "cache_gb": CACHE_GB,
                           "prepare_s": prepare_s, "rows": rows, "step": step}, md)


if __name__ == "__main__":
    main()
