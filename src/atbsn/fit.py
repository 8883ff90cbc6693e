"""``fit``: the whole method in one call, for someone with a folder of noisy photos and nothing else.

1. measure the photos' noise (:mod:`atbsn.measure`) and choose the blind spot from it (:func:`blind_spot_for`:
   the paper's k_a = 9 for heavy noise; for mild noise a small one, a short fit (``step_cap``), the stop at
   the noise and the safeguard; options the user gives win);
2. train the AT-BSN teacher on the photos (self-supervised), from scratch or, with ``from_model``,
   starting from a released teacher (fine-tuning to the user's camera);
3. distill a student (C by default) from it at several blind spots, starting from the released student
   when the file has one (AT-BSN(D)), else from the teacher's UNet as the paper does;
4. write one bundle file: the student (what ``denoise`` uses) with its teacher inside.

Starting from a released model, neither network may end worse than it started by the measure available
without clean images (the held-out self-supervised loss for the teacher, the held-out distillation loss for
the student): the better of start and result is kept, and the choice is logged and written to ``fit.json``.

Work happens in ``<output>.fit/`` (one run folder per phase); calling ``fit`` again with the same output
resumes an interrupted phase and skips finished ones. With ``minutes``, the number of steps is chosen
from a measured step time so that both phases fit the budget.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import methods
from .adapt import safeguard
from .checkpoint import load, load_parts, save
from .config import MINUTES_MAX, SEED_MAX, SIDD_KS, STEPS_MAX, RunConfig, check_options, option
from .datasets import PatchSampler, collect_sources
from .distill import distill, distill_method
from .engine import check_step_memory, heldout_batch, heldout_loss
from .errors import AtbsnError
from .files import RunLock, check_apart, write_text
from .inference import denoise_tensor
from .losses import BlindSpotL1, DistillL1
from .measure import NoiseEstimate, measure_noise, measure_set
from .methods import Method
from .noise import flat_noise_std
from .runtime import autocast, init_distributed, log, native_bf16
from .train import train

# A fitted model that removes more than this times the flat-area noise level gets a warning. Measured
# (benchmarks/removal.py): medians 1.0-1.2 for every fit that improved the demo photos and sidd9, 1.9-2.9 for
# every fit that made polyu100's mild noise worse.
REMOVAL_LIMIT = 1.5


@dataclass
class FitConfig:
    """Defaults: a laptop-sized recipe found by measurement (``benchmarks/recipe.py``, results in
    ``benchmarks/results/recipe.md``): width 16, 64-pixel crops, lr 2e-3, bf16 where the device computes it
    natively (twice the steps in the same minutes), and the student distilled from the teacher's outputs at
    k = 0 and 1 (L1 to their mean). After minutes, not days, of training the teacher is far from converged and
    every extra pixel of blind spot costs texture: on the demo's photos its output falls from 28.3 dB at k = 0
    to 22.8 at k = 11, so the paper's k in 0..11 (right for a converged teacher) gave a blurred student.
    """

    width: int = option(16, "channels of the teacher's UNet", low=1)
    crop: int = option(64, "patch side in pixels", low=8)
    batch: int = option(8, "patches per step", low=1)
    teacher_steps: int = option(1_500, "teacher training steps", low=1, high=STEPS_MAX)
    student_steps: int = option(600, "distillation steps", low=1, high=STEPS_MAX)
    student: str = option("C", "student network (from a released model: its own student when it has one)",
                          choices=methods.student_names)
    ks: list[int] | None = option(None, "teacher blind-spot sizes the student learns from (default 0 1 from "
                                  "scratch; from a released model the paper's 0 1 3 5 7 9 11)", low=0)
    loss: str | None = option(None, "distillation loss: multi (one L1 per teacher) or mean (L1 to their mean); "
                              "default mean from scratch, multi (the paper's) from a released model",
                              choices=("multi", "mean"))
    k_train: int | None = option(None, "blind-spot size k_a for training (default: from the photos' measured noise, 9 "
                                 "for heavy noise; from a released model: the one it records)", low=1)
    k_infer: int | None = option(None, "blind-spot size k_b of the teacher (default: from the photos' measured noise, "
                                 "3 for heavy noise; from a released model: its own)", low=0)
    safeguard: bool | None = option(None, "make the model blend outputs toward the input where it removed clearly "
                                    "more than the measured noise (denoise's --safeguard, recorded in the file; "
                                    "default: on for mild noise)")
    stop_at_noise: bool | None = option(None, "stop the teacher early once its outputs remove less than the photos' "
                                        "measured noise (it has begun to copy correlated noise; default: on for "
                                        "mild noise)")
    lr: float = option(2e-3, "Adam learning rate of both phases (from a released model: --finetune-lr)", low=0.0)
    seed: int = option(0, "random seed", low=0, high=SEED_MAX)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("auto", "autocast precision (auto: bf16 where the device computes it natively, else "
                            "fp32; fp16: CUDA only)", choices=("auto", "fp32", "bf16", "fp16"))
    on_bad_file: str = option("fail", "an unreadable image stops the run or is skipped", choices=("fail", "skip"))
    init_from_teacher: bool = option(True, "start a student that shares the teacher's UNet (C) from it", cli=False)
    from_model: str | None = option(None, "start from a released model (name or file) with a teacher: fine-tune "
                                    "it on the photos instead of training from scratch", flag="--from")
    finetune_lr: float = option(1e-4, "learning rate of both phases when starting from a released model",
                                low=0.0)
    minutes: float | None = option(None, "time budget for both phases (sets the step counts)", low=0.1,
                                   high=MINUTES_MAX)
    step_cap: list[int] | None = option(None, "the most teacher and student steps a fit takes, whatever --minutes "
                                        "or the step counts say (default: 400 700 for mild noise, where longer "
                                        "fits lose; none for heavy noise)", low=1, high=STEPS_MAX)
    student_share: float = option(0.3, "share of the budget for distillation", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        check_options(self)
        knob = methods.arch("atbsn").knob  # fit trains an AT-BSN teacher: its rules for k
        given = [("--k-train", self.k_train), ("--k-infer", self.k_infer), *(("--ks", k) for k in self.ks or ())]
        if self.step_cap is not None and len(self.step_cap) != 2:
            raise AtbsnError(f"--step-cap takes two numbers (teacher steps, student steps), got {self.step_cap}")
        for flag, k in (g for g in given if g[1] is not None):
            knob.check(flag, k, train=flag == "--k-train")
            why = knob.crop_refusal(k, self.crop) if flag != "--k-infer" else None
            if why:
                raise AtbsnError(f"{flag}: {why}")


def _step_seconds(method: Method, config: RunConfig, device: torch.device) -> float:
    """Seconds per optimisation step of a method as the run will make it (precision, channels, layout): the
    median of six steps after three warm-up steps. Single steps vary by 1.5x on a shared 2-core machine and the
    first ones are slower still; a three-step median once planned half the steps the budget allowed."""
    channels = method.model.config.in_channels
    sampler = PatchSampler(collect_sources(config.data), config.crop, channels, config.seed,
                           on_bad_file=config.on_bad_file)
    model = method.model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    times = []
    for step in range(9):
        x, m = (torch.from_numpy(a).to(device) for a in sampler.batch(step, config.batch))
        t0 = time.perf_counter()
        with autocast(device, config.precision):
            loss = method.loss(model, x.contiguous(memory_format=torch.channels_last), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def _phase(run_dir: Path, config: RunConfig, fn, progress: bool) -> None:
    """Run (or resume, or skip when finished) one phase; a phase that stopped early stops ``fit``: the next
    phase must never start from unfinished work (a rerun of the same command resumes it)."""
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("finished"):
        log.info(f"{run_dir.name}: already finished, kept")
        return
    result = fn(config, resume=(run_dir / "state.pt").exists(), progress=progress)
    if not result.get("finished"):
        log.info(f"fit: the {run_dir.name} phase stopped at step {result['step']} of {result['steps']}; run the same "
                 "command again to resume it")
        raise KeyboardInterrupt


@dataclass
class Start:
    """Where a fit starts, as data: the networks it begins from (none from scratch) and the choices that follow
    from them. Everything else in :func:`fit` is one recipe for both starts."""

    source: str | None  # the released model (name or file), None from scratch
    teacher: nn.Module | None
    student: nn.Module | None
    lr: float
    ks: list[int]
    loss: str
    teacher_shape: dict[str, Any]  # width, k_train, k_infer of the teacher
    student_arch: str


# A teacher trained for minutes loses texture with every pixel of blind spot, so from scratch the student learns
# from k = 0 and 1 (their mean); a released teacher is converged, so it teaches at the paper's k with its loss.
FROM_SCRATCH = {"ks": [0, 1], "loss": "mean"}
FROM_RELEASED = {"ks": list(SIDD_KS), "loss": "multi"}


# The blind spot from the photos' own noise (issue 27; the study: benchmarks/fit_rule.py, results/fit_rule.md).
# A blind spot trades noise let through against texture lost. Heavy noise (sidd9, the demo's, DND's: median flat-
# area sigma 8.5 to 14.5 of 255) needs the paper's k_a = 9: with k_a = 1 or 3 a minutes-long teacher copies the
# noise (sidd9: 26.0 and 29.0 dB against 33.6, ablations_sidd9.md). Mild noise (polyu100's DSLR photos: sigma 2.0
# to 2.7) is the opposite: on its tuning half (input 36.16 dB) a 2-minute fit with k_a = 1 gave 35.4 dB against
# 32.2 for k_a = 9, 36.6 with the safeguard. Trained longer, k_a = 1 learns to copy the correlated noise: 768,
# 1762 teacher steps gave 36.5, 36.0 dB, its student removing 1.15x, then 0.73x the noise level; hence the stop
# at 1x (the discrepancy principle). MILD_SIGMA sits between the two groups seen (the log midpoint of 2.7, 8.5).
MILD_SIGMA = 4.8
# The cap (stop_curve.md, fit_rule.md): on polyu100's tuning half, students with the safeguard from k_a = 1
# teachers of 359, 768 and 1762 steps gave 36.61 / 36.66, 36.65 / 36.82 and 36.25 / 36.05 dB (300 / 700 to 1200
# student steps): a longer teacher loses, a longer student from a short one does not. 800 teacher steps, first
# chosen, fell below NLM on the held-out half (36.08 in one seed), the 2-minute fits (about 385) did not.
MILD_STEP_CAP = [400, 700]
HEAVY = {"k_train": 9, "k_infer": 3, **FROM_SCRATCH, "safeguard": False, "stop_at_noise": False, "step_cap": None}
MILD = {"k_train": 1, "k_infer": 1, **FROM_SCRATCH, "safeguard": True, "stop_at_noise": True,
        "step_cap": MILD_STEP_CAP}
CHOSEN = ("k_train", "k_infer", "ks", "loss", "safeguard", "stop_at_noise", "step_cap")


def blind_spot_for(noise: NoiseEstimate) -> tuple[dict[str, Any], str]:
    """The teacher's k_a and k_b and the student's k set and loss for photos whose (set-level) noise is ``noise``,
    and why, in words."""
    if not noise.measured:
        return dict(HEAVY), "photos too small to measure their noise: the paper's large blind spot"
    if noise.sigma < MILD_SIGMA:
        return dict(MILD), f"mild noise (sigma {noise.sigma:.1f} < {MILD_SIGMA:g}): a small blind spot keeps texture"
    return dict(HEAVY), f"heavy noise (sigma {noise.sigma:.1f} >= {MILD_SIGMA:g}): the paper's large blind spot"


def choose(cfg: FitConfig, noise: NoiseEstimate) -> tuple[FitConfig, dict[str, Any]]:
    """``cfg`` with what it leaves open (k_a, k_b, the k set, the loss, the safeguard) chosen from the photos'
    noise by :func:`blind_spot_for`; what the user gave wins. From a released model only the safeguard is
    chosen: the released teacher keeps its own blind spot (a fine-tune)."""
    rule, why = blind_spot_for(noise)
    if cfg.from_model:
        rule, why = {"safeguard": rule["safeguard"]}, f"{why}; from a released model: its own blind spot"
    given = {f: getattr(cfg, f) for f in CHOSEN if getattr(cfg, f) is not None}
    chosen = {f: v for f, v in rule.items() if f not in given and v is not None}
    return replace(cfg, **chosen), {"rule": why, "chosen": chosen, "given": given}


def start_of(cfg: FitConfig) -> Start:
    """The start ``cfg`` asks for: from scratch, or ``cfg.from_model`` (its teacher's shape is the released one)."""
    if not cfg.from_model:
        return Start(None, None, None, cfg.lr, cfg.ks or FROM_SCRATCH["ks"], cfg.loss or FROM_SCRATCH["loss"],
                     {"width": cfg.width, "k_train": cfg.k_train, "k_infer": cfg.k_infer}, cfg.student)
    parts = load_parts(cfg.from_model)
    other = next((m for m in parts.values() if m.config.knob not in (None, "k")), None)
    if other is not None:  # a blind-spot network of another method: not a teacher fit can tune
        raise AtbsnError(f"{cfg.from_model}: its network is {other.config.arch!r}, not AT-BSN; --from takes an AT-BSN "
                         "teacher or an AT-BSN(D) file (it can still denoise: atbsn denoise --model)")
    if "teacher" not in parts:
        raise AtbsnError(f"{cfg.from_model}: holds no teacher to fine-tune (--from takes an AT-BSN teacher or an "
                         "AT-BSN(D) file; a student alone can still denoise: atbsn denoise --model)")
    t, student = parts["teacher"].config, parts.get("student")
    return Start(cfg.from_model, parts["teacher"], student, cfg.finetune_lr, cfg.ks or FROM_RELEASED["ks"],
                 cfg.loss or FROM_RELEASED["loss"],
                 {"width": t.width, "k_train": t.k_train or cfg.k_train or HEAVY["k_train"], "k_infer": t.k_infer},
                 student.config.arch if student is not None else cfg.student)


def _keep_better(label: str, start: torch.nn.Module, result: torch.nn.Module, loss, batch, device,
                 precision: str) -> tuple[torch.nn.Module, dict]:
    """The one of ``start`` and ``result`` with the lower held-out ``loss``, and the numbers behind the choice."""
    before = heldout_loss(start.to(device), loss, batch, device, precision)
    after = heldout_loss(result.to(device), loss, batch, device, precision)
    kept = "result" if after <= before else "start"
    log.info(f"  {label}: held-out loss {before:.4f} at the start, {after:.4f} after; kept the "
             + ("fine-tuned one" if kept == "result" else "starting one (fine-tuning did not improve it)"))
    return (result if kept == "result" else start), {"start_loss": before, "result_loss": after, "kept": kept}


def fit(photos: list[str | Path], output: str | Path, config: FitConfig | None = None, progress: bool = True,
        work_dir: str | Path | None = None) -> Path:
    """Train (or fine-tune) a teacher, distill a student, write ``output`` (a student + teacher bundle)."""
    cfg = config or FitConfig()
    output = Path(output)
    if output.suffix != ".safetensors":
        raise AtbsnError(f"{output}: the fitted model is written as a .safetensors file")
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".fit")
    data = [str(p) for p in photos]
    check_apart([output, work], [*data, cfg.from_model])
    n_images = len(collect_sources(data))  # fails at once on a wrong or empty folder
    with RunLock(work):
        return _fit(data, n_images, output, work, cfg, progress)


