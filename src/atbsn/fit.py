"""``fit``: the whole method in one call, for someone with a folder of noisy photos and nothing else.

1. train the AT-BSN teacher on the photos (self-supervised, k_a = 9),
2. distill a student (C by default) from it at several blind spots,
3. write one bundle file: the student (what ``denoise`` uses) with its teacher inside.

Work happens in ``<output>.fit/`` (one run folder per phase); calling ``fit`` again with the same output
resumes an interrupted phase and skips finished ones. With ``minutes``, the number of steps is chosen
from a measured step time so that both phases fit the budget.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load, save
from .config import SIDD_KS, STUDENTS, RunConfig, check_options, option
from .datasets import PatchSampler, collect_sources
from .distill import distill, distill_method
from .engine import Method
from .errors import AtbsnError
from .files import write_text
from .runtime import autocast, init_distributed, log
from .train import teacher_method, train


@dataclass
class FitConfig:
    """Defaults: a laptop-sized recipe (width 16, 64-pixel crops, lr 1e-3) that learns in minutes on 2 cores.

    Measured on the demo's photos: width 16 for 700 steps at lr 1e-3 gained 1.2 dB at k_b = 3 in two
    minutes, where width 24 for 400 steps (the same time) gained 0.9 dB.
    """

    width: int = option(16, "channels of the teacher's UNet", low=1)
    crop: int = option(64, "patch side in pixels", low=8)
    batch: int = option(8, "patches per step", low=1)
    teacher_steps: int = option(1_500, "teacher training steps", low=1)
    student_steps: int = option(600, "distillation steps", low=1)
    student: str = option("C", "student network", choices=STUDENTS)
    ks: list[int] = option(list(SIDD_KS), "teacher blind-spot sizes the student learns from", low=0)
    k_train: int = option(9, "blind-spot size k_a for training", low=1)
    k_infer: int = option(3, "blind-spot size k_b of the teacher", low=0)
    lr: float = option(1e-3, "Adam learning rate of both phases", low=0.0)
    seed: int = option(0, "random seed", low=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("fp32", "autocast precision (fp16: CUDA only)", choices=("fp32", "bf16", "fp16"))
    on_bad_file: str = option("fail", "an unreadable image stops the run or is skipped", choices=("fail", "skip"))
    init_from_teacher: bool = option(True, "start student C from the teacher's UNet", cli=False)
    minutes: float | None = option(None, "time budget for both phases (sets the step counts)", low=0.1)
    student_share: float = option(0.3, "share of the budget for distillation", low=0.0)

    def __post_init__(self) -> None:
        check_options(self)


def _step_seconds(method: Method, config: RunConfig, device: torch.device) -> float:
    """Seconds per optimisation step of a method as the run will make it (precision, channels, layout): the
    median of three steps after two warm-up steps (the second step alone was measured up to 2x slower than
    the steady state, which left half the budget unused)."""
    channels = method.model.config.in_channels
    sampler = PatchSampler(collect_sources(config.data), config.crop, channels, config.seed,
                           on_bad_file=config.on_bad_file)
    model = method.model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    times = []
    for step in range(5):
        x, m = (torch.from_numpy(a).to(device) for a in sampler.batch(step, config.batch))
        t0 = time.perf_counter()
        with autocast(device, config.precision):
            loss = method.loss(model, x.contiguous(memory_format=torch.channels_last), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _phase(run_dir: Path, config: RunConfig, fn, progress: bool) -> None:
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("finished"):
        log.info(f"{run_dir.name}: already finished, kept")
        return
    fn(config, resume=(run_dir / "state.pt").exists(), progress=progress)


def fit(photos: list[str | Path], output: str | Path, config: FitConfig | None = None, progress: bool = True,
        work_dir: str | Path | None = None) -> Path:
    """Train a teacher, distill a student, write ``output`` (a student + teacher bundle). Returns its path."""
    cfg = config or FitConfig()
    output = Path(output)
    if output.suffix != ".safetensors":
        raise AtbsnError(f"{output}: the fitted model is written as a .safetensors file")
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".fit")
    data = [str(p) for p in photos]
    n_images = len(collect_sources(data))  # fails at once on a wrong or empty folder
    common = {"data": data, "batch": cfg.batch, "crop": cfg.crop, "lr": cfg.lr, "seed": cfg.seed,
              "device": cfg.device, "precision": cfg.precision, "on_bad_file": cfg.on_bad_file,
              "val_every": 10**9, "save_every": 100}
    tcfg = RunConfig(task="train", out=str(work / "teacher"), steps=cfg.teacher_steps, width=cfg.width,
                     k_train=cfg.k_train, k_infer=cfg.k_infer, **common)
    teacher_ckpt = work / "teacher" / "last.safetensors"
    scfg = RunConfig(task="distill", out=str(work / "student"), steps=cfg.student_steps, teacher=str(teacher_ckpt),
                     student=cfg.student, ks=cfg.ks, init_from_teacher=cfg.init_from_teacher and cfg.student == "C",
                     **common)
    _, device = init_distributed(cfg.device)

    plan_path = work / "plan.json"
    resuming = plan_path.exists()
    t_step = s_step = None
    if resuming:  # the step counts chosen when the work began
        plan = json.loads(plan_path.read_text())
        tcfg.steps, scfg.steps = plan["teacher_steps"], plan["student_steps"]
    else:
        torch.manual_seed(cfg.seed)
        probe = teacher_method(tcfg, device)
        t_step = _step_seconds(probe, tcfg, device)
        # the student step: the teacher's forward (no grad) plus a student step; an untrained teacher costs the same
        s_step = _step_seconds(distill_method(scfg, device, teacher=probe.model), scfg, device)
        if cfg.minutes is not None:
            budget = cfg.minutes * 60
            tcfg.steps = max(50, int(budget * (1 - cfg.student_share) / t_step))
            scfg.steps = max(25, int(budget * cfg.student_share / s_step))
        write_text(plan_path, json.dumps({"teacher_steps": tcfg.steps, "student_steps": scfg.steps,
                                          "teacher_step_seconds": t_step, "student_step_seconds": s_step}))
    log.info(f"fit: {n_images} noisy image(s) -> {output}")
    log.info(f"  1. teacher AT-BSN, width {cfg.width}, {tcfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches, "
             f"k_a = {cfg.k_train}" + (f", about {tcfg.steps * t_step / 60:.1f} min" if t_step else ""))
    log.info(f"  2. student {cfg.student}, {scfg.steps} steps distilled at k in {cfg.ks}"
             + (f", about {scfg.steps * s_step / 60:.1f} min" if s_step else "") + f" on {device}")
    if resuming:
        log.info(f"  resuming the work in {work}")

    _phase(work / "teacher", tcfg, train, progress)
    _phase(work / "student", scfg, distill, progress)
    student = load(work / "student" / "last.safetensors")
    teacher = load(teacher_ckpt)
    save(student, output, teacher=teacher)
    log.info(f"wrote {output} (student {student.config.arch}; its teacher inside, load(..., part='teacher'))")
    return output
