"""What training and distillation share: run configuration, presets, device and DDP, precision, logging,
validation, atomic checkpoints and exact resume.

A run is a :class:`RunConfig` plus a task (``train.TeacherTask`` or ``distill.DistillTask``) that builds
the trainable network and computes the loss of a batch. The loop is the same for both:

- batches come from :class:`~atbsn.datasets.PatchSampler`, a pure function of (seed, step, rank), so a
  resumed run sees exactly the batches an uninterrupted one would;
- Adam with cosine decay to 0 over ``steps``;
- every ``save_every`` steps (and when stopped or interrupted) ``state.pt`` holds weights, optimizer,
  scheduler, RNG and step, written atomically; ``last.safetensors`` is the same weights in our format;
- every ``val_every`` steps: PSNR/SSIM at k_b on the validation pairs, or the self-supervised loss on
  held-out patches; the best goes to ``best.safetensors``;
- data parallel when launched by ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import atomic_write, save
from .datasets import PatchSampler, collect_sources, load_pairs
from .errors import AtbsnError
from .inference import autocast, resolve_device

log = logging.getLogger("atbsn")

SIDD_KS = [0, 1, 3, 5, 7, 9, 11]
DND_KS = [0, 1, 3, 5, 7, 9]

# The paper's recipes (sidd, dnd) and a laptop-sized one (cpu). Any field can be overridden.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "train": {
        "sidd": {"steps": 400_000, "batch": 8, "crop": 256, "width": 48, "k_train": 9, "k_infer": 3, "lr": 3e-4},
        "dnd": {"steps": 400_000, "batch": 8, "crop": 256, "width": 48, "k_train": 9, "k_infer": 3, "lr": 3e-4},
        "cpu": {"steps": 2_000, "batch": 8, "crop": 64, "width": 24, "k_train": 9, "k_infer": 3, "lr": 3e-4,
                "val_every": 250, "save_every": 250},
    },
    "distill": {
        "sidd": {"steps": 100_000, "batch": 8, "crop": 128, "ks": SIDD_KS, "lr": 3e-4},
        "dnd": {"steps": 100_000, "batch": 8, "crop": 128, "ks": DND_KS, "lr": 3e-4},
        "cpu": {"steps": 1_000, "batch": 8, "crop": 64, "ks": SIDD_KS, "lr": 3e-4, "val_every": 250,
                "save_every": 250},
    },
}


@dataclass
class RunConfig:
    """Everything that defines a training or distillation run (saved in ``state.pt``)."""

    task: str = "train"  # "train" (the AT-BSN teacher) | "distill" (a student)
    data: list[str] = field(default_factory=list)
    out: str = "run"
    preset: str | None = None
    steps: int = 400_000
    batch: int = 8
    crop: int = 256
    lr: float = 3e-4
    seed: int = 0
    # teacher
    width: int = 48
    k_train: int = 9
    k_infer: int = 3
    # distillation
    teacher: str | None = None
    student: str = "C"
    ks: list[int] = field(default_factory=lambda: list(SIDD_KS))
    loss: str = "multi"  # "multi": one L1 term per teacher | "mean": L1 to the teachers' mean
    init_from_teacher: bool = False
    # both
    val: str | None = None
    val_limit: int | None = 16
    val_every: int = 1_000
    save_every: int = 500
    log: str = "csv"  # "csv" | "tensorboard"
    device: str = "auto"
    precision: str = "fp32"
    on_bad_file: str = "fail"  # "fail" | "skip"
    cache_gb: float = 2.0

    @classmethod
    def from_preset(cls, task: str, preset: str | None, **overrides: Any) -> RunConfig:
        """Preset values, then every override that is not None."""
        values: dict[str, Any] = {"task": task, "preset": preset}
        if preset is not None:
            if preset not in PRESETS[task]:
                raise AtbsnError(f"unknown preset {preset!r} (choose {', '.join(PRESETS[task])})")
            values.update(PRESETS[task][preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise AtbsnError(f"unknown run options: {', '.join(sorted(unknown))}")
        return cls(**values)


class Task(Protocol):
    """What the loop needs from a training task."""

    model: nn.Module  # the network being trained (its .config describes it)

    def loss(self, net: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the real pixels (mask 1) of zero-padded patches."""
    return ((pred.float() - target.float()).abs() * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------- DDP
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- logging
class MetricLog:
    """``log.csv`` (appended, survives resume) and optionally TensorBoard."""

    def __init__(self, out: Path, kind: str) -> None:
        self.path = out / "log.csv"
        self._file = None
        self.tb = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise AtbsnError("--log tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        elif kind != "csv":
            raise AtbsnError(f"unknown log kind {kind!r} (csv or tensorboard)")

    def write(self, step: int, values: dict[str, float]) -> None:
        if self._file is None:  # opened once, appended to (survives resume); flushed every write
            new = not self.path.exists()
            self._file = open(self.path, "a", newline="")  # noqa: SIM115
            self._csv = csv.writer(self._file)
            if new:
                self._csv.writerow(["step", "name", "value"])
        for k, v in values.items():
            self._csv.writerow([step, k, f"{v:.6g}"])
        self._file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs a task to ``config.steps``; ``stop_after`` halts early (as a kill would) leaving resumable state."""

    def __init__(self, config: RunConfig, task_factory, resume: bool = False) -> None:
        self.out = Path(config.out)
        self.state_path = self.out / "state.pt"
        saved = None
        if resume:
            if not self.state_path.exists():
                raise AtbsnError(f"{self.out}: nothing to resume (no state.pt); start without --resume")
            try:
                saved = torch.load(self.state_path, map_location="cpu", weights_only=False)
            except Exception as e:
                reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
                raise AtbsnError(f"{self.state_path}: unreadable resume state ({reason})") from None
            config = RunConfig(**saved["config"])
        elif self.state_path.exists():
            raise AtbsnError(f"{self.out}: already holds a run; use --resume to continue it or choose another -o")
        self.config = config
        self.dist, self.device = init_distributed(config.device)
        torch.manual_seed(config.seed)
        self.task: Task = task_factory(config, self.device)
        self.model = self.task.model.to(self.device)
        if self.device.type == "cpu":  # channels-last: the inference layout (see speed.md for training)
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=config.steps, eta_min=0.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.step, self.best, self.elapsed = 0, None, 0.0
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"])
            self.step, self.best, self.elapsed = saved["step"], saved["best"], saved.get("elapsed", 0.0)
        sources = collect_sources(config.data)
        self.sampler = PatchSampler(sources, config.crop, self.model.config.in_channels, config.seed,
                                    self.dist.rank, int(config.cache_gb * (1 << 30)), config.on_bad_file)
        self.n_sources = len(sources)
        self.val_pairs = load_pairs(config.val, config.val_limit) if config.val else None
        self.val_batch = None if self.val_pairs else PatchSampler(
            sources, config.crop, self.model.config.in_channels, config.seed + 1_000_003, 0,
            0, config.on_bad_file).batch(0, max(config.batch, 8))
        self._stop_signal = False

    # -------------------------------------------------------------------------------- state on disk
    def _export_config(self) -> None:
        cfg = self.model.config
        cfg.train_crop = self.config.crop
        cfg.training = {k: v for k, v in asdict(self.config).items() if k not in ("device", "out", "cache_gb")}
        cfg.training["completed_steps"] = self.step

    def save_state(self) -> None:
        if not self.dist.main:
            return
        self._export_config()
        state = {
            "config": asdict(self.config), "step": self.step, "best": self.best, "elapsed": self.elapsed,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state(),
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))
        save(self.model, self.out / "last.safetensors")

    # -------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM at k_b on pairs (higher is better), else held-out self-supervised loss (lower)."""
        model = copy.deepcopy(self.model).eval().to(memory_format=torch.contiguous_format)
        self._export_config()
        model.config = copy.deepcopy(self.model.config)
        if self.val_pairs:
            from .evaluate import evaluate

            _, s = evaluate(model, self.val_pairs, device=self.device)
            return {"val_psnr": s["psnr"], "val_ssim_rgb": s["ssim_rgb"], "val_ssim_y": s["ssim_y"]}
        x, m = (torch.from_numpy(a).to(self.device) for a in self.val_batch)
        with autocast(self.device, self.config.precision):
            return {"val_loss": float(self.task.loss(model, x, m))}

    def _is_better(self, metrics: dict[str, float]) -> bool:
        score = metrics.get("val_psnr", -metrics.get("val_loss", math.inf))
        if self.best is None or score > self.best["score"]:
            self.best = {"score": score, "step": self.step, **metrics}
            return True
        return False

    # -------------------------------------------------------------------------------- the loop
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = True

    def run(self, stop_after: int | None = None, progress: bool = True) -> dict:
        from tqdm import tqdm

        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        logger = MetricLog(self.out, cfg.log) if self.dist.main else None
        if self.dist.main:
            print(self.task.describe(), flush=True)
            print(f"data: {self.n_sources} image(s); {cfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches"
                  f" on {self.device}{f' x {self.dist.world} processes' if self.dist.world > 1 else ''}"
                  f"{f', resuming at step {self.step}' if self.step else ''}; writing to {self.out}", flush=True)
        old = signal.signal(signal.SIGTERM, self._on_signal) if _main_thread() else None
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.task, unit="it", disable=not (progress and
                   self.dist.main), dynamic_ncols=True)
        pool = ThreadPoolExecutor(1)  # decodes the next batch while this one trains
        nxt = pool.submit(self.sampler.batch, self.step, cfg.batch) if self.step < end else None
        self.model.train()
        last_loss, t0, interrupted = float("nan"), time.perf_counter(), False
        try:
            while self.step < end:
                xb, mb = nxt.result()
                nxt = pool.submit(self.sampler.batch, self.step + 1, cfg.batch) if self.step + 1 < end else None
                x = torch.from_numpy(xb).to(self.device).contiguous(memory_format=torch.channels_last)
                m = torch.from_numpy(mb).to(self.device)
                with autocast(self.device, cfg.precision):
                    loss = self.task.loss(self.net, x, m)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                self.sched.step()
                self.step += 1
                last_loss = float(loss.detach())
                bar.update()
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
                if logger is not None:
                    logger.write(self.step, {"loss": last_loss, "lr": self.sched.get_last_lr()[0]})
                if self.dist.main and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    metrics = self.validate()
                    better = self._is_better(metrics)
                    logger.write(self.step, metrics)
                    bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                              + (" (best)" if better else ""))
                    if better:
                        self._export_config()
                        save(self.model, self.out / "best.safetensors")
                if self.step % cfg.save_every == 0 or self._stop_signal:
                    self.save_state()
                if self._stop_signal:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.elapsed += time.perf_counter() - t0
            bar.close()
            pool.shutdown(wait=True)
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        self.save_state()
        if self.dist.main and not (self.out / "best.safetensors").exists():
            save(self.model, self.out / "best.safetensors")  # no validation yet: the latest is the best known
        digests = self._rank_digests()
        summary = {"step": self.step, "steps": cfg.steps, "finished": self.step >= cfg.steps,
                   "interrupted": interrupted, "last_loss": last_loss, "best": self.best,
                   "seconds": self.elapsed, "world_size": self.dist.world, "rank_weight_digests": digests}
        if self.dist.main:
            atomic_write(self.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
            if logger is not None:
                logger.close()
            if not summary["finished"]:
                print(f"stopped at step {self.step} of {cfg.steps}; continue with --resume", flush=True)
        if len(set(digests)) > 1:
            raise AtbsnError(f"data-parallel ranks hold different weights after training: {digests}")
        return summary

    def _rank_digests(self) -> list[str]:
        mine = weights_digest(self.model)
        if self.dist.world == 1:
            return [mine]
        gathered: list[str] = [""] * self.dist.world
        dist.all_gather_object(gathered, mine)
        return gathered


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
