"""The method registry: every network family and every training method atbsn knows, declared by its own file.

A file in this package registers what it brings when it is imported:

- an :class:`Arch` (a network family) says how to build the network from a :class:`~atbsn.config.ModelConfig`,
  how to recognise its checkpoints (ours and its authors'), its per-call blind-spot control (a :class:`Knob`:
  name, defaults, validation, sweep values), the inference refinements it accepts (AP-BSN's ``r3``) and its
  tiling constants;
- a :class:`MethodSpec` (what ``atbsn train --method NAME`` trains) says which network it trains, its recipes
  (presets) and how to make the network plus loss (:class:`Method`) from a run's configuration.

The rest of the package (config, checkpoints, tiling, inference, training, evaluation, the CLI) looks methods up
here and names none. Lookups import every module of this package first (a plugin discovery: ``pkgutil`` over
this folder), so adding a method is adding one file. This module itself imports nothing of atbsn but
:mod:`atbsn.errors`, so every floor above can read the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AtbsnError

if TYPE_CHECKING:  # annotations only: the config floor reads this registry
    import torch
    from torch import nn

    from ..config import ModelConfig, RunConfig
    from ..losses import Loss


@dataclass(frozen=True)
class Knob:
    """A blind-spot network's control, chosen per call (AT-BSN's blind-spot size k, AP-BSN's PD stride).

    ``validate`` returns the value as an int or raises :class:`AtbsnError`; ``validate_train`` adds what training
    needs on top (a k_a that hides something). ``covers(value, h, w)`` says why a value cannot run on an h x w
    image, or None. ``span(value)`` is the side of the square a value keeps from view at full resolution (a PD
    stride: the two pixels a sub-image needs at least), for the rule that a training crop must hold it
    (:meth:`check` with ``crop``).
    """

    name: str
    what: str  # "blind-spot size", "PD stride": for messages
    train: int  # default for training
    infer: int  # default recorded for inference
    sweep: tuple[int, ...]  # what a sweep tries by default
    validate: Callable[[object], int]
    validate_train: Callable[[object], int] | None = None
    covers: Callable[[int, int, int], str | None] | None = None
    span: Callable[[int], int] | None = None

    def resolve(self, recorded: int | None, value: object = None) -> int:
        """The value a network runs with: ``value``, or when it is None the one ``recorded`` for inference."""
        return self.validate(recorded if value is None else value)

    def check(self, flag: str, value: object, train: bool = False, crop: int | None = None) -> int:
        """``value`` validated (``train``: as a training value, by ``validate_train`` where the family has one;
        ``crop``: it must also leave something to see in crops of that side), refused on one line naming
        ``flag``."""
        rule = (self.validate_train or self.validate) if train else self.validate
        try:
            value = rule(value)
        except AtbsnError as e:
            raise AtbsnError(f"{flag}: {e}") from None
        if crop is not None:
            self.check_crop(flag, value, crop)
        return value

    def check_crop(self, flag: str, value: int, crop: int) -> None:
        """Refuse a ``value`` that keeps a square as large as the training crop from view (nothing left to see)."""
        side = self.span(value) if self.span is not None else 0
        if side >= crop:
            raise AtbsnError(f"{flag}: {self.name}={value} keeps a {side} x {side} square from view, as large as the "
                             f"{crop}-pixel training crop: nothing would be left to see; choose a smaller {self.name} "
                             "or a larger --crop")


@dataclass(frozen=True)
class Arch:
    """A network family: everything the checkpoint, tiling and inference floors need to know about it."""

    name: str
    title: str  # as people write it: "AT-BSN", "student C", "AP-BSN"
    build: Callable[[ModelConfig], nn.Module]
    # a bare state dict (authors' key names) and the input scale its wrapper implied -> its config, or None
    detect: Callable[[Mapping[str, torch.Tensor], float], ModelConfig | None]
    bytes_per_pixel: int  # peak bytes per input pixel at width 48, no grad, fp32 (tiling's memory plan)
    margin: int  # context per tile for tiled == untiled (measured)
    knob: Knob | None = None  # None: a non-blind network
    teacher: bool = False  # a multi-k teacher distillation learns from (``teachers(x, ks)``: one backbone pass)
    student: bool = False  # a network ``distill --student`` trains
    refinements: tuple[str, ...] = ()  # inference flags it accepts beyond the knob (``r3``)
    tile_at_train_crop: bool = True  # False for networks without pooling: a crop shows them no border
    # an authors' checkpoint container -> (state dict, input scale), or None when it is not theirs
    unwrap: Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], float] | None] | None = None


@dataclass
class Method:
    """What the trainer needs from a method: the network it trains, its loss, and a line for the user.

    ``schedule(step, steps)`` is the learning rate's factor at a step; None is the engine's cosine decay to 0
    over the run (a method trained in stages, each with its own cosine, gives its own). ``partial``: a step
    updates only part of the network (a stage), which data-parallel training must be told.
    """

    model: nn.Module
    loss: Loss
    description: str
    schedule: Callable[[int, int], float] | None = None
    partial: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """A training method: ``atbsn train --method NAME``."""

    name: str
    title: str  # "Neighbor2Neighbor"
    arch: str  # the network family it trains
    make: Callable[..., Method]  # (run config, init network or None) -> Method
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "sidd" is its authors' recipe


_ARCHS: dict[str, Arch] = {}
_METHODS: dict[str, MethodSpec] = {}
_loaded = False


def register(item: Arch | MethodSpec) -> Arch | MethodSpec:
    """Add an architecture or a method (called by the files of this package when they are imported)."""
    table = _ARCHS if isinstance(item, Arch) else _METHODS
    if item.name in table:
        raise AtbsnError(f"{type(item).__name__} {item.name!r} is registered twice")
    if isinstance(item, MethodSpec) and "sidd" not in item.presets:
        raise AtbsnError(f"method {item.name!r} has no 'sidd' preset (its authors' recipe, the default)")
    table[item.name] = item
    return item


def _load() -> None:
    """Import every module of this package once, so that each has registered what it brings."""
    global _loaded
    if not _loaded:
        _loaded = True
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")


def archs() -> dict[str, Arch]:
    """Every registered network family, by name, in registration order."""
    _load()
    return dict(_ARCHS)


def methods() -> dict[str, MethodSpec]:
    """Every registered training method, by name."""
    _load()
    return dict(_METHODS)


def arch(name: str) -> Arch:
    """The network family ``name``; an unknown name is one line listing the known ones."""
    _load()
    if name not in _ARCHS:
        raise AtbsnError(f"unknown architecture {name!r}; expected one of {', '.join(_ARCHS)}")
    return _ARCHS[name]


def method(name: str) -> MethodSpec:
    _load()
    if name not in _METHODS:
        raise AtbsnError(f"--method: {name!r} is not one of {', '.join(_METHODS)}")
    return _METHODS[name]


def arch_names() -> tuple[str, ...]:
    return tuple(archs())


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def student_names() -> tuple[str, ...]:
    return tuple(n for n, a in archs().items() if a.student)


def knob_flags(suffix: str | None = None) -> tuple[str, ...]:
    """The flags that name each family's control besides ``--k`` (``--stride``, ``--hole``, ...; with ``suffix``,
    ``--stride-train``): the same option under the name a method's users know."""
    names = sorted({a.knob.name for a in archs().values() if a.knob is not None} - {"k"})
    return tuple(f"--{n}-{suffix}" if suffix else f"--{n}" for n in names)


