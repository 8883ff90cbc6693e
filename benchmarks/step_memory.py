"""How much of a training step's tensors are alive at its peak: the measurement behind
``atbsn.engine.STEP_PEAK_SHARE``, the factor that turns a step counted on the meta device into a memory estimate.

For each method, in a fresh process: every tensor one step creates is counted on PyTorch's meta device (no data,
:func:`atbsn.engine.step_bytes` without the factor), then one real fp32 step runs on the CPU and the growth of the
process's peak resident memory (ru_maxrss) is read. The share is growth / count.

    python benchmarks/step_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import write_results

CASES = [("atbsn", 256, 8), ("apbsn", 128, 8), ("tmbsn", 128, 4), ("n2n", 256, 8), ("lgbpn", 64, 4)]
WIDTH = 16

CHILD = """
import copy, json, resource, sys, torch
from atbsn.config import RunConfig
from atbsn.engine import _Tally
from atbsn import methods
name, crop, batch, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = RunConfig(task="train", method=name, width=width, crop=crop, batch=batch, steps=10)
method = methods.method(name).make(cfg)
meta = copy.deepcopy(method.model).to("meta")
with _Tally() as tally:
    method.loss.at(0, 10)
    method.loss(meta, torch.empty(batch, 3, crop, crop, device="meta"),
                torch.ones(batch, 1, crop, crop, device="meta")).backward()
x, m = torch.rand(batch, 3, crop, crop) * 255, torch.ones(batch, 1, crop, crop)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
method.loss.at(0, 10)
method.loss(method.model, x, m).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"count_bytes": tally.bytes, "peak_growth_bytes": after - before}))
"""


def main() -> None:
    rows = []
    for name, crop, batch in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(crop), str(batch), str(WIDTH)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append({"method": name, "crop": crop, "batch": batch, "width": WIDTH, **r,
                     "share": round(r["peak_growth_bytes"] / r["count_bytes"], 3)})
    shares = [r["share"] for r in rows]
    md = ("| method | crop | batch | counted on meta (MB) | real peak growth (MB) | share |\n"
          "|---|---|---|---|---|---|\n"
          + "".join(f"| {r['method']} | {r['crop']} | {r['batch']} | {r['count_bytes'] / 1e6:.0f} | "
                    f"{r['peak_growth_bytes'] / 1e6:.0f} | {r['share']:.2f} |\n" for r in rows)
          + f"\nShares {min(shares):.2f} to {max(shares):.2f}: `atbsn.engine.STEP_PEAK_SHARE` (0.4) is above every "
            "one, so the estimate is on the safe side: it overstates a step by up to about 1.5x, and a run within that "
            "of the free memory may be refused although it would just fit.")
    write_results("step_memory", {"rows": rows}, md)


if __name__ == "__main__":
    main()
