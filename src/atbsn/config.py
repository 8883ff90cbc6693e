"""Typed configuration, each option defined once: the model's (saved in every checkpoint) and a run's.

:class:`ModelConfig` is what it takes to rebuild a network and use it correctly; it travels inside every
checkpoint, so a checkpoint alone can denoise. :class:`RunConfig` defines a training or distillation run
and is saved with its resume state. Option fields carry their help text, choices and lower bounds
(:func:`option`): the command line is generated from them (:func:`add_options`) and every value is
checked on construction (:func:`check_options`), so an option is written in exactly one place.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from . import methods
from .errors import AtbsnError
from .runtime import AUTO, PRECISIONS, log

SIDD_KS = (0, 1, 3, 5, 7, 9, 11)  # the paper's teachers for SIDD (and the default everywhere)
DND_KS = (0, 1, 3, 5, 7, 9)  # milder noise: no k = 11


# the precision option of every config (train, distill, fit, denoise, the page): its help and choices, once
PRECISION_HELP = ("autocast precision (auto: bf16 where the device computes it natively, else fp32; fp16: CUDA "
                  "only)")
PRECISION_CHOICES = (AUTO, *PRECISIONS)


@dataclass
class ModelConfig:
    """What it takes to rebuild a network and use it correctly.

    ``value_range`` is the input scale the weights expect (255 for the AT-BSN authors' files, 1 for
    APR-RD's); every model in this package takes and returns 0..255 and converts internally.
    ``train_crop`` is the patch size the network was trained on: short CPU runs generalise badly to much
    larger inputs, so inference tiles at (a multiple of) this size when it is set.
    ``k_train`` / ``k_infer`` are the blind-spot control for training and inference (the family's
    :class:`~atbsn.methods.Knob`: AT-BSN's blind-spot size k, AP-BSN's PD stride).
    """

    arch: str = "atbsn"
    width: int = 48
    in_channels: int = 3
    value_range: float = 255.0
    k_infer: int = 3
    k_train: int | None = None
    ks: list[int] | None = None
    train_crop: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        methods.arch(self.arch)  # an unknown architecture is refused here, naming the known ones

    @property
    def family(self) -> methods.Arch:
        """What the registry knows about this network's family (:class:`atbsn.methods.Arch`)."""
        return methods.arch(self.arch)

    @property
    def is_teacher(self) -> bool:
        """A multi-k teacher that distillation learns from (the AT-BSN meta-teacher)."""
        return self.family.teacher

    @property
    def knob(self) -> str | None:
        """The name of the per-call blind-spot control ("k", "stride"), None for a non-blind network."""
        knob = self.family.knob
        return knob.name if knob else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object of fields")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------ options
def option(default: Any, help: str, *, choices: tuple | None = None, low: float | None = None,  # noqa: A002
           high: float | None = None, cli: bool = True, flag: str | None = None,
           aliases: tuple[str, ...] | Callable[[], tuple] = (), parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes``, or ``flag``).

    ``low``, ``high``: the smallest and largest number allowed (a largest where a number past it would overflow or
    ask for more than any machine holds; memory itself is checked against the machine, see
    :func:`atbsn.engine.check_step_memory`); ``choices``: the values allowed, or a function returning them (read
    when used: the registry's methods); ``cli=False``: API only; ``aliases``: more flags for the same option (or a
    function returning them); ``parse``: the flag's argparse type when the annotation names more than one.
    """
    meta = {"help": help, "choices": choices, "low": low, "high": high, "cli": cli, "flag": flag, "aliases": aliases,
            "parse": parse}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _choices(meta: dict) -> tuple | None:
    choices = meta["choices"]
    return tuple(choices()) if callable(choices) else choices


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _base_type(annotation: str) -> tuple[type, bool]:
    """(element type, is a list) from a field's annotation string, e.g. ``list[int] | None``."""
    text = annotation.replace(" | None", "").strip()
    if text.startswith("list["):
        return _TYPES[text[5:-1]], True
    return _TYPES[text], False


def add_options(parser: argparse.ArgumentParser, cls: type, names: list[str] | None = None) -> None:
    """Add ``--option`` flags for the fields of ``cls`` marked as options (all, or just ``names``).

    Every flag defaults to None ("not given"), so a caller can tell what the user set.
    """
    for f in fields(cls):
        if "help" not in f.metadata or not f.metadata["cli"] or (names is not None and f.name not in names):
            continue
        kind, many = (f.metadata["parse"], False) if f.metadata.get("parse") else _base_type(str(f.type))
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory
                                                             is not MISSING else None)
        help_text = f.metadata["help"] + ("" if default in (None, False) else f" (default {_show(default)})")
        aliases = f.metadata.get("aliases", ())
        flags = (flag, *(aliases() if callable(aliases) else aliases))
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_const", const=True, default=None, help=help_text)
            if f.default is None:  # on or off by default from elsewhere (the model): the flag that says no
                parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=False,
                                    help=f"the opposite of {flag}: off whatever the default would choose")
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, nargs="+" if many else None, default=None,
                                choices=_choices(f.metadata), help=help_text)


