"""The teacher's stop at the noise (the discrepancy principle) and the cool-down after an early stop."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from ..checkpoint import load
from ..config import RunConfig
from ..datasets import collect_sources
from ..engine import cosine_lr
from ..files import write_text
from ..runtime import log
from ..train import train
from .checks import TARGET_PHOTOS, TARGET_SIDE, centre_crops, target_ratio
from .plan import _phase
from .start import Start

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
