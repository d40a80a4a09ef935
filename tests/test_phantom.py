"""The synthetic phantom: seeded, CT-like in HU, labelled sensibly, and registered for offline use."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_tutorial.data import phantom
from medseg_tutorial.data.phantom import PHANTOM_INFO, make_phantom_case, phantom_cases
from medseg_tutorial.data.registry import dataset_info, iter_cases, list_datasets


def test_same_seed_same_phantom_and_different_seed_differs():
    a, b, c = make_phantom_case("p", 7), make_phantom_case("p", 7), make_phantom_case("p", 8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)


def test_shapes_dtypes_and_labels():
    case = make_phantom_case("p", 1, n_slices=10, size=48)
    assert case.image.shape == (10, 1, 48, 48) and case.image.dtype == np.float32
    assert case.mask.shape == (10, 48, 48) and case.mask.dtype == np.uint8
    assert set(np.unique(case.mask)) <= {0, 1, 2}
    np.testing.assert_array_equal(case.slice_index, np.arange(10))
    assert case.spacing[1] == case.spacing[2] > 0


def test_intensities_are_hounsfield_like():
    cases = list(phantom_cases(6, seed=3))
    image = np.concatenate([c.image[:, 0] for c in cases])
    mask = np.concatenate([c.mask for c in cases])
    assert image.min() == pytest.approx(-1000.0)  # air around the body
    assert image.max() > 300  # bone
    organ, lesion = image[mask == 1].mean(), image[mask == 2].mean()
    assert 40 < organ < 80  # liver-like soft tissue
    assert organ - lesion > 30  # lesions are hypodense, so the task is learnable
    # every lesion pixel lies inside the body, never in the air
    assert image[mask == 2].min() > -300


def test_default_set_has_empty_slices_organ_and_lesions():
    cases = list(phantom_cases())
    assert len(cases) == 12
    assert [c.patient_id for c in cases] == [f"phantom{k:03d}" for k in range(12)]
    mask = np.concatenate([c.mask for c in cases])
    per_slice = mask.reshape(len(mask), -1)
    assert (~per_slice.any(axis=1)).sum() > 0  # organ ends: empty slices exist
    assert (per_slice == 2).any(axis=1).sum() >= 6  # lesions in several slices
    assert len({c.source for c in cases}) == 12  # each patient has its own seed


def test_patient_k_does_not_depend_on_how_many_are_generated():
    few, many = list(phantom_cases(2, seed=5)), list(phantom_cases(5, seed=5))
    np.testing.assert_array_equal(few[1].image, many[1].image)


def test_registered_and_works_without_a_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path / "does-not-exist"))
    assert "phantom" in list_datasets()
    info = dataset_info("phantom")
    assert info is PHANTOM_INFO
    assert info.modality == "CT" and info.has_raw_hu and info.subdir == ""
    assert info.class_names == ("background", "organ", "lesion")
    assert "synthetic" in info.citation and "CC0" in info.licence
    cases = list(iter_cases("phantom"))
    assert len(cases) == info.patient_count == 12


def test_documented_as_synthetic():
    for doc in (phantom.__doc__, make_phantom_case.__doc__, phantom_cases.__doc__):
        assert "SYNTHETIC" in doc


@pytest.mark.parametrize("kwargs", [{"n_slices": 0}, {"size": 8}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="phantom needs"):
        make_phantom_case("p", 0, **kwargs)
    with pytest.raises(ValueError, match="n_patients"):
        list(phantom_cases(0))
