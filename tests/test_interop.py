"""Interoperability: nnU-Net v2 raw datasets (import, export, layout detection) and smp.from_pretrained export."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medseg_tutorial.data import DataError, iter_cases
from medseg_tutorial.data.msd import HIPPOCAMPUS
from medseg_tutorial.data.nnunet import is_msd_task, is_nnunet_raw, read_nnunet
from medseg_tutorial.data.splits import Split
from medseg_tutorial.data.types import Case, DatasetInfo
from medseg_tutorial.errors import ConfigError
from medseg_tutorial.tools.nnunet_export import export_nnunet

# --- nnU-Net v2 raw datasets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hippocampus(shared_root: Path) -> list[Case]:
    """The first five MSD Hippocampus volumes (enough for a round trip, quick to read)."""
    return list(islice(iter_cases("msd_hippocampus", shared_root), 5))


def test_msd_hippocampus_round_trips_through_nnunet(hippocampus: list[Case], shared_root: Path,
                                                    tmp_path: Path) -> None:
    msd = shared_root / "msd" / "Task04_Hippocampus"
    folder = export_nnunet(hippocampus, HIPPOCAMPUS, tmp_path, 504, "Hippocampus")

    assert folder == tmp_path / "Dataset504_Hippocampus"
    # the two layouts are told apart both ways
    assert is_msd_task(msd) and not is_nnunet_raw(msd)
    assert is_nnunet_raw(folder) and not is_msd_task(folder)

    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"}
    assert meta["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".nii.gz"
    assert meta["licence"] == "CC BY-SA 4.0" and "Antonelli" in meta["reference"]
    first = hippocampus[0].patient_id
    assert sorted(p.name for p in (folder / "imagesTr").iterdir())[0] == f"{first}_0000.nii.gz"
    assert (folder / "labelsTr" / f"{first}.nii.gz").is_file() and not (folder / "medseg_split.json").exists()
    label = nib.load(folder / "labelsTr" / f"{first}.nii.gz")
    assert label.get_data_dtype() == np.uint8 and label.shape == hippocampus[0].mask.T.shape

    info, cases = read_nnunet(folder)
    assert info.class_names == HIPPOCAMPUS.class_names and info.channel_names == ("T1",)
    assert info.licence == HIPPOCAMPUS.licence and info.patient_count == 5
    back = list(cases)
    assert [c.patient_id for c in back] == [c.patient_id for c in hippocampus]
    for a, b in zip(hippocampus, back):
        assert b.image.dtype == np.float32 and b.mask.dtype == np.uint8
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.spacing == pytest.approx(a.spacing)


def _case(pid: str, spacing: tuple[float, float, float], seed: int, group: str = "", channels: int = 2) -> Case:
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 30, (3, channels, 6, 5)).astype(np.float32)  # fractional: stored as float32
    mask = rng.integers(0, 2, (3, 6, 5)).astype(np.uint8)
    return Case(pid, image, mask, spacing, source=f"<memory:{pid}>", group=group)


TWO_CHANNELS = DatasetInfo("toy", "MRI", ("background", "lesion"), ("T1", "FLAIR"), "CC0", "none", "")


def test_multichannel_export_keeps_spacing_ids_and_split(tmp_path: Path) -> None:
    cases = [_case("p 1/a", (2.5, 0.7, 0.8), 0, group="frame01"), _case("case_0001", (3.0, 0.5, 0.5), 1),
             _case("P2", (1.0, 1.0, 1.0), 2), _case("p2", (1.0, 1.0, 1.0), 3), _case("t", (1.0, 0.9, 0.9), 4)]
    split = Split(train=["p 1/a", "case_0001"], val=["P2", "p2"], test=["t"])
    folder = export_nnunet(cases, TWO_CHANNELS, tmp_path, 7, split=split)

    # ids: file-safe, never ending like a channel suffix, unique even on a case-insensitive disk
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "labelsTr").iterdir())
    assert ids == ["P2", "case-0001", "p2-2", "p_1_a_frame01"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["t_0000.nii.gz", "t_0001.nii.gz"]
    assert (folder / "labelsTs" / "t.nii.gz").is_file()
    folds = json.loads((folder / "medseg_split.json").read_text())  # nnU-Net's splits_final.json format
    assert folds == [{"train": ["p_1_a_frame01", "case-0001"], "val": ["P2", "p2-2"]}]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["channel_names"] == {"0": "T1", "1": "FLAIR"}
    header = nib.load(folder / "imagesTr" / "p_1_a_frame01_0001.nii.gz").header
    assert header.get_zooms() == pytest.approx((0.8, 0.7, 2.5)) and header.get_data_dtype() == np.float32

    info, read = read_nnunet(folder)
    back = {(c.patient_id, c.group): c for c in read}
    assert info.name == "nnunet_toy" and info.channel_names == ("T1", "FLAIR")
    assert set(back) == {("p 1/a", "frame01"), ("case_0001", ""), ("P2", ""), ("p2", "")}  # patients restored
    for case in cases[:4]:
        got = back[(case.patient_id, case.group)]
        assert got.image.shape == (3, 2, 6, 5) and got.spacing == pytest.approx(case.spacing)
        np.testing.assert_array_equal(got.image, case.image)
        np.testing.assert_array_equal(got.mask, case.mask)

    with pytest.raises(DataError, match="in none of the split"):
        export_nnunet([_case("stranger", (1, 1, 1), 5)], TWO_CHANNELS, tmp_path / "b", 8, split=split)
    with pytest.raises(DataError, match="has 1 channels, toy declares 2"):
        export_nnunet([_case("x", (1, 1, 1), 6, channels=1)], TWO_CHANNELS, tmp_path / "c", 8)


def test_export_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    folder = export_nnunet([_case("a", (1, 1, 1), 0), _case("b", (1, 1, 1), 1)], TWO_CHANNELS, tmp_path, 9, "Toy")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as err:
        export_nnunet([_case("c", (1, 1, 1), 2)], TWO_CHANNELS, tmp_path, 9, "Toy")
    assert str(err.value).startswith(str(folder)) and "not empty" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="already taken"):  # nnU-Net refuses two names for one id
        export_nnunet([_case("c", (1, 1, 1), 2)], TWO_CHANNELS, tmp_path, 9, "Other")
    with pytest.raises(ConfigError, match="1 to 999"):
        export_nnunet([_case("c", (1, 1, 1), 2)], TWO_CHANNELS, tmp_path, 1000, "Toy")

    export_nnunet([_case("c", (1, 1, 1), 2)], TWO_CHANNELS, tmp_path, 9, "Toy", overwrite=True)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["c.nii.gz"]  # no stale case left
    assert (folder / "notes.txt").read_text() == "mine"  # only what an export writes is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left behind

    stranger = tmp_path / "Dataset010_Toy"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an nnU-Net raw dataset"):
        export_nnunet([_case("c", (1, 1, 1), 2)], TWO_CHANNELS, tmp_path, 10, "Toy", overwrite=True)
    assert (stranger / "thesis.tex").read_text() == "precious"


def _dataset_json(folder: Path, **fields) -> None:
    meta = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
            "numTraining": 2, "file_ending": ".png", "name": "Roads", **fields}
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_reads_a_2d_png_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset120_Roads"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for case in ("img_1", "img_2"):  # one RGB file holds the three channels, as in nnU-Net's example
        rgb = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(rng.integers(0, 2, (8, 12), dtype=np.uint8)).save(folder / "labelsTr" / f"{case}.png")
        images[case] = rgb
    _dataset_json(folder)
    assert is_nnunet_raw(folder) and not is_msd_task(folder)

    info, cases = read_nnunet(folder)
    cases = list(cases)
    assert info.name == "nnunet_roads" and info.class_names == ("background", "road")
    assert [c.patient_id for c in cases] == ["img_1", "img_2"]
    assert cases[0].image.shape == (1, 3, 8, 12) and cases[0].mask.shape == (1, 8, 12)
    np.testing.assert_array_equal(cases[0].image[0], np.moveaxis(images["img_1"], -1, 0).astype(np.float32))


def test_layout_detection_looks_at_file_names_too(tmp_path: Path, shared_root: Path) -> None:
    # an nnU-Net v1 task: MSD's dataset.json, but the images renamed CASE_0000.nii.gz: neither layout
    v1 = tmp_path / "Task004_Hippocampus"
    (v1 / "imagesTr").mkdir(parents=True)
    (v1 / "dataset.json").write_text((shared_root / "msd" / "Task04_Hippocampus" / "dataset.json").read_text())
    (v1 / "imagesTr" / "hippocampus_001_0000.nii.gz").write_bytes(b"")
    assert not is_msd_task(v1) and not is_nnunet_raw(v1)
    # v2 keys, but images without the channel index: not nnU-Net v2
    plain = tmp_path / "Dataset122_Plain"
    (plain / "imagesTr").mkdir(parents=True)
    _dataset_json(plain)
    (plain / "imagesTr" / "x.png").write_bytes(b"")
    assert not is_nnunet_raw(plain)
    (plain / "imagesTr" / "x.png").rename(plain / "imagesTr" / "x_0000.png")
    assert is_nnunet_raw(plain)
    (plain / "dataset.json").write_text("{not json")
    assert not is_nnunet_raw(plain) and not is_msd_task(plain) and not is_nnunet_raw(tmp_path / "missing")


def test_bad_nnunet_datasets_give_one_line_naming_the_file(tmp_path: Path, shared_root: Path) -> None:
    folder = tmp_path / "Dataset121_Bad"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case in ("a", "b"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "imagesTr" / f"{case}_0000.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "labelsTr" / "a.png")

    def error(**fields) -> str:
        _dataset_json(folder, **fields)
        with pytest.raises(DataError) as err:
            _, cases = read_nnunet(folder)
            list(cases)
        assert "\n" not in str(err.value)
        return str(err.value)

    grey = {"channel_names": {"0": "grey"}}
    assert error(**grey).startswith(str(folder / "imagesTr" / "b_0000.png")) and "no mask" in error(**grey)
    assert "numTraining is 5" in error(**grey, numTraining=5)
    assert "dataset.json declares 3" in error()  # a grey file where R, G, B were declared
    assert "region-based" in error(**grey, labels={"background": 0, "whole": [1, 2]})
    assert "consecutive" in error(**grey, labels={"background": 0, "road": 2})
    assert ".mha" in error(**grey, file_ending=".mha")
    (folder / "imagesTr" / "stray.png").write_bytes(b"")
    assert error(**grey).startswith(str(folder / "imagesTr" / "stray.png"))
    with pytest.raises(DataError, match="MSD task"):  # an MSD folder handed to the nnU-Net reader
        read_nnunet(shared_root / "msd" / "Task04_Hippocampus")


# --- export for smp.from_pretrained ---------------------------------------------------------------


@pytest.mark.usefixtures("one_torch_thread")
def test_export_pretrained_loads_in_smp_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    import segmentation_models_pytorch as smp

    from medseg_tutorial.config import load_config
    from medseg_tutorial.models import load_checkpoint
    from medseg_tutorial.tools.export import export_pretrained
    from medseg_tutorial.train import train

    cfg = load_config("phantom", ["preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=2",
                                  "output.tensorboard=false", "model.input_norm=encoder"])
    run = tmp_path / "run"
    result = train(cfg, run, progress=False)
    # test scores as `medseg evaluate --split test` writes them, to show on the card
    (run / "eval_test.csv").write_text("patient_id,class,class_name,dice\np1,1,organ,0.5\np2,1,organ,0.7\n"
                                       "p1,2,lesion,0.1\np2,2,lesion,0.3\n")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = export_pretrained(result.best_checkpoint, tmp_path / "export")
    assert {"model.safetensors", "config.json", "README.md", "medseg.json"} <= {p.name for p in out.iterdir()}

    ours, meta = load_checkpoint(result.best_checkpoint)
    theirs = smp.from_pretrained(out).eval()
    assert type(theirs) is smp.Unet and theirs.encoder._in_channels == 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: segmentation-models-pytorch" in card
    assert "**phantom**" in card and "generated; CC0" in card and "synthetic, not real data" in card
    assert "`ct_window`" in card and "[32, 32]" in card and "`dice_ce`" in card and "`adamw`" in card
    assert f"{meta['provenance']['val_dice']:.4f}" in card
    assert "test Dice over 2 patients" in card and "organ: 0.6" in card and ": 0.4" in card  # (0.6 + 0.2) / 2
    prep = json.loads((out / "medseg.json").read_text())
    assert prep["input_norm"] == "encoder" and prep["mean"] == meta["normalization"]["mean"]
    assert prep["class_names"] == ["background", "organ", "lesion"] and prep["size"] == [32, 32]

    with pytest.raises(DataError, match="not empty"):
        export_pretrained(result.best_checkpoint, out)
    assert export_pretrained(result.best_checkpoint, out, overwrite=True) == out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("keep")
    with pytest.raises(DataError, match="not an earlier export"):
        export_pretrained(result.best_checkpoint, tmp_path / "mine", overwrite=True)


# --- the commands -----------------------------------------------------------------------------------


def test_the_checker_and_the_folder_dataset_read_an_nnunet_export(hippocampus: list[Case], shared_root: Path,
                                                                  tmp_path: Path, capsys) -> None:
    from medseg_tutorial.cli import main
    from medseg_tutorial.config import load_config
    from medseg_tutorial.tools.check import check_dataset

    folder = export_nnunet(hippocampus, HIPPOCAMPUS, tmp_path, 504, "Hippocampus")
    report = check_dataset(str(folder))
    assert report.layout == "nnU-Net v2 raw dataset" and report.ok, report.format()
    assert check_dataset(str(shared_root / "msd" / "Task04_Hippocampus")).layout == "MSD task"

    # `medseg train --config folder data.path=DatasetXXX_Name` reads it through its dataset.json
    cfg = load_config("folder", [f"data.path={folder}", "preset=smoke"])
    assert cfg.data.folder.images is None  # nothing stored: a later process detects the same layout
    table = cfg.data.prepare()
    assert table.info.class_names == HIPPOCAMPUS.class_names
    assert sorted(table.patients) == sorted(c.patient_id for c in hippocampus)

    assert main(["data", "export-nnunet", "msd_hippocampus", str(tmp_path / "raw"), "--id", "4",
                 "--root", str(shared_root)]) == 0
    assert "nnUNetv2_plan_and_preprocess -d 4" in capsys.readouterr().out
    exported = tmp_path / "raw" / "Dataset004_hippocampus"
    assert json.loads((exported / "dataset.json").read_text())["numTraining"] == 260
    assert main(["data", "export-nnunet", "msd_hippocampus", str(tmp_path / "raw"), "--id", "4",
                 "--root", str(shared_root)]) == 2  # not over an earlier export unless --overwrite
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "Dataset004_hippocampus" in err


@pytest.mark.usefixtures("one_torch_thread")
def test_medseg_export_writes_what_smp_loads(tmp_path: Path, capsys) -> None:
    import segmentation_models_pytorch as smp

    from medseg_tutorial.cli import main
    from medseg_tutorial.config import load_config
    from medseg_tutorial.train import train

    cfg = load_config("phantom", ["preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=1",
                                  "output.tensorboard=false"])
    best = train(cfg, tmp_path / "run", progress=False).best_checkpoint
    assert main(["export", "--checkpoint", str(best), str(tmp_path / "out")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    assert isinstance(smp.from_pretrained(tmp_path / "out"), smp.Unet)
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), str(tmp_path / "out2")]) == 2
    assert "nope.pt" in capsys.readouterr().err