def titles(where: Callable[[Arch], bool]) -> str:
    """The titles of the families that satisfy ``where``, for messages ("AT-BSN, AP-BSN")."""
    return ", ".join(a.title for a in archs().values() if where(a))


def blind_spot(config: ModelConfig, value: object = None) -> int | None:
    """The one rule for a network's blind-spot control: ``value`` validated by its family's knob, or when None the
    value recorded for inference; None for a non-blind network, which refuses a value."""
    knob = arch(config.arch).knob
    if knob is None:
        if value is not None:
            raise AtbsnError(f"k={value} applies only to a blind-spot network ({titles(lambda a: a.knob is not None)}"
                             f"); {config.arch} is non-blind and has no blind spot")
        return None
    return knob.resolve(config.k_infer, value)


# ------------------------------------------------------------------------------ helpers for method files
def conv_weight(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """A checkpoint's convolution weight, refused on one line when it is not 4-D (detection reads shapes)."""
    w = sd[key]
    if w.ndim != 4:
        raise AtbsnError(f"{key} has shape {tuple(w.shape)}, not a convolution's 4-D weight")
    return w


def parameters(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,}"


def start_from(model: nn.Module, init: nn.Module) -> nn.Module:
    """Copy the weights and input scale of ``init`` (same architecture and width) into ``model``."""
    if init.config.arch != model.config.arch or init.config.width != model.config.width:
        raise AtbsnError(f"cannot start a {model.config.arch} network of width {model.config.width} from a "
                         f"{init.config.arch} of width {init.config.width}")
    model.load_state_dict(init.state_dict())
    model.config.value_range = init.config.value_range
    return model


def start(model: nn.Module, init: nn.Module | None) -> str:
    """Start ``model`` from ``init`` when given; the words for the method's description line."""
    if init is None:
        return "fresh"
    start_from(model, init)
    return f"starting from {init.config.training.get('released', 'the given network')}"


def knob_values(config: RunConfig, spec: MethodSpec) -> tuple[int, int]:
    """(training, inference) values of the method's blind-spot control, validated (defaults from its knob)."""
    knob = arch(spec.arch).knob
    assert knob is not None
    return knob.check("--k-train", config.k_train, train=True), knob.check("--k-infer", config.k_infer)
