"""The study behind ``--k auto``, ``--k adaptive`` and ``--safeguard``: rules found on one half of each set,
scored on the other, against the oracle (the best fixed k_b, chosen with the clean images).

    python benchmarks/adapt.py sidd9 polyu100     # after rivals.py trained its AT-BSN teachers (3 seeds each)

Teachers: the AT-BSN runs of ``rivals.py`` (width 16, k_a = 9, 1000 steps, seeds 0, 1, 2; trained on the noisy
images of the set: sidd9's 9, polyu100's first 20). Images: every pair of the set (polyu100: all 100), split
by index into a tuning half (even) and a held-out half (odd). For every teacher and image the outputs at every
k come from one pass; what is measured (PSNR, SSIM, the blind-spot loss, the safeguard's blend, fused outputs)
is cached per image in ``results/work_adapt/`` (a rerun computes only what is missing). Results:
``results/adapt.json`` and ``adapt.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import ADAPT_KS, FUSIONS, REAL, RESULTS, auto_k, every_k_row, guard, spread, write_results

from atbsn.checkpoint import load
from atbsn.datasets import load_pairs

SETS = {"sidd9": REAL / "sidd9", "polyu100": REAL / "polyu100"}
SEEDS = (0, 1, 2)
REACH_FACTORS = (0.0, 1.0, 2.0)  # --k auto: only k > factor x reach qualify
KEEPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # the safeguard keeps an output whole from this blend weight (1: never)
WORK = RESULTS / "work_adapt"


def _teacher(set_name: str, seed: int) -> Path:
    run = RESULTS / f"work_rivals_{set_name}" / ("atbsn" if seed == 0 else f"atbsn_s{seed}")
    return run / "last.safetensors"


def _rows(set_name: str, seed: int, pairs) -> list[dict]:
    cache = WORK / f"{set_name}_seed{seed}.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    if len(done) < len(pairs):
        teacher = load(_teacher(set_name, seed))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache, "a") as f:
            for i in range(len(done), len(pairs)):
                row = {"image": i, **every_k_row(teacher, pairs[i])}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done.append(row)
                print(f"{set_name} seed {seed}: image {i + 1} of {len(pairs)}", flush=True)
    for row in done:
        row["k"] = {int(k): v for k, v in row["k"].items()}
    return done


def _policies(tune: list[dict], held: list[dict]) -> tuple[dict[str, callable], dict[str, str]]:
    """Each policy maps an image's row to its scores; parameters are chosen on ``tune`` by mean PSNR (the
    oracle's on ``held``). Returns the policies and what each chose."""
    def fixed(rows: list[dict]) -> int:
        return max(ADAPT_KS, key=lambda k: np.mean([r["k"][k]["psnr"] for r in rows]))

    k_tune, k_held = fixed(tune), fixed(held)
    chosen = {"best fixed k_b on the tuning half": f"k_b = {k_tune}",
              "oracle: best fixed k_b on the held-out half": f"k_b = {k_held}"}
    pol = {"noisy input": lambda r: r["input"], "k_b = 3 (the default)": lambda r: r["k"][3],
           "best fixed k_b on the tuning half": lambda r: r["k"][k_tune],
           "oracle: best fixed k_b on the held-out half": lambda r: r["k"][k_held]}
    for factor in REACH_FACTORS:
        pol[f"auto, k > {factor:g} x reach"] = lambda r, f=factor: r["k"][auto_k(r, f)]
    for keep in KEEPS:
        pol[f"k_b = 3 + safeguard (keeps from {keep:g})"] = lambda r, t=keep: guard(r["k"][3], t)
        for factor in REACH_FACTORS:
            pol[f"auto, k > {factor:g} x reach + safeguard (keeps from {keep:g})"] = \
                lambda r, f=factor, t=keep: guard(r["k"][auto_k(r, f)], t)
    key = max(FUSIONS_KEYS, key=lambda n: np.mean([r["fused"][n]["psnr"] for r in tune]))
    pol["adaptive (chosen on the tuning half)"] = lambda r, n=key: r["fused"][n]
    chosen["adaptive (chosen on the tuning half)"] = "flat k {}, textured k {}, scale {}".format(*key.split(","))
    return pol, chosen