def _fit(data: list[str], n_images: int, output: Path, work: Path, cfg: FitConfig, progress: bool) -> Path:
    noise, measured = _noise(data)
    cfg, choice = choose(cfg, noise)
    if choice["chosen"]:
        log.info("  chose " + ", ".join(f"{f} = {v}" for f, v in choice["chosen"].items()) + f" for {choice['rule']}")
    start = start_of(cfg)
    _, device = init_distributed(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if native_bf16(device) else "fp32")
    common = {"data": data, "batch": cfg.batch, "crop": cfg.crop, "lr": start.lr, "seed": cfg.seed,
              "device": cfg.device, "precision": precision, "on_bad_file": cfg.on_bad_file,
              "val_every": 10**9, "save_every": 100}
    tcfg = RunConfig(task="train", out=str(work / "teacher"), steps=cfg.teacher_steps, **start.teacher_shape,
                     **common)
    shares_unet = start.student_arch == "C"  # student C is the teacher's UNet made non-blind
    scfg = RunConfig(task="distill", out=str(work / "student"), steps=cfg.student_steps,
                     teacher=str(work / "teacher.safetensors"), student=start.student_arch, ks=start.ks,
                     loss=start.loss, init_from_teacher=cfg.init_from_teacher and shares_unet, **common)
    t_step, s_step = _plan(work, cfg, tcfg, scfg, device, start)
    log.info(f"fit: {n_images} noisy image(s) -> {output}"
             + (f", starting from {start.source}" if start.source else ""))
    log.info(f"  1. teacher AT-BSN, width {tcfg.width}, {tcfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches, "
             f"k_a = {tcfg.k_train}" + (f", about {tcfg.steps * t_step / 60:.1f} min" if t_step else ""))
    log.info(f"  2. student {start.student_arch}, {scfg.steps} steps distilled at k in {start.ks} ({start.loss} loss)"
             + (f", about {scfg.steps * s_step / 60:.1f} min" if s_step else "") + f" on {device} ({precision})")
    if t_step and s_step:
        log.info(f"  about {(tcfg.steps * t_step + scfg.steps * s_step) / 60:.1f} min in all, from a probe of a few "
                 f"steps of each" + (" (fp32: this CPU has no native bf16)" if cfg.precision == "auto" and
                                                     precision == "fp32" and device.type == "cpu" else ""))

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
                      lambda: DistillL1(load(scfg.teacher).to(device), start.ks, start.loss), scfg, device, precision)
    for net in (student, teacher):  # denoise's default for this file (--safeguard / --no-safeguard still win)
        net.config.training["safeguard"] = bool(cfg.safeguard)
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
    write_text(work / "fit.json", json.dumps(report, indent=2))
    log.info(f"wrote {output} (student {student.config.arch}; its teacher inside, load(..., part='teacher'))")
    return output


