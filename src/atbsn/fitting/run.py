"""``fit`` itself: measure, choose, plan, train the teacher, distill the student, check, write one bundle."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load, save
from ..config import RunConfig
from ..datasets import collect_sources
from ..distill import classical_words, distill, distill_loss
from ..errors import AtbsnError
from ..files import RunLock, check_apart, write_text
from ..losses import BlindSpotL1
from ..measure import NoiseEstimate
from ..runtime import AUTO, bf16_support, check_precision, init_distributed, log
from ..train import train
from .candidates import BEST, FITTED, Candidate, choose_best, gather
from .checks import REMOVAL_LIMIT, _better, output_check
from .config import FitConfig
from .plan import _phase, _plan
from .rule import BM3D_STRENGTH, BM3D_WEIGHT, NLM_STRENGTH, _noise, bm3d_teacher_for, choose
from .start import start_of, start_parts
from .stop import STOP_EVERY, _teacher_until_noise


def fit(photos: list[str | Path], output: str | Path, config: FitConfig | None = None, progress: bool = True,
        work_dir: str | Path | None = None) -> Path:
    """Train (or fine-tune) a teacher, distill a student, write ``output`` (a student + teacher bundle)."""
    cfg = config or FitConfig()
    output = Path(output)
    if output.suffix != ".safetensors":
        raise AtbsnError(f"{output}: the fitted model is written as a .safetensors file")
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".fit")
    data = [str(p) for p in photos]
    check_apart([output, work], [*data, cfg.from_model if cfg.from_model != BEST else None])
    n_images = len(collect_sources(data))  # fails at once on a wrong or empty folder
    with RunLock(work):
        return _fit(data, n_images, output, work, cfg, progress)


def _record(cfg: FitConfig, *nets: nn.Module) -> None:
    """denoise's defaults for the file's networks (``--safeguard``, ``--keep-colour``, ``--colour-guard`` and the
    ``--no-`` forms win)."""
    for net in nets:
        net.config.training.update(safeguard=bool(cfg.safeguard), keep_colour=bool(cfg.keep_colour),
                                   colour_guard=cfg.colour_guard or "off")


def _final(report: dict, student: nn.Module, rivals: list[Candidate], data: list[str],
           device: torch.device) -> nn.Module:
    """The student the file holds: the fitted one, or one of the released ``rivals`` that the recorrupted-pair
    estimate finds better on the photos (every score recorded); each scored as the file will run it (recorded
    by :func:`_record`)."""
    if not rivals:
        return student
    log.info(f"  scoring the fitted student beside {len(rivals)} released one(s) on the photos (no clean image)")
    chosen, report["candidates"] = choose_best([Candidate(FITTED, student), *rivals], collect_sources(data), device)
    return chosen.model


def _precisions(precision: str, device) -> tuple[tuple[str, ...], str]:
    """The precisions the probe times (it keeps the faster), and why: ``auto`` tries bf16 beside fp32 only where
    the device computes bf16 natively; a precision given is the only one."""
    if precision != AUTO:
        return (check_precision(precision, device),), "as given (--precision)"
    native, why = bf16_support(device)
    return (("bf16", "fp32"), why) if native else (("fp32",), why)


def _classical_teacher(cfg: FitConfig, noise: NoiseEstimate) -> dict:
    """The distillation's classical teacher: NLM (``--nlm-weight``) at :data:`NLM_STRENGTH` or BM3D
    (``--bm3d-weight``) at :data:`BM3D_STRENGTH` times the measured noise; none where the weight is 0 or the
    photos are too small to measure."""
    if cfg.nlm_weight and cfg.bm3d_weight:
        raise AtbsnError("--nlm-weight and --bm3d-weight: give one classical teacher")
    if not (cfg.nlm_weight or cfg.bm3d_weight):
        return {}
    if not noise.measured:
        log.info("  no classical teacher: the photos are too small to measure their noise")
        return {}
    if cfg.bm3d_weight:
        return {"bm3d_sigma": BM3D_STRENGTH * noise.sigma, "bm3d_weight": cfg.bm3d_weight}
    return {"nlm_h": NLM_STRENGTH * noise.sigma, "nlm_weight": cfg.nlm_weight}


def _fit(data: list[str], n_images: int, output: Path, work: Path, cfg: FitConfig, progress: bool) -> Path:
    began = time.perf_counter()
    noise, measured = _noise(data)
    parts = start_parts(cfg)
    cfg, choice = choose(cfg, noise, fine_tune="teacher" in parts)
    if cfg.bm3d_weight is None and cfg.nlm_weight is None and "teacher" not in parts:
        bm3d, choice["bm3d"] = bm3d_teacher_for(noise, measured["pixels"], cfg.minutes)
        if choice["bm3d"]:
            log.info(f"  BM3D as the student's classical teacher: {'yes' if bm3d else 'no'}, {choice['bm3d']}")
        if bm3d:
            cfg = replace(cfg, bm3d_weight=BM3D_WEIGHT)
            choice["chosen"]["bm3d_weight"] = BM3D_WEIGHT
    if choice["chosen"]:
        log.info("  chose " + ", ".join(f"{f} = {v}" for f, v in choice["chosen"].items()) + f" for {choice['rule']}")
    start = start_of(cfg, parts)
    rivals = [] if cfg.fitted_only else gather(cfg.from_model, parts)  # before training: a failed download says so
    _record(cfg, *(c.model for c in rivals))  # each run as the file would run it, in the plan's timing too
    _, device = init_distributed(cfg.device)
    candidates, why = _precisions(cfg.precision, device)
    common = {"data": data, "batch": cfg.batch, "crop": cfg.crop, "lr": start.lr, "seed": cfg.seed,
              "device": cfg.device, "precision": candidates[0], "on_bad_file": cfg.on_bad_file,
              "val_every": 10**9, "save_every": 100}
    tcfg = RunConfig(task="train", out=str(work / "teacher"), steps=cfg.teacher_steps, **start.teacher_shape,
                     **common)
    shares_unet = start.student_arch == "C"  # student C is the teacher's UNet made non-blind
    scfg = RunConfig(task="distill", out=str(work / "student"), steps=cfg.student_steps,
                     teacher=str(work / "teacher.safetensors"), student=start.student_arch, ks=start.ks,
                     loss=start.loss, init_from_teacher=cfg.init_from_teacher and shares_unet,
                     cache_targets=cfg.cache_targets,
                     **_classical_teacher(cfg, noise), **common)
    t_step, s_step, estimate = _plan(work, cfg, tcfg, scfg, device, start, candidates, why, began,
                                      STOP_EVERY if cfg.stop_at_noise else None, rivals)
    precision = tcfg.precision
    log.info(f"fit: {n_images} noisy image(s) -> {output}"
             + (f", starting from {start.source}" if start.source else ""))
    log.info(f"  1. teacher AT-BSN, width {tcfg.width}, {tcfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches, "
             f"k_a = {tcfg.k_train}" + (f", about {tcfg.steps * t_step / 60:.1f} min" if t_step else ""))
    log.info(f"  2. student {start.student_arch}, {scfg.steps} steps distilled at k in {start.ks} ({start.loss} loss"
             + classical_words(scfg) + ")"
             + (f", about {scfg.steps * s_step / 60:.1f} min" if s_step else "") + f" on {device} ({precision})")
    if estimate is not None:
        log.info(f"  about {estimate / 60:.1f} min in all: the steps from a probe of a few of each, the noise "
                 f"measurement and the probe ({time.perf_counter() - began:.0f} s so far), the checks and writing")

    report: dict = {"from": start.source, "noise": measured, "choice": choice}
    if cfg.stop_at_noise:
        report["teacher_stop"] = _teacher_until_noise(work, tcfg, start, data, device, progress)
    else:
        _phase(work / "teacher", tcfg, partial(train, init=start.teacher), progress)
    teacher = _better(report, "teacher", start.teacher, load(work / "teacher" / "last.safetensors"),
                      lambda: BlindSpotL1(tcfg.k_train), tcfg, device, precision)
    save(teacher, scfg.teacher)  # the teacher the student learns from (a file, so a resumed run finds it)
    _phase(work / "student", scfg, partial(distill, init=start.student), progress)
    student = _better(report, "student", start.student, load(work / "student" / "last.safetensors"),
                      lambda: distill_loss(load(scfg.teacher).to(device), scfg), scfg, device, precision)
    _record(cfg, student, teacher)
    student = _final(report, student, rivals, data, device)
    save(student, output, teacher=teacher)
    ratio, report["photos"] = output_check(student, collect_sources(data), device)
    report["removed_over_noise"] = ratio
    blended = sum(p["safeguard"] != "keeps the output" for p in report["photos"])
    log.info(f"  --safeguard on the first {len(report['photos'])} photo(s): keeps the output of "
             f"{len(report['photos']) - blended}, blends {blended} toward the input (fit.json)")
    if ratio > REMOVAL_LIMIT:
        log.warning(f"fit: the model removes {ratio:.1f}x the noise level of the photos' flattest areas, so it "
                    "probably removes detail too" + (
                        ": denoise's safeguard (on for this file) blends such outputs toward the input"
                        if cfg.safeguard else " and its output may be worse than the input (usual for mild noise "
                        "after a short fit: give it more --minutes, --safeguard, or start --from a released model)"))
    wall = time.perf_counter() - began
    report["seconds"] = {"wall": round(wall, 1), "estimated": None if estimate is None else round(estimate, 1)}
    write_text(work / "fit.json", json.dumps(report, indent=2))
    log.info(f"wrote {output} (student {student.config.arch}; its teacher inside, load(..., part='teacher')) in "
             f"{wall / 60:.1f} min" + ("" if estimate is None else f" (estimated {estimate / 60:.1f})"))
    return output
