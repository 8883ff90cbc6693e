"""Two checkouts of atbsn timed in one run: does a change make any path slower?

Each measurement runs in a fresh process with the checkout's ``src`` first on ``sys.path``, and the two
checkouts alternate, round after round, so that drift on a shared machine hits both alike. Paths: the
forward pass (batch 1, no grad, channels-last input as the inference code passes it) of the teacher (k = 3)
and students A, B, C, and AP-BSN (width 48, stride 2); the same networks called as a Python user would, freshly
built and given an ordinary NCHW tensor (``plain``); ``denoise_tensor``; one teacher training step (2 x 128^2,
k_a = 9), one distillation step (seven k), and one step of each rival's loss (Neighbor2Neighbor and Blind2Unblind
on student C's UNet, AP-BSN at stride 5), all forward + backward.

    python benchmarks/versions.py --old /tmp/old/src --new src     # writes results/versions.json and .md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import atbsn
from atbsn import (APBSN, ATBSN, Blind2UnblindLoss, ModelConfig, Neighbor2NeighborLoss, PDBlindSpotL1, Student,
                   denoise_tensor)

def best(fn, n):
    fn()
    b = float("inf")
    for _ in range(n):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b

torch.manual_seed(0)
size, out = int(sys.argv[2]), {}
x = torch.rand(1, 3, size, size) * 255
xc = x.contiguous(memory_format=torch.channels_last)
nets = {"teacher": ATBSN, "A": lambda: Student("A"), "B": lambda: Student("B"), "C": lambda: Student("C"),
        "apbsn": lambda: APBSN(ModelConfig("apbsn", width=48, k_train=5, k_infer=2))}
with torch.no_grad():
    for name, make in nets.items():
        net = make().eval()
        args = (3,) if name == "teacher" else ()
        out[f"{name} plain"] = best(lambda: net(x, *args), 3)
        out[f"{name} denoise_tensor"] = best(lambda: denoise_tensor(x, net, tile=size), 3)
        fast = net.to(memory_format=torch.channels_last)
        out[f"{name} fast"] = best(lambda: fast(xc, *args), 3)
xt = (torch.rand(2, 3, 128, 128) * 255).contiguous(memory_format=torch.channels_last)
m = torch.ones(2, 1, 128, 128)
teacher = ATBSN().to(memory_format=torch.channels_last)
frozen = ATBSN().eval().to(memory_format=torch.channels_last)
student = Student("C").to(memory_format=torch.channels_last)
l1 = lambda p, t: ((p - t).abs() * m).mean()
out["teacher training step"] = best(lambda: l1(teacher(xt, 9), xt).backward(), 2)
def distill():
    with torch.no_grad():
        targets = frozen.teachers(xt, (0, 1, 3, 5, 7, 9, 11))
    sum(l1(student(xt), t) for t in targets).backward()
out["distillation step"] = best(distill, 2)
rivals = {"n2n step": (Student("C"), Neighbor2NeighborLoss()), "b2u step": (Student("C"), Blind2UnblindLoss()),
          "apbsn step": (APBSN(ModelConfig("apbsn", width=48, k_train=5, k_infer=2)), PDBlindSpotL1(5))}
for name, (net, loss) in rivals.items():
    net = net.to(memory_format=torch.channels_last)
    out[name] = best(lambda: loss(net, xt, m).backward(), 2)
print(json.dumps(out))
"""


def probe(src: str, size: int) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, src, str(size)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    from common import write_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the src folder of the baseline checkout")
    ap.add_argument("--new", default="src", help="the src folder of the changed checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    t0 = time.perf_counter()
    for r in range(a.rounds):
        for tag, src in (("old", a.old), ("new", a.new)) if r % 2 == 0 else (("new", a.new), ("old", a.old)):
            for k, v in probe(src, a.size).items():
                best[tag][k] = min(best[tag].get(k, float("inf")), v)
        print(r, best, flush=True)
    rows = [{"path": k, "old_s": best["old"][k], "new_s": best["new"][k], "new_over_old": best["new"][k] /
             best["old"][k]} for k in best["new"]]
    md = [f"Best of {a.rounds} alternating rounds (fresh process each), {a.size}^2 forwards, batch 1; steps on "
          f"2 x 128^2; {time.perf_counter() - t0:.0f} s in all. old = `{a.old}`, new = `{a.new}`.", "",
          "| path | old (s) | new (s) | new / old |", "|---|---|---|---|"]
    md += [f"| {r['path']} | {r['old_s']:.4f} | {r['new_s']:.4f} | {r['new_over_old']:.2f} |" for r in rows]
    write_results("versions", {"rows": rows, "size": a.size, "rounds": a.rounds}, "\n".join(md))


if __name__ == "__main__":
    main()