STOP_EVERY = 100  # teacher steps between two looks at what it removes (--stop-at-noise)
STOP_RATIO = 1.0  # ... it stops once its targets remove less than this times the photos' flat-area noise


def _teacher_until_noise(work: Path, tcfg: RunConfig, start: Start, data: list[str], device: torch.device,
                         progress: bool) -> dict:
    """The teacher phase under the discrepancy principle: every :data:`STOP_EVERY` steps, what the student will
    learn (the teacher's mean output over the k set) is compared with the photos' noise (:func:`target_ratio`).
    A blind spot smaller than the noise's reach lets the teacher learn, step by step, to copy the correlated
    noise; once its targets remove less than :data:`STOP_RATIO` x the noise level, training stops and the
    teacher of the last look still above it is kept (the first look's, if none was). Each look is recorded in
    ``teacher/stop.json``, so a rerun resumes or skips the phase."""
    run, record = work / "teacher", work / "teacher" / "stop.json"
    state = json.loads(record.read_text()) if record.exists() else {"looks": [], "stopped_at": None, "kept_step": None}
    crops = centre_crops(collect_sources(data), TARGET_PHOTOS, TARGET_SIDE) if state["stopped_at"] is None else []
    while state["stopped_at"] is None:
        level = log.level
        if state["looks"]:  # the training's announcement once, not at every look
            log.setLevel(max(level, logging.WARNING))
        try:
            result = train(tcfg, resume=(run / "state.pt").exists(), stop_after=STOP_EVERY, progress=progress,
                           init=start.teacher)
        finally:
            log.setLevel(level)
        if result["interrupted"]:  # killed: stop fit, as _phase does (the same command resumes)
            log.info(f"fit: the teacher phase stopped at step {result['step']}; run the same command to resume it")
            raise KeyboardInterrupt
        ratio = target_ratio(load(run / "last.safetensors"), start.ks, crops, device)
        state["looks"].append({"step": result["step"], "removed_over_noise": round(ratio, 3)})
        if ratio >= STOP_RATIO or state["kept_step"] is None:
            shutil.copyfile(run / "last.safetensors", run / "kept.safetensors")
            state["kept_step"] = result["step"]
        if ratio < STOP_RATIO or result.get("finished"):
            state["stopped_at"] = result["step"]
        write_text(record, json.dumps(state, indent=1))
    shutil.copyfile(run / "kept.safetensors", run / "last.safetensors")
    if state["stopped_at"] < tcfg.steps:
        log.info(f"  teacher stopped at step {state['stopped_at']} of {tcfg.steps}: its targets removed "
                 f"{state['looks'][-1]['removed_over_noise']:.2f}x the noise level; kept step {state['kept_step']}")
    if state["kept_step"] < tcfg.steps:
        _cool_down(work, tcfg, state, start.ks, crops or None, data, device, progress)
    return state