FUSIONS_KEYS = [f"{f},{t},{s}" for f, t, s in FUSIONS]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--limit", type=int, help="only the first N images of each set (the time: about 25 s per "
                                               "512^2 image and teacher on 2 cores)")
    ap.add_argument("--name", default="adapt", help="results file name")
    a = ap.parse_args()
    report, md = {}, []
    for set_name in a.sets:
        pairs = load_pairs(SETS[set_name], a.limit)
        per_seed = {}
        for seed in a.seeds:
            summary = _teacher(set_name, seed).with_name("summary.json")
            if not (summary.exists() and json.loads(summary.read_text()).get("finished")):
                print(f"{set_name} seed {seed}: no finished teacher yet ({summary.parent}); run rivals.py first")
                continue
            rows = _rows(set_name, seed, pairs)
            tune, held = rows[0::2], rows[1::2]
            pol, chosen = _policies(tune, held)
            per_seed[seed] = {name: {m: float(np.mean([fn(r)[m] for r in held])) for m in ("psnr", "ssim_rgb")}
                              for name, fn in pol.items()}
            per_seed[seed]["_worse_than_input"] = {
                name: int(sum(fn(r)["psnr"] < r["input"]["psnr"] for r in held)) for name, fn in pol.items()}
            per_seed[seed]["_chosen"] = chosen
            per_seed[seed]["_tune_gain"] = {
                name: float(np.mean([fn(r)["psnr"] - r["input"]["psnr"] for r in tune])) for name, fn in pol.items()}
            per_seed[seed]["_auto_ks"] = {f"{f:g}": [auto_k(r, f) for r in held] for f in REACH_FACTORS}
            per_seed[seed]["_n_held"] = len(held)
        if not per_seed:
            continue
        report[set_name] = per_seed
        names = [n for n in next(iter(per_seed.values())) if not n.startswith("_")]
        md += [f"## {set_name}: held-out half ({next(iter(per_seed.values()))['_n_held']} images), seeds "
               f"{sorted(per_seed)}", "",
               "| policy | PSNR (dB) | SSIM (RGB) | minus oracle (dB) | images below the input (per seed) |",
               "|---|---|---|---|---|"]
        oracle_name = "oracle: best fixed k_b on the held-out half"
        for name in names:
            ps = [per_seed[s][name]["psnr"] for s in per_seed]
            ss = [per_seed[s][name]["ssim_rgb"] for s in per_seed]
            gap = [per_seed[s][name]["psnr"] - per_seed[s][oracle_name]["psnr"] for s in per_seed]
            worse = [per_seed[s]["_worse_than_input"][name] for s in per_seed]
            picks = "; ".join(per_seed[s]["_chosen"][name] for s in per_seed if name in per_seed[s]["_chosen"])
            md.append(f"| {name}{f' ({picks})' if picks else ''} | {spread(ps)} | {spread(ss, 4)} | {spread(gap)} | "
                      f"{', '.join(map(str, worse))} |")
        md.append("")
    if len(report) > 1:  # one rule for every photo: the least regret in the worse set, on the tuning halves
        common = set.intersection(*(set(next(iter(v.values()))["_tune_gain"]) for v in report.values()))
        common = {n for n in common if "safeguard" in n or n.startswith(("auto", "k_b = 3"))}
        tuned = {name: {n: np.mean([v[s]["_tune_gain"][n] for s in v]) for n in common} for name, v in report.items()}
        regret = {n: max(max(t.values()) - t[n] for t in tuned.values()) for n in common}
        md += ["## One rule for both sets", "",
               "Each policy's regret on the tuning halves (how far below the best policy of that set, mean over "
               "seeds), in its worse set, least first; then its held-out PSNR per set:", "",
               "| policy | worse set's regret, tuning halves (dB) | held-out: " + " | held-out: ".join(report) + " |",
               "|---|---|" + "---|" * len(report)]
        for n in sorted(regret, key=regret.get)[:8]:
            held = [spread([v[s][n]["psnr"] for s in v]) for v in report.values()]
            md.append(f"| {n} | {regret[n]:.2f} | " + " | ".join(held) + " |")
        md.append("")
    write_results(a.name, {"sets": report, "ks": ADAPT_KS, "fusions": FUSIONS_KEYS}, "\n".join(md))


if __name__ == "__main__":
    main()
