"""data.py and prepare_data.py on the real Fashion-MNIST files and on generated images and records.

Run: cd /work/main && TF_CPP_MIN_LOG_LEVEL=2 python -m pytest -q tests/test_data.py
"""
import collections
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import data  # noqa: E402
import prepare_data  # noqa: E402

FASHION = data.DATASETS["fashion_mnist"]
K = 400
SEED = (0, 0)  # the [2] seed of train_views where a test needs one but not a particular one


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------
def read_all(files, spec):
    """Every record of `files` parsed with `spec`, as numpy arrays (batched parse)."""
    ds = tf.data.TFRecordDataset(files).batch(4096).map(lambda s: tf.io.parse_example(s, spec))
    parts = list(ds.as_numpy_iterator())
    return {k: np.concatenate([p[k] for p in parts]) for k in spec}


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


def jpeg(array, quality=95):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex.SerializeToString())


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def real_fashion(split):
    return prepare_data.read_fashion_mnist(prepare_data.FASHION_MNIST_DIR, split)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """The real Fashion-MNIST prepared once for this module (K=400, seed 0)."""
    out = str(tmp_path_factory.mktemp("fm") / "data")
    summary = prepare_data.prepare_fashion_mnist(out, num_labeled_per_class=K, seed=0)
    return out, summary


@pytest.fixture(scope="module")
def small_idx(tmp_path_factory):
    """IDX files holding the first 3000 train / 500 test images of the real data set."""
    d = tmp_path_factory.mktemp("idx")
    train_x, train_y = real_fashion("train")
    test_x, test_y = real_fashion("test")
    write_idx(d / "train-images-idx3-ubyte.gz", train_x[:3000])
    write_idx(d / "train-labels-idx1-ubyte.gz", train_y[:3000])
    write_idx(d / "t10k-images-idx3-ubyte.gz", test_x[:500])
    write_idx(d / "t10k-labels-idx1-ubyte.gz", test_y[:500])
    return d


def prepare_small(src, out, seed=0, k=20):
    # read_fashion_mnist expects the official counts; patch them for the subset.
    files = dict(prepare_data.FASHION_MNIST_FILES)
    prepare_data.FASHION_MNIST_FILES.update({"train": files["train"][:2] + (3000,),
                                     "test": files["test"][:2] + (500,)})
    try:
        return prepare_data.prepare_fashion_mnist(str(out), num_labeled_per_class=k, seed=seed,
                                          source_dir=str(src),
                                          shards={"labeled": 2, "unlabeled": 3, "test": 1})
    finally:
        prepare_data.FASHION_MNIST_FILES.update(files)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST preparation.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_encoded_pngs_decode_to_the_same_pixels_in_png_and_image_decoders(channels):
    images = np.random.RandomState(channels).randint(0, 256, (4, 5, 7, channels)).astype(np.uint8)
    images[0] = 0  # a flat image as well as noise
    for image, png in zip(images, prepare_data.encode_png_batch(images)):
        np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), image)
        np.testing.assert_array_equal(tf.io.decode_image(png, channels=0).numpy(), image)


@pytest.mark.slow
def test_prepare_fashion_mnist_counts_labels_pixels_and_disjoint_splits(fashion_dir):
    out, summary = fashion_dir
    assert summary["counts"] == {"labeled": 10 * K, "unlabeled": 60000 - 10 * K, "test": 10000}
    assert sorted(os.listdir(out)) == ["labeled", "prepared.json", "test", "unlabeled"]
    assert len(os.listdir(os.path.join(out, "unlabeled"))) == 8
    assert os.listdir(os.path.join(out, "labeled"))[0].endswith("-of-00002.tfrecord")
    train_x, train_y = real_fashion("train")
    test_x, test_y = real_fashion("test")
    s = tf.io.FixedLenFeature([], tf.string)
    i64 = tf.io.FixedLenFeature([], tf.int64)

    lab = read_all(common.list_files(os.path.join(out, "labeled")),
                   {"image/encoded": s, "image/id": s, "image/class/label": i64})
    idx = np.array([int(i.decode().rsplit("/", 1)[1]) for i in lab["image/id"]])
    assert all(i.startswith(b"fashion_mnist/train/") for i in lab["image/id"])
    assert np.bincount(lab["image/class/label"], minlength=10).tolist() == [K] * 10
    np.testing.assert_array_equal(lab["image/class/label"], train_y[idx])
    # The stored PNGs are the IDX pixels, zero-padded 28 -> 32.
    for j in range(0, len(idx), 397):
        image = tf.io.decode_png(lab["image/encoded"][j]).numpy()
        assert image.shape == (32, 32, 1)
        np.testing.assert_array_equal(image[2:30, 2:30, 0], train_x[idx[j]])
        assert image[:2].max() == 0 and image[:, 30:].max() == 0

    unl = read_all(common.list_files(os.path.join(out, "unlabeled")),
                   {"image/id": s, "diagnostic/true_label": i64})
    uidx = np.array([int(i.decode().rsplit("/", 1)[1]) for i in unl["image/id"]])
    assert len(set(uidx)) == 60000 - 10 * K
    assert not set(uidx) & set(idx)  # disjoint, and together the whole train set
    assert set(uidx) | set(idx) == set(range(60000))
    np.testing.assert_array_equal(unl["diagnostic/true_label"], train_y[uidx])

    test = read_all(common.list_files(os.path.join(out, "test")),
                    {"image/id": s, "image/class/label": i64})
    tidx = np.array([int(i.decode().rsplit("/", 1)[1]) for i in test["image/id"]])
    np.testing.assert_array_equal(tidx, np.arange(10000))  # official order
    np.testing.assert_array_equal(test["image/class/label"], test_y)


@pytest.mark.slow
def test_unlabeled_records_hide_the_true_label_from_training_parses(fashion_dir):
    out, _ = fashion_dir
    files = common.list_files(os.path.join(out, "unlabeled"))
    record = next(iter(tf.data.TFRecordDataset(files[0])))
    # The record does carry the label for reports ...
    assert 0 <= int(data.parse_diagnostic_label(record)) < 10
    # ... but no key a training path parses exposes it.
    assert set(data.parse_unlabeled(record)) == {"image", "id"}
    with pytest.raises(tf.errors.InvalidArgumentError):  # no image/class/label to read
        data.parse_labeled(record)
    pseudo = data.pseudo_label_example(b"x", "a", np.full(10, 0.1), true_label=3)
    parsed = data.parse_pseudo_labeled(pseudo.SerializeToString(), 10)
    assert set(parsed) == {"image", "id", "probabilities", "label", "prob", "copies"}
    pair = data.unlabeled_pair_dataset(files, FASHION, 32, 4, "basic", seed=0)
    assert len(pair.element_spec) == 2
    assert all(spec.shape.as_list() == [4, 32, 32, 1] for spec in pair.element_spec)


