"""Does the time ``fit`` prints at its start hold? The demo's fit on each CPU kind: the estimate against the wall time.

The demo's photos with their simulated noise (``atbsn.demo.sample_pairs``) and the demo's recipe (600 + 600
steps, k_a = 5, batch 4), ``--precision auto``, each CPU kind in a fresh process: this machine's own kernels,
then ``ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` (AVX-512 without bf16) and
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``. Run nothing else meanwhile: the probe and the steps are
timed on the same cores. Each row: the precision chosen and why, the estimate, the wall time (fit.json).

    python benchmarks/fit_estimate.py          # writes results/fit_estimate.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, write_results

from atbsn.demo import RECIPE, sample_pairs
from atbsn.images import write_image
from atbsn.runtime import cpu_flags

KINDS = {"native": {}, "AVX-512, no bf16 (cap)": {"ATEN_CPU_CAPABILITY": "avx512",
                                                  "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
         "AVX2 (cap)": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
STEPS = ("600", "600")  # the demo's recipe


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    flags = sorted(f for f in (cpu_flags() or set()) if f.startswith(("avx", "amx", "fma")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        for name, noisy, _ in sample_pairs():
            write_image(photos / f"{name}.png", noisy)
        for label, env in KINDS.items():
            out = Path(tmp) / label.split()[0] / "m.safetensors"
            cmd = [sys.executable, "-m", "atbsn", "fit", str(photos), "-o", str(out), "--teacher-steps", STEPS[0],
                   "--student-steps", STEPS[1], *(a for k, v in RECIPE.items() for a in (f"--{k.replace('_', '-')}",
                                                                                         str(v))), "-q"]
            subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True)
            work = out.with_name(out.name + ".fit")
            plan, fit = json.loads((work / "plan.json").read_text()), json.loads((work / "fit.json").read_text())
            row = {"cpu": label, "env": env, "precision": plan["precision"], "why": plan["precision_why"],
                   "estimated_s": fit["seconds"]["estimated"], "wall_s": fit["seconds"]["wall"],
                   "step_seconds": plan["step_seconds"]}
            row["error"] = row["estimated_s"] / row["wall_s"] - 1
            rows.append(row)
            print(f"{label}: {row['precision']}, estimated {row['estimated_s']:.0f} s, took {row['wall_s']:.0f} s "
                  f"({row['error']:+.0%})", flush=True)
    md = ["# fit's estimate against its wall time, per CPU kind", "",
          f"Command: `python benchmarks/fit_estimate.py`. The CPU's flags: {' '.join(flags)}. "
          f"Machine: {json.dumps(machine())}", "",
          "| CPU kernels | precision (why) | estimated | took | estimate error |", "|---|---|---|---|---|"]
    md += [f"| {r['cpu']} | {r['precision']} ({r['why']}) | {r['estimated_s']:.0f} s | {r['wall_s']:.0f} s | "
           f"{r['error']:+.0%} |" for r in rows]
    write_results("fit_estimate", {"flags": flags, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
