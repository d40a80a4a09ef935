"""Typed experiment configs: a YAML file validated into dataclasses, whose type hints are the schema.

One mapping per section (``data``, ``model``, ``strategy``, ``loss``, ``optim``, ``train``,
``output``), and ``presets``: partial configs merged on top, e.g. ``quick`` (CPU) and ``full`` (GPU)::

    cfg = load_config("configs/hippocampus.yaml", ["preset=quick", "train.epochs=2"])

``null`` values are filled in from the dataset when the config is resolved; what is detected from
your own folder (``data.dataset: folder``) is written in too, so a run's ``config.yaml`` rebuilds
the same dataset in any later process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from .data.folder import FOLDER, FolderOptions, folder_dataset
from .data.preprocess import check_normalizer, default_normalizer
from .data.registry import get_dataset
from .errors import ConfigError
from .names import did_you_mean
from .paths import REPO

if TYPE_CHECKING:
    from .data.registry import Dataset
    from .data.types import DatasetInfo, SliceTable
    from .data.volumes import VolumeTable

__all__ = ["Config", "load_config"]

MONAI_UNET = "monai_unet"  # models.build.MONAI_UNET_NAME: MONAI's U-Net, the 3-D baseline from scratch


# --- sections ------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which dataset, how it is prepared and how patients are split."""

    dataset: str = "phantom"  # a registered name (``medseg data list``), or "folder" (your own, data.path)
    path: str | None = None  # the folder of the "folder" dataset (a path given as data.dataset is read as this)
    folder: FolderOptions | None = None  # how that folder is read (configs/folder.yaml); None: all detected
    root: str | None = None  # raw-data root of registered datasets; None means $MEDSEG_DATA_ROOT
    # scale_8bit, percentile_zscore, minmax, ct_window or none (data.preprocess); None: the modality's default
    normalizer: str | None = None
    normalizer_params: dict[str, Any] = field(default_factory=dict)  # its options, e.g. {low: 1, high: 99}
    rebuild: bool = False  # prepare the slices afresh even when a cached table matches
    size: tuple[int, int] = (64, 64)  # (H, W) every slice is resized to
    crop: tuple[int, int] | None = None  # centre-crop (H, W) of the native slices before resizing
    keep_empty: float = 1.0  # fraction of the TRAINING slices without foreground that are kept (val/test: all)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / val / test, by patient
    seed: int = 0  # seed of the patient split and of slice subsampling
    label_fraction: float = 1.0  # fraction of training patients whose labels are used
    split_file: str | None = None  # a saved split manifest (JSON) overrides fractions and seed
    augment: Literal["none", "light", "medium"] = "light"  # strength of data.torch_data.train_transform
    # "device": the slices are kept and augmented in batches on the training device (tools.gpu_augment)
    augment_on: Literal["cpu", "device"] = "cpu"
    # "slice": validation slices drawn at random from the pooled train + val patients, WRONG ON PURPOSE
    split_mode: Literal["patient", "slice"] = "patient"
    cache_dir: str | None = None  # prepared-slice cache; None means $MEDSEG_CACHE_DIR
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of prepare_dataset
    # 2.5-D (chapter 10): `context` neighbouring slices on either side as extra channels (edges repeated)
    context: int = 0
    # 3-D (chapter 10): (D, H, W) of the training patches and the inference window (native grid: no size/crop)
    patch: tuple[int, int, int] | None = None

    def prepare(self, progress: bool = False) -> SliceTable:
        """The prepared (cached) slices this section describes: ``prepare_dataset`` with its settings."""
        from .data.prepare import prepare_dataset

        # every slice is prepared: keep_empty thins out the training rows only (loaders.build_data),
        # so validation sees the empty slices and their false positives too
        return prepare_dataset(self.source(), size=self.size, keep_empty=1.0, cache_dir=self.cache_dir,
                               seed=self.seed, progress=progress, crop=self.crop, rebuild=self.rebuild,
                               normalizer=self.normalizer, normalizer_params=self.normalizer_params,
                               context=self.context, **self.options)

    def volumes(self, progress: bool = False) -> VolumeTable:
        """The native, normalised volumes of the dataset (3-D training, chapter 10): ``data.volumes.read_volumes``."""
        from .data.volumes import read_volumes

        dataset = self.source()
        return read_volumes(dataset, *self.normalization(dataset.info), progress=progress)

    def source(self, root: str | os.PathLike | None = None) -> Dataset:
        """The dataset this section reads: a registered one under ``root`` (default ``data.root``), or the folder."""
        if self.dataset != FOLDER:
            return get_dataset(self.dataset, root if root is not None else self.root)
        if root is not None:
            raise ConfigError(f"root {str(root)!r}: a data root applies to registered datasets; the folder dataset "
                              f"reads data.path ({self.path})")
        if self.path is None:
            raise ConfigError("data.path: the folder dataset needs the folder of your images: data.path=DIR")
        return folder_dataset(self.path, self.folder)

    def normalization(self, info: DatasetInfo | None) -> tuple[str, dict[str, Any]]:
        """(normaliser, its options) of these slices: ``data.normalizer`` or the default for ``info``'s modality."""
        method = self.normalizer or default_normalizer(info)
        params = dict(self.normalizer_params)
        if method == "ct_window" and self.options.get("window") is not None:
            params["window"] = self.options["window"]
        return method, params

    def _check(self) -> None:
        if os.sep in self.dataset or "/" in self.dataset or self.dataset.startswith((".", "~")):
            # a path where a dataset name belongs: the user's own folder
            _require(self.path in (None, self.dataset), "data.path", self.path,
                     f"data.dataset {self.dataset!r} is a path already; give one of the two")
            self.dataset, self.path = FOLDER, self.dataset
        if self.dataset == FOLDER:
            _require(self.root is None, "data.root", self.root,
                     "the folder dataset reads data.path, not a data root; drop data.root")
        elif self.folder is not None:
            raise ConfigError(f"data.folder: only for data.dataset: folder (this config reads the registered "
                              f"dataset {self.dataset!r})")
        elif self.path is not None:
            raise ConfigError(f"data.path: only for data.dataset: folder; registered datasets such as "
                              f"{self.dataset!r} are found under data.root (got {self.path!r})")
        try:  # option names need no data either
            _check_options(self.options)
        except KeyError as err:
            raise ConfigError(f"data.options: {err.args[0]}") from None
        if self.normalizer is not None:
            try:  # a misspelt normaliser or option fails here, before any data are read
                check_normalizer(self.normalizer, self.normalization(None)[1])
            except ValueError as err:
                raise ConfigError(f"data.normalizer: {err}") from None
        _require(all(s >= 16 for s in self.size), "data.size", self.size, "both sides must be >= 16 pixels")
        _require(self.crop is None or all(s >= 16 for s in self.crop), "data.crop", self.crop,
                 "both sides must be >= 16 pixels")
        _require(0.0 <= self.keep_empty <= 1.0, "data.keep_empty", self.keep_empty, "must be in [0, 1]")
        _require(all(f >= 0 for f in self.fractions) and abs(sum(self.fractions) - 1.0) < 1e-6,
                 "data.fractions", self.fractions, "must be three non-negative numbers summing to 1")
        _require(self.fractions[0] > 0 and self.fractions[1] > 0, "data.fractions", self.fractions,
                 "train and val fractions must be > 0")
        _require(0.0 < self.label_fraction <= 1.0, "data.label_fraction", self.label_fraction,
                 "must be in (0, 1]")
        _require(0 <= self.context <= 8, "data.context", self.context, "neighbouring slices on each side: 0 to 8")
        _require(self.patch is None or all(s >= 8 for s in self.patch), "data.patch", self.patch,
                 "all three sides (D, H, W) must be >= 8 voxels")


