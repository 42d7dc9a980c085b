"""Shared fixtures: the real Fashion-MNIST shards, prepared once outside the repository."""
import os
import tempfile

import pytest

import data


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """400 labels per class, seed 0, under the system temp dir: prepared on the first run and
    reused by later ones (data.prepare_fashion_mnist skips a finished preparation)."""
    path = os.path.join(tempfile.gettempdir(), f"noisy-student-tests-{os.getuid()}", "fashion_mnist")
    data.prepare_fashion_mnist(path, num_labeled_per_class=400, seed=0)
    return path
