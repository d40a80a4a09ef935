"""Model checkpoints: the state dict plus plain JSON metadata to rebuild and use the model.

Metadata: ``config`` (the ``ModelSpec``), ``class_names``, the input ``normalization`` of training,
``provenance`` (package versions and what the caller adds), ``init`` (which parts were pretrained)
and ``extra``. Formats: ``"pt"`` (read with ``weights_only=True``, so loading never runs pickled
code) and ``"safetensors"`` (metadata as JSON in the header); both written atomically. This module
only reads and writes files; ``build.load_checkpoint`` rebuilds the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import safetensors
import safetensors.torch
import segmentation_models_pytorch as smp
import torch
from torch import nn

from ..errors import MedsegError
from ..files import atomic_write

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 1
_SAFETENSORS_KEY = "medseg_checkpoint"  # safetensors header metadata key holding our JSON


class CheckpointError(MedsegError, RuntimeError):
    """A checkpoint file is unreadable or does not match what the caller expects."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def _write_pt(f: IO[bytes], state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.save({"format": FORMAT, "meta": meta, "state_dict": state}, f)


def _write_safetensors(f: IO[bytes], state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    f.write(safetensors.torch.save(state, metadata={_SAFETENSORS_KEY: json.dumps(meta)}))


WRITERS: dict[str, Callable[[IO[bytes], dict[str, torch.Tensor], dict[str, Any]], None]] = {
    "pt": _write_pt,
    "safetensors": _write_safetensors,
}


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def _normalization(value: Mapping[str, Any] | Sequence[Sequence[float]]) -> dict[str, Any]:
    """Accept ``(mean, std)`` or a mapping with ``mean`` and ``std`` (other keys are kept)."""
    if isinstance(value, Mapping):
        out = dict(value)
    else:
        mean, std = value
        out = {"mean": mean, "std": std}
    if "mean" not in out or "std" not in out:
        raise ValueError(f"normalization needs 'mean' and 'std', got keys {sorted(out)}")
    out["mean"], out["std"] = [float(v) for v in out["mean"]], [float(v) for v in out["std"]]
    return out


def _plain_json(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip: both formats then return identical metadata (lists, not tuples)."""
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint metadata {key!r} is not JSON-serialisable: {err}") from None
    return json.loads(json.dumps(meta))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, class_names: Sequence[str],
                    normalization: Mapping[str, Any] | Sequence[Sequence[float]],
                    provenance: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                    format: str = "pt") -> Path:
    """Write ``model`` (built by ``build_model``) and its metadata to ``path`` atomically."""
    if format not in WRITERS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {sorted(WRITERS)}")
    model = _unwrap(model)
    config = getattr(model, "medseg_config", None)
    if config is None:
        raise ValueError("model has no medseg_config; build it with medseg_tutorial.models.build_model")
    class_names = list(class_names)
    # A binary model (classes=1) still names both labels, and a region model (one sigmoid per
    # foreground class) names the background too: one name more than output channels.
    if len(class_names) not in (config.classes, config.classes + 1):
        raise ValueError(f"{len(class_names)} class_names for a model with {config.classes} classes")

    from .._version import __version__

    versions = {"medseg_tutorial": __version__, "torch": torch.__version__, "smp": smp.__version__}
    meta = _plain_json({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "class_names": class_names,
        "normalization": _normalization(normalization),
        "provenance": {**versions, **provenance},
        "init": dict(getattr(model, "medseg_transfer", {})),
        "extra": dict(extra or {}),
    })
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:
        WRITERS[format](f, state, meta)
    return Path(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    return state, json.loads(header[_SAFETENSORS_KEY]) if _SAFETENSORS_KEY in header else None


def _read_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], obj["meta"]
    return obj, None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, metadata) of a checkpoint; metadata is None for a plain state-dict file. Used in chapter 7."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with an 8-byte header length, then its JSON header "{...".
    reader = _read_safetensors if head[8:9] == b"{" else _read_pt
    try:
        state, meta = reader(path)
    except Exception as err:  # torch, zipfile, pickle and safetensors all raise their own types
        # torch's message suggests weights_only=False, i.e. running the file's pickled code: never
        first = str(err).split("\n", 1)[0].split(" Re-running `torch.load` with `weights_only`")[0][:160]
        raise CheckpointError(f"{path}: cannot read checkpoint: the file is truncated or corrupt, or holds "
                              f"more than tensors and plain data ({type(err).__name__}: {first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(state)[:8] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {found}")
    return dict(state), meta


def check_expected(path: Path, meta: dict[str, Any], expect: Mapping[str, Any]) -> None:
    stored = {**meta["config"], "class_names": meta["class_names"]}
    unknown = set(expect) - set(stored)
    if unknown:
        raise KeyError(f"cannot check {sorted(unknown)}; expect= accepts {sorted(stored)}")
    wrong = [f"{k}: stored {stored[k]!r}, expected {v!r}"
             for k, v in expect.items() if _plain(v) != stored[k]]
    if wrong:
        raise CheckpointError(f"{path}: checkpoint does not match: " + "; ".join(wrong))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
