"""Shared fixtures: the real datasets in ../shared/datasets and a private cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_SHARED = REPO.parent / "shared" / "datasets"


def _shared_root() -> Path | None:
    root = Path(os.environ.get("MEDSEG_DATA_ROOT", _DEFAULT_SHARED))
    return root if (root / "msd").is_dir() else None


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """Root of the real datasets. In CI (MEDSEG_REQUIRE_DATA=1) their absence is a failure."""
    root = _shared_root()
    if root is None:
        if os.environ.get("MEDSEG_REQUIRE_DATA") == "1":
            pytest.fail("MEDSEG_REQUIRE_DATA=1 but no datasets at $MEDSEG_DATA_ROOT or ../shared/datasets")
        pytest.skip("real datasets not present (set MEDSEG_DATA_ROOT)")
    return root


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own cache unless MEDSEG_CACHE_DIR is set explicitly."""
    if "MEDSEG_CACHE_DIR" not in os.environ:
        os.environ["MEDSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("medseg-cache"))


@pytest.fixture
def one_torch_thread():
    """Two CI cores shared with other jobs: one intra-op thread is faster and reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