@pytest.mark.slow
def test_prepare_is_deterministic_skips_reruns_and_refuses_other_args(small_idx, tmp_path):
    a = prepare_small(small_idx, tmp_path / "a", seed=3)
    prepare_small(small_idx, tmp_path / "b", seed=3)
    c = prepare_small(small_idx, tmp_path / "c", seed=4)
    assert a["counts"] == {"labeled": 200, "unlabeled": 2800, "test": 500}
    for split, names in a["files"].items():
        for name in names:
            same = (tmp_path / "a" / split / name).read_bytes()
            assert same == (tmp_path / "b" / split / name).read_bytes()
    assert ((tmp_path / "a" / "labeled" / a["files"]["labeled"][0]).read_bytes()
            != (tmp_path / "c" / "labeled" / c["files"]["labeled"][0]).read_bytes())
    # A rerun with the same arguments does nothing; other arguments are refused.
    marker = tmp_path / "a" / "prepared.json"
    mtime = marker.stat().st_mtime_ns
    assert prepare_small(small_idx, tmp_path / "a", seed=3) == json.loads(marker.read_text())
    assert marker.stat().st_mtime_ns == mtime
    with pytest.raises(common.UserError, match="seed: 3 -> 5"):
        prepare_small(small_idx, tmp_path / "a", seed=5)


