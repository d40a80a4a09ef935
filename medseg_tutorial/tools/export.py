"""Export a trained model as segmentation-models-pytorch loads it, with a model card.

``export_pretrained("runs/RUN/best.pt", "export/RUN")`` writes what smp's hub mixin writes
(``model.safetensors``, ``config.json`` with the architecture's init arguments) so that anyone can
run, without this package::

    import segmentation_models_pytorch as smp
    model = smp.from_pretrained("export/RUN")    # a local folder, or the Hub repo it is pushed to

plus ``README.md``, a model card (data and its licence and citation, preprocessing, training,
metrics), and ``medseg.json``, the same preprocessing as data. The exported network is the plain
smp model: the input normalisation (``(x - mean) / std``) and the slice preparation are *not* inside
it, exactly as in training, so the card spells them out and ``medseg.json`` gives them to code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .._version import __version__
from ..data.errors import DataError
from ..data.types import DatasetInfo
from ..models import load_checkpoint
from ..models.checkpoint import CheckpointError

CARD = "README.md"
PREPROCESSING = "medseg.json"
SCORES = "eval_test.csv"  # what ``medseg evaluate RUN/best.pt --split test`` writes beside the checkpoint


def _json(path: Path) -> dict[str, Any]:
    """A JSON object beside the checkpoint, or {} when absent; a broken one is a one-line error."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(path, f"not valid JSON ({err})", "unreadable") from None
    return value if isinstance(value, dict) else {}


def _dataset_info(meta: dict[str, Any]) -> DatasetInfo | None:
    """The training data's description stored in the checkpoint (else the registry's, else None)."""
    stored = meta.get("extra", {}).get("dataset_info")
    if stored:
        return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
    name = meta.get("provenance", {}).get("dataset")
    if name:
        from ..data import dataset_info

        try:
            return dataset_info(name)
        except KeyError:
            return None
    return None


def _test_scores(run_dir: Path) -> dict[str, Any]:
    """Per-class test Dice (mean, std over patients) from ``eval_test.csv``, if the run was evaluated."""
    path = run_dir / SCORES
    if not path.is_file():
        return {}
    import pandas as pd

    from ..metrics import summarize_scores

    try:
        scores = pd.read_csv(path)
        summary = summarize_scores(scores)
    except Exception as err:  # pandas' parser errors rarely name the file
        raise DataError(path, f"cannot read the test scores: {type(err).__name__}: {err}", "unreadable") from None
    classes = {str(row.get("class_name", row["class"])): {"dice_mean": _num(row["dice_mean"]),
                                                          "dice_std": _num(row["dice_std"]), "n": int(row["n"])}
               for _, row in summary.iloc[:-1].iterrows()}
    return {"file": SCORES, "patients": int(scores["patient_id"].nunique()),
            "mean_dice": _num(summary.attrs["mean_dice"]), "per_class": classes}


def _num(value: Any) -> float | None:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def _preprocessing(meta: dict[str, Any], info: DatasetInfo | None) -> dict[str, Any]:
    """What the slices went through before the network, as data (``medseg.json``)."""
    config = meta.get("extra", {}).get("config", {})
    data, model = config.get("data", {}), config.get("model", {})
    norm = meta["normalization"]
    return {
        "format": "medseg-pretrained",
        "format_version": 1,
        "class_names": list(meta["class_names"]),
        "in_channels": meta["config"]["in_channels"],
        "channel_names": list(info.channel_names) if info else None,
        "size": meta.get("extra", {}).get("size") or data.get("size"),
        "crop": data.get("crop"),
        "resize_mode": data.get("options", {}).get("resize_mode", "letterbox"),
        "normalizer": data.get("normalizer"),
        "normalizer_params": data.get("normalizer_params", {}),
        "input_norm": norm.get("input_norm", model.get("input_norm")),
        "mean": norm["mean"],
        "std": norm["std"],
        "decode": meta.get("extra", {}).get("loss_mode") or ("binary" if meta["config"]["classes"] == 1 else "multiclass"),
        "dataset": info.name if info else meta.get("provenance", {}).get("dataset"),
        "medseg_tutorial": meta.get("provenance", {}).get("medseg_tutorial", __version__),
    }


def _weights(weights: str | None) -> str:
    """How training started, in words."""
    if weights is None:
        return "none (trained from scratch)"
    return "ImageNet encoder" if weights == "imagenet" else f"from `{weights}`"


def _front_matter(info: DatasetInfo | None) -> str:
    """Hub metadata. The weights' licence is the user's question (the data's terms may bind them): "other"."""
    data = {
        "library_name": "segmentation-models-pytorch",
        "pipeline_tag": "image-segmentation",
        "tags": ["segmentation-models-pytorch", "semantic-segmentation", "pytorch", "medical-imaging", "medseg-tutorial"],
        "license": "other",
        "license_name": f"trained on {info.name} ({info.licence})" if info else "unknown training data",
    }
    return "---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n"