def _refusal(value: Any, low: float | None, high: float | None = None) -> str | None:
    """Why a number is refused as an option value (not finite, below ``low`` or above ``high``), else None."""
    if isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if low is not None and value < low:
        return f"must be at least {low:g}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high:g}, got {value:g}"
    return None


SEED_MAX = 2**63 - 1  # what torch.manual_seed and numpy's generators take
STEPS_MAX = 10**9  # more steps than any run makes (and counters stay exact in float64)
MINUTES_MAX = 100_000.0  # about ten weeks


def number(kind: type, low: float | None = None, high: float | None = None):
    """An argparse ``type`` for a number of ``kind`` that :func:`check_options`' rule accepts (finite, between
    ``low`` and ``high``): flags outside the config dataclasses are refused when parsed, on one line, as the options
    are."""
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        why = _refusal(value, low, high)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value
    parse.__name__ = kind.__name__
    return parse


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


K_RULES = ("auto", "adaptive")  # --k values that choose the blind spot from the photo (atbsn.adapt)


def k_value(text: str) -> int | str:
    """An argparse ``type`` for ``--k``: a number (at least 0), or one of :data:`K_RULES`."""
    if text in K_RULES:
        return text
    try:
        return number(int, 0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0 or one of {', '.join(K_RULES)}") from None


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of ``cls`` the user gave on the command line (flags left at None are not given)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}


def check_options(obj: Any) -> None:
    """Refuse a value outside its option's choices or below its lower bound, naming the flag."""
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None or "help" not in meta:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        choices = _choices(meta)
        for v in values:
            if choices is not None and v not in choices:
                raise AtbsnError(f"{flag}: {v!r} is not one of {', '.join(map(str, choices))}")
            numeric = meta["low"] is not None or meta.get("high") is not None
            if numeric and (isinstance(v, bool) or not isinstance(v, (int, float, str))):  # str: a rule (--k auto)
                raise AtbsnError(f"{flag}: {v!r} is not a number")
            why = _refusal(v, meta["low"], meta.get("high"))
            if why:
                raise AtbsnError(f"{flag} {why}")


# ------------------------------------------------------------------------------------------ runs
# Distillation's recipes: the paper's (sidd, dnd) and a laptop-sized one (cpu). Training recipes belong to each
# method (its file in atbsn.methods: "sidd" is its authors' recipe, the default when no preset is named).
DISTILL_PRESETS: dict[str, dict[str, Any]] = {
    "sidd": {"steps": 100_000, "batch": 8, "crop": 128, "ks": list(SIDD_KS), "lr": 3e-4},
    "dnd": {"steps": 100_000, "batch": 8, "crop": 128, "ks": list(DND_KS), "lr": 3e-4},
    "cpu": {"steps": 1_000, "batch": 8, "crop": 64, "ks": list(SIDD_KS), "lr": 3e-4, "val_every": 250,
            "save_every": 250},
}
TASKS = ("train", "distill")