def test_bad_fashion_mnist_sources_name_the_file(small_idx, tmp_path):
    with pytest.raises(common.UserError, match="missing file .*nowhere"):
        prepare_data.prepare_fashion_mnist(str(tmp_path / "out"), source_dir=str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(small_idx):
        (bad / f).write_bytes((small_idx / f).read_bytes())
    raw = (bad / "train-images-idx3-ubyte.gz").read_bytes()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])  # truncated gzip
    with pytest.raises(common.UserError, match="train-images-idx3-ubyte.gz"):
        prepare_small(bad, tmp_path / "out")
    write_idx(bad / "train-images-idx3-ubyte.gz", np.zeros((3000, 28), np.uint8))  # wrong magic
    with pytest.raises(common.UserError, match="corrupt IDX file .*train-images"):
        prepare_small(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(common.UserError, match="class 0 has only"):
        prepare_small(small_idx, tmp_path / "out", k=1000)


# ---------------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("float16", [False, True])
def test_pseudo_label_records_round_trip(float16):
    p = np.array([0.05, 0.7, 0.25], np.float32)
    ex = data.pseudo_label_example(b"bytes", "img/7", p, true_label=2, copies=3, float16=float16)
    assert ("probabilities/float16" in ex.features.feature) == float16
    assert ("probabilities" in ex.features.feature) != float16
    r = data.parse_pseudo_labeled(ex.SerializeToString(), 3)
    np.testing.assert_allclose(r["probabilities"].numpy(), p, atol=1e-3 if float16 else 0)
    assert r["probabilities"].dtype == tf.float32
    assert int(r["label"]) == 1 and r["label"].dtype == tf.int32
    assert abs(float(r["prob"]) - 0.7) < 1e-6
    assert int(r["copies"]) == 3 and r["image"].numpy() == b"bytes" and r["id"] == b"img/7"
    assert int(data.parse_diagnostic_label(ex.SerializeToString())) == 2
    plain = data.pseudo_label_example(b"b", "i", p, float16=float16).SerializeToString()
    assert int(data.parse_pseudo_labeled(plain, 3)["copies"]) == 1
    assert int(data.parse_diagnostic_label(plain)) == -1
    with pytest.raises(tf.errors.InvalidArgumentError, match="without 4 probabilities"):
        data.parse_pseudo_labeled(plain, 4)


def test_pseudo_label_records_parse_alike_one_at_a_time_and_as_a_batch():
    """The student's reader parses a batch of records at once: every field of every record as
    the one-record parse gives it, float32 and float16 labels mixed, defaults filled; a bad
    record in the batch fails it with the one-record message."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(7):
        p = rng.dirichlet(np.ones(10)).astype(np.float32)
        kw = dict(true_label=i % 3, copies=i + 1) if i % 2 else {}
        records.append(data.pseudo_label_example(b"img%d" % i, f"u/{i}" if i != 3 else "", p,
                                                 float16=i % 3 == 0, **kw).SerializeToString())
    batch = data.parse_pseudo_labeled(tf.constant(records), 10, fallback_id="none")
    for i, record in enumerate(records):
        one = data.parse_pseudo_labeled(record, 10, fallback_id="none")
        for key, value in one.items():
            np.testing.assert_array_equal(batch[key][i].numpy(), value.numpy(), err_msg=key)
    assert batch["probabilities"].shape == (7, 10) and batch["copies"].numpy().tolist() == [
        1, 2, 1, 4, 1, 6, 1]
    bad = data.pseudo_label_example(b"x", "x", np.full(4, 0.25)).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="without 10 probabilities"):
        data.parse_pseudo_labeled(tf.constant(records[:2] + [bad]), 10)


def test_image_records_round_trip_and_id_fallbacks():
    ex = data.image_example(b"\x89PNG...", 7, "set/0001").SerializeToString()
    r = data.parse_labeled(ex)
    assert r["image"].numpy() == b"\x89PNG..." and int(r["label"]) == 7 and r["id"] == b"set/0001"
    assert int(data.parse_labeled(ex, label_offset=1)["label"]) == 6
    assert int(data.parse_diagnostic_label(ex)) == -1
    # ImageNet converter records: no image/id, but image/filename.
    imagenet = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": data._bytes(b"jpg"), "image/class/label": data._int(1),
        "image/filename": data._bytes(b"n01440764_1.JPEG")})).SerializeToString()
    assert data.parse_labeled(imagenet, 1)["id"] == b"n01440764_1.JPEG"
    bare = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": data._bytes(b"jpg")})).SerializeToString()
    assert data.parse_unlabeled(bare, fallback_id="f:3")["id"] == b"f:3"


# ---------------------------------------------------------------------------------------------
# Folders of images and ImageNet-style records.
# ---------------------------------------------------------------------------------------------
def write_image(path, array, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = {"png": png, "jpg": jpeg}[fmt](array)
    path.write_bytes(encoded)
    return encoded


@pytest.fixture
def image_folders(tmp_path):
    """labeled/<class>/ (3 classes; PNG and JPEG, colour and grey, 20-26 x 30 px), a nested
    unlabeled pile and test/<class>/ with 2 of the classes; returns (root, {id: bytes})."""
    rng = np.random.default_rng(0)
    root, files = tmp_path / "src", {}
    for c, name in enumerate(["zebra", "ant", "moth"]):
        for i in range(4 + c):
            rgb = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            image, fmt = [(rgb, "png"), (rgb, "jpg"), (rgb[..., :1], "png")][i % 3]
            rel = f"{name}/img{i}.{fmt}"
            files[f"labeled/{rel}"] = write_image(root / "labeled" / rel, image, fmt)
    for rel in ["a.png", "b.jpg", "deep/down/c.png", "deep/d.jpg"]:
        image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        files[f"unlabeled/{rel}"] = write_image(root / "unlabeled" / rel, image, rel[-3:])
    for rel in ["moth/t0.png", "ant/t1.png", "ant/t2.jpg"]:
        image = rng.integers(0, 256, (22, 22, 3), dtype=np.uint8)
        files[f"test/{rel}"] = write_image(root / "test" / rel, image, rel[-3:])
    (root / "labeled" / "ant" / "notes.txt").write_text("not an image")
    (root / "unlabeled" / ".hidden.png").write_bytes(b"skipped")
    return root, files


def prepare(root, out, **kwargs):
    return prepare_data.prepare_folders(str(out), str(root / "labeled"), str(root / "unlabeled"),
                                str(root / "test"), **kwargs)


def test_prepare_folders_keeps_bytes_labels_and_measures_settings(image_folders, tmp_path):
    root, files = image_folders
    out = tmp_path / "out"
    (tmp_path / ".out.tmp-1-dead").mkdir()  # left by a killed run: removed
    summary = prepare(root, out, num_shards=2)
    assert not (tmp_path / ".out.tmp-1-dead").exists()
    assert summary["counts"] == {"labeled": 15, "unlabeled": 4, "test": 3}
    assert sorted(os.listdir(out)) == ["class_names.json", "dataset.json", "labeled",
                                       "prepared.json", "test", "unlabeled"]
    classes = json.loads((out / "class_names.json").read_text())
    assert classes == ["ant", "moth", "zebra"]
    seen = {}
    for split in ("labeled", "unlabeled", "test"):
        shards = common.list_files(str(out / split))
        assert [os.path.basename(f) for f in shards] == [
            f"{split}-0000{i}-of-0000{len(shards)}.tfrecord" for i in range(len(shards))]
        for serialized in tf.data.TFRecordDataset(shards):
            if split == "unlabeled":  # image and id only: no label to parse
                with pytest.raises(tf.errors.InvalidArgumentError):
                    data.parse_labeled(serialized)
                r = data.parse_unlabeled(serialized)
            else:
                r = data.parse_labeled(serialized)
                assert classes[int(r["label"])] == r["id"].numpy().decode().split("/")[1]
            image_id = r["id"].numpy().decode()
            assert r["image"].numpy() == files[image_id]  # bytes stored unchanged
            seen[image_id] = split
    assert sorted(seen) == sorted(files)  # nested unlabeled images included, others skipped
    assert summary["per_class"] == {"labeled": [5, 6, 4], "test": [2, 1, 0]}
    # Settings measured on the labeled images: median short side 22 px -> small images at 22 px;
    # some are colour -> 3 channels; mean/std over every pixel, as decoded.
    pixels = np.concatenate([
        tf.io.decode_image(files[k], channels=3).numpy().reshape(-1, 3)
        for k in files if k.startswith("labeled/")]).astype(np.float64)
    settings = json.loads((out / "dataset.json").read_text())
    assert {k: settings[k] for k in ("num_classes", "image_size", "num_channels", "input_kind",
                                     "flip")} == dict(num_classes=3, image_size=22,
                                                      num_channels=3, input_kind="small", flip=True)
    np.testing.assert_allclose(settings["mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(settings["std"], pixels.std(0), atol=1e-3)
    # Every stage gets them from the output dir, a split dir or a glob of records.
    for where in (out, out / "labeled", out / "test" / "*"):
        info = data.dataset_info("folder", data_dir=str(where))
        assert (info.num_classes, info.image_size, info.num_channels, info.input_kind,
                info.flip) == (3, 22, 3, "small", True)
        assert info.mean == tuple(settings["mean"]) and info.label_offset == 0
    assert data.dataset_info("folder", data_dir=str(out), image_size=32).image_size == 32
    # A folder data set without its conversion (main.py --dataset=folder on raw images): named.
    with pytest.raises(common.UserError, match="needs num_classes, or a data dir with the "
                                               "class_names.json that prepare_data.py --dataset=folder"):
        data.dataset_info("folder", data_dir=str(root))
    # A rerun with the same arguments does nothing; other arguments are one clear error.
    assert prepare(root, out, num_shards=2) == summary
    with pytest.raises(common.UserError, match="num_shards: 2 -> 1"):
        prepare(root, out, num_shards=1)


def test_grey_large_images_get_imagenet_preprocessing_in_one_channel(tmp_path):
    rng = np.random.default_rng(1)
    for c in range(2):
        for i in range(3):
            grey = rng.integers(0, 256, (80 + 10 * i, 100, 1), dtype=np.uint8)
            write_image(tmp_path / "l" / f"digit{c}" / f"{i}.png", grey, "png")
            rgb_grey = np.repeat(grey, 3, axis=-1)  # grey saved as RGB is grey too
            write_image(tmp_path / "l" / f"digit{c}" / f"{i}_rgb.png", rgb_grey, "png")
    summary = prepare_data.prepare_folders(str(tmp_path / "out"), str(tmp_path / "l"), flip="false")
    assert summary["counts"] == {"labeled": 12}
    settings = summary["dataset"]
    assert (settings["input_kind"], settings["image_size"], settings["num_channels"],
            settings["flip"]) == ("imagenet", 224, 1, False)
    info = data.dataset_info("folder", data_dir=str(tmp_path / "out" / "labeled"))
    assert len(info.mean) == len(info.std) == 1 and not info.flip
    # Explicit settings win over the measured ones.
    forced = prepare_data.prepare_folders(str(tmp_path / "o2"), str(tmp_path / "l"), image_size=40,
                                  input_kind="small", num_channels=3)["dataset"]
    assert (forced["input_kind"], forced["image_size"], forced["num_channels"],
            len(forced["mean"])) == ("small", 40, 3, 3)


def test_prepare_folders_bad_inputs_name_the_path(image_folders, tmp_path):
    root, _ = image_folders
    out = tmp_path / "o"
    with pytest.raises(common.UserError, match="--labeled_dir .*missing_dir is not a directory"):
        prepare_data.prepare_folders(str(out), str(tmp_path / "missing_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="no class sub-folders"):
        prepare_data.prepare_folders(str(out), str(tmp_path / "empty"))
    with pytest.raises(common.UserError, match="--unlabeled_dir .*empty holds no images"):
        prepare_data.prepare_folders(str(out), str(root / "labeled"), str(tmp_path / "empty"))
    (root / "test" / "horse").mkdir()
    write_image(root / "test" / "horse" / "h.png", np.zeros((8, 8, 3), np.uint8), "png")
    with pytest.raises(common.UserError, match="--test_dir=.* classes the labeled .*: horse"):
        prepare(root, out)
    for bad in (root / "labeled" / "ant" / "broken.jpg", root / "unlabeled" / "deep" / "x.png"):
        bad.write_bytes(b"this is not an image")
        with pytest.raises(common.UserError, match=f"{bad} is not a readable image"):
            prepare_data.prepare_folders(str(out), str(root / "labeled"), str(root / "unlabeled"))
        bad.unlink()
    assert not out.exists() and os.listdir(tmp_path) == ["src", "empty"]  # nothing half-written


# Bad inputs: each test names its rows of bench/bad_inputs.md.
def two_class_folder(root, per_class=3, shape=(20, 24, 3)):
    rng = np.random.default_rng(5)
    for c in ("cat", "dog"):
        for i in range(per_class):
            write_image(root / c / f"{i}.png", rng.integers(0, 256, shape, dtype=np.uint8), "png")
    return root


def test_images_that_do_not_decode_are_named_or_skipped(tmp_path):
    """Rows "truncated JPEG", "random bytes behind a JPEG header", "unreadable file",
    "--skip_bad_images": each refused naming the file; with the flag left out and counted."""
    root, out = two_class_folder(tmp_path / "src"), tmp_path / "out"
    rng = np.random.default_rng(2)
    good = jpeg(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    header = good[:good.index(b"\xff\xda") + 14]  # everything up to the scan data
    bad = {"cat/truncated.jpg": good[:len(good) // 2],
           "dog/random.jpg": header + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
           "dog/link.jpg": None}  # a link to a file that is gone
    for rel, content in bad.items():
        path = root / rel
        if content is None:
            path.symlink_to(tmp_path / "gone.jpg")
        else:
            path.write_bytes(content)
        with pytest.raises(common.UserError, match=re.escape(str(path)) + " is not a readable "
                           r"image \(JPEG, PNG, GIF or BMP\): .*\(--skip_bad_images skips"):
            prepare_data.prepare_folders(str(out), str(root))
        assert not out.exists()
        path.unlink()
    for rel, content in bad.items():
        (root / rel).symlink_to(tmp_path / "gone.jpg") if content is None else (
            root / rel).write_bytes(content)
    summary = prepare_data.prepare_folders(str(out), str(root), skip_bad_images=True)
    assert summary["counts"] == {"labeled": 6} and summary["per_class"]["labeled"] == [3, 3]
    assert summary["skipped_bad_images"] == {"labeled": {"count": 3, "files": sorted(bad)}}
    assert json.loads((out / "prepared.json").read_text())["skipped_bad_images"] == \
        summary["skipped_bad_images"]
    assert len(common.list_files(str(out / "labeled"))) == 1 and data.check_records(
        common.list_files(str(out / "labeled")), decode=True) == 6
    # A class whose every image is bad cannot be kept.
    for i in range(3):
        (root / "cat" / f"{i}.png").write_bytes(good[:100])
    with pytest.raises(common.UserError, match=r"class folder .*src/cat: none of its images"):
        prepare_data.prepare_folders(str(tmp_path / "o2"), str(root), skip_bad_images=True)


def test_folders_with_one_class_are_refused(tmp_path):
    """Row "a one-class folder" (labeled or test)."""
    root = two_class_folder(tmp_path / "src")
    shutil.copytree(root / "cat", tmp_path / "test" / "cat")
    with pytest.raises(common.UserError, match=r"--test_dir=.*test has one class folder \(cat\): "
                       "a classifier needs at least 2 classes"):
        prepare_data.prepare_folders(str(tmp_path / "o"), str(root), test_dir=str(tmp_path / "test"))
    shutil.rmtree(root / "dog")
    with pytest.raises(common.UserError, match=r"--labeled_dir=.*src has one class folder "
                       r"\(cat\): a classifier needs at least 2 classes, one sub-folder each "
                       r"\(is it a class folder itself\?\)"):
        prepare_data.prepare_folders(str(tmp_path / "o"), str(root))
    assert not (tmp_path / "o").exists()


def test_a_1x1_image_gets_every_view(tmp_path):
    """Row "a valid 1x1 image": it converts, and its eval and training views have the
    pipeline's size (the centre crop of a 1 px side used to be 0 px: "target_width must be >
    0")."""
    root = two_class_folder(tmp_path / "src", shape=(1, 1, 3))
    prepare_data.prepare_folders(str(tmp_path / "o"), str(root), input_kind="imagenet", image_size=32)
    info = data.dataset_info("folder", data_dir=str(tmp_path / "o"))
    images, labels = next(iter(data.labeled_dataset(str(tmp_path / "o" / "labeled"), info, 32,
                                                    6, is_training=False)))
    assert images.shape == (6, 32, 32, 3) and sorted(labels.numpy()) == [0, 0, 0, 1, 1, 1]
    pixel = tf.io.decode_png((root / "cat" / "0.png").read_bytes())[0, 0].numpy()
    view = data.preprocess_for_eval((root / "cat" / "0.png").read_bytes(), info, 32).numpy()
    np.testing.assert_allclose(view, np.broadcast_to(pixel, (32, 32, 3)), atol=0.5)
    encoded = tf.constant([(root / c / "0.png").read_bytes() for c in ("cat", "dog")])
    train = data.train_views(encoded, info, 32, "basic", 2, 10, SEED)  # bbox crop, flip
    assert train.shape == (2, 32, 32, 3) and np.isfinite(train.numpy()).all()


def test_pseudo_labeled_reader_refuses_raw_unlabeled_records(tmp_path):
    """Row "the raw unlabeled split as --unlabel_data_dir" (and another data set's labels)."""
    image = png(np.zeros((32, 32, 1), np.uint8))
    write_records(tmp_path / "empty.tfrecord", [])  # an empty shard is passed over
    write_records(tmp_path / "raw.tfrecord", [data.image_example(image, None, "u/0")])
    files = [str(tmp_path / "empty.tfrecord"), str(tmp_path / "raw.tfrecord")]
    with pytest.raises(common.UserError, match=r"raw.tfrecord: record 0 has no soft labels "
                       r"\(`probabilities`\): these are unlabeled images, not label_data.py or "
                       "filter_balance.py output"):
        data.pseudo_labeled_dataset(files, FASHION, 32, 4, 10, "none")
    write_records(tmp_path / "five.tfrecord",
                  [data.pseudo_label_example(image, "p/0", np.full(5, 0.2))])
    with pytest.raises(common.UserError, match="five.tfrecord: record 0 has 5 class "
                       "probabilities, the model 10 classes"):
        data.pseudo_labeled_dataset(str(tmp_path / "five.tfrecord"), FASHION, 32, 4, 10, "none")
    write_records(tmp_path / "ten.tfrecord",
                  [data.pseudo_label_example(image, "p/0", np.full(10, 0.1), float16=True)])
    batch = next(iter(data.pseudo_labeled_dataset(str(tmp_path / "ten.tfrecord"), FASHION, 32, 1,
                                                  10, "none", shuffle_buffer=1)))
    assert batch[1].shape == (1, 10)


@pytest.mark.slow
def test_folder_data_reads_through_the_datasets(image_folders, tmp_path):
    """Converted folders train and evaluate with their own settings (small, 22 px, 3 channels):
    labeled batches, on-the-fly pairs from the label-free pile, eval of the test split."""
    root, _ = image_folders
    out = tmp_path / "out"
    prepare(root, out)
    info = data.dataset_info("folder", data_dir=str(out))
    x, y = next(iter(data.labeled_dataset(str(out / "labeled"), info, info.image_size, 4, True,
                                          "basic", seed=0, shuffle_buffer=16)))
    assert x.shape == (4, 22, 22, 3) and set(y.numpy()) <= {0, 1, 2}
    student, teacher = next(iter(data.unlabeled_pair_dataset(
        str(out / "unlabeled"), info, 22, 4, "basic", seed=0, shuffle_buffer=16)))
    assert student.shape == teacher.shape == (4, 22, 22, 3)
    labels = np.concatenate([y for _, y in data.labeled_dataset(
        str(out / "test"), info, 22, 2, False).as_numpy_iterator()])
    assert sorted(labels) == [0, 0, 1]


@pytest.mark.slow
def test_imagenet_style_records_read_with_label_offset(tmp_path):
    """Records as the standard ImageNet converter writes them (JPEG, 1-based labels,
    image/filename, shards without extension) and unlabeled records holding only
    image/encoded, at 224 px, through every reader."""
    rng = np.random.default_rng(1)
    smooth = lambda h, w: np.clip(  # noqa: E731  (compresses well: small records)
        rng.normal(128, 40, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1), 0, 255).astype(np.uint8)
    images = [smooth(256 + 16 * i, 320) for i in range(6)]
    for shard in range(2):  # converter names: no extension, 1-based labels, image/filename
        write_records(tmp_path / f"train-0000{shard}-of-00002", [
            tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": data._bytes(jpeg(images[i])),
                "image/class/label": data._int(i % 3 + 1),
                "image/filename": data._bytes(f"img_{i}.JPEG".encode())}))
            for i in range(shard * 3, shard * 3 + 3)])
    write_records(tmp_path / "unlabeled-00000-of-00001", [
        tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": data._bytes(jpeg(image))})) for image in images])
    with pytest.raises(common.UserError, match=r"train-\*"):  # a dir means *.tfrecord*: hint
        common.list_files(str(tmp_path))
    info = data.dataset_info("imagenet", num_classes=3)
    assert info.label_offset == 1 and info.input_kind == "imagenet" and info.image_size == 224
    ds = data.labeled_dataset(str(tmp_path / "train-*"), info, 224, 4, is_training=False)
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 2]  # one pass, last partial batch kept
    labels = np.concatenate([b[1] for b in batches])
    # Deterministic order: file 0 (records 0, 1, 2) interleaved with file 1 (3, 4, 5).
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    assert batches[0][0].shape == (4, 224, 224, 3) and batches[0][0].dtype == np.float32
    train = data.labeled_dataset(str(tmp_path / "train-*"), info, 224, 4, is_training=True,
                                 augment_name="randaugment", seed=0, shuffle_buffer=6)
    x, y = next(iter(train))
    assert x.shape == (4, 224, 224, 3) and set(y.numpy()) <= {0, 1, 2}
    # Unlabeled records without ids: a student at 224 px, its teacher at 240 px.
    unlabeled = str(tmp_path / "unlabeled-*")
    student, teacher = next(iter(data.unlabeled_pair_dataset(
        unlabeled, info, 224, 3, "randaugment", seed=0, teacher_image_size=240,
        shuffle_buffer=6)))
    assert student.shape == (3, 224, 224, 3) and teacher.shape == (3, 240, 240, 3)
    batch = next(iter(data.unlabeled_records_dataset(common.list_files(unlabeled), info, 240, 6)))
    assert batch["image"].shape == (6, 240, 240, 3)
    assert batch["id"].numpy().tolist() == [f"unlabeled-00000-of-00001:{i}".encode()
                                            for i in range(6)]
    # With the wrong offset the labels leave [0, num_classes): one clear error.
    bad = data.dataset_info("imagenet", num_classes=3, label_offset=0)
    with pytest.raises(common.UserError, match="label >= num_classes=3"):
        with data.translate_data_errors(str(tmp_path / "train-*")):
            list(data.labeled_dataset(str(tmp_path / "train-*"), bad, 32, 4, False))


# ---------------------------------------------------------------------------------------------
# Preprocessing.
# ---------------------------------------------------------------------------------------------
def test_eval_preprocessing_centre_crop_is_deterministic():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    info = data.dataset_info("imagenet")
    encoded = tf.constant(png(image))
    # crop = int(32 / (32 + 32) * 64) = 32 px at top (64-32+1)//2 = 16, left (96-32+1)//2 = 32;
    # a 32 -> 32 bicubic resize is the identity.
    out = data.preprocess_for_eval(encoded, info, 32)
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), image[16:48, 32:64], atol=1e-3)
    np.testing.assert_array_equal(out.numpy(), data.preprocess_for_eval(encoded, info, 32).numpy())
    big = data.preprocess_for_eval(encoded, info, 48)  # crop int(48/80*64)=38 px, upsampled
    assert big.shape == (48, 48, 3)
    assert float(tf.reduce_min(big)) >= 0 and float(tf.reduce_max(big)) <= 255
    # Small images: the image itself; augment_name="none" is eval preprocessing.
    grey = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    small = data.preprocess_for_eval(tf.constant(png(grey)), FASHION, 32)
    np.testing.assert_array_equal(small.numpy(), grey.astype(np.float32))
    np.testing.assert_array_equal(
        data.train_views(tf.constant([png(grey)]), FASHION, 32, "none", 2, 10, SEED)[0].numpy(),
        small.numpy())


