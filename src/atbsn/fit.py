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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import atomic_write, load, save
from .datasets import PatchSampler, collect_sources
from .distill import DistillTask, distill
from .engine import SIDD_KS, RunConfig, init_distributed
from .errors import AtbsnError
from .train import TeacherTask, train


@dataclass
class FitConfig:
    """Defaults: a laptop-sized recipe (width 16, 64-pixel crops, lr 1e-3) that learns in minutes on 2 cores.

    Measured on the demo's photos: width 16 for 700 steps at lr 1e-3 gained 1.2 dB at k_b = 3 in two
    minutes, where width 24 for 400 steps (the same time) gained 0.9 dB.
    """

    width: int = 16
    crop: int = 64
    batch: int = 8
    teacher_steps: int = 1_500
    student_steps: int = 600
    student: str = "C"
    ks: list[int] = field(default_factory=lambda: list(SIDD_KS))
    k_train: int = 9
    k_infer: int = 3
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    on_bad_file: str = "fail"
    init_from_teacher: bool = True
    minutes: float | None = None  # budget for both phases; overrides the step counts
    student_share: float = 0.3  # of the budget, for distillation


def _step_seconds(task, config: RunConfig, device: torch.device, data: list[str]) -> float:
    """Seconds per optimisation step of a task: the median of three steps after two warm-up steps (the second
    step alone was measured up to 2x slower than the steady state, which left half the budget unused)."""
    sampler = PatchSampler(collect_sources(data), config.crop, 3, config.seed, on_bad_file=config.on_bad_file)
    model = task.model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    times = []
    for step in range(5):
        x, m = (torch.from_numpy(a).to(device) for a in sampler.batch(step, config.batch))
        t0 = time.perf_counter()
        loss = task.loss(model, x.contiguous(memory_format=torch.channels_last), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _phase(run_dir: Path, config: RunConfig, fn, progress: bool) -> None:
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("finished"):
        print(f"{run_dir.name}: already finished, kept", flush=True)
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
        t_step = _step_seconds(TeacherTask(tcfg, device), tcfg, device, data)
        # the student step: the teacher's forward (no grad) plus a student step; time it with an untrained teacher
        probe = work / "probe_teacher.safetensors"
        save(TeacherTask(tcfg, device).model, probe)
        s_step = _step_seconds(DistillTask(RunConfig(**{**scfg.__dict__, "teacher": str(probe)}), device), scfg,
                               device, data)
        probe.unlink()
        if cfg.minutes is not None:
            budget = cfg.minutes * 60
            tcfg.steps = max(50, int(budget * (1 - cfg.student_share) / t_step))
            scfg.steps = max(25, int(budget * cfg.student_share / s_step))
        work.mkdir(parents=True, exist_ok=True)
        atomic_write(plan_path, lambda tmp: Path(tmp).write_text(json.dumps(
            {"teacher_steps": tcfg.steps, "student_steps": scfg.steps, "teacher_step_seconds": t_step,
             "student_step_seconds": s_step})))
    print(f"fit: {n_images} noisy image(s) -> {output}", flush=True)
    print(f"  1. teacher AT-BSN, width {cfg.width}, {tcfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches, "
          f"k_a = {cfg.k_train}" + (f", about {tcfg.steps * t_step / 60:.1f} min" if t_step else ""), flush=True)
    print(f"  2. student {cfg.student}, {scfg.steps} steps distilled at k in {cfg.ks}"
          + (f", about {scfg.steps * s_step / 60:.1f} min" if s_step else "") + f" on {device}", flush=True)
    if resuming:
        print(f"  resuming the work in {work}", flush=True)

    _phase(work / "teacher", tcfg, train, progress)
    _phase(work / "student", scfg, distill, progress)
    student = load(work / "student" / "last.safetensors")
    teacher = load(teacher_ckpt)
    save(student, output, teacher=teacher)
    print(f"wrote {output} (student {student.config.arch}; its teacher inside, load(..., part='teacher'))",
          flush=True)
    return output
