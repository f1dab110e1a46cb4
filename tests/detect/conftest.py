"""Shared fixtures of the detection tests."""

import pytest

from ..helpers import shapes_dataset


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return shapes_dataset(root / "train", 32, 0), shapes_dataset(root / "val", 16, 1)