@dataclass
class ModelConfig:
    """The network: an smp architecture with a (pretrained) encoder, in 2-D or inflated to 3-D, or MONAI's U-Net."""

    arch: str = "unet"  # an smp architecture (models.build.ARCHS), or "monai_unet" (MONAI's, from scratch)
    encoder: str = "efficientnet-lite0"
    weights: str | None = "imagenet"  # "imagenet", None (random init) or a path to a checkpoint
    # experiments only: the best checkpoint of run ``sources.NAME`` (``medseg experiment`` sets weights)
    source: str | None = None
    # from a checkpoint: "encoder" loads the encoder only; "auto" also the decoder and head where they fit
    transfer: Literal["auto", "encoder"] = "auto"
    in_channels: int | None = None  # None: the dataset's channel count
    classes: int | None = None  # output channels; None: 1 for a binary task, else the class count
    # "encoder": the pretrained encoder's mean/std (for 0-1 intensities); "none": the slices as prepared
    input_norm: Literal["none", "encoder"] = "none"
    smp_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {decoder_use_norm: identity}
    # 3: volumes, chapter 10; an smp Unet is inflated (models.inflate: "i3d" over depth, "acs" in 3 planes)
    dims: Literal[2, 3] = 2
    inflate: Literal["i3d", "acs"] = "i3d"
    params: dict[str, Any] = field(default_factory=dict)  # monai_unet's (channels, strides, num_res_units)

    def _check(self) -> None:
        _require(self.in_channels is None or self.in_channels >= 1, "model.in_channels", self.in_channels, "must be >= 1")
        _require(self.classes is None or self.classes >= 1, "model.classes", self.classes, "must be >= 1")
        if self.arch == MONAI_UNET:
            _require(self.weights is None, "model.weights", self.weights,
                     "monai_unet is MONAI's U-Net trained from scratch; set model.weights: null")
            _require(not self.smp_kwargs, "model.smp_kwargs", self.smp_kwargs,
                     "monai_unet is not an smp model; its keyword arguments go in model.params")
        else:
            _require(not self.params, "model.params", self.params,
                     f"keyword arguments of monai_unet; the smp architecture {self.arch!r} takes model.smp_kwargs")
        _require(self.dims == 2 or self.arch in ("unet", MONAI_UNET), "model.arch", self.arch,
                 "in 3-D (model.dims: 3) the smp Unet is inflated (models.inflate), or use monai_unet")


