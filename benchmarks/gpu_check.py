"""One command that proves a GPU machine: ``make gpu-check`` (or ``python benchmarks/gpu_check.py``).

Runs the CUDA test subset (``ATBSN_TEST_DEVICE=cuda``), the forward/step benchmarks and the data benchmark
on CUDA, and a torchrun job over every visible GPU (DDP over NCCL) on a prepared store, checking that the
ranks end with identical weights. Writes ``results/gpu_check.md``. Without CUDA it says so on one line
and exits 1: a machine without a GPU proves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def run(name: str, cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> dict:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    row = {"check": name, "ok": done.returncode == 0, "seconds": time.perf_counter() - t, "tail": tail}
    print(f"{'ok  ' if row['ok'] else 'FAIL'} {name} ({row['seconds']:.0f} s): {tail[-1] if tail else ''}", flush=True)
    return row


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False); nothing was checked")
        return 1
    gpus = torch.cuda.device_count()
    py = sys.executable
    rows = [
        run("CUDA tests", [py, "-m", "pytest", "-q", "-m", "", "tests/test_cuda.py", "tests/test_inference.py"],
            {"ATBSN_TEST_DEVICE": "cuda"}),
        run("forward speed", [py, "speed.py", "--device", "cuda", "--tag", "cuda"], cwd=HERE),
        run("training steps", [py, "steps.py", "--device", "cuda"], cwd=HERE),
        run("data path", [py, "data.py", "--device", "cuda"], cwd=HERE),
    ]
    store, out = RESULTS / "work_data" / "store", RESULTS / "work_gpu_ddp"
    subprocess.run(["rm", "-rf", str(out)], check=False)
    ddp = run(f"DDP on {gpus} GPU(s), NCCL", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                              str(gpus), "-m", "atbsn", "train", str(store), "-o", str(out),
                                              "--preset", "cpu", "--steps", "50", "--device", "cuda", "-q"])
    if ddp["ok"]:
        digests = json.loads((out / "summary.json").read_text())["rank_weight_digests"]
        ddp["ok"] = len(digests) == gpus and len(set(digests)) == 1
        ddp["tail"].append(f"rank weight digests: {digests}")
    rows.append(ddp)
    name = torch.cuda.get_device_name(0)
    lines = [f"# gpu_check\n\n{gpus} x {name}, torch {torch.__version__}\n", "| check | result | seconds |",
             "|---|---|---|"]
    lines += [f"| {r['check']} | {'ok' if r['ok'] else 'FAILED: ' + ' / '.join(r['tail'])} | {r['seconds']:.0f} |"
              for r in rows]
    lines += ["", "Details: results/speed_cuda.md, results/steps_cuda.md, results/data_cuda.md."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
