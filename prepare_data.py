"""Data preparation (paper Sec. 3.1: labeled, unlabeled and test images), the first stage of the
run: image sets as sharded TFRecords that data.py reads. Like nanoGPT's data/<name>/prepare.py,
it runs once per data set; a rerun with the same arguments does nothing.

  python prepare_data.py --dataset=fashion_mnist --output_dir=DIR [--num_labeled_per_class=400]
      -> DIR/labeled/    K images per class from the 60k train set (seeded), with labels
         DIR/unlabeled/  the other 60000 - 10K train images; the true label only under
                         `diagnostic/true_label`, which no training path reads
         DIR/test/       the official 10k test set
         DIR/prepared.json  arguments and counts (written last)
  python prepare_data.py --dataset=folder --labeled_dir=L --unlabeled_dir=U --test_dir=T \
      --output_dir=DIR [--skip_bad_images]
      -> DIR/labeled/    one record per image of L/<class>/..., labels 0..K-1 in sorted class
                         folder order, image bytes unchanged; an image that does not decode
                         stops the conversion naming it (--skip_bad_images: left out, counted)
         DIR/unlabeled/  every image under U (a flat or nested pile; no labels)
         DIR/test/       T/<class>/... with the labeled classes' labels
         DIR/class_names.json, DIR/dataset.json (settings measured on the labeled images, read
         by data.dataset_info("folder", data_dir=...)), DIR/prepared.json

The output directory is written under a temporary name and renamed into place, so an interrupted
run leaves nothing behind. ImageNet records of the standard converter need no preparation.
"""
import gzip
import json
import os
import struct
import types
import zlib

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# --- Sharded writing with progress. --------------------------------------------------------------
def write_shards(out_dir, split, serialized_records, num_records, num_shards):
    """Writes `num_records` serialized records, in order, as `num_shards` contiguous shards."""
    tf.io.gfile.makedirs(out_dir)
    bounds = [num_records * s // num_shards for s in range(num_shards + 1)]
    progress = common.Progress(f"writing {split}", num_records)
    records = iter(serialized_records)
    names = [common.shard_name(split, s, num_shards) for s in range(num_shards)]
    for s, name in enumerate(names):
        with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as w:
            for _ in range(bounds[s + 1] - bounds[s]):
                w.write(next(records))
                progress.add(1)
    progress.update(progress.done, force=True)
    return names


def _previous_run(output_dir, args):
    """The summary of a finished run with the same args; None if there is none; else UserError."""
    summary = data.check_prepared(output_dir, args, exact=True)
    if summary is not None:
        logging.info("%s is already prepared with the same arguments: nothing to do", output_dir)
    elif tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
        raise common.UserError(f"{output_dir} exists and is not a finished preparation (no "
                               f"prepared.json); remove it or choose another output directory")
    return summary


# --- Fashion-MNIST (IDX files) -> labeled / unlabeled / test TFRecords. --------------------------
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
DEFAULT_FASHION_MNIST_SHARDS = types.MappingProxyType({"labeled": 2, "unlabeled": 8, "test": 2})


def read_idx(path, expected_dims):
    """A gzip IDX file (magic 0x0000 08 <ndim>, ndim big-endian int32 sizes, uint8 data) as an
    array; UserError naming the file if it is missing or corrupt."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise common.UserError(f"missing file {path}")
    except (OSError, EOFError, zlib.error) as e:
        raise common.UserError(f"corrupt gzip file {path}: {e}")
    ndim = len(expected_dims)
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
        raise common.UserError(f"corrupt IDX file {path}: expected the magic number "
                               f"{0x800 + ndim} for uint8 with {ndim} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if any(want is not None and want != got for want, got in zip(expected_dims, dims)):
        raise common.UserError(f"corrupt IDX file {path}: shape {dims}, expected "
                               f"{list(expected_dims)}")
    if len(raw) != header + int(np.prod(dims)):
        raise common.UserError(f"corrupt IDX file {path}: {len(raw) - header} data bytes for "
                               f"shape {dims}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_fashion_mnist(source_dir, split):
    """(images uint8 [N, 28, 28], labels uint8 [N]) of split "train" or "test"."""
    images_file, labels_file, count = FASHION_MNIST_FILES[split]
    images = read_idx(os.path.join(source_dir, images_file), (count, 28, 28))
    labels = read_idx(os.path.join(source_dir, labels_file), (count,))
    if labels.max() > 9:
        raise common.UserError(f"corrupt labels in {os.path.join(source_dir, labels_file)}: "
                               f"label {labels.max()} > 9")
    return images, labels


def pad_fashion_mnist(images):
    """uint8 [N, 28, 28] -> [N, 32, 32, 1], zero-padded: the small-image models need >= 32 px."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]


def select_labeled(labels, num_per_class, seed):
    """Sorted indices of `num_per_class` images of each class, chosen with a seeded generator."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        if num_per_class > len(members):
            raise common.UserError(f"--num_labeled_per_class={num_per_class} but class {c} has "
                                   f"only {len(members)} images")
        chosen.append(rng.choice(members, num_per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def encode_png_batch(images):
    """uint8 [N, H, W, C] (C: 1 or 3) -> list of PNG bytes: 8-bit rows, no row filter, zlib.
    A fifth of tf.io.encode_png's CPU on 32 px images, half of Pillow's (70K in ~3 s); the same
    pixels decode."""
    n, h, w, c = images.shape
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0))
    rows = np.concatenate([np.zeros((n, h, 1), np.uint8), images.reshape(n, h, w * c)], axis=2)
    return [b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(r.tobytes()))
            + _png_chunk(b"IEND", b"") for r in rows]


def _png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def prepare_fashion_mnist(output_dir, num_labeled_per_class=400, seed=0,
                          source_dir=FASHION_MNIST_DIR, shards=DEFAULT_FASHION_MNIST_SHARDS):
    """--dataset=fashion_mnist (the module docstring); returns prepared.json's summary."""
    shards = dict(shards)
    if sorted(shards) != ["labeled", "test", "unlabeled"] or min(shards.values()) < 1:
        raise common.UserError(f"shards must give labeled, unlabeled and test counts >= 1, got "
                               f"{shards}")
    if num_labeled_per_class < 1:
        raise common.UserError(f"--num_labeled_per_class must be >= 1, got {num_labeled_per_class}")
    args = {"dataset": "fashion_mnist", "num_labeled_per_class": int(num_labeled_per_class),
            "seed": int(seed), "source_dir": os.path.abspath(source_dir), "shards": shards}
    previous = _previous_run(output_dir, args)
    if previous is not None:
        return previous

    train_images, train_labels = read_fashion_mnist(source_dir, "train")
    test_images, test_labels = read_fashion_mnist(source_dir, "test")
    # NOTE: the paper has no Fashion-MNIST experiment; its small-image setting (CIFAR/SVHN style
    # 32 px preprocessing, a labeled subset plus the rest as unlabeled images) is reproduced here.
    labeled = select_labeled(train_labels, num_labeled_per_class, seed)
    unlabeled = np.setdiff1d(np.arange(len(train_labels)), labeled)
    # Shuffle (seeded) so that each shard mixes classes; the test set keeps its official order.
    rng = np.random.default_rng([seed, 1])
    labeled, unlabeled = rng.permutation(labeled), rng.permutation(unlabeled)

    def records(images, labels, indices, name, with_label):
        pngs = encode_png_batch(pad_fashion_mnist(images[indices]))
        for png, i in zip(pngs, indices):
            image_id, label = f"fashion_mnist/{name}/{i:05d}", int(labels[i])
            example = (data.image_example(png, label, image_id) if with_label  # else: for reports
                       else data.image_example(png, None, image_id, true_label=label))
            # deterministic: the feature map in one order, so two runs write the same bytes
            yield example.SerializeToString(deterministic=True)

    splits = {
        "labeled": (train_images, train_labels, labeled, "train", True),
        "unlabeled": (train_images, train_labels, unlabeled, "train", False),
        "test": (test_images, test_labels, np.arange(len(test_labels)), "test", True),
    }
    summary = {"args": args, "num_classes": 10, "image_size": 32, "num_channels": 1,
               "counts": {}, "files": {}}
    with common.atomic_output(output_dir) as tmp:
        for split, (images, labels, indices, name, with_label) in splits.items():
            summary["files"][split] = write_shards(
                os.path.join(tmp, split), split, records(images, labels, indices, name, with_label),
                len(indices), shards[split])
            summary["counts"][split] = len(indices)
            logging.info("%s: %d images in %d shards", split, len(indices), shards[split])
        summary["labeled_per_class"] = np.bincount(train_labels[labeled], minlength=10).tolist()
        common.write_json(os.path.join(tmp, "prepared.json"), summary)
    logging.info("Prepared Fashion-MNIST in %s: %s", output_dir, summary["counts"])
    return summary


# --- Folders of images -> labeled / unlabeled / test TFRecords, with settings measured on them.
SMALL_IMAGE_MAX_SIDE = 64  # median short side up to which a folder gets small-image preprocessing
FOLDER_IMAGE_SIZE = 224  # the resolution of ImageNet-style preprocessing for larger images
IMAGES_PER_SHARD = 10000
MIN_UNLABELED_SHARDS = 8  # labeling runs as parallel jobs over the unlabeled shards


def _image_facts(encoded, measure):
    """Of one encoded image: its size and (measure) whether it is grey, and per-channel sums and
    sums of squares of its R, G, B and luma (tf.image.rgb_to_grayscale) values."""
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    if not measure:
        return {"size": tf.shape(image)[:2]}
    rgb = tf.cond(tf.shape(image)[2] < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                  lambda: image[..., :3])  # grey (+ alpha) -> RGB; RGBA -> RGB
    rgb.set_shape([None, None, 3])
    values = tf.cast(tf.concat([rgb, tf.image.rgb_to_grayscale(rgb)], axis=-1), tf.float64)
    return {"size": tf.shape(image)[:2], "grey": tf.reduce_all(rgb[..., :1] == rgb),
            "sum": tf.reduce_sum(values, [0, 1]), "sum_sq": tf.reduce_sum(values ** 2, [0, 1])}


def _scan_images(paths, measure, skip_bad=False):
    """_image_facts of each file (None for a skipped one), decoded in parallel, and the list of
    files that do not decode. Such a file is a UserError naming it, or (skip_bad) skipped with a
    warning naming it."""
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: _image_facts(tf.io.read_file(path), measure),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    it = ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
    facts, bad = [], []
    progress = common.Progress("decoding", len(paths))
    for path in paths:  # a deterministic map reports an element's error in its place
        try:
            facts.append(next(it))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError,
                tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError) as e:
            line = (f"{path} is not a readable image (JPEG, PNG, GIF or BMP): "
                    f"{common.tf_error_line(e)}")
            if not skip_bad:
                raise common.UserError(f"{line} (--skip_bad_images skips such files)") from None
            logging.warning("skipped: %s", line)
            facts.append(None)
            bad.append(path)
        progress.add(1)
    progress.update(progress.done, force=True)
    return facts, bad


