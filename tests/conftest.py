"""Shared fixtures: the real Fashion-MNIST shards, prepared once outside the repository."""
import fcntl
import hashlib
import inspect
import os
import tempfile

import pytest

import common
import data
import prepare_data


def record_format():
    """A digest of the code that decides the prepared records' bytes (prepare_data.py, data.py's
    record writers, the shard names): the cache below is kept per digest, so that a change of
    the record format prepares anew instead of reusing stale shards."""
    code = [prepare_data, data.image_example, data._bytes, data._int, data._floats,
            common.shard_name]
    return hashlib.sha256("".join(map(inspect.getsource, code)).encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """400 labels per class, seed 0, under the system temp dir: prepared on the first run and
    reused by later ones with the same record_format() (prepare_fashion_mnist skips a finished
    preparation). A file lock makes the parallel test workers (pytest -n) wait for the one that
    prepares."""
    root = os.path.join(tempfile.gettempdir(), f"noisy-student-tests-{os.getuid()}")
    os.makedirs(root, exist_ok=True)
    out = os.path.join(root, f"fashion_mnist-{record_format()}")
    with open(os.path.join(root, "fashion_mnist.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare_data.prepare_fashion_mnist(out, num_labeled_per_class=400, seed=0)
    return out


# Parallel runs (pytest.ini: -n 2 --dist loadgroup --no-loadscope-reorder): a test file is one
# unit of work, so its module fixtures are built once. The longest units go first, so that they do
# not start last and run alone: this file's (the folder run) on one worker, the ImageNet driver
# (one test: its worker takes the next unit at once) and main.py's on the other; the short files
# then fill whichever worker is free. (Before: main.py's 6 minutes started at 7, on the worker
# that had the ImageNet driver: 13.2 against 8.9 busy minutes.)
FIRST = ("test_run_iterations", "driver imagenet", "test_main")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    def group(item):
        mark = item.get_closest_marker("xdist_group")
        return mark.kwargs.get("name", mark.args[0] if mark.args else "")
    items.sort(key=lambda item: FIRST.index(group(item)) if group(item) in FIRST else len(FIRST))
