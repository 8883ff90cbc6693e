"""The rival methods against AT-BSN at CPU scale, one harness, one budget, on real noise.

    python benchmarks/rivals.py sidd9      # ../shared/data/real/sidd9 (9 pairs, heavy smartphone noise)
    python benchmarks/rivals.py polyu100   # ../shared/data/real/polyu100 (first 20 pairs, mild DSLR noise)

Fully self-supervised: every method trains only on the noisy images it is scored on, with the same steps,
batch, crop, learning rate and seed (``BUDGET``). Scored: Neighbor2Neighbor, Blind2Unblind (plain UNets at
inference), AP-BSN at PD stride 5/5 and 5/2 without and with R3, AT-BSN at k 9/9 and 9/3, beside the AT-BSN
paper's SIDD numbers; parameters and GMACs at 512^2 for each. Runs resume (same command) and finished
runs are reused. Results: ``results/rivals_<set>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import count_macs, write_results
from reproduce import SETS, _run, open_set

from atbsn import ATBSN
from atbsn.checkpoint import load
from atbsn.config import ModelConfig, RunConfig
from atbsn.evaluate import evaluate
from atbsn.inference import to_model_range
from atbsn.methods.apbsn import APBSN
from atbsn.metrics import scores
from atbsn.train import train

BUDGET = {"steps": 1000, "batch": 8, "crop": 64, "lr": 1e-3, "seed": 0}
WIDTHS = {"atbsn": 16, "n2n": 16, "b2u": 16, "apbsn": 32}  # UNets as in reproduce.py; DBSNl has no pooling
# (method, label, inference options, the AT-BSN paper's SIDD validation PSNR for it)
ROWS = [
    ("n2n", "Neighbor2Neighbor", {}, 25.98),
    ("b2u", "Blind2Unblind", {}, 23.10),
    ("apbsn", "AP-BSN 5/5 (symmetric)", {"k": 5}, 33.40),
    ("apbsn", "AP-BSN 5/2 (asymmetric)", {"k": 2}, 34.86),
    ("apbsn", "AP-BSN 5/5 + R3", {"k": 5, "r3": True}, None),
    ("apbsn", "AP-BSN 5/2 + R3", {"k": 2, "r3": True}, None),
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=list(SETS))
    ap.add_argument("--smoke", action="store_true", help="3 steps per run, results named *_smoke")
    a = ap.parse_args()
    pairs, tag, work, data = open_set(a.set, "rivals", a.smoke)
    budget = {**BUDGET, "steps": 3} if a.smoke else BUDGET
    models, seconds = {}, {}
    for method in ("n2n", "b2u", "apbsn", "atbsn"):
        t = time.perf_counter()
        cfg = RunConfig.from_preset("train", "cpu", method=method, data=data, out=str(work / method),
                                    width=WIDTHS[method], val_every=10**9, save_every=250, **budget)
        models[method] = _run(train, cfg)
        seconds[method] = time.perf_counter() - t
        print(f"{method}: {seconds[method]:.0f} s", flush=True)

    rows = []
    base = [scores(to_model_range(p.noisy)[0], to_model_range(p.clean)[0]) for p in pairs]
    rows.append({"method": "noisy input", **{m: sum(r[m] for r in base) / len(base) for m in METRICS},
                 "params": 0, "gmac_512": 0.0, "paper_sidd": None})
    for method, label, options, paper in ROWS:
        model = load(models[method])
        _, s = evaluate(model, pairs, progress=False, **options)
        rows.append({"method": label, **{m: s[m] for m in METRICS},
                     "params": sum(p.numel() for p in model.parameters()),
                     "gmac_512": _gmacs(model, options), "paper_sidd": paper})
        print(f"{label}: {s['psnr']:.2f} dB", flush=True)
    paper_nets = {"AT-BSN, paper width 48 (k_b = 3)": (ATBSN(), {"k": 3}),
                  "AP-BSN, paper width 128 (stride 2)": (APBSN(ModelConfig("apbsn", width=128, k_train=5, k_infer=2)),
                                                         {"k": 2}),
                  "AP-BSN + R3, paper width 128": (APBSN(ModelConfig("apbsn", width=128, k_train=5, k_infer=2)),
                                                   {"k": 2, "r3": True})}
    reference = [{"method": name, "params": sum(p.numel() for p in net.parameters()), "gmac_512": _gmacs(net, o)}
                 for name, (net, o) in paper_nets.items()]

    lines = ["| method | PSNR (dB) | SSIM (RGB) | SSIM (Y) | parameters | GMAC at 512^2 | paper, SIDD val (dB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"{r['paper_sidd']:.2f}" if r["paper_sidd"] else ""
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim_rgb']:.4f} | {r['ssim_y']:.4f} | "
                     f"{r['params']:,} | {r['gmac_512']:.1f} | {paper} |")
    lines += ["", "Paper-size networks (cost only):", "", "| network | parameters | GMAC at 512^2 |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['params']:,} | {r['gmac_512']:.1f} |" for r in reference]
    md = (f"Set: `{a.set}` ({len(pairs)} pairs), fully self-supervised (trained on the noisy images scored). "
          f"Budget for every method: {budget}; widths {WIDTHS}; seed {budget['seed']}, one seed. PSNR on "
          f"uint8-rounded RGB. Training seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())} "
          "(0 when a finished run was reused).\n\n" + "\n".join(lines))
    write_results(f"rivals_{tag}", {"set": a.set, "budget": budget, "widths": WIDTHS, "rows": rows,
                                    "reference": reference, "train_seconds": seconds}, md)


if __name__ == "__main__":
    main()
