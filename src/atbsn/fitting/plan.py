"""The step plan: step times measured as the run will make them, the budget turned into step counts, the plan
recorded (a rerun with other options is refused), and one phase run or resumed."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import methods
from ..config import STEPS_MAX, RunConfig
from ..datasets import PatchSampler, collect_sources
from ..distill import distill_method
from ..engine import check_step_memory, targets_once
from ..errors import AtbsnError
from ..files import write_text
from ..methods import Method
from ..runtime import autocast, log
from ..tiling import plan_tiles
from .candidates import FITTED, SCORED_PHOTOS, Candidate, score, scored_crops
from .checks import CHECKED, TARGET_PHOTOS, TARGET_SIDE, centre_crops, output_check, target_ratio
from .config import FitConfig
from .start import Start

# bf16 is taken only where the probe measures it at least this much faster than fp32: it rounds activations to
# 8 bits of mantissa, and two runs whose timings straddle a tie would otherwise train in different precisions
BF16_GAIN = 1.15
PROBE_STEPS = 12  # steps timed per network and precision, the first three as warm-up


def _step_seconds(method: Method, config: RunConfig, device: torch.device, extra: int = 0) -> float:
    """Seconds per optimisation step of a method as the run will make it (its batch drawn, precision, channels,
    layout): the median of nine steps after three warm-up steps. Single steps vary by 1.5x on a shared 2-core
    machine and the first ones are slower still; a three-step median once planned half the steps the budget
    allowed, and a six-step one missed the AVX2 demo's time by 23% in a first run of benchmarks/fit_estimate.py.
    The batch is drawn inside the timed step: on two cores the trainer's background draw takes its time from
    the step. ``extra``: channels appended to each patch (the distillation's targets cached per photo)."""
    channels = method.model.config.in_channels
    sampler = PatchSampler(collect_sources(config.data), config.crop, channels, config.seed,
                           on_bad_file=config.on_bad_file)
    for i in range(len(sampler.sources) if extra else 0):
        if (size := sampler.size(i)) is not None:
            sampler.extra[i] = np.zeros((*size, extra), np.float32)
    model = method.model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    times = []
    for step in range(PROBE_STEPS):
        t0 = time.perf_counter()
        x, m = (torch.from_numpy(a).to(device) for a in sampler.batch(step, config.batch))
        with autocast(device, config.precision):
            loss = method.loss(model, x.contiguous(memory_format=torch.channels_last), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def _seconds(fn) -> float:
    """The faster of two calls of ``fn`` (the first also pays for set-up the run pays once)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _other_seconds(probe: Method, student: Method, data: list[str], device: torch.device, start: Start,
                   looks: bool, rivals: list[Candidate]) -> tuple[float, float, float]:
    """What the run does besides its steps, timed on the probe networks: one look of the stop at the noise (the
    teacher on the photos' centre crops, :func:`target_ratio`; 0 when ``looks`` is off), the check of the
    student's output on the first photos at the end (:func:`output_check`) and the scoring of the fitted student
    beside the released ``rivals`` (:func:`choose_best`; 0 without rivals)."""
    sources = collect_sources(data)
    look = 0.0
    with torch.no_grad():
        if looks:
            crops = centre_crops(sources, TARGET_PHOTOS, TARGET_SIDE)
            look = _seconds(lambda: target_ratio(probe.model.eval(), start.ks, crops, device))
            probe.model.train()
        net = student.model.eval()
        check = _seconds(lambda: output_check(net, sources[:1], device)) * min(len(sources), CHECKED)
        scoring = 0.0
        if rivals:
            crops = scored_crops(sources, 1)
            scoring = sum(_seconds(lambda c=c: score(c, crops, device)) for c in [Candidate(FITTED, net), *rivals])
            scoring *= min(len(sources), SCORED_PHOTOS)
        student.model.train()
    return look, check, scoring


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
class _Cached:
    """The distillation with its targets computed once per photo, as probed: a step's seconds, the seconds of the
    targets over the photos, and what :func:`targets_once` decides by."""

    step: float
    pre: float
    pixels: list[int]
    tiling: tuple[int, int]
    channels: int

    def taken(self, scfg: RunConfig) -> bool:
        return targets_once(self.pixels, self.tiling, scfg, self.channels)[0]


def _cached(student: Method, probe: Method, tcfg: RunConfig, scfg: RunConfig, device: torch.device) -> _Cached:
    """Probe the student's step on targets cut from the photos (as ``--cache-targets`` trains it) and time the
    teacher's targets per batch, scaled to the photos' tiled windows (the once-per-photo pass)."""
    probe.model.config.train_crop = tcfg.crop  # as the trained teacher records it: its inference tiles
    sampler = PatchSampler(collect_sources(scfg.data), scfg.crop, probe.model.config.in_channels, scfg.seed,
                           on_bad_file=scfg.on_bad_file)
    shapes = [s for i in range(len(sampler.sources)) if (s := sampler.size(i)) is not None]
    tiling = plan_tiles(probe.model, device)
    channels = probe.model.config.in_channels * student.loss.n_targets
    # the pass runs one window at a time: one window timed (a batch of crops ran 2x faster a pixel, bf16 or not)
    tile, margin = tiling
    side = min(tile + 2 * margin, max(max(s) for s in shapes))
    x = torch.rand(1, probe.model.config.in_channels, side, side, device=device) * 255
    with torch.no_grad(), autocast(device, scfg.precision):
        window = _seconds(lambda: student.loss.targets(x.contiguous(memory_format=torch.channels_last),
                                                       classical=False))
    count = sum(-(-h // tile) * -(-w // tile) for h, w in shapes)
    pre = window * count
    classical = student.loss.classical
    if classical is not None:  # on each whole photo once (side by side where it runs in processes), timed once on
        # a square of up to 128 pixels (a BM3D call costs a second whatever its size: smaller ones overstate it)
        side = min(128, max(max(s) for s in shapes))
        x = torch.rand(1, probe.model.config.in_channels, side, side) * 255
        t0 = time.perf_counter()
        classical(x)
        call = time.perf_counter() - t0
        side_by_side = min(len(shapes), os.cpu_count() or 1) if classical.processes else 1
        pre += call * sum(h * w for h, w in shapes) / side**2 / side_by_side
        if classical.processes:  # and on each patch of the held-out batch, once (Trainer)
            pre += call * max(scfg.batch, 8) / (os.cpu_count() or 1)
    step = _step_seconds(student, scfg, device, extra=channels)
    return _Cached(step, pre, [h * w for h, w in shapes], tiling, channels)


class OtherFitError(AtbsnError):
    """The work folder holds a fit made with other options (a rerun would otherwise pass it off as the new one)."""


# What a rerun of fit may change without changing what it computes (where it runs, how bad files are treated).
WHERE = ("device", "on_bad_file")


def _computing_options(cfg: FitConfig) -> dict[str, Any]:
    """The options that decide what a fit computes, as JSON values (what a rerun must repeat to resume)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in WHERE}))


