"""The step plan: step times measured as the run will make them, the budget turned into step counts, the plan
recorded (a rerun with other options is refused), and one phase run or resumed."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import methods
from ..config import STEPS_MAX, RunConfig
from ..datasets import PatchSampler, collect_sources
from ..distill import distill_method
from ..engine import check_step_memory
from ..errors import AtbsnError
from ..files import write_text
from ..methods import Method
from ..runtime import autocast, log
from .config import FitConfig
from .start import Start


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
          candidates: tuple[str, ...], why: str) -> tuple[float | None, float | None]:
    """Step counts and precision: those chosen when the work began (resume), else from the budget and the step
    times measured in each of ``candidates`` (the faster precision is taken; ``why``: why these candidates)."""
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
        return None, None
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
    for precision in candidates:
        scfg.precision = precision
        timed[precision] = (teacher_s[precision], _step_seconds(student, scfg, device))
    best = min(timed, key=lambda p: weights[0] * timed[p][0] + weights[1] * timed[p][1])
    tcfg.precision = scfg.precision = best
    t_step, s_step = timed[best]
    if len(timed) > 1:
        why = f"{why}; the faster in a probe of this run's steps: " + "; ".join(
            f"{p} {t:.3f} s a teacher step, {s:.3f} s a student step" for p, (t, s) in timed.items())
    log.info(f"  precision {best}: {why}")
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
                                      "precision": best, "precision_why": why,
                                      "step_seconds": {p: {"teacher": t, "student": s}
                                                       for p, (t, s) in timed.items()}}))
    return t_step, s_step