COOL_SHARE = 0.25  # the cool-down after an early stop: this share of the kept steps (at least STOP_EVERY)


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """The engine's learning rate after ``step`` of ``steps`` (cosine decay from ``lr`` to 0)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def _cool_down(work: Path, tcfg: RunConfig, state: dict, ks: list[int], crops: list | None, data: list[str],
               device: torch.device, progress: bool) -> None:
    """Anneal the kept teacher. A teacher kept mid-schedule was caught at a high learning rate, a noisy iterate;
    its targets swing by up to 2.5 dB from one look to the next (stop_curve.md's mid-schedule dips), and the
    stopped, uncooled teachers were the held-out half's worst 5-minute fits (fit_rule.md, 'stop-uncooled'). So
    the rate decays from where it was at the kept step to 0 over a short phase (the steps the stop saved pay for
    it), from the kept weights and a fresh optimizer. Resumable like any phase; recorded in ``state``."""
    run, record = work / "teacher-cool", work / "teacher" / "stop.json"
    if "cooled" not in state:
        kept = state["kept_step"]
        steps = min(tcfg.steps - kept, max(STOP_EVERY, round(COOL_SHARE * kept)))
        state["cooled"] = {"steps": steps, "lr": cosine_lr(tcfg.lr, kept, tcfg.steps), "removed_over_noise": None}
        write_text(record, json.dumps(state, indent=1))
    cool = state["cooled"]
    ccfg = replace(tcfg, out=str(run), steps=cool["steps"], lr=cool["lr"])
    _phase(run, ccfg, partial(train, init=load(work / "teacher" / "kept.safetensors")), progress)
    shutil.copyfile(run / "last.safetensors", work / "teacher" / "last.safetensors")
    if cool["removed_over_noise"] is None:
        crops = crops or centre_crops(collect_sources(data), TARGET_PHOTOS, TARGET_SIDE)  # read once per run
        cool["removed_over_noise"] = round(target_ratio(load(run / "last.safetensors"), ks, crops, device), 3)
        write_text(record, json.dumps(state, indent=1))
    log.info(f"  teacher cooled down for {cool['steps']} steps from step {state['kept_step']} (learning rate "
             f"{cool['lr']:.2g} to 0): its targets remove {cool['removed_over_noise']:.2f}x the noise level")


TARGET_PHOTOS, TARGET_SIDE = 4, 256  # the crops the stop looks at


def centre_crops(sources: list, limit: int, side: int) -> list[tuple[torch.Tensor, float]]:
    """The centre ``side`` crops of up to ``limit`` photos (1 x C x H x W, 0..255), each with its flat-area noise
    level (:func:`atbsn.noise.flat_noise_std`): read once, looked at many times."""
    out = []
    for src in sources[:limit]:
        crop = _centre(src, side)
        out.append((torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None], flat_noise_std(crop)))
    return out


def target_ratio(teacher: nn.Module, ks: list[int], crops: list[tuple[torch.Tensor, float]],
                 device: torch.device) -> float:
    """What the student will learn to remove, over the noise there is: the median over ``crops``
    (:func:`centre_crops`) of the standard deviation of input minus the teacher's mean output over ``ks`` (its own
    k_b when empty), over the crop's flat-area noise level."""
    ratios = []
    for noisy, level in crops:
        outs = [denoise_tensor(noisy, teacher, k=k, device=device).cpu() for k in (ks or [None])]
        ratios.append(float((noisy - sum(outs) / len(outs)).std()) / max(level, 1e-3))
    return float(np.median(ratios))