def _card(meta: dict[str, Any], info: DatasetInfo | None, prep: dict[str, Any], run: dict[str, Any],
          test: dict[str, Any], checkpoint: Path) -> str:
    """The model card (Markdown): model, use, data, preprocessing, training, metrics."""
    spec, prov = meta["config"], meta.get("provenance", {})
    config = meta.get("extra", {}).get("config", {})
    strategy, loss, optim, train = (config.get(k, {}) for k in ("strategy", "loss", "optim", "train"))
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(meta["class_names"]))
    title = f"{spec['arch']} / {spec['encoder']}" + (f" on {info.name}" if info else "")
    lines = [_front_matter(info), f"# {title}", "",
             f"A `{spec['arch']}` with a `{spec['encoder']}` encoder ({spec['in_channels']} input channel(s), "
             f"{spec['classes']} output channel(s); classes {classes}), trained with "
             f"[medseg_tutorial](https://github.com/medseg-tutorial/medseg-tutorial) {prep['medseg_tutorial']} "
             f"and exported from `{checkpoint.name}`.", "",
             "## How to use", "", "```python", "import segmentation_models_pytorch as smp", "import torch", "",
             'model = smp.from_pretrained("<this folder or Hub repo>").eval()',
             f"mean = torch.tensor({prep['mean']}).view(1, -1, 1, 1)",
             f"std = torch.tensor({prep['std']}).view(1, -1, 1, 1)",
             "# x: (N, C, H, W) slices prepared as below",
             "logits = model((x - mean) / std)",
             "labels = logits.argmax(1)" if prep["decode"] == "multiclass" else "labels = logits.sigmoid() > 0.5",
             "```", "",
             "The network alone is exported: prepare its input as in training (next sections), or load "
             "`best.pt` with `medseg_tutorial.evaluate.Predictor`, which does it for you. `medseg.json` "
             "holds the same preprocessing as data.", ""]
    lines += ["## Training data", ""]
    if info:
        lines += [f"- dataset: **{info.name}** ({info.modality}): {info.description}",
                  f"- licence: **{info.licence}**; the weights are derived from these images: check the "
                  "licence's terms (e.g. NonCommercial, ShareAlike) before you use or share them",
                  f"- citation: {info.citation}"] + ([f"- source: {info.url}"] if info.url else []) + [""]
    else:
        lines += ["- not recorded in the checkpoint", ""]
    input_norm = prep["input_norm"] or "none"
    lines += ["## Preprocessing", "",
              f"- channels: {', '.join(prep['channel_names'] or ['?'])}",
              f"- intensity normaliser per volume: `{prep['normalizer']}` {prep['normalizer_params'] or ''}".rstrip(),
              f"- slices resized to {prep['size']} ({prep['resize_mode']})"
              + (f" after a centre crop to {prep['crop']}" if prep["crop"] else ""),
              f"- input normalisation `{input_norm}`: (x - mean) / std with mean {prep['mean']}, std {prep['std']}"
              + (" (the identity)" if input_norm == "none" else ""),
              f"- output: {prep['decode']} logits", ""]
    epochs = run.get("epochs_run", train.get("epochs"))
    lines += ["## Training", "",
              f"- strategy: `{strategy.get('name', prov.get('strategy'))}` {strategy.get('params') or ''}".rstrip(),
              f"- initial weights: {_weights(spec.get('weights'))}",
              f"- loss: `{loss.get('name')}` ({loss.get('mode')})",
              f"- optimizer: `{optim.get('name')}`, lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
              f"schedule `{optim.get('scheduler')}`",
              f"- epochs: {epochs} (batch size {train.get('batch_size')}, seed {train.get('seed')}); best epoch "
              f"{prov.get('epoch')}",
              f"- code: medseg_tutorial {prep['medseg_tutorial']}, commit "
              f"`{run.get('git_commit') or prov.get('git_commit', 'unknown')}`; torch {prov.get('torch')}, "
              f"smp {prov.get('smp')}", ""]
    lines += ["## Metrics", ""]
    if prov.get("val_dice") is not None:
        lines.append(f"- validation Dice (mean foreground Dice per patient on the prepared slices, best epoch "
                     f"{prov.get('epoch')}): "
                     f"{float(prov['val_dice']):.4f}")
    if test:
        lines.append(f"- test Dice over {test['patients']} patients (`{test['file']}`): {test['mean_dice']}")
        lines += [f"  - {name}: {v['dice_mean']} +- {v['dice_std']}" for name, v in test["per_class"].items()]
    else:
        lines.append("- test: not evaluated yet (`medseg evaluate best.pt --split test` writes eval_test.csv)")
    return "\n".join(lines) + "\n"


def export_pretrained(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the model of ``checkpoint`` to ``out_dir`` for ``smp.from_pretrained``, with a model card.

    ``run.json`` and ``eval_test.csv`` beside the checkpoint (a run folder) add the commit, the
    epochs and the test scores to the card. A non-empty ``out_dir`` is refused unless ``overwrite``.
    Returns ``out_dir``.
    """
    checkpoint, out = Path(checkpoint), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise DataError(out, "exists and is not empty; choose another folder or overwrite it (overwrite=True, "
                            "--overwrite)", "invalid")
        if not (out / PREPROCESSING).is_file():  # overwrite replaces an earlier export, never anything else
            raise DataError(out, f"is not an earlier export (no {PREPROCESSING}); refusing to replace it even with "
                            "overwrite", "invalid")
    model, meta = load_checkpoint(checkpoint)
    if not hasattr(model, "save_pretrained"):
        raise CheckpointError(f"{checkpoint}: {type(model).__name__} has no save_pretrained (smp < 0.4?)")
    info = _dataset_info(meta)
    prep = _preprocessing(meta, info)
    run, test = _json(checkpoint.parent / "run.json"), _test_scores(checkpoint.parent)
    metrics = {"val_dice": meta.get("provenance", {}).get("val_dice")}
    if test:
        metrics["test_mean_dice"] = test["mean_dice"]
    # build everything beside the target, then rename: a failed export never leaves half a folder
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        # our card first: smp's save_pretrained writes its generic card only where none exists
        (tmp / CARD).write_text(_card(meta, info, prep, run, test, checkpoint), encoding="utf-8")
        (tmp / PREPROCESSING).write_text(json.dumps(prep, indent=2) + "\n", encoding="utf-8")
        model.save_pretrained(tmp, dataset=prep["dataset"], metrics=metrics)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
