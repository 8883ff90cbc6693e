"""What one backbone pass for seven teachers costs against seven full forwards (the naive loop).

The supplementary's point: every k is only a shift of the four directional features plus the 1x1 head,
so ``teachers()`` should cost about one forward plus six heads, not seven forwards.
"""

from __future__ import annotations

import argparse

import torch
from common import timeit, write_results

from atbsn import ATBSN
from atbsn.config import SIDD_KS

KS = SIDD_KS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = ATBSN().eval().to(memory_format=torch.channels_last)  # the layout inference uses
    x = (torch.rand(a.batch, 3, a.size, a.size) * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shared = torch.stack(net.teachers(x, KS))
        naive = torch.stack([net(x, k) for k in KS])
        rel = ((shared - naive).abs().max() / naive.abs().max()).item()
        assert rel < 1e-5, rel  # nin_A runs per direction in teachers(): the same sums in another order
        t_shared = timeit(lambda: net.teachers(x, KS), a.repeat)
        t_naive = timeit(lambda: [net(x, k) for k in KS], a.repeat)
        t_one = timeit(lambda: net(x, 3), a.repeat)
    data = {"size": a.size, "batch": a.batch, "ks": KS, "seconds": {"teachers_shared": t_shared,
            "naive_loop": t_naive, "single_forward": t_one}, "ratio_shared_to_naive": t_shared / t_naive,
            "max_relative_difference": rel}
    md = (
        f"Seven teachers (k = {KS}) on a batch of {a.batch} x {a.size}^2, width 48, channels-last, "
        f"outputs equal up to float round-off (max difference {rel:.1e} of the output range).\n\n"
        "| path | seconds | relative |\n|---|---|---|\n"
        f"| naive: one full forward per k | {t_naive:.3f} | 1.00 |\n"
        f"| `teachers()`: one backbone pass, seven heads | {t_shared:.3f} | {t_shared / t_naive:.2f} |\n"
        f"| a single forward (k = 3), for scale | {t_one:.3f} | {t_one / t_naive:.2f} |\n"
    )
    write_results("teachers", data, md)


if __name__ == "__main__":
    main()