@dataclass
class StrategyConfig:
    """The transfer-learning strategy (``medseg_tutorial.strategies``) and its parameters."""

    name: str = "full_finetune"  # see medseg_tutorial.strategies.list_strategies()
    params: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        _require(bool(self.name), "strategy.name", self.name, "must not be empty")


@dataclass
class LossConfig:
    """The loss (``medseg_tutorial.losses.build_loss``)."""

    name: str | None = None  # None: "dice_bce" for a binary task, "dice_ce" otherwise
    # None: binary for 2 classes, multiclass otherwise
    mode: Literal["binary", "multiclass", "multilabel", "region"] | None = None
    weights: list[float] | None = None  # per-class weights, passed as ``class_weights`` (CE-type losses)
    params: dict[str, Any] = field(default_factory=dict)  # other keyword arguments of build_loss

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``losses.build_loss``: ``params`` plus the class weights."""
        return {**self.params, **({"class_weights": list(self.weights)} if self.weights is not None else {})}

    def _check(self) -> None:
        _require(self.weights is None or all(w >= 0 for w in self.weights), "loss.weights", self.weights,
                 "class weights must be >= 0")


@dataclass
class LRFindConfig:
    """The LR range test that picks ``optim.lr`` before training (``optim.lr_range_test``, chapter 6)."""

    start_lr: float = 1e-6
    end_lr: float = 1.0
    num_iter: int = 50
    suggest: Literal["steepest", "min/10"] = "steepest"

    def _check(self) -> None:
        _require(0 < self.start_lr < self.end_lr, "optim.lr_find", (self.start_lr, self.end_lr),
                 "needs 0 < start_lr < end_lr")
        _require(self.num_iter >= 2, "optim.lr_find.num_iter", self.num_iter, "must be >= 2")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (``medseg_tutorial.optim``)."""

    name: str = "adamw"
    lr: float = 1e-3  # with lr_find: replaced by the range test's suggestion (recorded in lr_find.json)
    lr_find: LRFindConfig | None = None  # run the LR range test first and train at its suggestion
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD momentum (ignored by Adam-type optimizers)
    scheduler: str = "cosine"  # "constant", "cosine", "onecycle", "poly", "plateau" (optim.SCHEDULERS)
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    min_lr_ratio: float = 0.01  # the schedule's lowest LR, as a fraction of each group's LR
    params: dict[str, Any] = field(default_factory=dict)  # more build_optimizer arguments (nesterov, betas)
    scheduler_params: dict[str, Any] = field(default_factory=dict)  # more build_scheduler arguments

    def _check(self) -> None:
        _require(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "must be in [0, 1)")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(0 < self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "must be in (0, 1]")


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, device, reproducibility and stopping."""

    epochs: int = 20
    batch_size: int = 8  # per process; the global batch is batch_size * world_size * accumulate
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    clip_grad: float | None = 1.0  # max global gradient norm; None disables clipping
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 or fp16 on CUDA, off on CPU/MPS
    channels_last: bool = False  # NHWC memory layout (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seed of weights init, shuffling and augmentation
    deterministic: bool = False  # bitwise-reproducible kernels (slower)
    patience: int | None = None  # early stopping: epochs without improvement; None disables
    val_every: int = 1  # validate every N epochs (and always after the last)
    max_steps_per_epoch: int | None = None  # cap on batches per epoch, for smoke runs
    checkpoint_every: int | None = None  # also write last.pt every N optimizer steps

    def _check(self) -> None:
        for key in ("epochs", "batch_size", "accumulate", "val_every"):
            _require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "must be >= 1")
        for key in ("patience", "max_steps_per_epoch", "checkpoint_every"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"train.{key}", value, "must be >= 1 (or null)")
        _require(self.clip_grad is None or self.clip_grad > 0, "train.clip_grad", self.clip_grad, "must be > 0 (or null)")
        _require(self.num_workers >= 0, "train.num_workers", self.num_workers, "must be >= 0")
        kind = self.device.split(":")[0]
        _require(kind in ("auto", "cpu", "cuda", "mps"), "train.device", self.device,
                 "must be auto, cpu, cuda, cuda:N or mps")


@dataclass
class OutputConfig:
    """Where a run writes its files."""

    # {dataset}, {arch}, {encoder}, {strategy}, {preset} are filled in from the config
    run_dir: str = "runs/{dataset}-{encoder}-{strategy}"
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed


@dataclass
class Config:
    """One experiment: every section, plus the preset it was built with."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    preset: str | None = None  # informational: the preset that was applied

    def _check(self) -> None:
        """What ties sections together: 3-D (model.dims 3) reads patches of volumes, 2.5-D stacks slices."""
        dc, mc = self.data, self.model
        if mc.dims == 3:
            _require(dc.patch is not None, "data.patch", dc.patch,
                     "model.dims 3 trains on patches of volumes: set data.patch: [D, H, W], e.g. [32, 48, 32]")
            for key, value, ok, why in (
                ("data.context", dc.context, dc.context == 0, "2.5-D stacks slices for a 2-D model; a 3-D one sees them all"),
                ("data.crop", dc.crop, dc.crop is None, "3-D volumes stay at their native grid; no crop"),
                ("data.augment_on", dc.augment_on, dc.augment_on == "cpu", "device augmentation is 2-D only"),
                ("data.split_mode", dc.split_mode, dc.split_mode == "patient", "the leaky slice split is for 2-D slices"),
            ):
                _require(ok, key, value, f"{why} (model.dims: 3)")
        else:
            _require(dc.patch is None, "data.patch", dc.patch,
                     "a 3-D patch, for model.dims: 3; this config trains a 2-D model on slices")
        if mc.arch == MONAI_UNET:
            from .models.build import monai_unet_settings

            try:
                strides = monai_unet_settings(mc.params)["strides"]
            except ValueError as err:
                raise ConfigError(f"model.params: {err}") from None
            shape = dc.patch if mc.dims == 3 else dc.size
            _require(all(s % math.prod(strides) == 0 for s in shape), "data.patch" if mc.dims == 3 else "data.size",
                     shape, f"monai_unet downsamples by strides {list(strides)}: every side must be a multiple "
                     f"of {math.prod(strides)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], resolve: bool = True) -> Config:
        """Validate a plain mapping (as read from YAML) into a Config."""
        cfg = _build(cls, raw, "")
        return cfg.resolved() if resolve else cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-friendly mapping (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML; ``load_config`` reads it back unchanged."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def resolved(self) -> Config:
        """A copy with the ``null`` values filled in from the dataset, and every name checked by its builder
        (so a typo fails here, not an hour into a run)."""
        cfg = copy.deepcopy(self)
        info = _resolve_dataset(cfg.data)
        if cfg.loss.mode is None:
            cfg.loss.mode = "binary" if info.num_classes == 2 else "multiclass"
        if cfg.loss.name is None:
            cfg.loss.name = "dice_bce" if cfg.loss.mode in ("binary", "multilabel", "region") else "dice_ce"
        if cfg.model.in_channels is None:  # 2.5-D: each of the 2 k + 1 slices brings the dataset's channels
            cfg.model.in_channels = info.in_channels * (2 * cfg.data.context + 1)
        # binary: one logit (what binary losses and decode("binary") expect); region: one sigmoid per
        # foreground class, no background channel; otherwise one channel per label
        needed = {"binary": 1, "region": info.num_classes - 1}.get(cfg.loss.mode, info.num_classes)
        if cfg.model.classes is None:
            cfg.model.classes = needed
        elif cfg.model.classes != needed:
            raise ConfigError(f"model.classes: {cfg.model.classes} output channels, but loss.mode {cfg.loss.mode!r} on "
                              f"dataset {cfg.data.dataset!r} ({info.num_classes} labels {list(info.class_names)}) "
                              f"needs {needed}; leave it null to have it filled in")
        if cfg.loss.weights is not None and len(cfg.loss.weights) != info.num_classes:
            raise ConfigError(f"loss.weights: {len(cfg.loss.weights)} weights given but dataset "
                              f"{cfg.data.dataset!r} has {info.num_classes} classes {info.class_names}")
        _check_names(cfg)
        return cfg

    def format_run_dir(self) -> Path:
        """``output.run_dir`` with its ``{placeholders}`` filled in (``{dataset}``: the folder's name for the folder)."""
        named = self.data.folder.name if self.data.dataset == FOLDER and self.data.folder else None
        fields = dict(dataset=named or self.data.dataset, arch=self.model.arch, encoder=self.model.encoder,
                      strategy=self.strategy.name, preset=self.preset or "default")
        try:
            return Path(self.output.run_dir.format(**fields))
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"output.run_dir: unknown placeholder {exc} in {self.output.run_dir!r}; "
                              f"known: {', '.join('{' + k + '}' for k in fields)}") from None


# --- loading -------------------------------------------------------------------------------------


def config_folders(kind: str = "") -> list[Path]:
    """Where shipped files are looked for: ``configs/KIND`` under the working directory, then in this checkout."""
    return [Path.cwd() / "configs" / kind, REPO / "configs" / kind]


def find_config(name: str | os.PathLike, kind: str = "") -> Path:
    """Resolve a config path, or a bare name such as ``"hippocampus"`` to a shipped ``configs/KIND/*.yaml``."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in config_folders(kind):
        if (folder / stem).is_file():
            return folder / stem
    raise FileNotFoundError(f"config {str(name)!r} not found (looked for the file and for "
                            f"{Path('configs', kind, stem).as_posix()})")


def load_config(path: str | os.PathLike | dict[str, Any], overrides: list[str] | None = None,
                preset: str | None = None, resolve: bool = True) -> Config:
    """Read a YAML config (a file, a shipped name such as ``"phantom"``, or a mapping), apply a preset and
    ``key=value`` overrides, validate it.

    Override values are YAML (``null``, ``[128, 128]``, ``true``); ``preset=NAME`` among them wins over
    ``preset``. ``resolve`` fills in the automatic values (the dataset must be registered).
    Used in chapters 7, 8 and 10.
    """
    raw = copy.deepcopy(path) if isinstance(path, dict) else read_yaml(find_config(path))
    presets = raw.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise ConfigError("presets: must map preset names to partial configs")

    parsed = [_parse_override(o) for o in overrides or []]
    preset = next((value for key, value in parsed if key == ["preset"]), preset)
    if preset is not None:
        if preset not in presets:
            hint = did_you_mean(preset, presets)
            raise ConfigError(f"preset: unknown preset {preset!r}{hint}; this config has: {', '.join(presets) or 'none'}")
        raw = deep_merge(raw, presets[preset])
        raw["preset"] = preset
    for key, value in parsed:
        if key != ["preset"]:
            set_dotted(raw, key, value)
    return Config.from_dict(raw, resolve=resolve)


def read_yaml(file: str | os.PathLike) -> dict[str, Any]:
    """The mapping in YAML ``file``; anything else, a binary file or a syntax error is a ConfigError naming
    the file (and line)."""
    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a text file (a YAML config is UTF-8 text)") from None
    if "\x00" in text:
        raise ConfigError(f"{file}: not a text file (a YAML config is UTF-8 text)")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=2")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None
    return key.strip().split("."), parsed


def set_dotted(raw: dict[str, Any], key: str | list[str], value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``key == "a.b"``, creating sections on the way."""
    key = key.split(".") if isinstance(key, str) else key
    node = raw
    for i, part in enumerate(key[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(key[: i + 1])}: is a value, not a section; cannot set {'.'.join(key)}")
        node = child
    node[key[-1]] = copy.deepcopy(value)


def get_dotted(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    """``raw["a"]["b"]`` for ``key == "a.b"``, or ``default`` when a part is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def deep_merge(base: dict[str, Any], update: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``update`` merged in, section by section; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (e.g. two ``Config.to_dict()``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


# --- validation: dataclass type hints are the schema ----------------------------------------------


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why} (got {value!r})")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``, checking keys and value types."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = did_you_mean(f"{prefix}{key}", [prefix + n for n in names])
            raise ConfigError(f"{prefix}{key}: unknown key{hint} "
                              f"(known in {where}: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    obj = cls(**kwargs)
    if hasattr(obj, "_check"):
        obj._check()
    return obj


_EXPECTED = {bool: "true or false", int: "an integer", str: "a string"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and convert where it is lossless (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and ("off" in args or "on" in args):
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted off/on as false/true
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))} (got {value!r})"
                              f"{did_you_mean(value, args)}")
        return value
    if tp in _EXPECTED:  # bool, int, str: exactly that type (a bool is no integer)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {_EXPECTED[tp]}, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads "1e-3" as a string (YAML 1.1 wants "1.0e-3"); accept it, it is what people write
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        if origin is list:
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if len(value) != len(args):  # the schema's tuples have a fixed length
            raise ConfigError(f"{key}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"config schema: unsupported type {tp!r} for {key}")  # a bug in this module


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --- registry and dataset lookups -------------------------------------------------------------


def _check_names(cfg: Config) -> None:
    """Every name and parameter mapping is checked once, here, by the builder that will use it; its
    ``KeyError``/``ValueError``/``TypeError`` becomes a :class:`ConfigError` naming the config key."""
    from . import losses, optim, strategies
    from .models import build

    checks = (
        ("model.encoder", lambda: build.encoder_spec(cfg.model.encoder)),
        ("model.arch", lambda: build.arch_class(cfg.model.arch)),
        # monai_unet's keyword arguments, by building it (MONAI is imported only for such a config)
        ("model.params", lambda: cfg.model.arch == MONAI_UNET and build.monai_unet(1, 1, cfg.model.dims,
                                                                                      **cfg.model.params)),
        ("strategy.name", lambda: strategies.strategy_factory(cfg.strategy.name)),
        ("strategy.params", lambda: strategies.get_strategy(cfg.strategy.name, **cfg.strategy.params)),
        ("strategy.name", lambda: _check_strategy_fits(cfg, strategies)),
        ("loss.name", lambda: losses.loss_class(cfg.loss.name, cfg.loss.mode, class_weights=cfg.loss.weights)),
        ("optim.name", lambda: optim.optimizer_class(cfg.optim.name)),
        ("optim.scheduler", lambda: optim.scheduler_factory(cfg.optim.scheduler)),
        # the parameter mappings too, by building the object on nothing: an unknown key fails now,
        # not after the data were prepared
        ("loss.params", lambda: losses.build_loss(cfg.loss.name, cfg.loss.mode, classes=cfg.model.classes,
                                                  **cfg.loss.kwargs())),
        ("optim.params", lambda: _dummy_optimizer(cfg, optim)),
        ("optim.scheduler_params", lambda: optim.build_scheduler(
            cfg.optim.scheduler, _dummy_optimizer(cfg, optim), epochs=1, steps_per_epoch=1,
            warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio, **cfg.optim.scheduler_params)),
        ("data.normalizer", lambda: _check_normalizer(cfg.data)),
    )
    for key, check in checks:
        try:
            check()
        except (KeyError, ValueError, TypeError) as err:
            message = err.args[0] if err.args else str(err)
            raise ConfigError(f"{key}: {message}") from None


def _check_strategy_fits(cfg: Config, strategies: Any) -> None:
    """A strategy that freezes or slows encoder stages needs a model with an encoder (monai_unet has none)."""
    if cfg.model.arch == MONAI_UNET and strategies.get_strategy(cfg.strategy.name, **cfg.strategy.params).needs_encoder:
        raise ValueError(f"{cfg.strategy.name!r} acts on the stages of a pretrained encoder, and monai_unet has no "
                         "encoder; use full_finetune or scratch (both train every layer)")


def _dummy_optimizer(cfg: Config, optim: Any) -> Any:
    import torch

    oc = cfg.optim
    return optim.build_optimizer(oc.name, [torch.nn.Parameter(torch.zeros(1))], lr=oc.lr, weight_decay=oc.weight_decay,
                                 momentum=oc.momentum, **oc.params)


# prepare_dataset arguments that have a key of their own in the data section
_OWN_KEYS = {"root", "size", "keep_empty", "cache_dir", "seed", "crop", "rebuild", "normalizer",
             "normalizer_params", "context"}


def _check_options(options: dict[str, Any]) -> None:
    import inspect

    from .data.prepare import prepare_dataset

    own = sorted(set(options) & _OWN_KEYS)
    if own:
        raise KeyError(f"{own[0]!r} has a key of its own: set data.{own[0]} instead")
    # the rest of prepare_dataset's arguments may go here
    allowed = set(inspect.signature(prepare_dataset).parameters) - _OWN_KEYS - {"name", "progress"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise KeyError(f"unknown option {unknown[0]!r}{did_you_mean(unknown[0], allowed)} (known: {', '.join(sorted(allowed))})")


def _check_normalizer(dc: DataConfig) -> None:
    """The normaliser filled in from the modality, with the options given (a named one was checked already)."""
    method, params = dc.normalization(None)  # resolved: dc.normalizer is set
    if dc.options.get("window") is not None and method != "ct_window":
        raise ValueError(f"data.options.window is a CT window, but the normaliser is {method!r}")
    check_normalizer(method, params)


def _resolve_dataset(dc: DataConfig) -> DatasetInfo:
    """The description of the dataset ``dc`` reads; for the folder dataset, ``dc.folder`` and ``dc.path``
    are completed with what was detected, and ``dc.normalizer`` with the default, so the saved config is explicit."""
    from .data import registry

    try:
        dataset = dc.source()
    except KeyError:
        known = registry.list_datasets()
        raise ConfigError(f"data.dataset: unknown dataset {dc.dataset!r}{did_you_mean(dc.dataset, known)} "
                          f"(registered: {', '.join(known)}, and 'folder' for your own images with data.path; a "
                          f"dataset registered by your own code exists only in that Python process: declare it "
                          f"in the entry-point group {registry.PLUGIN_GROUP!r})") from None
    if dc.dataset == FOLDER:
        if dataset.settings:  # an nnU-Net v2 raw dataset has none: its dataset.json describes it
            dc.folder = FolderOptions(**copy.deepcopy(dict(dataset.settings)))
        dc.path = str(dataset.path)
    if dc.normalizer is None:
        dc.normalizer = dc.normalization(dataset.info)[0]
    return dataset.info
