"""The ``folder`` dataset: a plain folder of real LGG slices, from ``medseg data check`` to ``medseg predict``.

The folder is built from real LGG slices the way a user's export looks: PNG pairs whose masks end in
``_Annotation``, four subjects whose images differ in size (within one subject too), and one image
whose tumour is stored as two per-object mask files. Training, evaluation and prediction each run in
a process of their own, as a user runs them: nothing but the run folder connects them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from medseg_tutorial.cli import main
from medseg_tutorial.config import ConfigError, load_config
from medseg_tutorial.data import DataError, registry
from medseg_tutorial.data.folder import FolderOptions, detect_layout, folder_dataset
from medseg_tutorial.data.msd import read_msd_task
from medseg_tutorial.data.prepare import cache_path, prepare_dataset
from medseg_tutorial.evaluate import Predictor, evaluate

REPO = Path(__file__).resolve().parents[1]
LGG = Path("lgg-mri-segmentation") / "kaggle_3m"
# subject -> (LGG patient, slice numbers); caseD_1 has no tumour
SUBJECTS = {"caseA": ("TCGA_CS_4941_19960909", (12, 13, 14)), "caseB": ("TCGA_CS_6186_20000601", (16, 17)),
            "caseC": ("TCGA_DU_5849_19950405", (22, 23)), "caseD": ("TCGA_DU_A5TS_19970726", (1, 13, 14))}
SUBJECT_RULE = r"^(case[A-Z])_"
SPACING = {"caseA": 0.5, "caseB": 0.8, "caseC": 0.5, "caseD": 0.6}  # mm per pixel, as an HC18-style CSV gives it
OPTIONS = [f"data.folder.subject={SUBJECT_RULE}", "data.folder.spacing_csv=pixel_size.csv",
           "data.folder.spacing_columns=[filename, pixel size(mm)]"]
SMOKE = ["preset=smoke"]  # configs/folder.yaml: 32 px, resnet18 without weights, encoder_depth 3, 2 steps


def _lgg_slice(root: Path, patient: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    folder = root / LGG / patient
    return tifffile.imread(folder / f"{patient}_{k}.tif"), tifffile.imread(folder / f"{patient}_{k}_mask.tif")


def _write_folder(root: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for subject, (patient, slices) in SUBJECTS.items():
        for k in slices:
            image, mask = _lgg_slice(root, patient, k)
            if subject == "caseA" and k == 13:  # one subject, images of different sizes
                image, mask = image[8:248, 3:253], mask[8:248, 3:253]
            if subject == "caseB":  # another scanner, smaller images
                image = np.asarray(Image.fromarray(image).resize((176, 160)))
                mask = np.asarray(Image.fromarray(mask).resize((176, 160), Image.NEAREST))
            name = f"{subject}_{k}"
            Image.fromarray(image).save(out / f"{name}.png")
            if subject == "caseD" and k == 14:  # the tumour as two objects, one mask file each
                middle = np.flatnonzero(mask.any(axis=1))[len(np.flatnonzero(mask.any(axis=1))) // 2]
                top, bottom = mask.copy(), mask.copy()
                top[middle:], bottom[:middle] = 0, 0
                Image.fromarray(top).save(out / f"{name}_Annotation_1.png")
                Image.fromarray(bottom).save(out / f"{name}_Annotation_2.png")
            else:
                Image.fromarray(mask).save(out / f"{name}_Annotation.png")
            rows.append(f"{name}.png,{SPACING[subject]},0")
    (out / "pixel_size.csv").write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def own_folder(shared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shared_root / LGG).is_dir():
        pytest.skip("LGG slices not present in the shared datasets")
    return _write_folder(shared_root, tmp_path_factory.mktemp("own") / "scans")


def _medseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``medseg ARGS`` in a fresh Python process (one torch thread: the CPU is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-m", "medseg_tutorial.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"medseg {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def trained_run(own_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")  # not the checkout: the shipped config is found by name
    run = work / "run"
    _medseg("train", "--config", "folder", f"data.path={own_folder}", *OPTIONS, *SMOKE, "--run-dir", str(run),
            "--no-progress", "--threads", "1", cwd=work)
    return run


# --- medseg data check ----------------------------------------------------------------------------


def test_data_check_detects_the_layout_and_prints_the_train_command(
    own_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = detect_layout(own_folder)  # what training detects too
    assert (opts.images, opts.masks, opts.mask_suffix, opts.instances, opts.subject) == (".", ".", "_Annotation",
                                                                                         True, "stem")
    assert main(["data", "check", str(own_folder), "--subject", SUBJECT_RULE, "--spacing-csv", "pixel_size.csv",
                 "--spacing-columns", "filename,pixel size(mm)"]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found." in out and "10 cases, 4 patients, 10 slices" in out
    assert "masks beside them ending '_Annotation', one mask file per object (merged)" in out
    assert "256x256 (7), 160x176 (2), 240x250 (1)" in out and "background" in out and "foreground" in out
    next_step = next(line for line in out.splitlines() if line.startswith("Next: "))
    assert next_step == ("Next: medseg train --config folder " + f"data.path={own_folder} "
                         "'data.folder.subject=^(case[A-Z])_' data.folder.spacing_csv=pixel_size.csv "
                         "'data.folder.spacing_columns=[filename, pixel size(mm)]'")


def test_data_check_options_change_what_is_read(own_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # without instance masks, the per-object files are images without masks, and caseD_14 has none
    assert main(["data", "check", str(own_folder), "--mask-suffix", "_Annotation", "--no-instances"]) == 1
    out = capsys.readouterr().out
    assert "[missing_mask]" in out and "caseD_14.png: no mask for this image" in out
    assert "Next:" not in out
    # a folder is not a dataset under a data root: --root is refused, not ignored
    assert main(["data", "check", str(own_folder), "--root", "/elsewhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg data: error: --root applies to registered dataset names") and "\n" not in err
    assert main(["data", "check", str(own_folder), "--subject", "case(["]) == 2
    assert "data.folder.subject: not a valid regular expression" in capsys.readouterr().err


def test_instances_merge_and_subjects_group_images_of_different_sizes(own_folder: Path, shared_root: Path) -> None:
    dataset = folder_dataset(own_folder, FolderOptions(subject=SUBJECT_RULE))
    assert dataset.info.class_names == ("background", "foreground")  # inferred from the 0/255 masks
    assert dataset.info.channel_names == ("red", "green", "blue")
    cases = {case.group: case for case in dataset.cases()}
    assert len(cases) == 10 and {c.patient_id for c in cases.values()} == set(SUBJECTS)
    assert {cases[f"caseA_{k}"].image.shape[2:] for k in (12, 13, 14)} == {(256, 256), (240, 250)}
    _, truth = _lgg_slice(shared_root, SUBJECTS["caseD"][0], 14)
    np.testing.assert_array_equal(cases["caseD_14"].mask[0], truth // 255)  # both objects, one label map
    assert cases["caseD_14"].mask.sum() > 0


def test_nifti_pairs_read_like_the_msd_importer(shared_root: Path, tmp_path: Path) -> None:
    task = shared_root / "msd" / "Task04_Hippocampus"
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for name in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        shutil.copy(task / "imagesTr" / name, tmp_path / "images" / name)
        shutil.copy(task / "labelsTr" / name, tmp_path / "labels" / name)
    dataset = folder_dataset(tmp_path, FolderOptions(modality="MRI"))
    assert dataset.settings["images"] == "images" and dataset.settings["masks"] == "labels"
    assert dataset.info.class_names == ("background", "class_1", "class_2")  # labels 0, 1, 2 found in the volumes
    ours = {case.patient_id: case for case in dataset.cases()}
    msd = {case.patient_id: case for case in read_msd_task(task) if case.patient_id in ours}
    assert set(ours) == {"hippocampus_001", "hippocampus_003"} == set(msd)
    for pid, case in ours.items():
        np.testing.assert_array_equal(case.image, msd[pid].image)
        np.testing.assert_array_equal(case.mask, msd[pid].mask)
        assert case.spacing == msd[pid].spacing  # from the NIfTI header, not the 2-D default


def test_colour_and_palette_masks_map_to_classes(tmp_path: Path) -> None:
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[1:3, 1:3] = (255, 0, 0)
    colour[4:6, 5:8] = (0, 255, 0)
    Image.fromarray(np.full((6, 8), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(colour).save(tmp_path / "masks" / "a.png")
    options = FolderOptions(mask_values={"#FF0000": 1, "#00ff00": 2, 0: 0}, class_names=["bg", "red", "green"])
    (case,) = folder_dataset(tmp_path, options).cases()
    assert np.bincount(case.mask.ravel()).tolist() == [48 - 4 - 6, 4, 6]
    colour[0, 0] = (0, 0, 255)  # a colour the mapping does not know
    Image.fromarray(colour).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match=r"masks/a\.png: mask values \['#0000ff'\] are not in data\.folder\.mask_values"):
        list(folder_dataset(tmp_path, options).cases())
    palette = Image.fromarray(np.array([[0, 1, 2, 2]] * 6, np.uint8).repeat(2, axis=1), mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
    palette.save(tmp_path / "masks" / "a.png")  # palette PNGs store class indices; the colours do not matter
    (case,) = folder_dataset(tmp_path).cases()
    assert folder_dataset(tmp_path).info.class_names == ("background", "class_1", "class_2")
    assert np.unique(case.mask).tolist() == [0, 1, 2]


# --- train, evaluate and predict, each in its own process ---------------------------------------------


def test_train_evaluate_predict_in_separate_processes(own_folder: Path, trained_run: Path, tmp_path: Path) -> None:
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())["data"]
    # what was detected is written out, so the run folder alone rebuilds the dataset
    assert saved["dataset"] == "folder" and saved["path"] == str(own_folder.resolve())
    assert (saved["folder"]["mask_suffix"], saved["folder"]["instances"]) == ("_Annotation", True)
    assert saved["folder"]["class_names"] == ["background", "foreground"] and saved["normalizer"] == "percentile_zscore"
    meta = torch.load(trained_run / "best.pt", weights_only=True)["meta"]
    assert meta["extra"]["dataset_info"]["class_names"] == ["background", "foreground"]

    out = _medseg("evaluate", "--run-dir", str(trained_run), "--device", "cpu", cwd=tmp_path).stdout
    assert "mean foreground Dice" in out and "grid: native" in out
    test_subjects = json.loads((trained_run / "split.json").read_text())["test"]
    with open(trained_run / "eval_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["patient_id"] for r in rows} == set(test_subjects)
    # each image is a volume of its subject: one row per image, scored on its own pixel grid
    expected = {f"{s}/{s}_{k}" for s in test_subjects for k in SUBJECTS[s][1]}
    assert {r["volume"] for r in rows} == expected and all(r["hd95"] for r in rows)

    _medseg("predict", "--checkpoint", str(trained_run / "best.pt"), str(own_folder), str(tmp_path / "pred"),
            "--device", "cpu", cwd=tmp_path)
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == sorted(f"{s}_{k}.png" for s, (_, ks) in SUBJECTS.items() for k in ks)  # masks skipped
    labels = np.asarray(Image.open(tmp_path / "pred" / "caseB_16.png"))
    assert labels.shape == (160, 176) and labels.max() <= 1  # the input's own grid


def test_spacing_from_the_csv_reaches_hd95(own_folder: Path, trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    copy = shutil.copytree(own_folder, tmp_path / "copy")
    # a fixed prediction (the brightest tenth of each image): only the spacing differs between the two runs
    monkeypatch.setattr(Predictor, "__call__", lambda self, image, batch_size=32: (
        image[:, 1] > np.percentile(image[:, 1], 90)).astype(np.uint8))
    hd95 = {}
    for mm in (0.5, 1.5):
        (copy / "mm.csv").write_text("file,pixel_mm\n" + "".join(f"{p.name},{mm}\n" for p in copy.glob("*.png")))
        cfg = load_config(trained_run / "config.yaml", ["data.folder.spacing_csv=mm.csv",
                                                       "data.folder.spacing_columns=[file, pixel_mm]",
                                                       f"data.path={copy}"])
        scores = evaluate(trained_run / "best.pt", cfg, ["caseA"], device="cpu")
        hd95[mm] = scores.set_index("volume")["hd95"]
    assert np.isfinite(hd95[0.5]).all() and (hd95[0.5] > 0).all()
    np.testing.assert_allclose(hd95[1.5], 3 * hd95[0.5])  # millimetres, not pixels


# --- the prepared cache ---------------------------------------------------------------------------


def test_cache_key_covers_options_description_and_files(own_folder: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    copy = shutil.copytree(own_folder, tmp_path / "copy")
    params = {"size": [32, 32]}

    def key(**options) -> Path:
        return cache_path(folder_dataset(copy, FolderOptions(**options)), params, tmp_path / "cache")

    base = key()
    assert key() == base
    changed = {"channels": key(channels=1), "classes": key(class_names=["background", "tumour"]),
               "modality": key(modality="MRI"), "subject": key(subject=SUBJECT_RULE)}
    assert len({base, *changed.values()}) == 5, changed
    before = (copy / "caseC_22_Annotation.png").stat()
    os.utime(copy / "caseC_22_Annotation.png", ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert key() != base  # a mask was edited: its modification time changed

    # the case: after switching to one channel, the slices have one channel, not the cached three
    args = ["data", "prepare", "folder", f"data.path={copy}", "data.size=[32, 32]"]
    assert main(args) == 0 and "prepared in" in capsys.readouterr().out
    assert main([*args, "data.folder.channels=1"]) == 0
    out = capsys.readouterr().out
    assert "10 slices of 32x32 (1 channel(s): grey), 10 patients, 10 volumes" in out and "prepared in" in out
    assert main(args) == 0 and "loaded from the cache" in capsys.readouterr().out
    assert main([*args, "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "prepared in" in out and "cache: " + str(Path(os.environ["MEDSEG_CACHE_DIR"]) / "prepared") in out
    grey = prepare_dataset(folder_dataset(copy, FolderOptions(channels=1)), size=(32, 32), progress=False)
    assert grey.images.shape == (10, 1, 32, 32) and grey.meta["cache"]["loaded_from_cache"]


# --- config: normaliser and folder mistakes fail when the config loads ----------------------------------


def test_normaliser_is_chosen_apart_from_modality_and_checked_at_load(own_folder: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ["data.path=/no/such/folder"]  # the normaliser is checked before the folder is even looked at
    for override, message in [
        ("data.normalizer=scale8bit", "data.normalizer: unknown normaliser 'scale8bit'; did you mean 'scale_8bit'"),
        ("data.normalizer_params={lo: 1}", "data.normalizer: normaliser 'percentile_zscore' takes no option 'lo'"),
        ("data.options={normalizer: minmax}", "data.options: 'normalizer' has a key of its own: set data.normalizer"),
        ("data.folder.spacing=[1, 0]", "data.folder.spacing: must be two positive millimetre values"),
    ]:
        extra = ["data.normalizer=percentile_zscore"] if "normalizer_params" in override else []
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config("folder", [*base, *extra, override])
    assert main(["train", "--config", "folder", *base, "data.normalizer=zscore"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg train: error: data.normalizer: unknown normaliser 'zscore'") and err.count("\n") == 1

    # modality is free text; the default normaliser is only the fallback, a named one wins
    us = load_config("folder", [f"data.path={own_folder}", "data.folder.modality=US"])
    assert us.data.normalizer == "percentile_zscore"
    scaled = load_config("folder", [f"data.path={own_folder}", "data.folder.modality=US", "data.normalizer=scale_8bit",
                                    "data.size=[32, 32]"]).data.prepare()
    assert scaled.info.modality == "US" and scaled.images.min() >= 0 and scaled.images.max() <= 1


def test_folder_config_keys_and_a_path_as_dataset(own_folder: Path) -> None:
    cfg = load_config({"data": {"dataset": str(own_folder)}})  # what a user tries first
    assert (cfg.data.dataset, cfg.data.path) == ("folder", str(own_folder.resolve()))
    assert cfg.format_run_dir() == Path(f"runs/{own_folder.name}-efficientnet-lite0-full_finetune")
    with pytest.raises(ConfigError, match=r"data\.root: the folder dataset reads data\.path"):
        load_config("folder", [f"data.path={own_folder}", "data.root=/data"])
    with pytest.raises(ConfigError, match=r"data\.folder: only for data\.dataset: folder"):
        load_config({"data": {"dataset": "phantom", "folder": {"mask_suffix": "_mask"}}})
    with pytest.raises(ConfigError, match=r"data\.path: the folder dataset needs the folder"):
        load_config("folder")


# --- the plugin hook ------------------------------------------------------------------------------


def test_a_plugin_entry_point_registers_its_datasets(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "medseg_demo_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from medseg_tutorial.data import Case, DatasetInfo, register_dataset

        @register_dataset(DatasetInfo("demo_xray", "X-ray", ("background", "bone"), ("grey",), "CC0", "-", "-"))
        def _cases(root):
            yield Case("p0", np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 8, 8), np.uint8))
    '''))
    (tmp_path / "medseg_broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    dist = tmp_path / "medseg_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medseg-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[medseg_tutorial.datasets]\ndemo = medseg_demo_plugin\nbroken = medseg_broken_plugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget the plugin afterwards
    monkeypatch.setattr(registry, "_loaded", False)
    for module in ("medseg_demo_plugin", "medseg_broken_plugin"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.warns(RuntimeWarning, match="dataset plugin 'broken' .*missing dependency foo"):
        names = registry.list_datasets()
    assert "demo_xray" in names and "msd_hippocampus" in names  # the broken plugin took nothing down
    assert registry.dataset_info("demo_xray").modality == "X-ray"
    assert load_config({"data": {"dataset": "demo_xray"}}).data.normalizer == "percentile_zscore"


def test_a_checkpoint_predicts_without_the_code_that_registered_its_dataset(tmp_path: Path, monkeypatch,
                                                                            one_torch_thread) -> None:
    from dataclasses import replace

    from medseg_tutorial.data.phantom import PHANTOM_INFO, phantom_cases
    from medseg_tutorial.train import train

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    info = replace(PHANTOM_INFO, name="session_only", modality="X-ray")  # registered by a user's own code
    registry.register_dataset(info)(lambda root: phantom_cases(6, size=32))
    cfg = load_config("phantom", ["preset=smoke", "data.dataset=session_only", "train.epochs=1",
                                  "train.max_steps_per_epoch=1", "output.tensorboard=false"])
    run = train(cfg, tmp_path / "run", progress=False).run_dir

    monkeypatch.setattr(registry, "_REGISTRY", {})  # a new process: nobody registered it
    predictor = Predictor.load(run / "best.pt", "cpu")
    assert predictor.dataset_info.class_names == info.class_names
    assert predictor.normalization() == ("percentile_zscore", {})  # X-ray: the fallback, stored in the config
    image = next(phantom_cases(1, seed=5, size=40)).image
    assert predictor(image).shape == (8, 40, 40)
    with pytest.raises(ConfigError, match="exists only in that Python process: declare it in the entry-point group"):
        evaluate(run / "best.pt", device="cpu")  # scoring needs the data, hence the importer: say how to get it


def test_write_folder_gives_the_plain_png_layout_the_folder_dataset_reads_back(shared_root: Path,
                                                                               tmp_path: Path) -> None:
    from itertools import islice

    from medseg_tutorial.data import iter_cases
    from medseg_tutorial.data.folder import write_folder

    cases = list(islice(iter_cases("lgg", shared_root), 2))
    out = write_folder(cases, tmp_path / "pngs", mask_suffix="_Annotation")
    n = sum(len(c.image) for c in cases)
    assert len(list(out.glob("*_Annotation.png"))) == n and len(list(out.glob("*.png"))) == 2 * n
    assert set(np.unique(np.array(Image.open(next(out.glob("*_Annotation.png")))))) <= {0, 255}

    opts = detect_layout(out, FolderOptions(subject=r"^(.+)_\d+$"))
    assert (opts.images, opts.mask_suffix, opts.instances) == (".", "_Annotation", False)
    masks = {}
    for c in folder_dataset(out, opts).cases():  # one volume per image: each slice of a subject
        masks.setdefault(c.patient_id, []).append(int(c.mask.sum()))
    assert sorted(masks) == sorted(c.patient_id for c in cases)  # the regex put the slices back together
    for c in cases:
        assert sorted(masks[c.patient_id]) == sorted(int(m.sum()) for m in c.mask)  # 0/255 read back as 0/1