def _centre(src, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` crop of a photo source (smaller photos whole), float32 on 0..255."""
    a, factor = src.load()
    return centre_crop(a, side) * factor


def centre_crop(a: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` crop of an H x W x C array (smaller arrays whole), as float32."""
    y, x = max(0, (a.shape[0] - side) // 2), max(0, (a.shape[1] - side) // 2)
    return np.asarray(a[y : y + side, x : x + side], dtype=np.float32)


MEASURED = 32  # photos whose noise fit measures and records (the first ones)


def _noise(data: list[str]) -> tuple[NoiseEstimate, dict]:
    """The photos' own noise (level, correlation, reach; :mod:`atbsn.measure`), printed; and as kept in fit.json."""
    sources = collect_sources(data)[:MEASURED]
    whole, each = measure_set(src.load() for src in sources)
    log.info(f"  the photos' noise: {whole.describe()}")
    return whole, {"set": whole.as_dict(), "images": {str(src.path): e.as_dict() for src, e in zip(sources, each)}}


def _better(report: dict, label: str, start: nn.Module | None, result: nn.Module, loss, config: RunConfig,
            device: torch.device, precision: str) -> nn.Module:
    """``result``, or with a starting network the better of the two by held-out ``loss()`` (recorded in ``report``)."""
    if start is None:
        return result
    kept, report[label] = _keep_better(label, start, result, loss(), heldout_batch(config, 3, 32), device, precision)
    return kept


def removal_ratio(model: torch.nn.Module, sources: list, device: torch.device, limit: int = 8,
                  side: int = 512) -> float:
    """How much a denoiser takes away, against the noise it could take: the median over up to ``limit`` photos
    (centre crops of ``side``) of the standard deviation of input minus output over the noise level of the
    photo's flattest areas (:func:`atbsn.noise.flat_noise_std`). Near 1 for a denoiser that removes noise;
    far above it, the output has lost signal as well (no clean image is needed to see it)."""
    return output_check(model, sources, device, limit, side)[0]


def output_check(model: torch.nn.Module, sources: list, device: torch.device, limit: int = 8,
                 side: int = 512) -> tuple[float, list[dict]]:
    """:func:`removal_ratio`, and per photo its ratio and what ``--safeguard`` would do to the output
    (:func:`atbsn.adapt.safeguard`: keep it, or blend it toward the input)."""
    ratios, photos = [], []
    for src in sources[:limit]:
        crop = _centre(src, side)
        noisy = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
        out = denoise_tensor(noisy, model, device=device).cpu()
        ratios.append(float((noisy - out).std()) / max(flat_noise_std(crop), 1e-3))
        guarded = safeguard(crop, out[0].permute(1, 2, 0).numpy(), measure_noise(crop, factor=1.0))[1]
        photos.append({"photo": str(src.path), "removed_over_noise": round(ratios[-1], 3),
                       "safeguard": "keeps the output" if guarded >= 1 else f"blends {guarded:.2f} of the change"})
    return float(np.median(ratios)), photos


class OtherFitError(AtbsnError):
    """The work folder holds a fit made with other options (a rerun would otherwise pass it off as the new one)."""


# What a rerun of fit may change without changing what it computes (where it runs, how bad files are treated).
WHERE = ("device", "on_bad_file")


def _computing_options(cfg: FitConfig) -> dict[str, Any]:
    """The options that decide what a fit computes, as JSON values (what a rerun must repeat to resume)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in WHERE}))


def _shown(value: Any) -> str:
    return "default" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _plan(work: Path, cfg: FitConfig, tcfg: RunConfig, scfg: RunConfig, device: torch.device,
          start: Start) -> tuple[float | None, float | None]:
    """Step counts: those chosen when the work began (resume), else from the budget and measured step times."""
    plan_path = work / "plan.json"
    options = _computing_options(cfg)
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        before = plan.get("options", options)  # a plan of atbsn before 0.1's issue 45 did not record them
        changed = [f"--{k.replace('_', '-')} {_shown(before.get(k))} -> {_shown(v)}" for k, v in options.items()
                   if before.get(k) != v]
        if changed:
            raise OtherFitError(f"{work}: holds a fit made with other options ({', '.join(changed)}); run the same "
                                "command to resume or keep it, or give another -o (or delete that folder) to fit anew")
        tcfg.steps, scfg.steps = plan["teacher_steps"], plan["student_steps"]
        log.info(f"  resuming the work in {work}")
        return None, None
    make = methods.method(tcfg.method).make
    check_step_memory(lambda: make(tcfg), tcfg, device, tcfg.width)
    torch.manual_seed(cfg.seed)
    probe = make(tcfg)
    t_step = _step_seconds(probe, tcfg, device)
    # the student step: the teacher's forward (no grad) plus a student step; an untrained teacher costs the same
    s_step = _step_seconds(distill_method(scfg, device, teacher=probe.model, init=start.student), scfg, device)
    if cfg.minutes is not None:
        budget = cfg.minutes * 60
        tcfg.steps = min(STEPS_MAX, max(50, int(budget * (1 - cfg.student_share) / t_step)))
        scfg.steps = min(STEPS_MAX, max(25, int(budget * cfg.student_share / s_step)))
    if cfg.step_cap and (tcfg.steps > cfg.step_cap[0] or scfg.steps > cfg.step_cap[1]):
        log.info(f"  at most {cfg.step_cap[0]} teacher and {cfg.step_cap[1]} student steps (--step-cap; "
                 f"{tcfg.steps} and {scfg.steps} otherwise)")
        tcfg.steps, scfg.steps = min(tcfg.steps, cfg.step_cap[0]), min(scfg.steps, cfg.step_cap[1])
    write_text(plan_path, json.dumps({"options": options, "teacher_steps": tcfg.steps, "student_steps": scfg.steps,
                                      "teacher_step_seconds": t_step, "student_step_seconds": s_step,
                                      "precision": tcfg.precision}))
    return t_step, s_step
