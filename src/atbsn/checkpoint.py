"""Checkpoints: our single-file safetensors format, and import of the authors' released ``.pth`` files.

Our format holds the weights plus, in the safetensors metadata, the model's :class:`ModelConfig` as JSON,
so a checkpoint alone is enough to denoise. Files are written atomically. Nothing read here runs code:
safetensors holds only tensors, and ``.pth`` files are opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from . import methods
from .config import ModelConfig
from .deploy.engines import load_onnx
from .errors import AtbsnError
from .files import atomic_write, reason
from .released import resolve, unknown

FORMAT = "atbsn"
FORMAT_VERSION = "1"


def build(config: ModelConfig) -> nn.Module:
    """An untrained network for a config (its family's ``build``, from the method registry)."""
    return config.family.build(config)


TEACHER_PREFIX = "teacher."


def _tensors(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The weights as float32 on the CPU; a tensor a network holds under two names (a module registered twice,
    as in the authors' BNN) is copied, since safetensors stores no shared memory."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu", torch.float32).contiguous()
        out[prefix + k] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return out


def save(model: nn.Module, path: str | Path, teacher: nn.Module | None = None) -> Path:
    """Write ``model`` (an ATBSN or student) and its config to one ``.safetensors`` file, atomically.

    With ``teacher``, the file is a bundle (like the authors' AT-BSN(D) release): the student loads by
    default and the teacher with ``load(path, part="teacher")``.
    """
    tensors = _tensors(model)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    if teacher is not None:
        if model.config.is_teacher or not teacher.config.is_teacher:
            raise AtbsnError("a bundle holds a student and its teacher")
        tensors.update(_tensors(teacher, TEACHER_PREFIX))
        meta["teacher_config"] = teacher.config.to_json()
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=meta))
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of one of our checkpoints (no weights are read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise AtbsnError(f"{path}: not a readable safetensors checkpoint ({reason(e)})") from None


def _load_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """Tensors and (for our format) metadata, with every failure turned into one clear line."""
    if not path.is_file():
        raise unknown(str(path))
    with open(path, "rb") as f:
        head = f.read(16)
    is_zip_or_pickle = head[:2] == b"PK" or head[:1] == b"\x80"
    if path.suffix == ".safetensors" or not is_zip_or_pickle:
        meta = read_metadata(path)
        try:
            return safetensors.torch.load_file(str(path)), meta
        except Exception as e:
            raise AtbsnError(f"{path}: truncated or corrupt safetensors checkpoint ({reason(e)})") from None
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles before failing: the error line says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AtbsnError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({reason(e)})") from None
    return obj, None


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """Strip wrappers and ``module.`` prefixes; return the state dict and the input scale it implies.

    The wrappers of the authors' trainers are declared by their families (``Arch.unwrap``); a plain
    ``{"state_dict": ...}`` is peeled too. Bare state dicts are on 0..255, as the AT-BSN authors save them.
    """
    value_range = 255.0
    if isinstance(obj, Mapping):
        for family in methods.archs().values():
            peeled = family.unwrap(obj) if family.unwrap else None
            if peeled is not None:
                obj, value_range = peeled
                break
        else:
            if isinstance(obj.get("state_dict"), Mapping):
                obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AtbsnError(f"{path}: not an AT-BSN checkpoint (no state dict of tensors inside)")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    return sd, value_range


def _detect(sd: Mapping[str, torch.Tensor], value_range: float, path: Path) -> ModelConfig:
    """Which network a bare state dict holds: the first family whose ``detect`` recognises its keys."""
    for family in methods.archs().values():
        try:
            config = family.detect(sd, value_range)
        except AtbsnError as e:
            raise AtbsnError(f"{path}: {e}") from None
        if config is not None:
            return config
    sample = ", ".join(list(sd)[:3])
    raise AtbsnError(f"{path}: unknown checkpoint layout (keys start {sample}); expected "
                     f"{methods.titles(lambda a: True)}")


def _instantiate(config: ModelConfig, sd: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    for name, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise AtbsnError(f"{path}: weight {name} holds NaN or infinite values (a diverged training run?); "
                             "refusing to use it")
    try:
        model = build(config)
    except (AtbsnError, ValueError, TypeError, RuntimeError) as e:
        raise AtbsnError(f"{path}: cannot build a {config.arch} network from its configuration ({reason(e, 100)})") \
            from None
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise AtbsnError(f"{path}: weights do not fit a {config.arch} network ({lines[-1][:200]})") from None
    return model.eval().to(memory_format=torch.channels_last)


PARTS = ("auto", "student", "teacher")
Contents = dict[str, tuple[ModelConfig, Mapping[str, torch.Tensor]]]  # "student" / "teacher" -> (config, weights)


def load(source: str | Path, part: str = "auto", map_location: str | torch.device = "cpu",
         progress: bool = True) -> nn.Module:
    """Load a ready model (eval mode, channels-last) from a file or a released model's name.

    ``source``: our ``.safetensors``, any of the authors' released ``.pth`` files, an ``.onnx`` file from
    ``atbsn export`` or ``atbsn quantize`` (:class:`atbsn.deploy.engines.OnnxNet`), or a registry name
    (``atbsn models``; downloaded and verified on first use). ``part`` picks a network from a file that
    holds two (an AT-BSN(D) release holds student and teacher): ``"auto"`` (the student), ``"student"``
    or ``"teacher"``.
    """
    if part not in PARTS:
        raise AtbsnError(f"unknown part {part!r} (choose {', '.join(PARTS)})")
    onnx_file = _onnx(source, progress)
    if onnx_file is not None:
        return onnx_file
    path, entry, contents = _read(source, progress)
    if part == "auto":
        part = "student" if "student" in contents else "teacher"
    if part not in contents:
        found = contents["student"][0].arch if "student" in contents else None
        raise AtbsnError(f"{path}: holds no teacher (found student {found})" if part == "teacher"
                         else f"{path}: holds no student (found an AT-BSN teacher)")
    return _ready(*contents[part], path, entry, map_location)


def load_parts(source: str | Path, map_location: str | torch.device = "cpu",
               progress: bool = True) -> dict[str, nn.Module]:
    """Every network a file (or released model) holds, read once: ``{"teacher": ..., "student": ...}``."""
    onnx_file = _onnx(source, progress)
    if onnx_file is not None:
        return {_part(onnx_file.config): onnx_file}
    path, entry, contents = _read(source, progress)
    return {part: _ready(config, sd, path, entry, map_location) for part, (config, sd) in contents.items()}


def _onnx(source: str | Path, progress: bool) -> nn.Module | None:
    """An ONNX file written by ``atbsn export`` or ``atbsn quantize`` (run by a CPU runtime), else None."""
    path, _ = resolve(source, progress=progress)
    return load_onnx(path) if path.suffix.lower() == ".onnx" else None


def _read(source: str | Path, progress: bool) -> tuple[Path, object, Contents]:
    path, entry = resolve(source, progress=progress)
    return path, entry, _contents(path)


def _ready(config: ModelConfig, sd: Mapping[str, torch.Tensor], path: Path, entry,
           map_location: str | torch.device) -> nn.Module:
    model = _instantiate(config, sd, path).to(map_location)
    model.source = str(path)  # the file it came from: what its outputs must not overwrite (files.check_apart)
    if entry is not None:  # the registry knows the input scale of a released file's networks and their origin
        model.config.value_range = float(entry.value_range)
        model.config.training = {**model.config.training, "released": entry.name}
    return model


def _part(config: ModelConfig) -> str:
    """Blind-spot networks are teachers; non-blind ones students."""
    return "teacher" if config.knob else "student"


def _config(meta: dict[str, str], key: str, path: Path) -> ModelConfig:
    """A model configuration from checkpoint metadata, every defect one line naming the file."""
    if key not in meta:
        raise AtbsnError(f"{path}: atbsn checkpoint without its model configuration ({key!r} missing)")
    try:
        return ModelConfig.from_json(meta[key])
    except (ValueError, TypeError) as e:  # broken JSON, wrong types, an unknown architecture
        raise AtbsnError(f"{path}: broken model configuration in the metadata ({reason(e, 100)})") from None


def _contents(path: Path) -> Contents:
    """The networks in a file, by part, as (config, weights): nothing is built yet."""
    raw, meta = _load_raw(path)
    if meta is not None and meta.get("format") == FORMAT:
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise AtbsnError(f"{path}: atbsn checkpoint format version {version!r}; this atbsn reads version "
                             f"{FORMAT_VERSION} (a newer atbsn wrote it: upgrade)")
        config = _config(meta, "config", path)
        out = {_part(config): (config, {k: v for k, v in raw.items() if not k.startswith(TEACHER_PREFIX)})}
        if "teacher_config" in meta:
            out["teacher"] = (_config(meta, "teacher_config", path),
                              {k[len(TEACHER_PREFIX):]: v for k, v in raw.items() if k.startswith(TEACHER_PREFIX)})
        return out
    sd, value_range = _unwrap(raw, path)
    pair = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")} for p in ("nbsn", "bsn")}
    if pair["nbsn"] and pair["bsn"]:  # an AT-BSN(D) release: the student under nbsn., its teacher under bsn.
        return {"student": (_detect(pair["nbsn"], value_range, path), pair["nbsn"]),
                "teacher": (_detect(pair["bsn"], value_range, path), pair["bsn"])}
    config = _detect(sd, value_range, path)
    return {_part(config): (config, sd)}
