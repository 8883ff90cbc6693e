"""Figures: PSNR over k_b, the k_a x k_b heatmap (the paper's Figure 7), crops per k, side-by-side panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_write


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(rows: Sequence[dict], path: str | Path, noisy_psnr: float | None = None) -> Path:
    """PSNR against inference blind-spot size k_b, one line per teacher (labelled by its k_a or its name)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for t in sorted({r["teacher"] for r in rows}):
        rr = [r for r in rows if r["teacher"] == t]
        ax.plot([r["k_b"] for r in rr], [r["psnr"] for r in rr], "o-", label=rr[0]["label"])
    if noisy_psnr is not None:
        ax.axhline(noisy_psnr, color="grey", ls="--", label="noisy input")
    ax.set_xlabel("inference blind-spot size k_b")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_heatmap(rows: Sequence[dict], path: str | Path) -> Path:
    """PSNR for each (k_a, k_b): the training x inference blind-spot grid of the paper's Figure 7."""
    plt = _pyplot()
    teachers = sorted({r["teacher"] for r in rows}, key=lambda t: next((r["k_a"] or 0, t) for r in rows
                                                                      if r["teacher"] == t))
    kas = [next(r["label"] for r in rows if r["teacher"] == t) for t in teachers]
    kbs = sorted({r["k_b"] for r in rows})
    grid = np.full((len(kas), len(kbs)), np.nan)
    for r in rows:
        grid[teachers.index(r["teacher"]), kbs.index(r["k_b"])] = r["psnr"]
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(kbs), 1 + 0.6 * len(kas)))
    im = ax.imshow(grid, cmap="viridis")
    for i in range(len(kas)):
        for j in range(len(kbs)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(kbs)), [str(k) for k in kbs])
    ax.set_yticks(range(len(kas)), kas)
    ax.set_xlabel("k_b (inference)")
    ax.set_ylabel("teacher (k_a: training)")
    fig.colorbar(im, ax=ax, label="PSNR (dB)")
    return _save(fig, path)


def image_strip(images: Sequence[np.ndarray], labels: Sequence[str], path: str | Path,
                zoom: tuple[int, int, int] | None = None) -> Path:
    """Images side by side with a label under each (uint8 H x W x C, same height). ``zoom = (y, x, size)``
    adds a second row with that square of every image enlarged (nearest neighbour), framed in the first."""
    plt = _pyplot()
    n = len(images)
    h, w = images[0].shape[:2]
    rows = 2 if zoom else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.2 * n * w / max(h, w), 2.5 * rows * h / max(h, w)), squeeze=False)
    for i, (im, label) in enumerate(zip(images, labels)):
        shown = [im] if zoom is None else [im, im[zoom[0] : zoom[0] + zoom[2], zoom[1] : zoom[1] + zoom[2]]]
        for r, part in enumerate(shown):
            ax = axes[r, i]
            ax.imshow(part.squeeze(), cmap="gray" if part.ndim == 2 or part.shape[2] == 1 else None, vmin=0,
                      vmax=255, interpolation="nearest")
            ax.axis("off")
        axes[0, i].set_title(label, fontsize=8)
        if zoom:
            y, x, size = zoom
            axes[0, i].add_patch(plt.Rectangle((x - 0.5, y - 0.5), size, size, fill=False, color="yellow", lw=0.8))
    return _save(fig, path)
