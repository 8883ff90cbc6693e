"""CPU runtimes against PyTorch: the students and the teacher through PyTorch, ONNX Runtime and OpenVINO in fp32,
bf16 (where the CPU computes it natively) and int8, at 256^2 and 1024^2, one 24 MP photo, on this CPU's own ISA
and capped to AVX2; and what int8 costs in PSNR on sidd9 and polyu100.

    python benchmarks/cpu_runtime.py                     # every part; results/cpu_runtime.{json,md}
    python benchmarks/cpu_runtime.py --parts speed psnr  # some parts (the others are read from the cache)
    python benchmarks/cpu_runtime.py --parts models psnr speed --networks "C (" "C102 (TM" --caps avx2 \
        --name cpu_runtime_int8

Parts, each cached in ``results/work_cpu_runtime/`` (delete a file to measure it again):
- ``models``: the networks (students A and B freshly initialised, timing does not depend on the weights; C and C102
  the released SIDD students of ``../shared/fixtures/pretrained``; a student ``atbsn fit`` made on sidd9's noisy
  photos; the teacher at k = 3) and their int8 files from ``atbsn quantize`` (default error bound, and every
  convolution in int8), calibrated on the noisy photos of the set they are scored on.
- ``speed``: one process per ISA setting (the caps are read when the libraries load). Per network and size, every
  engine is timed in interleaved rounds (best of the rounds), and the process first measures its convolution
  ceiling (PyTorch, 3x3 48 -> 48 on 4 x 48 x 256^2, channels-last fp32): each row states its fraction of it.
  OpenVINO's rows also state the share of one inference its per-layer profile puts in convolution kernels (the
  most any change around those kernels could win is the rest).
- ``photo``: a 24 MP photo (6000 x 4000) through ``atbsn.denoise`` with student C102, tiled as the command tiles
  it, one fresh process per engine: time and peak memory (the process's peak resident set).
- ``psnr``: ``atbsn.evaluate`` of fp32 and int8 on sidd9 (9 pairs) and polyu100 (100 pairs).

``--networks`` limits every part to the networks whose names begin with the given texts (``"C ("`` is student C,
``C102`` both 1.02M students); ``--name`` writes ``results/NAME.{json,md}`` instead of ``cpu_runtime``.

ONNX Runtime's kernels pick their instruction set from CPUID and take no cap: under "avx2" its rows run this
machine's AVX-512 code and are marked so; PyTorch and OpenVINO's convolutions (oneDNN) honour the cap (the
OpenVINO rows record the convolution kernels it chose).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F
from common import SHARED, count_macs, write_results

from atbsn import ATBSN, Student, denoise, evaluate, load, save
from atbsn.datasets import load_pairs
from atbsn.deploy.engines import OnnxNet, as_onnx, installed
from atbsn.deploy.quantize import quantize
from atbsn.runtime import autocast, native_bf16

WORK = common.RESULTS / "work_cpu_runtime"
PRETRAINED = SHARED / "fixtures" / "pretrained"
SETS = {"sidd9": SHARED / "data" / "real" / "sidd9", "polyu100": SHARED / "data" / "real" / "polyu100"}
STUDENTS = {"C (APR-RD, 1.00M)": "aprrd_student_c_sidd_medium.pth", "C102 (TM-BSN)": "tmbsn_nbsn102_sidd.pth",
            "C102 (APR-RD)": "aprrd_student_c102_sidd_medium.pth"}
CAPS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        # AVX-512 with VNNI but without bf16 or AMX (most cloud servers): int8 by VNNI, the kind issue 41 bounds
        "avx512-vnni": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}}
FIT_MINUTES = 3.0
# atbsn quantize's defaults (the bound MAX_ERROR); every conv in int8 (--all-int8)
INT8 = {"int8": {}, "int8 (all convs)": {"all_int8": True}}
INT8_ENGINES = ("onnxruntime", "openvino")  # --int8-engines' choices: the engines the psnr part scores int8 with
NETWORKS: list[str] | None = None  # --networks: how the names every part measures begin (None: all)


def chosen(names) -> list[str]:
    return [n for n in names if NETWORKS is None or any(n.startswith(w) for w in NETWORKS)]


def _calibration_photos(name: str) -> list[Path]:
    """The set's noisy photos (its pairs.csv's first column): what a user of the set would calibrate on."""
    with open(SETS[name] / "pairs.csv") as f:
        return [SETS[name] / row["noisy"] for row in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------- models
def models() -> dict:
    """Every network file the other parts use (made once)."""
    WORK.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = {}
    for name, make in (("A", lambda: Student("A")), ("B", lambda: Student("B")), ("teacher (k = 3)", ATBSN)):
        path = WORK / f"{name.split()[0]}.safetensors"
        if not path.exists():
            save(make(), path)
        files[name] = str(path)
    for name, file in STUDENTS.items():
        files[name] = str(PRETRAINED / file)
    fit_path = WORK / "fit_student.safetensors"
    if not fit_path.exists() and chosen(["fit"]):
        subprocess.run([sys.executable, "-m", "atbsn", "fit", *map(str, _calibration_photos("sidd9")),
                        "-o", str(fit_path), "--minutes", str(FIT_MINUTES), "-q"], check=True)
    files["fit student (sidd9, 3 min)"] = str(fit_path)
    int8 = {}
    for name in chosen([*STUDENTS, "fit student (sidd9, 3 min)"]):
        for set_name in SETS:
            for variant, options in INT8.items():
                out = WORK / f"{_slug(name)}-{set_name}-{_slug(variant)}.onnx"
                if not out.exists():
                    print(f"quantize {name} on {set_name} ({variant})", flush=True)
                    t0 = time.perf_counter()
                    quantize(load(files[name]), _calibration_photos(set_name), out, progress=False, **options)
                    print(f"  {time.perf_counter() - t0:.0f} s: {load(out).provenance['quantization']}", flush=True)
                q = load(out).provenance["quantization"]
                int8[f"{name}|{set_name}|{variant}"] = {"file": str(out), **q}
    return {"files": files, "int8": int8}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


# ---------------------------------------------------------------------------------------------- speed
def _ceiling(repeat: int = 5) -> float:
    x = torch.rand(4, 48, 256, 256).contiguous(memory_format=torch.channels_last)
    w = torch.rand(48, 48, 3, 3).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return 4 * 256 * 256 * 48 * 48 * 9 / common.timeit(lambda: F.conv2d(x, w, padding=1), repeat) / 1e9


def _ov_kernels(net: OnnxNet) -> dict[str, int]:
    """The convolution kernels OpenVINO compiled (its runtime graph's primitive types)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(net.path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                              "INFERENCE_PRECISION_HINT": "f32"})
    kinds: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            kind = info["primitiveType"].astype(str)
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _ov_conv_share(net: OnnxNet, x: torch.Tensor) -> float:
    """The share of one OpenVINO inference (its per-layer profile, after a warm-up) spent in convolution kernels:
    what a faster runtime around the same kernels could win at most is the rest."""
    import openvino as ov

    hint = {"fp32": "f32"}.get(net.precision, net.precision)
    compiled = ov.Core().compile_model(str(net.path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                              "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    for _ in range(2):
        request.infer({compiled.inputs[0]: x.numpy()})
    times = {p.node_type: 0.0 for p in request.profiling_info}
    for p in request.profiling_info:
        times[p.node_type] += p.real_time.total_seconds()
    return times.get("Convolution", 0.0) / max(sum(times.values()), 1e-12)


def speed_worker(cap: str, info: dict, rounds: int) -> dict:
    """This process's rows (run with the cap's environment)."""
    ceiling = _ceiling()
    bf16 = native_bf16(torch.device("cpu"))
    rows = []
    nets = {name: info["files"][name] for name in chosen(("A", "B", "C (APR-RD, 1.00M)", "C102 (TM-BSN)",
                                                           "teacher (k = 3)"))}
    for name, file in nets.items():
        model = load(file)
        k = 3 if model.config.is_teacher else None
        paths = {("torch", "fp32"): model}
        for engine in ("onnxruntime", "openvino"):
            if installed(engine):
                paths[(engine, "fp32")] = as_onnx(model, k).use(engine)
        if bf16:
            paths[("torch", "bf16")] = model
            if installed("openvino"):
                paths[("openvino", "bf16")] = OnnxNet(as_onnx(model, k).path, model.config, k).use("openvino", "bf16")
        for variant in INT8:
            key = f"{name}|sidd9|{variant}"
            if key in info["int8"]:
                for engine in info["int8"][key]["runs_on"]:
                    paths[(engine, variant)] = load(info["int8"][key]["file"]).use(engine)
        kernels = _ov_kernels(paths[("openvino", "fp32")]) if ("openvino", "fp32") in paths else {}
        for size in (256, 1024):
            x = torch.rand(1, 3, size, size) * 255
            macs = count_macs(model, x, k)
            fns = {}
            for (engine, precision), net in paths.items():
                xe = x.contiguous(memory_format=torch.channels_last) if engine == "torch" else x

                def fn(net=net, xe=xe, engine=engine, precision=precision, k=k):
                    with torch.no_grad(), autocast(torch.device("cpu"), precision if engine == "torch" else "fp32"):
                        return net(xe, k) if k is not None and engine == "torch" else net(xe)
                fns[(engine, precision)] = fn
            outs = {key: fn() for key, fn in fns.items()}
            ref = outs[("torch", "fp32")]
            n = max(2, rounds if size == 1024 else 3 * rounds)
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(n):
                for key, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    best[key] = min(best[key], time.perf_counter() - t0)
            for (engine, precision), s in best.items():
                rows.append({"cap": cap, "model": name, "size": size, "engine": engine, "precision": precision,
                             "seconds": s, "vs_torch_fp32": best[("torch", "fp32")] / s, "gmac": macs / 1e9,
                             "of_ceiling": macs / s / 1e9 / ceiling,
                             "max_diff_vs_torch_fp32": float((outs[(engine, precision)] - ref).abs().max()),
                             "isa_capped": not (cap == "avx2" and engine == "onnxruntime"),
                             "ov_conv_kernels": kernels if engine == "openvino" else None,
                             "ov_conv_share": _ov_conv_share(paths[(engine, precision)], x)
                             if engine == "openvino" else None})
            print(f"{cap} {name} {size}: " + ", ".join(f"{e}/{p} {best[(e, p)]:.3f}s" for e, p in best), flush=True)
    return {"ceiling_gmac_per_s": ceiling, "native_bf16": bf16, "rows": rows}


# ---------------------------------------------------------------------------------------------- photo
def photo_worker(model_file: str, engine: str) -> dict:
    """One 24 MP photo through ``denoise`` (as ``atbsn denoise`` runs it): seconds and peak resident memory."""
    rng = np.random.default_rng(0)
    base = (rng.random((500, 500, 3)) * 255).astype(np.uint8)
    image = np.tile(base, (8, 12, 1))  # 4000 x 6000
    model = load(model_file)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = denoise(image, model, engine=engine)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"engine": engine, "seconds": seconds, "peak_bytes": peak, "peak_before_bytes": before * 1024,
            "shape": list(out.shape)}


# ----------------------------------------------------------------------------------------------- psnr
def psnr_part(info: dict, engines: tuple[str, ...] = INT8_ENGINES) -> list[dict]:
    rows = []
    for name in chosen([*STUDENTS, "fit student (sidd9, 3 min)"]):
        for set_name, folder in SETS.items():
            pairs = load_pairs(folder)
            runs = {("fp32", "torch"): (info["files"][name], "torch")}
            for variant in INT8:
                q = info["int8"][f"{name}|{set_name}|{variant}"]
                for engine in q["runs_on"]:
                    if engine in engines:
                        runs[(variant, engine)] = (q["file"], engine)
            for (variant, engine), (file, eng) in runs.items():
                cache = WORK / f"psnr-{_slug(name)}-{set_name}-{_slug(variant)}-{engine}.json"
                if not cache.exists():
                    _, summary = evaluate(load(file), pairs, engine=eng, progress=False)
                    cache.write_text(json.dumps({"psnr": summary["psnr"], "ssim_rgb": summary["ssim_rgb"],
                                                 "noisy_psnr": summary["noisy_psnr"],
                                                 "isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or "native"}))
                r = json.loads(cache.read_text())
                rows.append({"model": name, "set": set_name, "variant": variant, "engine": engine, **r})
                print(f"{name} {set_name} {variant} {engine}: {r['psnr']:.3f}", flush=True)
    return rows


# -------------------------------------------------------------------------------------------- report
def _child(args: list[str], env: dict) -> dict:
    out = WORK / f"child-{os.getpid()}-{time.time_ns()}.json"
    subprocess.run([sys.executable, __file__, *args, "--out", str(out)], check=True, env={**os.environ, **env})
    data = json.loads(out.read_text())
    out.unlink()
    return data


def markdown(info: dict, speed: dict, photo: dict, psnr: list[dict]) -> str:
    lines = []
    for cap, part in speed.items():
        lines += [f"## Speed, {cap} ISA (convolution ceiling {part['ceiling_gmac_per_s']:.0f} GMAC/s; native bf16: "
                  f"{part['native_bf16']})", "",
                  "| network | size | engine | precision | seconds | vs PyTorch fp32 | of ceiling | max diff (0..255) "
                  "| time in conv kernels |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in part["rows"]:
            mark = " (not capped)" if not r["isa_capped"] else ""
            lines.append(f"| {r['model']} | {r['size']}^2 | {r['engine']}{mark} | {r['precision']} | "
                         f"{r['seconds']:.3f} | {r['vs_torch_fp32']:.2f}x | {r['of_ceiling']:.0%} | "
                         f"{r['max_diff_vs_torch_fp32']:.3g} | "
                         f"{'-' if r.get('ov_conv_share') is None else format(r['ov_conv_share'], '.0%')} |")
        kernels = {r["model"]: r["ov_conv_kernels"] for r in part["rows"] if r["ov_conv_kernels"]}
        if kernels:
            lines += ["", "OpenVINO's convolution kernels: " + "; ".join(f"{m}: {k}" for m, k in kernels.items())]
        lines.append("")
    if photo:
        lines += ["## One 24 MP photo (6000 x 4000) through `denoise`, student C102 (TM-BSN)", "",
                  "| ISA | engine | seconds | vs PyTorch | peak memory (GB) |", "|---|---|---|---|---|"]
        for cap, rows in photo.items():
            torch_s = next(r["seconds"] for r in rows if r["engine"] == "torch")
            for r in rows:
                lines.append(f"| {cap} | {r['label']} | {r['seconds']:.1f} | {torch_s / r['seconds']:.2f}x | "
                             f"{r['peak_bytes'] / 1e9:.2f} |")
        lines.append("")
    if psnr:
        lines += ["## What int8 costs in PSNR (calibrated on the set's own noisy photos; fp32 by PyTorch)", "",
                  "ISA: the `ONEDNN_MAX_CPU_ISA` cap the row was scored under (OpenVINO honours it; - not recorded).",
                  "", "| network | set | variant | engine | ISA | PSNR | vs fp32 | SSIM-RGB | convs in int8 | share of "
                  "MACs in int8 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        fp32 = {(r["model"], r["set"]): r["psnr"] for r in psnr if r["variant"] == "fp32"}
        for r in psnr:
            q = info["int8"].get(f"{r['model']}|{r['set']}|{r['variant']}", {})
            share = f"{q['int8_share_of_macs']:.0%}" if q else "-"
            convs = f"{q['int8_convs']}/{q['convs']}" if q else "-"
            lines.append(f"| {r['model']} | {r['set']} | {r['variant']} | {r['engine']} | {r.get('isa', '-')} | "
                         f"{r['psnr']:.3f} | "
                         f"{r['psnr'] - fp32[(r['model'], r['set'])]:+.3f} | {r['ssim_rgb']:.4f} | {convs} | "
                         f"{share} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["models", "speed", "photo", "psnr"],
                   choices=["models", "speed", "photo", "psnr"])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds at 1024^2 (3x as many at 256^2)")
    p.add_argument("--caps", nargs="+", default=list(CAPS), choices=list(CAPS))
    p.add_argument("--networks", nargs="+", help="only the networks whose names start with these words")
    p.add_argument("--int8-engines", nargs="+", default=list(INT8_ENGINES), choices=INT8_ENGINES,
                   help="score the int8 files with these engines in the psnr part (they agreed to 0.002 dB in "
                        "results/cpu_runtime_int8.md)")
    p.add_argument("--name", default="cpu_runtime", help="the results' name (results/NAME.{json,md})")
    p.add_argument("--speed-worker", help=argparse.SUPPRESS)
    p.add_argument("--photo-worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    global NETWORKS
    NETWORKS = a.networks
    if a.speed_worker or a.photo_worker:
        info = json.loads((WORK / "models.json").read_text())
        data = speed_worker(a.speed_worker, info, a.rounds) if a.speed_worker else photo_worker(*a.photo_worker)
        Path(a.out).write_text(json.dumps(data))
        return
    cached = {part: WORK / f"{part}.json" for part in ("models", "speed", "photo", "psnr")}
    if "models" in a.parts or not cached["models"].exists():
        cached["models"].parent.mkdir(parents=True, exist_ok=True)
        cached["models"].write_text(json.dumps(models(), indent=1))
    info = json.loads(cached["models"].read_text())
    if "speed" in a.parts:
        for cap in a.caps:  # each cap written as soon as it is measured
            old = json.loads(cached["speed"].read_text()) if cached["speed"].exists() else {}
            old[cap] = _child(["--speed-worker", cap, "--rounds", str(a.rounds),
                               *(["--networks", *a.networks] if a.networks else [])], CAPS[cap])
            cached["speed"].write_text(json.dumps(old))
    if "photo" in a.parts and chosen(["C102 (TM-BSN)"]):
        old = json.loads(cached["photo"].read_text()) if cached["photo"].exists() else {}
        c102 = info["files"]["C102 (TM-BSN)"]
        int8 = info["int8"]["C102 (TM-BSN)|sidd9|int8 (all convs)"]["file"]
        for cap in a.caps:
            rows = []
            for label, (file, engine) in {"torch": (c102, "torch"), "openvino": (c102, "openvino"),
                                          "onnxruntime": (c102, "onnxruntime"),
                                          "int8 (all convs), openvino": (int8, "openvino")}.items():
                rows.append({"label": label, **_child(["--photo-worker", file, engine], CAPS[cap])})
                print(cap, rows[-1], flush=True)
            old[cap] = rows
            cached["photo"].write_text(json.dumps(old))
    if "psnr" in a.parts:
        cached["psnr"].write_text(json.dumps(psnr_part(info, tuple(a.int8_engines))))
    load_part = {part: json.loads(f.read_text()) if f.exists() else {} for part, f in cached.items()}
    write_results(a.name, {"models": info, "speed": load_part["speed"], "photo": load_part["photo"],
                                  "psnr": load_part["psnr"]},
                  markdown(info, load_part["speed"], load_part["photo"], load_part["psnr"] or []))


if __name__ == "__main__":
    main()
