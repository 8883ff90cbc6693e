"""What a user could run instead of ``fit``, side by side on real sets with clean references (issue 42, item 4).

Rows per set: the noisy input, OpenCV NLM (h = 10), BM3D at the noise level atbsn measures (no clean image),
Zero-Shot Noise2Noise (its authors' rule: 2,000 steps on each photo alone; bf16 where native), the released SIDD
students, and ``fit`` with its defaults: its own student at 2 and 5 minutes (one fit per seed, on the whole set),
and what it writes with the released students in the cache (its own student unless a released one is clearly
better by the estimate on its first 16 photos, as fit decides: atbsn.fitting.candidates.pick). PSNR, SSIM on luma
and the largest colour move (how much further an output's per-channel mean sits from the clean reference than the
input's, of 255). The noisy input, NLM, the released students and the 5-minute fits are read from fit_start.py's
per-image results (run it first with the same seeds); the rest is computed here and cached per image. BM3D and
ZS-N2N take a minute and several minutes a photo on 2 cores, so they run on each set's ``--costly`` smallest photos
only (by pixels; the first where sizes tie), and every row is also given on those photos; ``--earlier-costly``
takes their rows and the 2-minute fits' from the committed results of an earlier run (same photos) instead of
running them again. The fits (wall-time budgets) all run first, so that the rest may share the machine.

    python benchmarks/fit_start.py --sets demo sidd9 polyu100-held --seeds 0 1 2
    python benchmarks/side_by_side.py --sets demo sidd9 polyu100-held --seeds 0 1 2 --costly 2 polyu100-held=8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, costly_photos, point, set_pairs, spread, write_results  # noqa: E402

from atbsn import classical  # noqa: E402
from atbsn.checkpoint import load  # noqa: E402
from atbsn.fitting.candidates import FITTED, SCORED_PHOTOS, pick  # noqa: E402
from atbsn.inference import denoise  # noqa: E402
from atbsn.measure import measure_noise  # noqa: E402
from atbsn.metrics import colour_excess, psnr, ssim_y  # noqa: E402

NLM, ZS, BM3D, FIT2, FIT5, WRITES = ("NLM", "ZS-N2N", "BM3D (measured sigma)", "fit 2 min (own student)",
                                     "fit 5 min (own student)", "fit 5 min, released cached (what it writes)")
EARLIER = " (earlier run)"


def _scores(out: np.ndarray, pair) -> dict:
    return {"psnr": psnr(out, pair.clean), "ssim_y": ssim_y(out, pair.clean),
            "colour_excess": colour_excess(out, pair.noisy, pair.clean)}


def _computed(name: str, pairs, label: str, fn) -> list[dict]:
    """``fn`` on each of ``pairs``, scored (cached in the set's side_by_side.json under ``label``)."""
    cache = WORK / name / "side_by_side.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for p in pairs:
        key = f"{label}/{p.name}"
        if key not in done:
            t0 = time.perf_counter()
            done[key] = {**_scores(fn(p), p), "seconds": time.perf_counter() - t0}
            cache.write_text(json.dumps(done))
            print(f"{name} {p.name} {label}: {done[key]['psnr']:.2f} dB ({done[key]['seconds']:.0f} s)", flush=True)
    return [done[f"{label}/{p.name}"] for p in pairs]


def fits(name: str, seeds: list[int]) -> None:
    """The 2-minute fits (cached), one per seed on the whole set, as the 5-minute ones of fit_start.py."""
    pairs = set_pairs(name)
    for seed in seeds:
        point(name, pairs, "new", 2, seed)


def rows_for(name: str, seeds: list[int], costly: int, run_costly: bool = True) -> dict[str, list[list[dict]]]:
    """Each row: one list of per-image scores per seed (one list for what has no seed); the costly rows have
    the costly photos only, every other row has every photo with the costly ones first."""
    pairs = set_pairs(name)
    few = costly_photos(pairs, costly)
    order = few + [i for i in range(len(pairs)) if i not in few]
    starts = {}
    for seed in seeds:
        path = WORK / name / f"fit_start_s{seed}.json"
        if not path.exists():
            sys.exit(f"{path} missing: run python benchmarks/fit_start.py --sets {name} --seeds {seed} first")
        starts[seed] = json.loads(path.read_text())["per"]
    starts = {s: {k: [v[i] for i in order] for k, v in per.items()} for s, per in starts.items()}
    per = starts[seeds[0]]
    released = [k for k in per if k not in ("noisy", NLM) and not k.startswith(FITTED)]
    rows = {"noisy": [per["noisy"]], NLM: [per[NLM]]}
    first = [pairs[i] for i in few]
    if first and run_costly:
        rows[BM3D] = [_computed(name, first, BM3D, lambda p: classical.bm3d(p.noisy, measure_noise(p.noisy).sigma))]
        rows[ZS] = [_computed(name, first, ZS, lambda p: classical.zsn2n(p.noisy, precision="auto"))]
    rows.update({k: [per[k]] for k in released})
    pairs = [pairs[i] for i in order]
    if run_costly:
        rows[FIT2] = []
        for seed in seeds:
            model = load(WORK / name / f"new_m2_s{seed}" / "model.safetensors")
            rows[FIT2].append(_computed(name, pairs, f"{FIT2} s{seed}", lambda p, m=model: denoise(p.noisy, m)))
    rows[FIT5] = [starts[s][FITTED] for s in seeds]
    writes = []
    for s in seeds:  # what fit writes: its own unless a released one is clearly better on its first photos
        first16 = [order.index(i) for i in range(min(SCORED_PHOTOS, len(order)))]
        chosen = pick({k: [starts[s][k][j]["estimated_mse"] for j in first16] for k in [FITTED, *released]})
        writes.append([{**r, "chosen": chosen} for r in starts[s][chosen]])
    rows[WRITES] = writes
    return rows


def _means(runs: list[list[dict]], n: int | None, key: str) -> list[float]:
    return [float(np.mean([r[key] for r in run[:n]])) for run in runs]


def summary(rows: dict[str, list[list[dict]]], costly: int) -> dict:
    """Per row: mean +- sd over seeds of the set means, on every image and on the first ``costly``."""
    n_all = len(rows["noisy"][0])
    out = {}
    for label, runs in rows.items():
        every = len(runs[0]) == n_all
        out[label] = {"seeds": len(runs), "images": len(runs[0]),
                      "psnr_all": _means(runs, None, "psnr") if every else None,
                      "ssim_y_all": _means(runs, None, "ssim_y") if every else None,
                      "psnr_first": _means(runs, costly, "psnr") if costly else None,
                      "ssim_y_first": _means(runs, costly, "ssim_y") if costly else None,
                      "colour_excess": max(r["colour_excess"] for run in runs for r in run)}
        if label == WRITES:
            out[label]["chosen"] = [run[0]["chosen"] for run in runs]
    return out


def verdict(s: dict, row: str = FIT5) -> str:
    """Issue 42's bar: the 5-minute fit (``row``) above NLM (every image) and ZS-N2N (the smallest photos) in PSNR
    and SSIM-Y at every seed."""
    fit = s[row]
    def above(rival: str, part: str) -> bool:
        return all(p > s[rival][f"psnr_{part}"][0] for p in fit[f"psnr_{part}"]) and all(
            q > s[rival][f"ssim_y_{part}"][0] for q in fit[f"ssim_y_{part}"])

    checks = {"NLM (means over every image)": above(NLM, "all")}
    zs = next((k for k in (ZS, ZS + EARLIER) if k in s), None)  # where the costly rivals ran on this set
    if zs:
        checks["ZS-N2N (means over its photos)"] = above(zs, "first")
    return f"{row}: " + "; ".join(f"above {k} in PSNR and SSIM-Y at every seed: {'yes' if ok else '**no**'}"
                                  for k, ok in checks.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["demo", "sidd9", "polyu100-held"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--costly-on", nargs="+", help="the sets where BM3D and ZS-N2N run (default: every set)")
    ap.add_argument("--costly", nargs="+", default=["2"], help="BM3D and ZS-N2N on each set's N smallest photos "
                    "only (ZS-N2N takes minutes a photo): N for every set, SET=N for one")
    ap.add_argument("--earlier-costly", action="store_true", help="BM3D, ZS-N2N and the 2-minute fits from the "
                    "committed results/side_by_side.json (an earlier run on the same photos) instead of running them")
    args = ap.parse_args()
    for s in args.sets:
        if not args.earlier_costly:
            fits(s, args.seeds)
    given = dict(c.split("=", 1) if "=" in c else ("", c) for c in args.costly)
    costly = {s: int(given.get(s, given.get("", "2"))) if args.costly_on is None or s in args.costly_on else 0
              for s in args.sets}
    results = {s: summary(rows_for(s, args.seeds, costly[s], not args.earlier_costly), costly[s])
               for s in args.sets}
    if args.earlier_costly:  # BM3D and ZS-N2N as the committed run measured them, on the same smallest photos
        earlier = json.loads((Path(__file__).parent / "results" / "side_by_side.json").read_text())["sets"]
        for s in args.sets:
            rows = {k: v for k, v in earlier[s].items() if k.removesuffix(EARLIER) in (BM3D, ZS, FIT2)}
            results[s] = {**{k: results[s][k] for k in ("noisy", NLM)},
                          **{k.removesuffix(EARLIER) + EARLIER: v for k, v in rows.items()},
                          **{k: v for k, v in results[s].items() if k not in ("noisy", NLM)}}
    md = ["# What a user could run instead of fit, side by side", "",
          "Per set: PSNR and SSIM-Y (means over the images), mean +- sd over fit seeds where a row has seeds, on "
          "every image and on the set's N smallest photos (where BM3D and ZS-N2N ran: they take a minute "
          "and several minutes a photo on 2 cores), and the largest colour move over the images and seeds (of 255; "
          "issue 42 bounds it at 0.5). `fit` with its defaults, one fit per seed on the whole set, precision by "
          "measurement (bf16 on this machine). ZS-N2N: its authors' 2,000 steps on each photo alone. BM3D at the "
          "noise level atbsn measures on the photo (no clean image). Made by the two commands at the top of "
          "benchmarks/side_by_side.py.", ""]
    for name, s in results.items():
        n = s["noisy"]["images"]
        md += [f"## {name} ({n} images)", "",
               f"| method | seeds | PSNR (all) | SSIM-Y (all) | PSNR ({costly[name]} smallest) | SSIM-Y "
               f"({costly[name]} smallest) | colour moved (largest) |", "|---|---|---|---|---|---|---|"]
        for label, r in s.items():
            chosen = f" ({', '.join(sorted(set(r['chosen'])))})" if "chosen" in r else ""
            cells = [spread(r[k], 4 if "ssim" in k else 2) if r[k] is not None else "-"
                     for k in ("psnr_all", "ssim_y_all", "psnr_first", "ssim_y_first")]
            md.append(f"| {label}{chosen} | {r['seeds']} | " + " | ".join(cells) + f" | {r['colour_excess']:+.2f} |")
        md += ["", f"- {verdict(s)}", ""]
    write_results("side_by_side", {"sets": results}, "\n".join(md))


if __name__ == "__main__":
    main()
