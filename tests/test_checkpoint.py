"""Checkpoints: round trips, metadata, atomic writes, clear errors, cross-task transfer."""

from __future__ import annotations

import pytest
import torch

import medseg_tutorial
from medseg_tutorial.models import (
    build_model,
    input_normalization,
    load_checkpoint,
    save_checkpoint,
)
from medseg_tutorial.models import checkpoint as checkpoint_mod
from medseg_tutorial.models.checkpoint import CheckpointError, atomic_torch_save

NAMES3 = ["background", "liver", "tumour"]
NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
PROVENANCE = {"dataset": "msd-liver", "strategy": "fine-tune", "epoch": 7, "metrics": {"dice": 0.81}}


def _model(classes: int = 3, in_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "resnet18",
        weights=None,
        classes=classes,
        in_channels=in_channels,
        decoder_channels=(32, 16, 16, 8, 8),
    ).eval()


def _save(path, model, names=NAMES3, **kw):
    return save_checkpoint(path, model, class_names=names, normalization=NORM, provenance=PROVENANCE, **kw)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_round_trip_gives_the_same_model_and_metadata(tmp_path, fmt):
    model = _model()
    path = _save(tmp_path / f"best.{fmt}", model, format=fmt, extra={"note": "unit test"})
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    config = loaded.medseg_config
    assert (config.encoder, config.arch, config.in_channels, config.classes) == ("resnet18", "unet", 3, 3)
    assert loaded.medseg_config.smp_kwargs == {"decoder_channels": [32, 16, 16, 8, 8]}
    assert meta["class_names"] == NAMES3
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert meta["provenance"]["medseg_tutorial"] == medseg_tutorial.__version__
    assert meta["provenance"]["metrics"] == {"dice": 0.81} and meta["extra"] == {"note": "unit test"}
    assert input_normalization("resnet18", path) == NORM  # the stored choice, not ImageNet's


def test_expect_mismatch_names_the_file_and_keys(tmp_path):
    path = _save(tmp_path / "liver.pt", _model())
    load_checkpoint(path, expect={"classes": 3, "encoder": "resnet18", "class_names": NAMES3})
    with pytest.raises(CheckpointError, match=r"liver\.pt: .*classes: stored 3, expected 2.*encoder"):
        load_checkpoint(path, expect={"classes": 2, "encoder": "resnet34"})
    with pytest.raises(KeyError, match="colour"):
        load_checkpoint(path, expect={"colour": "blue"})


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_or_garbage_file_names_the_file(tmp_path, fmt):
    path = _save(tmp_path / f"model.{fmt}", _model(), format=fmt)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=rf"model\.{fmt}: cannot read checkpoint.*truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=rf"model\.{fmt}"):
        load_checkpoint(path)


def test_atomic_write_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = _save(tmp_path / "run" / "best.pt", _model())
    before = path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]

    def crash(obj, f):  # a crash half-way through writing
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(path, _model(seed=1))
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 1}, path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    assert path.read_bytes() == before  # the previous checkpoint survived


def test_atomic_torch_save_round_trip(tmp_path):
    path = atomic_torch_save({"epoch": 3, "w": torch.ones(2)}, tmp_path / "state.pt")
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_checkpoint_with_4_classes_transfers_into_a_2_class_model(tmp_path):
    source = _model(classes=4)
    path = _save(tmp_path / "four.safetensors", source, names=["bg", "a", "b", "c"], format="safetensors")
    target = build_model("resnet18", weights=path, classes=2, decoder_channels=(32, 16, 16, 8, 8))
    assert target.medseg_transfer == {
        "encoder": "loaded",
        "decoder": "loaded",
        "segmentation_head": "re-initialised",
    }
    src, dst = source.state_dict(), target.state_dict()
    for key in dst:
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(dst[key], src[key]), key
    head = target.segmentation_head[0]
    assert head.out_channels == 2
    # smp's fresh head initialisation (zero bias), not a slice of the 4-class head
    assert torch.equal(head.bias, torch.zeros(2))
    assert not torch.equal(head.weight, src["segmentation_head.0.weight"][:2])


def test_encoder_only_transfer_leaves_the_decoder_fresh(tmp_path):
    """transfer="encoder": a same-config checkpoint gives its encoder only (the source comparison)."""
    source = _model()
    path = _save(tmp_path / "same.pt", source)
    kwargs = dict(weights=path, classes=3, decoder_channels=(32, 16, 16, 8, 8))
    target = build_model("resnet18", transfer="encoder", **kwargs)
    assert target.medseg_transfer == {"encoder": "loaded", "decoder": "re-initialised",
                                      "segmentation_head": "re-initialised"}
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(dst[k], src[k]) for k in src if k.startswith("encoder."))
    assert not all(torch.equal(dst[k], src[k]) for k in src if k.startswith("decoder.") and src[k].is_floating_point()
                   and src[k].numel() > 1)
    with pytest.raises(ValueError, match="transfer must be"):
        build_model("resnet18", transfer="decoder", **kwargs)


def test_same_config_checkpoint_loads_everything(tmp_path):
    source = _model()
    path = _save(tmp_path / "same.pt", source)
    target = build_model("resnet18", weights=path, classes=3, decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert set(target.medseg_transfer.values()) == {"loaded"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_different_decoder_or_channels_keeps_only_the_encoder(tmp_path):
    source = _model()
    path = _save(tmp_path / "rgb.pt", source)
    grey = build_model("resnet18", weights=path, classes=3, in_channels=1)  # default decoder_channels
    assert grey.medseg_transfer == {
        "encoder": "loaded",
        "decoder": "re-initialised",
        "segmentation_head": "re-initialised",
    }
    torch.testing.assert_close(grey.encoder.conv1.weight, source.encoder.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"rgb\.pt: checkpoint has encoder 'resnet18'"):
        build_model("resnet34", weights=path)


def test_bad_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="2 class_names for a model with 3 classes"):
        _save(tmp_path / "x.pt", _model(), names=["bg", "liver"])
    with pytest.raises(ValueError, match="'provenance' is not JSON-serialisable"):
        save_checkpoint(
            tmp_path / "x.pt", _model(), class_names=NAMES3, normalization=NORM, provenance={"when": object()}
        )
    with pytest.raises(ValueError, match="unknown checkpoint format 'zip'"):
        _save(tmp_path / "x.pt", _model(), format="zip")
    assert not list(tmp_path.iterdir())