def _shown(value: Any) -> str:
    return "default" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _plan(work: Path, cfg: FitConfig, tcfg: RunConfig, scfg: RunConfig, device: torch.device, start: Start,
          candidates: tuple[str, ...], why: str, began: float, look_every: int | None = None,
          rivals: list[Candidate] | None = None) -> tuple[float | None, float | None, float | None]:
    """Step counts and precision: those chosen when the work began (resume), else from the budget and the step
    times measured in each of ``candidates`` (the faster precision is taken; ``why``: why these candidates).
    Returns the step times and the seconds the whole run will take (None on resume); ``began``: when fit
    began (``time.perf_counter``), so that a budget in minutes covers the measuring and probing as well;
    ``look_every``: the teacher steps between two looks of the stop at the noise (None: no stop); ``rivals``: the
    released students the fitted one is scored beside at the end."""
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
        tcfg.precision = scfg.precision = plan.get("precision", tcfg.precision)  # the run's own, on any machine
        log.info(f"  resuming the work in {work} ({tcfg.precision})")
        return None, None, None
    make = methods.method(tcfg.method).make
    check_step_memory(lambda: make(tcfg), tcfg, device)
    torch.manual_seed(cfg.seed)
    probe = make(tcfg)
    weights = ((1 - cfg.student_share, cfg.student_share) if cfg.minutes is not None
               else (tcfg.steps, scfg.steps))  # what a step of each costs the run
    teacher_s = {}
    for precision in candidates:  # each precision the run may take, timed on the run's own steps
        tcfg.precision = precision
        teacher_s[precision] = _step_seconds(probe, tcfg, device)
    # the student step: the teacher's forward (no grad) plus a student step; an untrained teacher costs the same
    student = distill_method(scfg, device, teacher=probe.model, init=start.student)  # freezes the probe teacher
    timed = {}
    classical = student.loss.classical
    if classical is not None and classical.processes:  # BM3D: always once per photo, its cost the targets'
        student.loss.classical = None
    try:
        for precision in candidates:
            scfg.precision = precision
            timed[precision] = (teacher_s[precision], _step_seconds(student, scfg, device))
    finally:
        student.loss.classical = classical
    cost = {p: (weights[0] * t + weights[1] * s) * (1 if p == "fp32" else BF16_GAIN) for p, (t, s) in timed.items()}
    best = min(cost, key=cost.get)
    tcfg.precision = scfg.precision = best
    t_step, s_step = timed[best]
    look, check, scoring = _other_seconds(probe, student, tcfg.data, device, start, bool(look_every), rivals or [])
    if len(timed) > 1:
        why = f"{why}; the faster in a probe of this run's steps: " + "; ".join(
            f"{p} {t:.3f} s a teacher step, {s:.3f} s a student step" for p, (t, s) in timed.items())
    log.info(f"  precision {best}: {why}")
    cached = _cached(student, probe, tcfg, scfg, device) if scfg.cache_targets else None
    if cfg.minutes is not None:  # the steps get what measuring, probing and the final check leave of the budget
        budget = max(0.0, cfg.minutes * 60 - (time.perf_counter() - began) - check - scoring)
        per_teacher_step = t_step + (look / look_every if look_every else 0.0)
        tcfg.steps = min(STEPS_MAX, max(50, int(budget * (1 - cfg.student_share) / per_teacher_step)))
        # a teacher held under the step cap leaves the rest of its share to the student (a BM3D teacher's targets)
        capped = min(tcfg.steps, cfg.step_cap[0]) if cfg.step_cap else tcfg.steps
        left = max(budget * cfg.student_share, budget - capped * per_teacher_step)
        scfg.steps = min(STEPS_MAX, max(25, int(left / s_step)))
        if cached:  # the targets once per photo, then the cheaper steps: taken where the run will take it
            steps = min(STEPS_MAX, max(25, int((left - cached.pre) / cached.step)))
            if cached.taken(replace(scfg, steps=steps)):
                scfg.steps = steps
    if cfg.step_cap and (tcfg.steps > cfg.step_cap[0] or scfg.steps > cfg.step_cap[1]):
        log.info(f"  at most {cfg.step_cap[0]} teacher and {cfg.step_cap[1]} student steps (--step-cap; "
                 f"{tcfg.steps} and {scfg.steps} otherwise)")
        tcfg.steps, scfg.steps = min(tcfg.steps, cfg.step_cap[0]), min(scfg.steps, cfg.step_cap[1])
    once = cached is not None and cached.taken(scfg)
    if once:
        s_step = cached.step
    others = {"output_check": check, **({"stop_looks": -(-tcfg.steps // look_every) * look} if look_every else {}),
              **({"candidates": scoring} if rivals else {}), **({"teacher_targets": cached.pre} if once else {})}
    estimate = time.perf_counter() - began + tcfg.steps * t_step + scfg.steps * s_step + sum(others.values())
    write_text(plan_path, json.dumps({"options": options, "teacher_steps": tcfg.steps, "student_steps": scfg.steps,
                                      "teacher_step_seconds": t_step, "student_step_seconds": s_step,
                                      "precision": best, "precision_why": why,
                                      "teacher_targets": "once per photo" if once else "every batch",
                                      "step_seconds": {p: {"teacher": t, "student": s}
                                                       for p, (t, s) in timed.items()}, "other_seconds": others,
                                      "estimate_seconds": estimate}))
    return t_step, s_step, estimate
