"""Bad input gets one clear line and exit status 2; faults never lose work. Every bad input is built here."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_tutorial import cli
from medseg_tutorial.config import ConfigError, load_config
from medseg_tutorial.data._io import read_nifti_image
from medseg_tutorial.data.errors import DataError
from medseg_tutorial.data.preprocess import percentile_zscore
from medseg_tutorial.errors import RunError
from medseg_tutorial.experiment import run_experiment
from medseg_tutorial.files import atomic_write, exclusive_lock
from medseg_tutorial.models.checkpoint import CheckpointError
from medseg_tutorial.tools.check import check_dataset
from medseg_tutorial.train import train

SMOKE = ["preset=smoke", "train.epochs=1", "output.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``medseg ARGV`` in this process: (exit status, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and "Traceback" not in err, err
    return lines[-1]


# --- configs ------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  dataset: phantom\n  size: [64, 64\ntrain: {epochs: 2}\n")
    code, err = _cli(capsys, "train", "--config", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{bad}:" in err and "YAML syntax error" in err


def test_a_binary_file_is_not_a_config(tmp_path: Path, capsys) -> None:
    blob = tmp_path / "model.yaml"
    blob.write_bytes(bytes(range(256)) * 4)
    code, err = _cli(capsys, "train", "--config", str(blob))
    assert code == 2 and "not a text file" in _one_line(err) and str(blob) in err


def test_amp_off_unquoted_means_off(tmp_path: Path) -> None:
    assert load_config("phantom", ["train.amp=off"]).train.amp == "off"
    file = tmp_path / "c.yaml"
    file.write_text("data: {dataset: phantom}\ntrain: {amp: off}\n")  # YAML 1.1 reads this as false
    assert load_config(file).train.amp == "off"


@pytest.mark.parametrize(("override", "key"), [
    ("strategy.params={evry: 2}", "strategy.params"),
    ("optim.params={nestrov: true}", "optim.params"),
    ("loss.params={gama: 2}", "loss.params"),
    ("optim.scheduler_params={patiense: 2}", "optim.scheduler_params"),
    ("data.options={resize: pad}", "data.options"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
])
def test_bad_parameter_keys_and_values_fail_when_the_config_loads(override: str, key: str) -> None:
    extra = ["strategy.name=gradual_unfreezing"] if override.startswith("strategy") else []
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', r'[.]')}: "):
        load_config("phantom", [*extra, override])


def test_a_config_mistake_is_one_line_before_any_data_is_read(tmp_path: Path, capsys, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(cache))  # restored afterwards: later tests keep the session cache
    code, err = _cli(capsys, "train", "--config", "phantom", "data.options={resize: pad}")
    assert code == 2 and _one_line(err).startswith("medseg train: error: data.options: unknown option 'resize'")
    assert not (cache / "prepared").exists()  # refused before preparation


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys) -> None:
    code, err = _cli(capsys, "train", "--config", "phantom", *SMOKE, "train.device=cuda", "--run-dir", str(tmp_path))
    assert code == 2 and "CUDA is not available" in _one_line(err)


def test_negative_threads_are_refused(capsys) -> None:
    code, err = _cli(capsys, "train", "--config", "phantom", "--threads", "-2")
    assert code == 2 and "--threads" in err and "must be >= 1" in err


def test_overrides_may_follow_the_options(tmp_path: Path, capsys) -> None:
    code, _ = _cli(capsys, "train", "--config", "phantom", "--run-dir", str(tmp_path / "run"), "--no-progress",
                   *SMOKE)
    assert code == 0 and (tmp_path / "run" / "best.pt").is_file()
    code, err = _cli(capsys, "train", "--config", "phantom", "--run-dir", str(tmp_path / "x"), "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err


def test_os_errors_read_as_what_failed_on_which_file() -> None:
    assert cli._one_line(OSError(errno.ENOSPC, "No space left on device", "/data/run/last.pt")) == \
        "no space left writing /data/run/last.pt"
    assert cli._one_line(OSError(errno.EACCES, "Permission denied", "/x")) == "permission denied for /x"


def test_an_unwritable_results_path_is_found_before_training(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny\nconfig: {data: {dataset: phantom, size: [32, 32]}, train: {epochs: 1, device: cpu}}\n"
        f"grid: {{train.seed: [0]}}\npresets: {{cpu: {{results: {tmp_path / 'a_file' / 'results.csv'}}}}}\n")
    with pytest.raises(ConfigError, match="cannot write the results table"):
        run_experiment(spec, "cpu", run_root=tmp_path / "runs", say=lambda _: None)
    assert not (tmp_path / "runs").exists()


# --- faults and concurrency -----------------------------------------------------------------------


def test_two_runs_never_share_a_run_folder(tmp_path: Path) -> None:
    cfg = load_config("phantom", SMOKE)
    with exclusive_lock(tmp_path / ".lock", "run folder"):  # as if another `medseg train` were writing here
        with pytest.raises(RunError, match="in use by process"):
            train(cfg, tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()
    train(cfg, tmp_path, progress=False)  # free again


def test_a_waiting_lock_blocks_until_the_holder_is_done(tmp_path: Path) -> None:
    """What the notebook cache uses: the second holder waits instead of failing."""
    acquired = threading.Event()

    def second() -> None:
        with exclusive_lock(tmp_path / ".lock", "notebook cache", wait=True):
            acquired.set()

    with exclusive_lock(tmp_path / ".lock", "notebook cache"):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not acquired.wait(0.3), "the lock was taken twice"
    waiter.join(timeout=10)
    assert acquired.is_set()


def test_a_truncated_last_pt_is_one_line_and_stale_temporaries_are_cleaned(tmp_path: Path, capsys) -> None:
    cfg = load_config("phantom", SMOKE)
    train(cfg, tmp_path, progress=False)
    stale = tmp_path / ".last.pt.deadbeef.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a writer killed mid-write leaves
    more = load_config("phantom", [*SMOKE[:-2], "train.epochs=2", "output.tensorboard=false"])
    train(more, tmp_path, resume=True, progress=False)
    assert not stale.exists()
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(more, tmp_path, resume=True, progress=False)
    code, err = _cli(capsys, "train", "--config", "phantom", *SMOKE[:-2], "train.epochs=3", "--run-dir", str(tmp_path),
                     "--resume")
    line = _one_line(err)
    assert code == 2 and "truncated or corrupt" in line and "weights_only" not in line


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.99])
def test_a_write_killed_at_any_point_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, fraction) -> None:
    target = tmp_path / "last.pt"
    torch.save({"step": 1}, target)
    payload = os.urandom(100_000)
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as f:
        f.write(payload[: int(fraction * len(payload))])
        raise KeyboardInterrupt  # the process is interrupted here
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- bad data -------------------------------------------------------------------------------------


def _msd_task(root: Path, images: dict[str, np.ndarray]) -> Path:
    task = root / "Task98_Bad"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    for name, image in images.items():
        label = np.zeros(image.shape, np.uint8)
        label[2:4, 2:4, 1:3] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / f"{name}.nii.gz")
    meta = {"name": "Bad", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in images]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_nan_and_inf_voxels_are_named_not_normalised_to_zeros(tmp_path: Path) -> None:
    image = np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32)
    nan, inf = image.copy(), image.copy()
    nan[1, 1, 1] = np.nan
    inf[2, 2, 2] = np.inf
    task = _msd_task(tmp_path, {"good": image, "nan": nan, "inf": inf})
    report = check_dataset(str(task))
    bad = {Path(p.path).name: p.message for p in report.problems}
    assert set(bad) == {"nan.nii.gz", "inf.nii.gz"} and all("NaN or infinite" in m for m in bad.values())
    with pytest.raises(DataError, match=r"nan\.nii\.gz: image has 1 NaN or infinite voxels"):
        read_nifti_image(task / "imagesTr" / "nan.nii.gz")
    with pytest.raises(ValueError, match="NaN or infinite"):
        percentile_zscore(np.full((2, 1, 4, 4), np.nan, np.float32))


def test_a_constant_image_warns() -> None:
    with pytest.warns(RuntimeWarning, match="channel 0 is constant"):
        out = percentile_zscore(np.full((2, 1, 4, 4), 7.0, np.float32))
    assert (out == 0).all()


def test_a_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * 1000)  # header, extension flag, almost no data
    with pytest.raises(DataError, match=r"huge\.nii: image header claims .* voxels"):
        read_nifti_image(path)
    header.set_data_shape((64, 64, 64))
    small = tmp_path / "short.nii"
    small.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    with pytest.raises(DataError, match=r"short\.nii: image is truncated"):
        read_nifti_image(small)


def test_a_damaged_image_file_is_named(tmp_path: Path) -> None:
    from medseg_tutorial.data._io import channels_first
    from medseg_tutorial.evaluate import _read_image

    with pytest.raises(DataError, match=r"x\.tif: holds no image"):
        channels_first(np.zeros((0,), np.uint8), tmp_path / "x.tif")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(DataError, match=r"garbage\.png: cannot read image file"):
        _read_image(garbage)


@pytest.fixture(scope="module")
def phantom_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("phantom-run")
    train(load_config("phantom", SMOKE), run_dir, progress=False)
    return run_dir / "best.pt"


def test_predict_on_a_folder_with_one_corrupt_file_keeps_the_others(phantom_checkpoint: Path, tmp_path: Path,
                                                                     capsys) -> None:
    from PIL import Image

    images = tmp_path / "in"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(images / f"{name}.png")
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    code, err = _cli(capsys, "predict", "--checkpoint", str(phantom_checkpoint), str(images), str(tmp_path / "out"),
                     "--device", "cpu")
    line = _one_line(err)
    assert code == 2 and "c.png" in line and "1 of 3 images could not be read" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_channels_and_classes_that_do_not_fit_the_data_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.classes: 2 output channels, but loss\.mode 'multiclass'"):
        load_config("phantom", ["model.classes=2"])
    with pytest.raises(ConfigError, match=r"^model\.in_channels: 3, but the slices of 'phantom' have 1 channels"):
        train(load_config("phantom", [*SMOKE, "model.in_channels=3"]), tmp_path, progress=False)


def test_tables_with_undecodable_file_names_are_written_whole(tmp_path: Path) -> None:
    import pandas as pd

    name = os.fsdecode(b"patient_\xff")  # a file name that is not UTF-8 becomes a surrogate escape
    out = cli.write_table(pd.DataFrame({"patient_id": [name, "ok"], "dice": [0.5, 0.7]}), tmp_path / "eval.csv")
    text = out.read_text()
    assert "patient_\\udcff" in text and "ok,0.7" in text


def test_the_folder_check_refuses_a_mask_that_is_not_a_label_map(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    good = np.zeros((32, 32), np.uint8)
    good[8:16, 8:16] = 255
    Image.fromarray(good).save(tmp_path / "masks" / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    report = check_dataset(tmp_path)
    assert not report.ok
    (problem,) = report.problems
    assert Path(problem.path).name == "b.png" and problem.kind == "bad_labels" and "different values" in problem.message


def test_a_full_disk_names_the_file_being_written(tmp_path: Path) -> None:
    target = tmp_path / "cache.npz"
    with pytest.raises(OSError) as err, atomic_write(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises on a full disk
    assert cli._one_line(err.value) == f"no space left writing {target}"
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_with_pickled_code_is_refused_without_torchs_advice(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"fn": print}, evil)  # a function: loadable only with weights_only=False, i.e. by running code
    code, err = _cli(capsys, "evaluate", "--checkpoint", str(evil), "--device", "cpu")
    line = _one_line(err)
    assert code == 2 and "evil.pt: cannot read checkpoint" in line and "weights_only" not in line