def _num_shards(split, count, num_shards):
    if not num_shards:
        num_shards = max(-(-count // IMAGES_PER_SHARD),
                         MIN_UNLABELED_SHARDS if split == "unlabeled" else 1)
    return max(1, min(num_shards, count))


def write_image_split(out_dir, split, items, num_shards, seed, skip_bad=False):
    """Writes `items` [(path, label or None, relative path)] as shards of out_dir in a seeded order,
    ids "<split>/<relative path>", after decoding every image (skip_bad: leaving out bad ones);
    returns (shard names, the items written, their images' facts, the skipped relative paths)."""
    order = np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(len(items))
    items = [items[i] for i in order]
    facts, bad = _scan_images([path for path, _, _ in items], split == "labeled", skip_bad)
    kept = [(item, f) for item, f in zip(items, facts) if f is not None]
    skipped = [relative for (_, _, relative), f in zip(items, facts) if f is None]
    if not kept:
        raise common.UserError(f"none of the {len(items)} {split} images decodes (first: "
                               f"{bad[0]})")
    items, facts = [item for item, _ in kept], [f for _, f in kept]
    encoded = tf.data.Dataset.from_tensor_slices([path for path, _, _ in items]).map(
        tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def records():  # the bytes are read again (cheap next to decoding), never re-encoded
        for (_, label, relative), image in zip(items, encoded.prefetch(16).as_numpy_iterator()):
            example = data.image_example(image, label, f"{split}/{relative}")
            yield example.SerializeToString(deterministic=True)

    names = write_shards(out_dir, split, records(), len(items),
                         _num_shards(split, len(items), num_shards))
    return names, items, facts, skipped


def measured_settings(facts, num_classes, image_size=0, input_kind="auto", flip="auto",
                      num_channels=0):
    """dataset.json of a folder data set from the facts of its labeled images; "auto" / 0: small
    images if the median short side is <= 64 px (image_size: that side), else imagenet (224); 1
    channel if every image is grey; flips on; mean/std per channel over every pixel."""
    short_side = float(np.median([min(f["size"]) for f in facts]))
    if input_kind == "auto":
        input_kind = "small" if short_side <= SMALL_IMAGE_MAX_SIDE else "imagenet"
    if not image_size:
        image_size = int(short_side) if input_kind == "small" else FOLDER_IMAGE_SIZE
    num_channels = num_channels or (1 if all(f["grey"] for f in facts) else 3)
    pixels = float(sum(np.prod(f["size"]) for f in facts))
    mean = sum(f["sum"] for f in facts) / pixels
    std = np.sqrt(np.maximum(sum(f["sum_sq"] for f in facts) / pixels - mean ** 2, 0.0))
    channels = slice(3, 4) if num_channels == 1 else slice(0, 3)  # luma or R, G, B
    return {"num_classes": num_classes, "image_size": int(image_size),
            "num_channels": num_channels, "input_kind": input_kind, "flip": flip != "false",
            "mean": [round(float(m), 4) for m in mean[channels]],
            "std": [round(float(s), 4) for s in std[channels]]}


def prepare_folders(output_dir, labeled_dir, unlabeled_dir=None, test_dir=None, image_size=0,
                    input_kind="auto", flip="auto", num_channels=0, num_shards=0, seed=0,
                    skip_bad_images=False):
    """--dataset=folder (the module docstring; the test folders may hold fewer classes, the
    unlabeled and test folders may be left out); returns prepared.json's summary."""
    if image_size < 0 or num_shards < 0:
        raise common.UserError("--image_size and --num_shards must be >= 0 (0: automatic)")
    if num_channels not in (0, 1, 3):
        raise common.UserError(f"--num_channels must be 0 (automatic), 1 or 3, got {num_channels}")
    dirs = {"labeled": labeled_dir, "unlabeled": unlabeled_dir, "test": test_dir}
    args = {"dataset": "folder", "image_size": int(image_size), "input_kind": input_kind,
            "flip": flip, "num_channels": int(num_channels), "num_shards": int(num_shards),
            "seed": int(seed), **{f"{split}_dir": os.path.abspath(d) if d else None
                                  for split, d in dirs.items()}}
    if skip_bad_images:  # only when given: earlier preparations stay "the same arguments"
        args["skip_bad_images"] = True
    common.remove_stale_temporaries(output_dir)
    previous = _previous_run(output_dir, args)
    if previous is not None:
        return previous
    classes, labeled = data.list_image_folder(labeled_dir, "--labeled_dir")
    splits = {"labeled": labeled}
    if unlabeled_dir:
        splits["unlabeled"] = data.list_image_pile(unlabeled_dir, "--unlabeled_dir")
    if test_dir:
        test_classes, test = data.list_image_folder(test_dir, "--test_dir")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise common.UserError(f"--test_dir={test_dir} has classes the labeled folders do not "
                                   f"have: {', '.join(unknown[:5])}")
        splits["test"] = [(p, classes.index(test_classes[label]), relative)
                          for p, label, relative in test]
    for split, found in (("labeled", classes), ("test", test_dir and test_classes)):
        if found and len(found) < 2:
            raise common.UserError(
                f"--{split}_dir={dirs[split]} has one class folder ({found[0]}): a classifier "
                "needs at least 2 classes, one sub-folder each (is it a class folder itself?)")
    summary = {"args": args, "counts": {}, "files": {}, "per_class": {}}
    if skip_bad_images:
        summary["skipped_bad_images"] = {}
    with common.atomic_output(output_dir) as tmp:
        for split, items in splits.items():
            summary["files"][split], items, facts, skipped = write_image_split(
                os.path.join(tmp, split), split, items, num_shards, seed, skip_bad_images)
            summary["counts"][split] = len(items)
            if skip_bad_images:
                summary["skipped_bad_images"][split] = {"count": len(skipped),
                                                        "files": sorted(skipped)[:100]}
                logging.log(logging.WARNING if skipped else logging.INFO,
                            "%s: skipped %d of %d images that do not decode (--skip_bad_images)",
                            split, len(skipped), len(items) + len(skipped))
            if split != "unlabeled":
                count = lambda some: np.bincount([label for _, label, _ in some],
                                                 minlength=len(classes))
                summary["per_class"][split] = count(items).tolist()
                empty = [classes[c] for c in np.flatnonzero((count(items) == 0)
                                                            & (count(splits[split]) > 0))]
                if empty:  # every image of the class was skipped
                    raise common.UserError(f"class folder {os.path.join(dirs[split], empty[0])}: "
                                           "none of its images decodes")
            if split == "labeled":
                settings = measured_settings(facts, len(classes), image_size, input_kind, flip,
                                             num_channels)
        summary["dataset"] = settings
        common.write_json(os.path.join(tmp, "class_names.json"), classes)
        common.write_json(os.path.join(tmp, "dataset.json"), settings)
        common.write_json(os.path.join(tmp, "prepared.json"), summary)
    logging.info("Prepared %s from image folders: %s; settings %s", output_dir,
                 summary["counts"], settings)
    return summary


# --- Script. -------------------------------------------------------------------------------------
def define_flags():
    """The script's flags, defined only when it runs (importing it defines none)."""
    flags.DEFINE_enum("dataset", None, ["fashion_mnist", "folder"], "What to prepare: "
                      "fashion_mnist (IDX files) or folder (image folders, with the settings "
                      "measured on the labeled images in dataset.json).")
    flags.DEFINE_string("output_dir", None, "Directory to write; written under a temporary name "
                        "and renamed into place when complete.")
    flags.DEFINE_string("source_dir", None, "fashion_mnist: directory of the four IDX .gz files "
                        f"(default {FASHION_MNIST_DIR}).")
    flags.DEFINE_integer("num_labeled_per_class", 400, "fashion_mnist: labeled images per "
                         "class, chosen with --seed from the 60k train images; the rest become "
                         "unlabeled. (folder: every labeled image is kept.)")
    flags.DEFINE_integer("seed", 0, "Seed of the labeled subset (fashion_mnist) or of the record "
                         "order across shards (folder).")
    flags.DEFINE_string("labeled_dir", None, "folder: labeled images, one sub-folder per class "
                        "(labels 0..K-1 in sorted folder order; images at any depth below).")
    flags.DEFINE_string("unlabeled_dir", None, "folder: unlabeled images, a flat or nested pile "
                        "(sub-folders are ignored; no labels).")
    flags.DEFINE_string("test_dir", None, "folder: test images, class sub-folders named as in "
                        "--labeled_dir.")
    flags.DEFINE_integer("image_size", 0, "folder: resolution; 0 = the labeled images' median "
                         f"short side if it is <= {SMALL_IMAGE_MAX_SIDE} px (small images), else "
                         f"{FOLDER_IMAGE_SIZE} (main.py's named models may use their own).")
    flags.DEFINE_enum("input_kind", "auto", ["auto"] + list(data.INPUT_KINDS), "folder: "
                      "preprocessing; auto = small (reflect-pad, crop, flip: the paper's "
                      f"CIFAR/SVHN setting) if the median short side is <= {SMALL_IMAGE_MAX_SIDE}"
                      " px, else imagenet (random-resized crop, flip; centre crop for eval).")
    flags.DEFINE_enum("flip", "auto", ["auto", "true", "false"], "folder: random horizontal "
                      "flips in training; auto = true. Say false for digits or text.")
    flags.DEFINE_enum("num_channels", "0", ["0", "1", "3"], "folder: 0 = 1 if every labeled "
                      "image is grey, else 3.")
    flags.DEFINE_bool("skip_bad_images", False, "folder: leave out images that do not decode "
                      "(logged, counted in prepared.json) instead of stopping at the first one.")
    flags.DEFINE_integer("num_shards", None, "folder: shards per split (default: one per "
                         f"{IMAGES_PER_SHARD:,} images, at least {MIN_UNLABELED_SHARDS} unlabeled "
                         "shards for parallel labeling jobs). fashion_mnist uses 2 labeled, 8 "
                         "unlabeled and 2 test shards.")


def main(argv):
    if len(argv) > 1:
        raise common.UserError(f"unexpected arguments {argv[1:]}")
    F = flags.FLAGS
    if not F.dataset or not F.output_dir:
        raise common.UserError("--dataset and --output_dir are required")
    folder_flags = ("labeled_dir", "unlabeled_dir", "test_dir")
    if F.dataset == "fashion_mnist":
        if F.num_shards is not None or F.skip_bad_images or any(F[f].present for f in folder_flags):
            raise common.UserError("--num_shards, --skip_bad_images and --*_dir apply to "
                                   "--dataset=folder only")
        summary = prepare_fashion_mnist(F.output_dir, F.num_labeled_per_class, F.seed,
                                        F.source_dir or FASHION_MNIST_DIR)
    else:
        if not F.labeled_dir:
            raise common.UserError("--dataset=folder needs --labeled_dir (and --unlabeled_dir, "
                                   "--test_dir)")
        if F.source_dir:
            raise common.UserError("--source_dir is for fashion_mnist; folders take "
                                   "--labeled_dir, --unlabeled_dir and --test_dir")
        summary = prepare_folders(F.output_dir, F.labeled_dir, F.unlabeled_dir, F.test_dir,
                                  F.image_size, F.input_kind, F.flip, int(F.num_channels),
                                  F.num_shards or 0, F.seed, F.skip_bad_images)
    print(json.dumps(summary["counts"]))


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
