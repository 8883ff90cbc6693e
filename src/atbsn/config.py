"""Typed model configuration, stored inside every checkpoint so that a checkpoint alone can denoise."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ARCHS = ("atbsn", "A", "B", "C")


@dataclass
class ModelConfig:
    """What it takes to rebuild a network and use it correctly.

    ``value_range`` is the input scale the weights expect (255 for the AT-BSN authors' files, 1 for
    APR-RD's); every model in this package takes and returns 0..255 and converts internally.
    ``train_crop`` is the patch size the network was trained on: short CPU runs generalise badly to much
    larger inputs, so inference tiles at (a multiple of) this size when it is set.
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
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHS)}")

    @property
    def is_teacher(self) -> bool:
        return self.arch == "atbsn"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
