"""The page under load (issue 45): sessions at once, each uploading a large photo and denoising it.

Starts ``atbsn ui`` (the real server, in its own process, with its sessions' idle time shortened so that they
expire within the run), then N client threads each open a session, upload a W x H photo and denoise it with a
student; every job must succeed. The server's resident memory (VmRSS, and VmHWM, its peak) is read from
/proc before the sessions, at its peak, and after they expire.

    python benchmarks/ui_load.py --model ../shared/fixtures/pretrained/aprrd_student_c_sidd_medium.pth
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from common import write_results

from atbsn.images import write_image

SERVER = ("import logging, sys; from atbsn.ui import Limits, serve; logging.basicConfig(level=logging.INFO, "
          "format='%(message)s'); serve(sys.argv[1], port=0, limits=Limits(idle_s=float(sys.argv[2])))")


def memory(pid: int) -> dict[str, float]:
    """The server's resident memory now and at its peak, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def request(url: str, data: bytes | dict | None = None, kind: str = "application/json") -> dict:
    body = json.dumps(data).encode() if isinstance(data, dict) else data
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                 headers={"Content-Type": kind} if body is not None else {})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a student checkpoint (or a released name)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--side", type=int, default=2000)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds before an idle session is dropped")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ui-load-"))
    photo = tmp / "photo.png"
    write_image(photo, np.random.default_rng(0).integers(0, 256, (a.side, a.side, 3), dtype=np.uint8))
    log = tmp / "server.log"  # a file, not a pipe: a pipe nobody reads stops the server once it is full
    with open(log, "w") as f:
        server = subprocess.Popen([sys.executable, "-c", SERVER, a.model, str(a.idle)], stdout=f,
                                  stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            found = re.search(r"atbsn ui: (http://\S+)", log.read_text())
            if found:
                break
            time.sleep(0.1)
        url = found.group(1)
        base, token = url.split("/?token=")
        api = lambda path: f"{base}{path}{'&' if '?' in path else '?'}token={token}"  # noqa: E731
        time.sleep(1.0)
        before = memory(server.pid)
        peak = {"VmRSS": 0.0, "VmHWM": 0.0}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                now = memory(server.pid)
                peak.update({k: max(peak[k], now[k]) for k in now})
                time.sleep(0.2)

        results: list[dict] = []

        def session() -> None:
            try:
                results.append(one_session())
            except urllib.error.HTTPError as e:
                results.append({"error": f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"})
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                results.append({"error": f"{type(e).__name__}: {e}"})

        def one_session() -> dict:
            sid = request(api("/api/setup"))["session"]
            pid = request(api(f"/api/photo?session={sid}&name=photo.png"), photo.read_bytes(),
                          "application/octet-stream")["id"]
            job = request(api(f"/api/denoise?session={sid}&photo={pid}"), {"model": a.model})["job"]
            while True:
                state = request(api(f"/api/job?session={sid}&job={job}"))
                if state["finished"]:
                    return state
                time.sleep(0.5)

        warm = one_session()  # the model loaded, its engine chosen (an ONNX export and a probe, made once)
        assert warm["error"] is None, warm
        time.sleep(a.idle + 2)
        request(api("/api/setup"))  # a request lets the server drop the idle session
        time.sleep(1.0)
        start = memory(server.pid)
        threading.Thread(target=watch, daemon=True).start()
        t0 = time.perf_counter()
        clients = [threading.Thread(target=session) for _ in range(a.sessions)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        seconds = time.perf_counter() - t0
        done.set()
        at_end = memory(server.pid)
        time.sleep(a.idle + 2)
        request(api("/api/setup"))  # any request lets the server drop what has been idle (one tiny session stays)
        time.sleep(1.0)
        after = memory(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    errors = [r["error"] for r in results if r["error"]]
    data = {"sessions": a.sessions, "side": a.side, "model": Path(a.model).name, "jobs_ok": len(results) - len(errors),
            "errors": errors[:3], "seconds": round(seconds, 1), "rss_mb_before": round(before["VmRSS"]),
            "rss_mb_warm": round(start["VmRSS"]), "rss_mb_peak": round(peak["VmHWM"]),
            "rss_mb_when_done": round(at_end["VmRSS"]), "rss_mb_after_expiry": round(after["VmRSS"]),
            "after_over_warm": round(after["VmRSS"] / start["VmRSS"], 3)}
    md = (f"{a.sessions} sessions at once, each a {a.side} x {a.side} photo denoised by {data['model']} through "
          f"`atbsn ui`: {data['jobs_ok']} of {a.sessions} jobs succeeded in {data['seconds']} s.\n\n"
          "| server memory (MB) | started | warm | peak | all jobs done | after the sessions expired |\n"
          "|---|---|---|---|---|---|\n"
          f"| resident | {data['rss_mb_before']} | {data['rss_mb_warm']} | {data['rss_mb_peak']} | "
          f"{data['rss_mb_when_done']} | {data['rss_mb_after_expiry']} ({data['after_over_warm']:.2f}x warm) |\n\n"
          "'Warm': after one session of the same photo had expired (the model loaded, its engine chosen: an ONNX "
          "export and a probe, made once, and the runtime's buffers for that size); 'peak': the server's high-water "
          "mark (VmHWM, since it started).")
    write_results("ui_load", data, md)


if __name__ == "__main__":
    main()
