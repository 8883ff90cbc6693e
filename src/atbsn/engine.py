"""The trainer: a network, a loss and noisy data -> optimisation steps, validation, checkpoints, resume.

A method is a :class:`Method` (a plain network, a :class:`~atbsn.losses.Loss`, a line describing it);
the trainer runs any method the same way:

- batches come from :class:`~atbsn.datasets.PatchSampler`, a pure function of (seed, step, rank), so a
  resumed run sees exactly the batches an uninterrupted one would;
- Adam with cosine decay to 0 over ``steps`` (or the method's own schedule);
- every ``save_every`` steps (and when stopped or interrupted) ``state.pt`` holds weights, optimizer,
  scheduler, RNG and step, written atomically and readable without unpickling code; ``last.safetensors``
  is the same weights in our format;
- every ``val_every`` steps: PSNR/SSIM at k_b on the validation pairs, or the loss on held-out patches;
  the best goes to ``best.safetensors``;
- data parallel when launched by ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .checkpoint import save
from .config import RunConfig
from .datasets import PatchSampler, collect_sources, load_pairs
from .errors import AtbsnError
from .evaluate import evaluate
from .files import RunLock, atomic_write, check_apart, check_writable, reason, remove_stale_temps, write_text
from .losses import Loss
from .methods import Method
from .runtime import autocast, available_memory, init_distributed, log, progress_bar, resolve_precision
from .tiling import plan_tiles, run_tiled

MethodFactory = Callable[[RunConfig, torch.device], Method]

# Of the bytes every operation of a training step creates (forward and backward, counted on the meta device), the
# share alive at once at the step's peak: measured 0.26 to 0.35 over two runs (peak RSS growth of one real fp32
# step against the count) for atbsn, apbsn, tmbsn, n2n and lgbpn at width 16, crops 64 to 256
# (benchmarks/step_memory.py, results/step_memory.md).
STEP_PEAK_SHARE = 0.4


class _Tally(TorchDispatchMode):
    """Adds up the bytes of every tensor the operations it sees create (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            self.bytes += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


def step_bytes(make: Callable[[], Method], batch: int, crop: int) -> int | None:
    """Memory one training step of the method ``make`` builds would need at ``batch`` x ``crop``^2, estimated
    without allocating it: the network is built and one step run on PyTorch's meta device (shapes, no data),
    its tensors counted (:data:`STEP_PEAK_SHARE` of them alive at once), plus weights, gradients and Adam's two
    moments. None when the method cannot run on the meta device (then nothing is checked)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():  # loading a teacher onto meta parameters warns
            warnings.simplefilter("ignore")
            method = make()
        model = method.model.to("meta")
        c = model.config.in_channels
        with _Tally() as tally:
            method.loss.at(0, 1)
            method.loss(model, torch.empty(batch, c, crop, crop, device="meta"),
                        torch.ones(batch, 1, crop, crop, device="meta")).backward()
    except Exception:  # noqa: BLE001 - an estimate is a courtesy: a method it cannot trace is not refused
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(tally.bytes * STEP_PEAK_SHARE + 4 * weights)


def check_step_memory(make: Callable[[], Method], config: RunConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a run whose training step needs more memory than ``device`` has free
    (a --crop, --batch, --width or blind-spot control far too large: without this the allocation fails deep in
    PyTorch, or the system's OOM killer ends the process and others with it)."""
    need = step_bytes(make, config.batch, config.crop)
    free = available_memory(device)
    if need is not None and need > free:
        raise AtbsnError(f"--crop {config.crop}, --batch {config.batch}, --width {config.width}: one training step "
                         f"needs about {need / 2**30:.1f} GB and {device} has {free / 2**30:.1f} GB free; use a "
                         "smaller --crop, --batch or --width")


def targets_once(pixels: list[int], tiling: tuple[int, int], config: RunConfig,
                 channels: int) -> tuple[bool, float, float]:
    """Whether a distillation computes its teacher's targets once per photo (``--cache-targets``): where the photos'
    tiled windows (``tiling``: tile and margin) are fewer pixels than the whole run's batches (a resume decides
    alike) and the targets (``channels`` float32 per pixel) fit in ``--cache-gb``. Returns (the choice, the
    windows' pixels, the batches' pixels)."""
    tile, margin = tiling
    windows = sum(pixels) * ((tile + 2 * margin) / tile) ** 2
    per_batch = config.steps * config.batch * config.crop**2
    fits = sum(pixels) * 4 * channels <= config.cache_gb * (1 << 30)
    costly = bool(config.bm3d_sigma)  # BM3D takes seconds a call, on a 32 x 32 patch too: once per photo
    return bool((config.cache_targets or costly) and (windows < per_batch or costly) and fits), windows, per_batch


@torch.no_grad()
def photo_targets(loss: Loss, image: np.ndarray, device: torch.device, precision: str = "fp32",
                  classical: np.ndarray | None = None) -> np.ndarray:
    """A distillation loss's targets (``loss.targets``) over a whole photo (H x W x C float32, 0..255), as
    H x W x (C x targets) float32, in the tiles its teacher's inference uses (a teacher that records its training
    crop sees windows of that crop): what ``--cache-targets`` cuts with the patches. A classical teacher
    (``loss.classical``) sees the whole photo at once: no tile edges, and BM3D's block matching its full reach;
    ``classical``: its output, where already computed (H x W x C)."""
    tile, margin = plan_tiles(loss.teacher, device)
    ctx = autocast(device, precision)

    def fn(w: torch.Tensor) -> torch.Tensor:
        with ctx:
            return torch.cat(loss.targets(w.contiguous(memory_format=torch.channels_last), classical=False), 1).float()

    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    out = run_tiled(fn, x, tile, margin, device=device)
    if getattr(loss, "classical", None) is not None:
        other = loss.classical(x) if classical is None else torch.from_numpy(classical.transpose(2, 0, 1))[None]
        out = torch.cat(loss.blend(list(out.split(x.shape[1], 1)), other), 1)
    return out[0].permute(1, 2, 0).cpu().numpy()


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


HELDOUT_SEED_OFFSET = 1_000_003  # held-out patches: another seed than any training batch


def heldout_batch(config: RunConfig, channels: int, size: int | None = None) -> tuple:
    """Patches of the run's photos that no training batch draws (another seed): the self-supervised
    validation set when there are no clean pairs. numpy (images, masks)."""
    sampler = PatchSampler(collect_sources(config.data), config.crop, channels, config.seed + HELDOUT_SEED_OFFSET,
                           0, 0, config.on_bad_file)
    return sampler.batch(0, size or max(config.batch, 8))


@torch.no_grad()
def heldout_loss(model: nn.Module, loss: Loss, batch: tuple, device: torch.device, precision: str = "fp32") -> float:
    """``loss`` of ``model`` on a held-out batch (lower is better; comparable between models of one method).

    Scheduled losses are scored at one fixed point, ``at(0, 1)`` (their end-of-training weights, step 0's
    random draws): a regulariser whose weight grows would otherwise make later checkpoints look worse.
    The trainer sets the step again before its next step.
    """
    loss.at(0, 1)
    was_training = model.training
    model.eval()
    x, m = (torch.from_numpy(a).to(device) for a in batch)
    with autocast(device, precision):
        value = float(loss(model, x.contiguous(memory_format=torch.channels_last), m))
    model.train(was_training)
    return value


def saved_config(out: str | Path) -> RunConfig | None:
    """The configuration of the run in ``out`` (None when it holds none), without loading weights."""
    state = Path(out) / "state.pt"
    return _saved_run(state, _load_state(state)) if state.exists() else None


def _saved_run(path: Path, state: dict) -> RunConfig:
    """The run configuration inside a loaded resume state; a state without one, or with a broken one, is one line
    naming the file (a folder from elsewhere, or a state written by hand)."""
    try:
        values = json.loads(state["config"])
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object of options")
        return RunConfig.from_saved(values)
    except AtbsnError as e:
        raise AtbsnError(f"{path}: its run configuration is refused ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        what = ("has no run configuration" if isinstance(e, KeyError) else
                f"holds a broken run configuration ({reason(e, 100)})")
        raise AtbsnError(f"{path}: unreadable resume state: it {what}") from None


def _load_state(path: Path) -> dict:
    try:  # plain tensors, numbers and strings only: no code runs from a run folder
        with warnings.catch_warnings():  # torch's warning about a legacy pickle: the error line says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AtbsnError(f"{path}: unreadable resume state ({reason(e, 120)})") from None


# ------------------------------------------------------------------------------------------- logging
class MetricLog:
    """``log.csv`` (appended, survives resume) and optionally TensorBoard."""

    def __init__(self, out: Path, kind: str, step: int = 0) -> None:
        self.path = out / "log.csv"
        self._file = None
        self._drop_after(step)
        self.tb = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise AtbsnError("--log tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def _drop_after(self, step: int) -> None:
        """Rows of steps after ``step`` (a killed run logged them, a resumed one runs them again) go."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(keep) < len(rows):
            def write(tmp: str) -> None:
                with open(tmp, "w", newline="") as f:
                    csv.writer(f).writerows(keep)
            atomic_write(self.path, write)

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
def cosine_lr(lr: float, step: int, steps: int) -> float:
    """The learning rate of the engine's default schedule after ``step`` of ``steps``: cosine decay from ``lr`` to
    0 (what ``CosineAnnealingLR(T_max=steps)`` computes step by step; ``fit``'s cool-down starts from it)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, steps) / steps))


class Trainer:
    """Runs a method to ``config.steps``; ``stop_after`` halts early (as a kill would) leaving resumable state.

    With ``resume``, the run in ``config.out`` continues; options that would change what it computes
    (anything but where and how it runs) must equal the saved ones.
    """

    def __init__(self, config: RunConfig, method: MethodFactory, resume: bool = False) -> None:
        self.out = Path(config.out)
        self.state_path = self.out / "state.pt"
        check_apart([self.out], [*config.data, config.val, config.teacher])
        self._check_resume(resume)  # a wrong --resume fails before anything else, without reading the state
        check_writable(self.out, folder=True)  # an unwritable -o fails now, not at the first checkpoint
        self.config = config
        self.dist, self.device = init_distributed(config.device)
        # one process works in a run folder: a second one is refused (the main rank holds the lock for all)
        self._lock = RunLock(self.out).acquire() if self.dist.main else None
        try:
            self._setup(config, method, resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder (done when :meth:`run` ends)."""
        if self._lock is not None:
            self._lock.release()

    def _setup(self, config: RunConfig, method: MethodFactory, resume: bool) -> None:
        saved = self._saved_state(config, resume)  # read under the lock
        remove_stale_temps(self.out, ["state.pt", "last.safetensors", "best.safetensors", "summary.json"])
        check_step_memory(lambda: method(config, torch.device("meta")), config, self.device)
        torch.manual_seed(config.seed)
        self.method = method(config, self.device)
        self.model = self.method.model.to(self.device, memory_format=torch.channels_last)
        self.loss = self.method.loss
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.partial,
            )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999))
        if self.method.schedule is None:
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=config.steps, eta_min=0.0)
        else:
            schedule, steps = self.method.schedule, config.steps
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: schedule(step, steps))
        self.precision = resolve_precision(config.precision, self.device)  # auto: bf16 only where it is native
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step, self.best, self.elapsed = 0, None, 0.0
        if saved is not None:
            self._restore(saved)
        sources = collect_sources(config.data)
        channels = self.model.config.in_channels
        self.sampler = PatchSampler(sources, config.crop, channels, config.seed, self.dist.rank,
                                    int(config.cache_gb * (1 << 30)), config.on_bad_file)
        self.n_sources = len(sources)
        if (config.cache_targets or config.bm3d_sigma) and hasattr(self.loss, "n_targets"):  # a distillation
            self._cache_targets(config)
        self.val_pairs = load_pairs(config.val, config.val_limit) if config.val else None
        self.val_batch = None if self.val_pairs else heldout_batch(config, channels)
        classical = getattr(self.loss, "classical", None)
        if self.val_batch is not None and classical is not None and classical.processes:  # BM3D: once, not per look
            images = self.val_batch[0]
            others = classical.many(list(images.transpose(0, 2, 3, 1)))  # the patches side by side
            targets = self.loss.blend(self.loss.targets(torch.from_numpy(images).to(self.device), classical=False),
                                      torch.from_numpy(np.stack(others).transpose(0, 3, 1, 2)))
            appended = torch.cat([torch.from_numpy(images), *(t.float().cpu() for t in targets)], 1)
            self.val_batch = (appended.numpy(), self.val_batch[1])
        self._stop_signal = False

    def _cache_targets(self, config: RunConfig) -> None:
        """Distillation's targets computed once per photo and cropped with its patches (``--cache-targets``),
        where :func:`targets_once` says so."""
        pixels = [None if (s := self.sampler.size(i)) is None else s[0] * s[1] for i in range(self.n_sources)]
        once, windows, per_batch = targets_once([p for p in pixels if p], plan_tiles(self.loss.teacher, self.device),
                                                config, self.model.config.in_channels * self.loss.n_targets)
        if not once:
            log.info("teacher's targets: on every batch (%.1f MP of windows once against %.1f MP of batches, or "
                     "more than --cache-gb)", windows / 1e6, per_batch / 1e6)
            return
        classical = getattr(self.loss, "classical", None)
        chunk = (os.cpu_count() or 1) if classical is not None and classical.processes else 1
        with progress_bar(total=self.n_sources, desc="teacher's targets", unit="img",
                          show=self.dist.main and self.n_sources > 1) as bar:
            for first in range(0, self.n_sources, chunk):  # a classical teacher's photos side by side
                some = [i for i in range(first, min(first + chunk, self.n_sources)) if pixels[i]]
                others = classical.many([self.sampler.photo(i) for i in some]) if classical else [None] * len(some)
                for i, other in zip(some, others):
                    self.sampler.extra[i] = photo_targets(self.loss, self.sampler.photo(i), self.device,
                                                          self.precision, other)
                bar.update(min(first + chunk, self.n_sources) - first)
        log.info("teacher's targets: once per photo (%.1f MP of windows against %.1f MP of batches)",
                 windows / 1e6, per_batch / 1e6)

    # -------------------------------------------------------------------------------- state on disk
    def _check_resume(self, resume: bool) -> None:
        """A new run needs a folder without a run; --resume needs one."""
        if not resume and self.state_path.exists():
            raise AtbsnError(f"{self.out}: already holds a run; use --resume to continue it or choose another -o")
        if resume and not self.state_path.exists():
            raise AtbsnError(f"{self.out}: nothing to resume (no state.pt); start without --resume")

    def _saved_state(self, config: RunConfig, resume: bool) -> dict | None:
        self._check_resume(resume)  # again: another process may have written meanwhile
        if not resume:
            return None
        saved = _load_state(self.state_path)
        before = _saved_run(self.state_path, saved)
        if before.teacher_sha256 and config.teacher_sha256 and before.teacher_sha256 != config.teacher_sha256:
            raise AtbsnError(f"{config.teacher}: not the teacher this run began with (its contents differ: sha256 "
                             f"{config.teacher_sha256[:12]}..., the run's {before.teacher_sha256[:12]}...); resume "
                             "with that teacher or start a new run")
        changed = before.conflicts(config)
        if changed:
            diffs = ", ".join(f"{n} {getattr(before, n)!r} -> {getattr(config, n)!r}" for n in changed)
            raise AtbsnError(f"{self.out}: --resume cannot change the run's options ({diffs}); "
                             "resume without them or start a new run")
        return saved

    def _restore(self, saved: dict) -> None:
        try:
            self._load(saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise AtbsnError(f"{self.state_path}: unreadable resume state ({type(e).__name__}: {reason(e, 120)}); "
                             "start a new run in another folder") from None

    def _load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        self.step, self.elapsed = int(saved["step"]), float(saved["elapsed"])
        self.best = json.loads(saved["best"])

    def _export_config(self) -> None:
        cfg = self.model.config
        cfg.train_crop = self.config.crop
        cfg.training = {k: v for k, v in asdict(self.config).items() if k not in ("device", "out", "cache_gb")}
        cfg.training["completed_steps"] = self.step

    def save_state(self) -> None:
        if not self.dist.main:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise AtbsnError(f"{self.out}: the weights became NaN or infinite by step {self.step}; not saved (the "
                             "previous checkpoint stays); start again with a smaller --lr or in fp32")
        self._export_config()
        state = {
            "config": json.dumps(asdict(self.config)), "step": self.step, "best": json.dumps(self.best),
            "elapsed": self.elapsed, "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state(),
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))
        save(self.model, self.out / "last.safetensors")

    # -------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """PSNR/SSIM at k_b on pairs (higher is better), else held-out loss (lower)."""
        model = copy.deepcopy(self.model).eval()
        self._export_config()
        model.config = copy.deepcopy(self.model.config)
        if self.val_pairs:
            _, s = evaluate(model, self.val_pairs, device=self.device)
            return {"val_psnr": s["psnr"], "val_ssim_rgb": s["ssim_rgb"], "val_ssim_y": s["ssim_y"]}
        return {"val_loss": heldout_loss(model, self.loss, self.val_batch, self.device, self.precision)}

    def _is_better(self, metrics: dict[str, float]) -> bool:
        score = metrics.get("val_psnr", -metrics.get("val_loss", math.inf))
        if self.best is None or score > self.best["score"]:
            self.best = {"score": score, "step": self.step, **metrics}
            return True
        return False

    # -------------------------------------------------------------------------------- the loop
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = True

    def _step(self, xb, mb) -> float:
        """One optimisation step on a batch (numpy, from the sampler); returns the loss."""
        x = torch.as_tensor(xb).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        m = torch.as_tensor(mb).to(self.device, non_blocking=True)
        self.loss.at(self.step, self.config.steps)
        with autocast(self.device, self.precision):
            loss = self.loss(self.net, x, m)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        value = float(loss.detach())  # read once the backward is queued, as before: no extra stall on a GPU
        if not math.isfinite(value):  # stop before the update: the weights and checkpoints stay finite
            raise AtbsnError(f"{self.out}: the loss became {value} at step {self.step + 1}; training stopped. The "
                             "last checkpoint on disk is finite; start a new run with a smaller --lr, or in fp32")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        return value

    def _announce(self) -> None:
        cfg, procs = self.config, f" x {self.dist.world} processes" if self.dist.world > 1 else ""
        log.info(self.method.description)
        log.info(f"data: {self.n_sources} image(s); {cfg.steps} steps of {cfg.batch} x {cfg.crop}^2 patches on "
                 f"{self.device} ({self.precision}){procs}{f', resuming at step {self.step}' if self.step else ''}; "
                 f"writing to {self.out}")

    def run(self, stop_after: int | None = None, progress: bool = True) -> dict:
        try:
            return self._run(stop_after, progress)
        finally:
            self.close()

    def _run(self, stop_after: int | None, progress: bool) -> dict:
        cfg, main = self.config, self.dist.main
        done = self.out / "summary.json"
        if self.step >= cfg.steps and done.exists():  # a finished run resumed: nothing to do, its summary stays
            if main:
                log.info(f"{self.out}: already finished ({self.step} of {cfg.steps} steps); nothing to do")
            return json.loads(done.read_text())
        self.out.mkdir(parents=True, exist_ok=True)
        logger = MetricLog(self.out, cfg.log, self.step) if main else None
        if main:
            self._announce()
        old = signal.signal(signal.SIGTERM, self._on_signal) if _main_thread() else None
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = progress_bar(total=cfg.steps, initial=self.step, desc=cfg.task, show=progress and main)
        batches = self._batches(self.step, end)
        self.model.train()
        last_loss, t0, interrupted = float("nan"), time.perf_counter(), False
        try:
            while self.step < end and not interrupted:
                last_loss = self._step(*next(batches))
                lr = self.sched.get_last_lr()[0]
                bar.update()
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                if logger is not None:
                    logger.write(self.step, {"loss": last_loss, "lr": lr})
                if main and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    self._validate_and_keep_best(logger, bar)
                interrupted = self._stop_signal
                if self.step % cfg.save_every == 0 or interrupted:
                    self.save_state()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.elapsed += time.perf_counter() - t0
            bar.close()
            batches.close()  # stops the prefetching thread or the worker processes
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return self._finish(logger, last_loss, interrupted)

    def _batches(self, start: int, end: int):
        """Batches for steps start..end-1: from worker processes (``workers``) or a background thread that
        draws the next batch while this one trains. Either way batch i is ``sampler.batch(i)``."""
        pin = self.device.type == "cuda"
        if self.config.workers > 0:
            loader = torch.utils.data.DataLoader(
                _StepBatches(self.sampler, start, end, self.config.batch), batch_size=None, shuffle=False,
                num_workers=self.config.workers, pin_memory=pin, worker_init_fn=_one_thread, prefetch_factor=2)
            return (batch for batch in loader)
        return _thread_batches(self.sampler, start, end, self.config.batch, pin)

    def _validate_and_keep_best(self, logger: MetricLog, bar) -> None:
        metrics = self._validate()
        better = self._is_better(metrics)
        logger.write(self.step, metrics)
        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + (" (best)" if better else ""))
        if better:
            self._export_config()
            save(self.model, self.out / "best.safetensors")

    def _finish(self, logger: MetricLog | None, last_loss: float, interrupted: bool) -> dict:
        """Final state, ``best.safetensors`` when no validation ran, the summary, a check that ranks agree."""
        cfg = self.config
        self.save_state()
        if self.dist.main and not (self.out / "best.safetensors").exists():
            save(self.model, self.out / "best.safetensors")  # no validation yet: the latest is the best known
        digests = self._rank_digests()
        summary = {"step": self.step, "steps": cfg.steps, "finished": self.step >= cfg.steps,
                   "interrupted": interrupted, "last_loss": last_loss, "best": self.best,
                   "seconds": self.elapsed, "world_size": self.dist.world, "rank_weight_digests": digests}
        if self.dist.main:
            write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            if logger is not None:
                logger.close()
            if not summary["finished"]:
                log.info(f"stopped at step {self.step} of {cfg.steps}; continue with --resume")
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


class _StepBatches(torch.utils.data.Dataset):
    """Item i is the batch of step start + i: what a worker process draws is fixed by (seed, step, rank)."""

    def __init__(self, sampler: PatchSampler, start: int, end: int, size: int) -> None:
        self.sampler, self.start, self.end, self.size = sampler, start, end, size

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, mb = self.sampler.batch(self.start + i, self.size)
        return torch.from_numpy(xb), torch.from_numpy(mb)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # workers crop and copy; the cores belong to the training step


def _thread_batches(sampler: PatchSampler, start: int, end: int, size: int, pin: bool):
    """Batches of steps start..end-1, each drawn in a background thread while the previous one trains."""

    def draw(step: int):
        xb, mb = sampler.batch(step, size)
        x, m = torch.from_numpy(xb), torch.from_numpy(mb)
        return (x.pin_memory(), m.pin_memory()) if pin else (x, m)

    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(draw, start) if start < end else None
        for step in range(start, end):
            batch = nxt.result()
            nxt = pool.submit(draw, step + 1) if step + 1 < end else None
            yield batch


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
