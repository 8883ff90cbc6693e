"""The rival methods against AT-BSN at CPU scale, one harness, one budget, on real noise.

    python benchmarks/rivals.py sidd9      # ../shared/data/real/sidd9 (9 pairs, heavy smartphone noise)
    python benchmarks/rivals.py polyu100   # ../shared/data/real/polyu100 (first 20 pairs, mild DSLR noise)
    python benchmarks/rivals.py sidd9 --seeds 1 2 --methods apbsn atbsn   # more seeds where rows decide a claim

Fully self-supervised: every method trains only on the noisy images it is scored on, with the same steps,
batch, crop and learning rate (``BUDGET``); seeds vary the initialisation and the batches. Scored:
Neighbor2Neighbor, Blind2Unblind (plain UNets at inference), AP-BSN at PD stride 5/5 and 5/2 without and with
R3, LG-BPN in its symmetric (4/5, ratio 1) and asymmetric (3/4, the authors' SIDD setting) inference, with R3,
SDAP(E), Spatially-Adaptive SSL (its UNet), the TM-BSN teacher at hole 5/5 and 5/2, AT-BSN at k 9/9 and 9/3,
beside the AT-BSN paper's SIDD numbers; parameters and GMACs at 512^2 for each.
Runs resume (same command) and finished runs are reused. Results: ``results/rivals_<set>.json`` and ``.md``
(``--name`` names them otherwise; every finished run in the set's work folder is scored into them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import SETS, count_macs, open_set, run_to_end, spread, write_results

from atbsn import ATBSN
from atbsn.checkpoint import build, load
from atbsn.config import ModelConfig, RunConfig
from atbsn.evaluate import evaluate
from atbsn.methods.apbsn import APBSN
from atbsn.metrics import scores
from atbsn.ranges import to_model_range
from atbsn.train import train

BUDGET = {"steps": 1000, "batch": 8, "crop": 64, "lr": 1e-3, "seed": 0}
# UNets as in reproduce.py; DBSNl-like networks (AP-BSN, SDAP, LG-BPN) have no pooling; TM-BSN's 57 convolutions
# at full resolution cost as much at 16 as AT-BSN's UNet
WIDTHS = {"atbsn": 16, "n2n": 16, "b2u": 16, "apbsn": 32, "lgbpn": 32, "sdap": 32, "sasl": 16, "tmbsn": 16}
# (method, label, inference options, the AT-BSN paper's SIDD validation PSNR for it)
ROWS = [
    ("n2n", "Neighbor2Neighbor", {}, 25.98),
    ("b2u", "Blind2Unblind", {}, 23.10),
    ("apbsn", "AP-BSN 5/5 (symmetric)", {"k": 5}, 33.40),
    ("apbsn", "AP-BSN 5/2 (asymmetric)", {"k": 2}, 34.86),
    ("apbsn", "AP-BSN 5/5 + R3", {"k": 5, "r3": True}, None),
    ("apbsn", "AP-BSN 5/2 + R3", {"k": 2, "r3": True}, None),
    ("lgbpn", "LG-BPN 4/5 (symmetric)", {"k": 4}, 35.64),
    ("lgbpn", "LG-BPN 3/4 (asymmetric)", {"k": 3}, 37.32),
    ("lgbpn", "LG-BPN 3/4 + R3", {"k": 3, "r3": True}, None),
    ("sdap", "SDAP(E), PD 2", {"k": 2}, None),
    ("sasl", "Spatially-Adaptive SSL (UNet)", {}, None),
    ("tmbsn", "TM-BSN hole 5/5 (symmetric)", {"k": 5}, None),
    ("tmbsn", "TM-BSN hole 5/2 (asymmetric)", {"k": 2}, None),
    ("atbsn", "AT-BSN 9/9 (symmetric)", {"k": 9}, 36.35),
    ("atbsn", "AT-BSN 9/3 (asymmetric)", {"k": 3}, 36.80),
]
METRICS = ("psnr", "ssim_rgb", "ssim_y")


def _gmacs(model, options: dict) -> float:
    """GMACs at 512 x 512, counted on the meta device (nothing is computed)."""
    net = model.to("meta")
    x = torch.empty(1, 3, 512, 512, device="meta")
    k, r3 = options.get("k"), options.get("r3", False)
    if r3:
        return count_macs(lambda t, _k=None: net(t, k, r3=True), x) / 1e9
    return count_macs(net, x, k=k) / 1e9


METHODS = tuple(WIDTHS)
SEED_DIRS = 10  # seeds looked for when collecting finished runs


def _run_dir(work: Path, method: str, seed: int) -> Path:
    return work / (method if seed == 0 else f"{method}_s{seed}")


def _scores(run: Path, method: str, pairs) -> dict[str, dict]:
    """Every row of ``method`` for one finished run, cached beside it (a rerun only scores what is new)."""
    cache = run / "rival_scores.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    model = None
    for m, label, options, _ in ROWS:
        if m == method and label not in done:
            model = model or load(run / "last.safetensors")
            _, s = evaluate(model, pairs, progress=False, **options)
            done[label] = {k: s[k] for k in METRICS}
            print(f"{run.name}: {label}: {s['psnr']:.2f} dB", flush=True)
            cache.write_text(json.dumps(done, indent=1))
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to train (finished runs are reused)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to train")
    ap.add_argument("--smoke", action="store_true", help="3 steps per run, results named *_smoke")
    ap.add_argument("--name", help="results file name (default rivals_<set>); every finished run is scored")
    a = ap.parse_args()
    pairs, tag, work, data = open_set(a.set, "rivals", a.smoke)
    budget = {**BUDGET, "steps": 3} if a.smoke else BUDGET
    for seed in a.seeds:
        for method in a.methods:
            cfg = RunConfig.from_preset("train", "cpu", method=method, data=data,
                                        out=str(_run_dir(work, method, seed)), width=WIDTHS[method],
                                        val_every=10**9, save_every=250, **{**budget, "seed": seed})
            run_to_end(train, cfg)
            print(f"{method} seed {seed}: trained", flush=True)

    finished = {(m, seed): _run_dir(work, m, seed) for m in METHODS for seed in range(SEED_DIRS)
                if (_run_dir(work, m, seed) / "summary.json").exists()
                and json.loads((_run_dir(work, m, seed) / "summary.json").read_text()).get("finished")}
    per_run = {key: _scores(run, key[0], pairs) for key, run in finished.items()}
    seconds = {f"{m} seed {seed}": json.loads((run / "summary.json").read_text())["seconds"]
               for (m, seed), run in finished.items()}
    base = [scores(to_model_range(p.noisy)[0], to_model_range(p.clean)[0]) for p in pairs]
    rows = [{"method": "noisy input", **{m: [float(np.mean([r[m] for r in base]))] for m in METRICS}, "params": 0,
             "gmac_512": 0.0, "paper_sidd": None}]
    for method, label, options, paper in ROWS:
        runs = sorted(seed for m, seed in per_run if m == method)
        if not runs:
            continue
        model = load(finished[method, runs[0]] / "last.safetensors")
        rows.append({"method": label, **{m: [per_run[method, seed][label][m] for seed in runs] for m in METRICS},
                     "seeds": runs, "params": sum(p.numel() for p in model.parameters()),
                     "gmac_512": _gmacs(model, options), "paper_sidd": paper})
    paper_nets = {"AT-BSN, paper width 48 (k_b = 3)": (ATBSN(), {"k": 3}),
                  "AP-BSN, paper width 128 (stride 2)": (APBSN(ModelConfig("apbsn", width=128, k_train=5, k_infer=2)),
                                                         {"k": 2}),
                  "AP-BSN + R3, paper width 128": (APBSN(ModelConfig("apbsn", width=128, k_train=5, k_infer=2)),
                                                   {"k": 2, "r3": True}),
                  "LG-BPN, paper width 128 (setting 3/4)": (build(ModelConfig("lgbpn", width=128)), {"k": 3}),
                  "SDAP(E), paper width 128 (PD 2)": (build(ModelConfig("sdap", width=128, value_range=1.0)),
                                                      {"k": 2}),
                  "Spatially-Adaptive SSL, its UNet (width 48)": (build(ModelConfig("sasl", width=48)), {}),
                  "TM-BSN teacher, paper width 48 (hole 2)": (build(ModelConfig("tmbsn", width=48, value_range=1.0)),
                                                              {"k": 2})}
    reference = [{"method": name, "params": sum(p.numel() for p in net.parameters()), "gmac_512": _gmacs(net, o)}
                 for name, (net, o) in paper_nets.items()]

    lines = ["| method | PSNR (dB) | SSIM (RGB) | SSIM (Y) | seeds | parameters | GMAC at 512^2 | paper, SIDD val "
             "(dB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"{r['paper_sidd']:.2f}" if r["paper_sidd"] else ""
        lines.append(f"| {r['method']} | {spread(r['psnr'])} | {spread(r['ssim_rgb'], 4)} | "
                     f"{spread(r['ssim_y'], 4)} | {len(r.get('seeds', [])) or ''} | {r['params']:,} | "
                     f"{r['gmac_512']:.1f} | {paper} |")
    lines += ["", "Paper-size networks (cost only):", "", "| network | parameters | GMAC at 512^2 |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['params']:,} | {r['gmac_512']:.1f} |" for r in reference]
    md = (f"Set: `{a.set}` ({len(pairs)} pairs), fully self-supervised (trained on the noisy images scored). "
          f"Budget for every method: {budget} (seed varied); widths {WIDTHS}. PSNR on uint8-rounded RGB; mean +- "
          "standard deviation over the seeds listed. Training seconds per run: "
          f"{', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}.\n\n" + "\n".join(lines))
    write_results(a.name or f"rivals_{tag}", {"set": a.set, "budget": budget, "widths": WIDTHS, "rows": rows,
                                    "reference": reference, "train_seconds": seconds}, md)


if __name__ == "__main__":
    main()
