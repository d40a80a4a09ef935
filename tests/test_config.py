"""Typed YAML configs: shipped files, presets, overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from medseg_tutorial.config import Config, ConfigError, find_config, load_config
from medseg_tutorial.data import dataset_info

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_every_dataset_has_a_config() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"phantom", "hippocampus", "acdc", "lgg", "covid_ct"} <= names


def _tiny_folder(folder: Path) -> Path:
    """Three grey images with binary masks beside them: what configs/folder.yaml needs a data.path for."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        mask = np.zeros((20, 20), np.uint8)
        mask[5:9 + k, 5:9] = 255
        Image.fromarray((mask // 2 + 40).astype(np.uint8)).save(folder / f"scan{k}.png")
        Image.fromarray(mask).save(folder / f"scan{k}_mask.png")
    return folder


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_and_presets_validate(path: Path, tmp_path: Path) -> None:
    presets = (yaml.safe_load(path.read_text()) or {}).get("presets", {})
    assert {"quick", "full"} <= set(presets), f"{path.name} needs a quick and a full preset"
    # the folder config reads the user's own folder: a tiny one stands in for it
    base = [f"data.path={_tiny_folder(tmp_path / 'own')}"] if path.stem == "folder" else []
    for preset in [None, *presets]:
        cfg = load_config(path, base, preset=preset)
        assert cfg.preset == preset
        assert cfg.model.in_channels >= 1 and cfg.model.classes >= 1 and cfg.loss.mode in ("binary", "multiclass")
    quick, full = load_config(path, [*base, "preset=quick"]), load_config(path, [*base, "preset=full"])
    assert quick.train.device == "cpu" and quick.train.amp == "off"
    assert max(full.data.size) >= 128 and full.train.channels_last and full.train.amp in ("auto", "bf16")


def test_automatic_values_come_from_the_dataset() -> None:
    phantom = load_config({"data": {"dataset": "phantom"}})
    assert (phantom.model.in_channels, phantom.model.classes, phantom.loss.mode, phantom.loss.name) == \
        (1, 3, "multiclass", "dice_ce")
    lgg = load_config({"data": {"dataset": "lgg"}})  # 3 MRI channels, binary task: one logit channel
    assert (lgg.model.in_channels, lgg.model.classes, lgg.loss.mode, lgg.loss.name) == (3, 1, "binary", "dice_bce")
    assert dataset_info("lgg").num_classes == 2
    explicit = load_config({"data": {"dataset": "lgg"}, "model": {"classes": 2}, "loss": {"mode": "multiclass"}})
    assert (explicit.model.classes, explicit.loss.name) == (2, "dice_ce")


def test_overrides_and_presets_merge_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"epochs": 5, "batch_size": 4},
        "presets": {"quick": {"train": {"epochs": 1}}, "full": {"train": {"epochs": 50}}},
    }))
    assert load_config(path).train.epochs == 5
    cfg = load_config(path, ["preset=quick"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.preset) == (1, 4, "quick")  # deep merge keeps batch_size
    cfg = load_config(path, ["train.epochs=7", "preset=full"])  # overrides win over the preset
    assert cfg.train.epochs == 7 and cfg.preset == "full"
    cfg = load_config(path, ["data.size=[48, 40]", "optim.lr=1e-3", "train.clip_grad=null",
                             "strategy.params.k=3", "strategy.name=frozen_stages"])
    assert cfg.data.size == (48, 40) and cfg.optim.lr == 1e-3 and cfg.train.clip_grad is None
    assert cfg.strategy.params == {"k": 3}


def test_yaml_1e_minus_3_is_a_number() -> None:
    # PyYAML reads "1e-3" as a string; a float field accepts it anyway
    assert load_config({"optim": {"lr": "1e-3"}}).optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epochz": 3}}, r"train\.epochz: unknown key; did you mean 'train\.epochs'\?"),
        ({"trian": {}}, r"trian: unknown key; did you mean 'train'\?"),
        ({"optim": {"lr": 0}}, r"optim\.lr: must be > 0"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number, got 'fast'"),
        ({"train": {"epochs": 2.5}}, r"train\.epochs: expected an integer"),
        ({"train": {"amp": "bf61"}}, r"train\.amp: must be one of .*did you mean 'bf16'"),
        ({"train": {"compile": "yes"}}, r"train\.compile: expected true or false"),
        ({"train": {"device": "gpu"}}, r"train\.device: must be auto, cpu"),
        ({"data": {"size": [64]}}, r"data\.size: expected 2 values"),
        ({"data": {"fractions": [0.5, 0.5, 0.5]}}, r"data\.fractions: must be three non-negative numbers"),
        ({"data": {"label_fraction": 0}}, r"data\.label_fraction: must be in \(0, 1\]"),
        ({"data": {"dataset": "hipocampus"}}, r"data\.dataset: unknown dataset 'hipocampus'"),
        ({"model": {"encoder": "resnet19"}}, r"model\.encoder: unknown encoder 'resnet19'; did you mean 'resnet18'"),
        ({"strategy": {"name": "frozen_stage"}}, r"strategy\.name: .*did you mean 'frozen_stages'"),
        ({"optim": {"name": "adamww"}}, r"optim\.name: .*did you mean 'adamw'"),
        ({"optim": {"scheduler": "cosin"}}, r"optim\.scheduler: .*did you mean 'cosine'"),
        ({"loss": {"name": "dice_bce"}}, r"loss\.name: 'dice_bce' does not support mode 'multiclass'"),
        ({"loss": {"weights": [1.0, 2.0]}}, r"loss\.weights: 2 weights given but dataset 'phantom' has 3"),
        ({"train": "fast"}, r"train: must be a mapping"),
    ],
)
def test_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_override_and_preset_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 2}\npresets:\n  quick: {train: {epochs: 1}}\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'quik'; did you mean 'quick'"):
        load_config(path, ["preset=quik"])
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.epochs: is a value, not a section"):
        load_config(path, ["train.epochs.x=1"])
    with pytest.raises(ConfigError, match=r"train\.epochs: must be >= 1"):
        load_config(path, ["train.epochs=0"])


def test_config_error_is_a_value_error() -> None:
    # the CLI turns ValueError into a one-line message
    assert issubclass(ConfigError, ValueError)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config("phantom", ["preset=smoke", "optim.lr=2e-3"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    again = load_config(saved)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(cfg.to_dict()["data"]["size"], list)  # plain YAML, no Python tuples


def test_find_config_by_name_and_run_dir_template() -> None:
    assert find_config("phantom") == REPO / "configs" / "phantom.yaml"
    with pytest.raises(FileNotFoundError, match=r"configs/nope\.yaml"):
        find_config("nope")
    cfg = load_config("phantom", ["output.run_dir=runs/{dataset}/{strategy}-{preset}"])
    assert cfg.format_run_dir() == Path("runs/phantom/full_finetune-default")
    bad = load_config("phantom", ["output.run_dir=runs/{datset}"])
    with pytest.raises(ConfigError, match="unknown placeholder"):
        bad.format_run_dir()


def test_programmatic_defaults_resolve() -> None:
    cfg = Config().resolved()
    assert cfg.data.dataset == "phantom" and cfg.model.classes == 3
    unresolved = Config.from_dict({}, resolve=False)
    assert unresolved.model.classes is None and unresolved.loss.mode is None
