"""Shared fixtures: the real Fashion-MNIST shards, prepared once and reused across runs."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """data/fashion_mnist (400 labels per class, seed 0), the same dir main.py uses by default."""
    import data
    path = os.path.join(ROOT, "data", "fashion_mnist")
    data.prepare_fashion_mnist(path, num_labeled_per_class=400, seed=0)
    return path