@pytest.mark.parametrize("kind", ["small", "imagenet"])
def test_train_preprocessing_shapes_range_and_randomness(kind):
    rng = np.random.default_rng(3)
    if kind == "small":
        info, size = FASHION, 32
        image = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    else:
        info, size = data.dataset_info("imagenet"), 24
        image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    outs = data.train_views(tf.constant([png(image)] * 6), info, size, "basic", 2, 10,
                            SEED).numpy()
    assert outs.shape == (6, size, size, info.num_channels) and outs.dtype == np.float32
    assert outs.min() >= 0 and outs.max() <= 255
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # random views per image
    with pytest.raises(common.UserError, match="augment_name"):
        data.labeled_dataset(["unread.tfrecord"], info, size, 6, True, "autoaugment")


@pytest.mark.slow
def test_small_basic_view_is_a_reflect_padded_crop_or_its_mirror(fashion_dir):
    out, _ = fashion_dir
    pairs = data.unlabeled_pair_dataset(os.path.join(out, "unlabeled"), FASHION, 32, 16, "basic",
                                        seed=0)
    student, teacher = (t.numpy() for t in next(iter(pairs)))
    assert not np.array_equal(student, teacher)
    needs_pad_4 = 0
    for s, t in zip(student, teacher):
        padded = np.pad(t, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        offsets = [(y, x) for y in range(9) for x in range(9)
                   for v in (padded[y:y + 32, x:x + 32],) if np.array_equal(s, v)
                   or np.array_equal(s, v[:, ::-1])]
        assert offsets  # a crop of the padded image, maybe mirrored
        needs_pad_4 += all(not (2 <= y <= 6 and 2 <= x <= 6) for y, x in offsets)
    assert needs_pad_4 > 0  # crops reach beyond a 2-pixel padding


@pytest.mark.slow
def test_randaugment_views():
    rng = np.random.default_rng(4)
    for info, size, shape in [(FASHION, 32, (32, 32, 1)),
                              (data.dataset_info("imagenet"), 40, (48, 64, 3))]:
        encoded = tf.constant([png(rng.integers(0, 256, shape, dtype=np.uint8))] * 4)
        fn = tf.function(lambda e: data.train_views(e, info, size, "randaugment", 2, 10, SEED))
        out = fn(encoded).numpy()
        assert out.shape == (4, size, size, info.num_channels) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
    # Small images then get one cutout square of up to 16x16 filled with 128 (clipped at the
    # border; the reflect padding may mirror up to 4 more rows/columns of it into the crop).
    flat = tf.constant([png(np.zeros((32, 32, 1), np.uint8))] * 8)
    sides = []
    for grey in data.train_views(flat, FASHION, 32, "randaugment", 0, 0, SEED).numpy()[..., 0]:
        assert set(np.unique(grey)) <= {0.0, 128.0}
        mask = grey == 128
        rows, cols = mask.any(axis=1), mask.any(axis=0)
        assert rows.sum() > 0
        np.testing.assert_array_equal(mask, np.outer(rows, cols))  # a square's rows x columns
        sides += [rows.sum(), cols.sum()]
    assert 12 <= max(sides) <= 20  # side < 12 needs a centre within 4 px of the border


# ---------------------------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pseudo_labeled_dataset_repeats_each_record_copies_times(tmp_path):
    copies = [1, 3, 2, 1, 4, None, 2]
    examples = []
    for i, c in enumerate(copies):  # image value 10*i identifies the record
        p = np.eye(10, dtype=np.float32)[i] * 0.9 + 0.01
        examples.append(data.pseudo_label_example(png(np.full((32, 32, 1), 10 * i, np.uint8)),
                                                  f"u/{i}", p, copies=c, float16=i % 2 == 1))
    write_records(tmp_path / "a.tfrecord", examples[:4])
    write_records(tmp_path / "b.tfrecord", examples[4:])
    ds = data.pseudo_labeled_dataset(str(tmp_path), FASHION, 32, 5, 10, "none", repeat=False)
    seen = collections.Counter()
    for images, probs in ds.as_numpy_iterator():
        for image, p in zip(images, probs):
            i = int(round(image.mean() / 10))
            assert np.all(image == 10 * i) and int(np.argmax(p)) == i
            seen[i] += 1
    assert seen == {i: c or 1 for i, c in enumerate(copies)}
    train = data.pseudo_labeled_dataset(str(tmp_path), FASHION, 32, 8, 10, "basic", seed=0)
    batches = list(train.take(3).as_numpy_iterator())  # forever, full batches
    assert [b[0].shape for b in batches] == [(8, 32, 32, 1)] * 3
    assert all(b[1].shape == (8, 10) for b in batches)


@pytest.mark.slow
def test_labeled_dataset_training_repeats_and_eval_makes_one_pass(fashion_dir):
    out, _ = fashion_dir
    test_dir = os.path.join(out, "test")
    train = data.labeled_dataset(test_dir, FASHION, 32, 256, is_training=True,
                                 augment_name="basic", seed=0)
    n = 0
    for images, labels in train.take(45):  # 11,520 > 10,000 images: repeats
        assert images.shape == (256, 32, 32, 1) and labels.dtype == tf.int32
        n += len(labels)
    assert n == 45 * 256
    eval_ds = data.labeled_dataset(test_dir, FASHION, 32, 3000, is_training=False)
    sizes = [len(y) for _, y in eval_ds]
    assert sizes == [3000, 3000, 3000, 1000]


@pytest.mark.slow
def test_unlabeled_records_dataset_is_ordered_with_ids_and_true_labels(fashion_dir, tmp_path):
    out, _ = fashion_dir
    files = common.list_files(os.path.join(out, "unlabeled"))[:1]
    first = [b["id"] for b in data.unlabeled_records_dataset(files, FASHION, 32, 1000)
             .as_numpy_iterator()]
    again = [b["id"] for b in data.unlabeled_records_dataset(files, FASHION, 32, 1000)
             .as_numpy_iterator()]
    stored = read_all(files, {"image/id": tf.io.FixedLenFeature([], tf.string)})["image/id"]
    np.testing.assert_array_equal(np.concatenate(first), stored)  # file order, record order
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    batch = next(iter(data.unlabeled_records_dataset(files, FASHION, 32, 8)))
    assert batch["image"].shape == (8, 32, 32, 1) and batch["encoded"].dtype == tf.string
    assert set(batch["true_label"].numpy()) <= set(range(10))
    # Records without ids are named <file basename>:<index>.
    write_records(tmp_path / "x.tfrecord", [tf.train.Example(features=tf.train.Features(
        feature={"image/encoded": data._bytes(png(np.zeros((32, 32, 1), np.uint8)))}))] * 2)
    b = next(iter(data.unlabeled_records_dataset(str(tmp_path / "x.tfrecord"), FASHION, 32, 2)))
    assert b["id"].numpy().tolist() == [b"x.tfrecord:0", b"x.tfrecord:1"]
    assert b["true_label"].numpy().tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------------
# Files, errors and atomic outputs.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_dir", [False, True])
def test_atomic_output_leaves_nothing_on_failure(tmp_path, as_dir):
    target = tmp_path / "out"

    def write(tmp, text):
        if as_dir:
            os.makedirs(tmp)
            tmp = os.path.join(tmp, "f.txt")
        with open(tmp, "w") as f:
            f.write(text)

    def content():
        return (target / "f.txt" if as_dir else target).read_text()

    with pytest.raises(ValueError):
        with common.atomic_output(str(target)) as tmp:
            write(tmp, "partial")
            raise ValueError("boom")
    assert os.listdir(tmp_path) == []
    with common.atomic_output(str(target)) as tmp:
        write(tmp, "one")
    assert content() == "one"
    with pytest.raises(KeyboardInterrupt):  # an interrupted rewrite keeps the old output
        with common.atomic_output(str(target)) as tmp:
            write(tmp, "two")
            raise KeyboardInterrupt
    assert content() == "one" and os.listdir(tmp_path) == ["out"]
    with common.atomic_output(str(target)) as tmp:
        write(tmp, "three")
    assert content() == "three" and os.listdir(tmp_path) == ["out"]
    common.write_json(str(tmp_path / "j.json"), {"b": 1, "a": [2]})
    assert (tmp_path / "j.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'


def test_list_files_and_corrupt_records_give_user_errors(tmp_path):
    with pytest.raises(common.UserError, match="no labeled files match .*missing"):
        common.list_files(str(tmp_path / "missing"), "labeled")
    with pytest.raises(common.UserError, match=r"no data files match .*\*.tfrecord"):
        common.list_files(str(tmp_path / "*.tfrecord"))
    (tmp_path / "d").mkdir()
    for name in ["b.tfrecord", "a.tfrecord", "c.txt"]:
        write_records(tmp_path / "d" / name, [data.image_example(
            png(np.zeros((32, 32, 1), np.uint8)), 1, f"{name}/{i}") for i in range(20)])
    files = common.list_files(str(tmp_path / "d"))
    assert [os.path.basename(f) for f in files] == ["a.tfrecord", "b.tfrecord"]
    assert data.check_records(files, decode=True) == 40
    raw = (tmp_path / "d" / "b.tfrecord").read_bytes()
    (tmp_path / "d" / "b.tfrecord").write_bytes(raw[:100] + b"\0" * 8 + raw[108:])
    with pytest.raises(common.UserError, match="b.tfrecord"):
        data.check_records(files)
    with pytest.raises(common.UserError, match="corrupt record file .*b.tfrecord"):
        with data.translate_data_errors(str(tmp_path / "d")):
            list(data.labeled_dataset(str(tmp_path / "d"), FASHION, 32, 8, False))
    # A record whose image does not decode is found too.
    (tmp_path / "e").mkdir()
    write_records(tmp_path / "e" / "good.tfrecord", [data.image_example(
        png(np.zeros((32, 32, 1), np.uint8)), 1, "g")])
    write_records(tmp_path / "e" / "junk.tfrecord", [data.image_example(b"junk", 1, "j")])
    with pytest.raises(common.UserError, match="corrupt record file .*junk.tfrecord, record 0"):
        with data.translate_data_errors(str(tmp_path / "e")):
            list(data.labeled_dataset(str(tmp_path / "e"), FASHION, 32, 8, False))


@pytest.mark.slow
def test_script_converts_folders_and_reports_user_errors_in_one_line(image_folders, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root, files = image_folders

    def run(*args):
        return subprocess.run([sys.executable, "prepare_data.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = run("--dataset=folder", f"--labeled_dir={root / 'labeled'}",
             f"--unlabeled_dir={root / 'unlabeled'}", f"--output_dir={tmp_path / 'o'}",
             "--flip=false")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1]) == {"labeled": 15, "unlabeled": 4}
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["flip"] is False
    assert len(os.listdir(tmp_path / "o" / "unlabeled")) == 4  # 8 shards, at most one per image
    for args, where in [(["--dataset=folder", f"--labeled_dir={tmp_path / 'nope'}"], "nope"),
                        (["--dataset=folder", f"--source_dir={root}"], "--labeled_dir")]:
        bad = run(*args, f"--output_dir={tmp_path / 'o2'}")
        assert bad.returncode == 2
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and where in errors[0], bad.stderr
    # --help states the automatic choices.
    help_text = " ".join(run("--help").stdout.split())
    for default in ("median short side if it is <= 64 px (small images), else 224",
                    "auto = true", "1 if every labeled image is grey, else 3",
                    "folder: every labeled image is kept"):
        assert default in help_text


def crop_views(image):
    """Every small-image "basic" view of `image` (reflect-pad 4, 32 x 32 crop, maybe mirrored)
    as float32 bytes -> (offset y, offset x, flipped)."""
    image = image.astype(np.float32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    views = {}
    for y in range(9):
        for x in range(9):
            window = padded[y:y + 32, x:x + 32]
            views[window.tobytes()] = (y, x, 0)
            views[np.ascontiguousarray(window[:, ::-1]).tobytes()] = (y, x, 1)
    assert len(views) == 162, "the test image has symmetric views"
    return views


def test_batch_crop_and_flip_is_uniform_per_image():
    """data._random_crop_and_flip on a batch: every image gets its own offset (all 9 x 9 equally
    likely) and its own flip (half of them), as the per-image pad + random_crop + flip."""
    n = 4096
    image = np.arange(32 * 32, dtype=np.float32).reshape(32, 32, 1)  # every pixel unique
    crops = data._random_crop_and_flip(tf.constant(np.repeat(image[None], n, 0)), 4, True,
                                       SEED).numpy()
    views = crop_views(image)
    counts, flips = np.zeros((9, 9)), 0
    for crop in crops:
        y, x, flipped = views[crop.tobytes()]  # KeyError: not a crop of the padded image
        counts[y, x] += 1
        flips += flipped
    expected = n / 81
    assert ((counts - expected) ** 2 / expected).sum() < 140  # chi-square, 80 dof: p ~ 1e-4
    assert abs(flips - n / 2) < 4 * np.sqrt(n / 4)
    # flip=False (info.flip: digits, text): crops only, never mirrored.
    crops = data._random_crop_and_flip(tf.constant(np.repeat(image[None], 256, 0)), 4, False,
                                       SEED).numpy()
    assert not any(views[crop.tobytes()][2] for crop in crops)


# ---------------------------------------------------------------------------------------------
# Random streams: (seed, stream) -> reproducible, independent noise.
# ---------------------------------------------------------------------------------------------
def same_image_records(tmp_path, image, n=64):
    """n labeled, unlabeled and pseudo-labeled records of one image: (labeled, unlabeled,
    pseudo-labeled) paths. Whatever order a stream reads them in, image i of batch b shows
    only the noise drawn for that position."""
    encoded = png(image)
    paths = [str(tmp_path / f"{name}.tfrecord") for name in ("l", "u", "p")]
    write_records(paths[0], [data.image_example(encoded, 0, f"l/{i}") for i in range(n)])
    write_records(paths[1], [data.image_example(encoded, None, f"u/{i}") for i in range(n)])
    write_records(paths[2], [data.pseudo_label_example(encoded, f"p/{i}", np.eye(10)[0])
                             for i in range(n)])
    return paths


def test_labeled_and_unlabeled_streams_of_one_seed_are_independent(tmp_path):
    """One seed, equal batch shapes, the same image in every record: image i gets its own crop
    offset and flip in the labeled, the on-the-fly and the pseudo-labeled stream (equal across
    streams only by chance: 1 in 162 views), and another seed (the next model's) differs too."""
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    labeled, unlabeled, pseudo = same_image_records(tmp_path, image)
    views = crop_views(image)

    def offsets(ds):  # the (y, x, flip) of every image of the first 4 batches of 16
        return [views[x.tobytes()] for batch in ds.take(4).as_numpy_iterator()
                for x in batch[0]]

    small = dict(shuffle_buffer=64)
    streams = {
        "labeled": offsets(data.labeled_dataset(labeled, FASHION, 32, 16, True, "basic", seed=0,
                                                **small)),
        "pair": offsets(data.unlabeled_pair_dataset(unlabeled, FASHION, 32, 16, "basic", seed=0,
                                                    **small)),
        "pseudo": offsets(data.pseudo_labeled_dataset(pseudo, FASHION, 32, 16, 10, "basic",
                                                      seed=0, **small)),
        "pair, seed 1": offsets(data.unlabeled_pair_dataset(unlabeled, FASHION, 32, 16, "basic",
                                                            seed=1, **small)),
    }
    assert len(set(streams["labeled"])) > 40  # the views vary: matching them means something
    for a, b in [("labeled", "pair"), ("labeled", "pseudo"), ("pair", "pair, seed 1")]:
        same = sum(x == y for x, y in zip(streams[a], streams[b]))
        assert same <= 4, f"{a} and {b}: {same} of 64 images with the same view (0.4 expected)"


@pytest.mark.parametrize("kind,augment", [
    ("small", "basic"), pytest.param("imagenet", "basic", marks=pytest.mark.slow),
    pytest.param("small", "randaugment", marks=pytest.mark.slow),
    pytest.param("imagenet", "randaugment", marks=pytest.mark.slow)])
def test_one_seed_gives_the_same_batches_another_seed_others(tmp_path, kind, augment):
    """Training batches from parallel maps, bit for bit: the same seed twice gives the same
    batches; another seed or seed=None gives others."""
    rng = np.random.default_rng(6)
    if kind == "small":
        info, size, shape = FASHION, 32, (32, 32, 1)
    else:
        info = data.dataset_info("imagenet", num_classes=10, label_offset=0)
        size, shape = 40, (48, 64, 3)
    path = str(tmp_path / "a.tfrecord")
    write_records(path, [data.image_example(png(rng.integers(0, 256, shape, dtype=np.uint8)),
                                            i % 10, f"a/{i}") for i in range(40)])

    def batches(seed):
        ds = data.labeled_dataset(path, info, size, 8, True, augment, seed=seed,
                                  shuffle_buffer=40)
        return [x for x, _ in ds.take(3).as_numpy_iterator()]

    first = batches(0)
    for again, x in zip(batches(0), first):
        np.testing.assert_array_equal(again, x)
    for other in batches(1) + batches(None):
        assert not any(np.array_equal(other, x) for x in first)


@pytest.mark.slow
def test_start_batch_continues_the_noise_stream(tmp_path):
    """A run resumed at batch 2 draws the noise the uninterrupted run drew for batches 2, 3
    (records of one image: the record order, reshuffled on resumption, does not show)."""
    image = np.random.default_rng(7).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    labeled, _, pseudo = same_image_records(tmp_path, image, n=16)
    for make in (lambda **kw: data.labeled_dataset(labeled, FASHION, 32, 8, True, "basic",
                                                   shuffle_buffer=16, **kw),
                 lambda **kw: data.pseudo_labeled_dataset(pseudo, FASHION, 32, 8, 10, "basic",
                                                          shuffle_buffer=16, **kw)):
        full = [b[0] for b in make(seed=3).take(4).as_numpy_iterator()]
        resumed = [b[0] for b in make(seed=3, start_batch=2).take(2).as_numpy_iterator()]
        np.testing.assert_array_equal(resumed[0], full[2])
        np.testing.assert_array_equal(resumed[1], full[3])
        assert not np.array_equal(full[0], full[2])


def pseudo_records_with_copies(path, num_records, copies):
    """Records of 8 x 8 grey images whose pixels (0, 0) and (0, 1) encode the record index."""
    examples = []
    for i in range(num_records):
        pixels = np.zeros((8, 8, 1), np.uint8)
        pixels[0, :2, 0] = divmod(i, 256)
        examples.append(data.pseudo_label_example(png(pixels), f"u/{i}", np.eye(10)[i % 10],
                                                  copies=copies))
    write_records(path, examples)


def record_index(images):
    return (images[:, 0, 0, 0] * 256 + images[:, 0, 1, 0]).astype(int)


def test_copies_of_one_record_are_spread_over_many_batches(tmp_path):
    """1,000 records with copies=64, a 256-record shuffle buffer, batches of 64: read back to
    back, 64 copies would fill a quarter of the buffer (~16 in a batch); spread L = 256 records
    apart, a batch holds 64/256 = 0.25 copies of an image on average and at most a few."""
    path = str(tmp_path / "p.tfrecord")
    pseudo_records_with_copies(path, 1000, copies=64)
    info = data.dataset_info("fashion_mnist", image_size=8)
    ds = data.pseudo_labeled_dataset(path, info, 8, 64, 10, "none", seed=0, shuffle_buffer=256)
    most = [max(collections.Counter(record_index(images)).values())
            for images, _ in ds.take(50).as_numpy_iterator()]
    assert max(most) <= 4, collections.Counter(most)


def test_every_copy_is_read_once_per_pass(tmp_path):
    path = str(tmp_path / "p.tfrecord")
    pseudo_records_with_copies(path, 100, copies=64)
    info = data.dataset_info("fashion_mnist", image_size=8)
    ds = data.pseudo_labeled_dataset(path, info, 8, 64, 10, "none", repeat=False,
                                     shuffle_buffer=256)
    seen = collections.Counter(np.concatenate([record_index(images)
                                               for images, _ in ds.as_numpy_iterator()]))
    assert seen == {i: 64 for i in range(100)}
