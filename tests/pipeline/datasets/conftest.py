import shutil
from pathlib import Path

import pytest

from pipeline.datasets.synthetic import generate_dataset

TINY = {"num_train": 6, "num_test": 4, "image_size": 64, "min_objects": 2, "max_objects": 5}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic PSG-format dataset (6 train + 4 test, 64x64). Read-only: copy before changing it."""
    root = tmp_path_factory.mktemp("tiny") / "dataset"
    generate_dataset(root, seed=3, progress=False, **TINY)
    return root


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset to corrupt."""
    dst = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    """The generator arguments of ``tiny_dataset`` (without the seed, which is 3)."""
    return dict(TINY)