def preset_values(task: str, preset: str | None, method: str = "atbsn") -> dict[str, Any]:
    """The values a preset sets for a task (for training, the method's own recipes); training without a preset
    gets the method's authors' recipe ("sidd"), distillation the defaults."""
    if task != "train":
        table = DISTILL_PRESETS
        if preset is None:
            return {}
    else:
        table = methods.method(method).presets
        if preset is None:
            return dict(table["sidd"])
    name = preset
    if task == "train" and preset == "dnd" and "dnd" not in table:  # a recipe that does not depend on the data
        name = "sidd"
        log.info(f"--preset dnd: {method} has one recipe for any data; using its authors' SIDD recipe")
    if name not in table:
        raise AtbsnError(f"unknown preset {preset!r} (choose {', '.join(table)})")
    return dict(table[name])


# Options a resumed run may change: where and how it runs, not what it computes.
RESUMABLE = frozenset({"out", "device", "cache_gb", "log", "val_limit", "preset", "workers", "teacher"})


@dataclass
class RunConfig:
    """Everything that defines a training or distillation run (saved with its resume state)."""

    task: str = "train"  # "train" (a teacher or a rival method) | "distill" (a student)
    data: list[str] = field(default_factory=list)
    out: str = "run"
    preset: str | None = option(None, "sidd/dnd: the paper's recipe; cpu: minutes on a laptop",
                                choices=("sidd", "dnd", "cpu"))
    steps: int = option(400_000, "optimisation steps", low=1, high=STEPS_MAX)
    batch: int = option(8, "patches per step (per process under torchrun)", low=1)
    crop: int = option(256, "patch side in pixels", low=8)
    lr: float = option(3e-4, "Adam learning rate (cosine decay to 0)", low=0.0)
    seed: int = option(0, "random seed: batches are a pure function of (seed, step, rank)", low=0, high=SEED_MAX)
    # training
    method: str = option("atbsn", "what to train: the paper's teacher (atbsn) or a rival method (atbsn.methods)",
                         choices=methods.method_names)
    width: int = option(48, "channels of the network (default: the method's recipe)", low=1)
    k_train: int | None = option(None, "the blind-spot control for training: AT-BSN's size k_a, a rival's own (a PD "
                                 "stride, a hole); default: the method's", low=1,
                                 aliases=lambda: methods.knob_flags("train"))
    k_infer: int | None = option(None, "the blind-spot control recorded for inference (AT-BSN's k_b); default: the "
                                 "method's", low=0, aliases=lambda: methods.knob_flags("infer"))
    # distillation
    teacher: str | None = option(None, "teacher checkpoint (ours or the authors')", cli=False)
    # the teacher file's sha256, recorded when the run starts: a resume may find the teacher at another path,
    # never with other contents
    teacher_sha256: str | None = None
    student: str = option("C", "student network", choices=methods.student_names)
    ks: list[int] | None = option(None, "teacher blind-spot sizes (default 0 1 3 5 7 9 11; --loss partition: 9 0)",
                                  low=0)
    loss: str = option("multi", "multi: one L1 per teacher; mean: L1 to their mean; partition: --ks FLAT TEXTURE "
                       "by a texture map of the teacher's k_b output", choices=("multi", "mean", "partition"))
    texture_threshold: float = option(5.0, "partition loss: local standard deviation (0..255, 7x7) above which "
                                      "a pixel is texture", low=0.0)
    nlm_h: float | None = option(None, "a classical teacher beside the blind-spot ones: OpenCV non-local means at "
                                 "this strength h (0..255) on each patch", low=0.0)
    nlm_weight: float = option(0.5, "with --nlm-h: how far each target moves toward the NLM output (0..1)",
                               low=0.0, high=1.0)
    bm3d_sigma: float | None = option(None, "a classical teacher beside the blind-spot ones: BM3D (the bm3d "
                                      "package) at this noise std (0..255); a call takes seconds at any size, so "
                                      "the targets are computed once per photo where they fit in --cache-gb",
                                      low=0.0)
    bm3d_weight: float = option(0.5, "with --bm3d-sigma: how far each target moves toward the BM3D output (0..1)",
                                low=0.0, high=1.0)
    init_from_teacher: bool = option(False, "start student C from the teacher's UNet")
    cache_targets: bool = option(False, "compute the teacher's targets once per photo (tiled as its inference) and "
                                 "crop them with the patches, instead of running the teacher on every batch; only "
                                 "where that is less teacher work and the targets fit in --cache-gb")
    # both
    val: str | None = option(None, "noisy/clean pairs (folder or SIDD validation .mat) for PSNR/SSIM")
    val_limit: int | None = option(16, "validate on the first N pairs", low=1)
    val_every: int = option(1_000, "steps between validations", low=1, high=STEPS_MAX)
    save_every: int = option(500, "steps between resume checkpoints", low=1, high=STEPS_MAX)
    log: str = option("csv", "training log format", choices=("csv", "tensorboard"))
    device: str = option("auto", "auto, cpu, cuda (torchrun assigns cuda:LOCAL_RANK)")
    precision: str = option("fp32", PRECISION_HELP, choices=PRECISION_CHOICES)
    on_bad_file: str = option("fail", "an unreadable image stops the run or is skipped", choices=("fail", "skip"))
    cache_gb: float = option(2.0, "memory for decoded training images (per process)", low=0.0, high=1e6)
    workers: int = option(0, "data-loading processes (0: one background thread); each draws whole batches, "
                          "still a pure function of (seed, step, rank)", low=0)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise AtbsnError(f"unknown task {self.task!r} (choose {', '.join(TASKS)})")
        if self.ks is None:  # the loss's own default: partition takes (flat k, textured k), the paper's 9 and 0
            self.ks = [9, 0] if self.loss == "partition" else list(SIDD_KS)
        check_options(self)
        if self.task == "train":  # the method's blind-spot control: its defaults, checked now (before any folder)
            spec = methods.method(self.method)
            knob = methods.arch(spec.arch).knob
            if knob is None:
                given = [f for f, v in (("--k-train", self.k_train), ("--k-infer", self.k_infer)) if v is not None]
                if given:
                    raise AtbsnError(f"{given[0]}: {spec.title} has no blind-spot control to set (--method "
                                     f"{self.method}); leave it out")
            else:
                self.k_train = knob.train if self.k_train is None else self.k_train
                self.k_infer = knob.infer if self.k_infer is None else self.k_infer
                knob.check("--k-train", self.k_train, train=True, crop=self.crop)
                knob.check("--k-infer", self.k_infer)
        else:  # the teachers' blind spots must fit the crop (validated by the teacher's own family, when loaded)
            for k in self.ks:
                methods.arch("atbsn").knob.check_crop("--ks", k, self.crop)

    @classmethod
    def from_preset(cls, task: str, preset: str | None, **overrides: Any) -> RunConfig:
        """Preset values, then every override that is not None."""
        values: dict[str, Any] = {"task": task, "preset": preset}
        values.update(preset_values(task, preset, overrides.get("method") or "atbsn"))
        if overrides.get("loss") == "partition" and overrides.get("ks") is None and "ks" in values:
            # a preset's k set is for the multi/mean losses; partition takes its own pair unless --ks is given
            log.info(f"--loss partition: k = 9 (flat) and 0 (textured), not the preset's {_show(values.pop('ks'))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise AtbsnError(f"unknown run options: {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> RunConfig:
        """A run's configuration as saved with its state; runs of atbsn 0.1 saved a knob of its own name
        (``stride_train``): read as ``k_train``."""
        values = dict(values)
        spec = methods.methods().get(values.get("method", "atbsn"))
        knob = methods.arch(spec.arch).knob if spec else None
        for key in [k for k in values if k.endswith(("_train", "_infer")) and not k.startswith("k_")]:
            value = values.pop(key)
            if knob is not None and key.startswith(knob.name + "_"):
                values["k_" + key.rsplit("_", 1)[1]] = value
        return cls(**values)

    def conflicts(self, other: RunConfig) -> list[str]:
        """Options in which ``other`` differs from this run, among those a resume may not change."""
        return [f.name for f in fields(self) if f.name not in RESUMABLE
                and _canon(getattr(self, f.name)) != _canon(getattr(other, f.name))]


def _canon(value: Any) -> Any:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else value
