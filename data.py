"""The shared input pipeline: record schemas and their checks, preprocessing and tf.data datasets.

Paper Sec. 3.1 "Experiment Details" (labeled and unlabeled data, RandAugment as input noise) and
Algorithm 1 (the data between teacher, pseudo-labeling and student). Small images follow the
authors' CIFAR-10/SVHN preprocessing, used here for Fashion-MNIST. A library: it writes no files
(prepare_data.py does). ImageNet converter records (`image/encoded`, 1-based `image/class/label`,
shards `train-00000-of-01024`) are read as they are; unlabeled records need only `image/encoded`.

Images are uint8 HxWxC; preprocessing returns float32 in [0, 255] (the model normalises); labels
are 0-based int32. tf.data reports corrupt records without the file name: consume a dataset inside
`with translate_data_errors(files):` to get a common.UserError naming the bad file and record.
"""

import contextlib
import dataclasses
import hashlib
import os

import common  # first: it silences TensorFlow's start-up lines
from absl import logging
import numpy as np
import tensorflow as tf

import efficientnet_builder
import randaugment

AUGMENT_NAMES = ("randaugment", "basic", "none")
INPUT_KINDS = ("small", "imagenet")
IMAGENET_CROP_PADDING = 32  # eval centre crop: image_size / (image_size + 32) of the short side
SMALL_IMAGE_PAD = 4  # reflect padding before the random crop of small images
PARSE_BATCH = 256  # pseudo-labeled records parsed per op (the parse costs per op, not per record)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


# --- Data set descriptions. ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline and the model need to know about a data set."""
    num_classes: int
    image_size: int  # default training/eval resolution
    num_channels: int
    input_kind: str  # "small": 32 px CIFAR-style preprocessing; "imagenet": bbox crop + resize
    flip: bool  # random horizontal flips make sense for this data (not for digits)
    mean: tuple  # per channel, 0-255 scale (normalisation happens inside the model)
    std: tuple
    label_offset: int = 0  # subtracted from stored labels (1 for the ImageNet converter)


DATASETS = {
    # Mean/std over every pixel of the 60k train images zero-padded 28 -> 32 (0-255 scale); clothes
    # stay clothes when mirrored, so horizontal flips are used.
    "fashion_mnist": DatasetInfo(num_classes=10, image_size=32, num_channels=1, input_kind="small",
                                 flip=True, mean=(55.844957,), std=(84.611900,), label_offset=0),
    "imagenet": DatasetInfo(num_classes=1000, image_size=224, num_channels=3, input_kind="imagenet",
                            flip=True, mean=efficientnet_builder.IMAGENET_MEAN,
                            std=efficientnet_builder.IMAGENET_STD, label_offset=1),
    # SVHN as the reference's proc_svhn.py writes it (labels 1..10, extra = unlabeled), with its
    # mean/std (task_info.py:28-29) and no flips (digits; preprocessing.py:221).
    "svhn": DatasetInfo(num_classes=10, image_size=32, num_channels=3, input_kind="small",
                        flip=False, mean=(0.4376821 * 255, 0.4437697 * 255, 0.47280442 * 255),
                        std=(0.19803012 * 255, 0.20101562 * 255, 0.19703614 * 255),
                        label_offset=1),
    # Image folders converted by prepare_data.py; num_classes=0: dataset_info reads the settings
    # measured at conversion (dataset.json, class_names.json) next to the records.
    "folder": DatasetInfo(num_classes=0, image_size=224, num_channels=3, input_kind="imagenet",
                          flip=True, mean=efficientnet_builder.IMAGENET_MEAN,
                          std=efficientnet_builder.IMAGENET_STD, label_offset=0),
}


def dataset_info(name, data_dir=None, **overrides):
    """DATASETS[name] with `overrides` (DatasetInfo fields) applied, validated. Without a class
    count ("folder") the settings measured at conversion (folder_settings, next to `data_dir`)
    replace the preset's; `overrides` still win. A new num_channels averages mean/std."""
    if name not in DATASETS:
        raise common.UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    fields = {f.name for f in dataclasses.fields(DatasetInfo)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise common.UserError(f"unknown dataset setting(s) {unknown}; known: {sorted(fields)}")
    info = DATASETS[name]
    if info.num_classes == 0 and data_dir:
        info = dataclasses.replace(info, **folder_settings(data_dir))
    channels = overrides.get("num_channels", info.num_channels)
    if channels != len(info.mean):
        overrides.setdefault("mean", (float(np.mean(info.mean)),) * channels)
        overrides.setdefault("std", (float(np.mean(info.std)),) * channels)
    info = dataclasses.replace(info, **overrides)
    if info.num_classes == 0:
        raise common.UserError(f"dataset {name!r} needs num_classes, or a data dir with the "
                               f"class_names.json that prepare_data.py --dataset={name} writes "
                               f"(none next to {data_dir})")
    if info.input_kind not in INPUT_KINDS:
        raise common.UserError(f"input_kind={info.input_kind!r} is not one of {INPUT_KINDS}")
    if info.num_channels not in (1, 3):
        raise common.UserError(f"num_channels={info.num_channels}: only 1 or 3 are supported")
    if len(info.mean) != info.num_channels or len(info.std) != info.num_channels:
        raise common.UserError(f"mean/std need {info.num_channels} values, got "
                               f"{info.mean}/{info.std}")
    if info.label_offset not in (0, 1):
        raise common.UserError(f"label_offset={info.label_offset} must be 0 or 1")
    if info.num_classes < 1 or info.image_size < 1:
        raise common.UserError(f"bad num_classes={info.num_classes} or "
                               f"image_size={info.image_size}")
    return info


MODEL_INFO_KEYS = ("num_classes", "num_channels", "input_kind", "label_offset", "mean", "std")


def model_dataset_info(config, image_size=None, where="model.json"):
    """The DatasetInfo a trained model expects, from its model.json `config` (the one place that
    turns a model dir's settings into preprocessing); image_size defaults to the model's own."""
    if config.get("dataset") not in DATASETS:
        raise common.UserError(f"{where}: dataset {config.get('dataset')!r} is not one of "
                               f"{sorted(DATASETS)}")
    overrides = {k: tuple(config[k]) if k in ("mean", "std") else config[k]
                 for k in MODEL_INFO_KEYS if config.get(k) is not None}
    return dataset_info(config["dataset"], image_size=int(image_size or config["image_size"]),
                        **overrides)


FOLDER_SETTINGS = ("num_classes", "image_size", "num_channels", "input_kind", "flip", "mean", "std")


def folder_settings(data_dir):
    """The DatasetInfo fields prepare_data.py wrote: the class count of class_names.json and the
    measured settings of dataset.json beside it, looked up in data_dir (a directory, else the
    directory of a file or glob) and the directory above; {} if there are none."""
    base = data_dir if tf.io.gfile.isdir(data_dir) else os.path.dirname(data_dir)
    for d in (base, os.path.dirname(os.path.normpath(base))):
        path = os.path.join(d, "class_names.json")
        if tf.io.gfile.exists(path):
            break
    else:
        return {}
    classes = common.read_json(path, what="class names")
    settings = common.read_json(os.path.join(d, "dataset.json"), what="dataset settings",
                                default={})
    if settings.get("num_classes", len(classes)) != len(classes):
        raise common.UserError(f"{d}: dataset.json says {settings['num_classes']} classes, "
                               f"class_names.json names {len(classes)}")
    settings = {k: tuple(v) if k in ("mean", "std") else v for k, v in settings.items()
                if k in FOLDER_SETTINGS}
    return {**settings, "num_classes": len(classes)}


def check_prepared(data_dir, args, exact=False):
    """The summary (prepared.json) of data_dir's finished prepare_data.py run, None without one;
    UserError if it was made with other `args` (exact: also with arguments `args` does not give)."""
    summary = common.read_json(os.path.join(data_dir, "prepared.json"), default=None)
    old = (summary or {}).get("args") or {}
    diff = ", ".join(f"{k}: {old.get(k)!r} -> {args.get(k)!r}" for k in sorted(
        set(args) | (set(old) if exact else set())) if old.get(k) != args.get(k))
    if summary is not None and diff:
        raise common.UserError(f"{data_dir} was prepared with other arguments ({diff}); remove "
                               f"it or choose another output directory")
    return summary


# --- Records (tf.train.Example). Keys are listed in the contract's schema table. -----------------
def _bytes(value):
    value = value.encode() if isinstance(value, str) else bytes(value)
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def image_example(encoded, label, image_id, true_label=None):
    """A labeled (label given) or unlabeled (label None) image record; image_id str or bytes."""
    feature = {"image/encoded": _bytes(encoded), "image/id": _bytes(image_id)}
    if label is not None:
        feature["image/class/label"] = _int(label)
    if true_label is not None:
        feature["diagnostic/true_label"] = _int(true_label)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def pseudo_label_example(encoded, image_id, probabilities, true_label=None, copies=None,
                         float16=False):
    """A pseudo-labeled record: soft labels plus their argmax `label` and top-1 `prob`."""
    probabilities = np.asarray(probabilities, np.float32).reshape(-1)
    feature = {"image/encoded": _bytes(encoded), "image/id": _bytes(image_id),
               "label": _int(np.argmax(probabilities)), "prob": _floats([probabilities.max()])}
    if float16:
        feature["probabilities/float16"] = _bytes(probabilities.astype("<f2").tobytes())
    else:
        feature["probabilities"] = _floats(probabilities)
    if true_label is not None:
        feature["diagnostic/true_label"] = _int(true_label)
    if copies is not None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        feature["copies"] = _int(copies)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _string(default=""):
    return tf.io.FixedLenFeature([], tf.string, default_value=default)


def _int64(default):
    return tf.io.FixedLenFeature([], tf.int64, default_value=default)


# Every image record: the encoded image and its id (the ImageNet converter's image/filename).
_IMAGE_FEATURES = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                   "image/id": _string(), "image/filename": _string()}


def _record_id(parsed, fallback_id):
    """image/id, else image/filename (ImageNet converter), else the fallback (file:index)."""
    image_id = tf.where(parsed["image/id"] != "", parsed["image/id"], parsed["image/filename"])
    if fallback_id is not None:
        image_id = tf.where(image_id != "", image_id, fallback_id)
    return image_id


def parse_labeled(serialized, label_offset=0, fallback_id=None):
    """{"image": encoded bytes, "label": int32 (stored label - label_offset), "id": string}; of
    one record, or of a batch of records (each value then has the batch's leading dimension)."""
    parsed = tf.io.parse_example(serialized, {
        **_IMAGE_FEATURES, "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
    label = tf.cast(parsed["image/class/label"], tf.int32) - label_offset
    return {"image": parsed["image/encoded"], "label": label,
            "id": _record_id(parsed, fallback_id)}


def parse_unlabeled(serialized, fallback_id=None):
    """{"image", "id"} of one record or a batch: never the true label (it is not even parsed)."""
    parsed = tf.io.parse_example(serialized, _IMAGE_FEATURES)
    return {"image": parsed["image/encoded"], "id": _record_id(parsed, fallback_id)}


def parse_pseudo_labeled(serialized, num_classes, fallback_id=None):
    """{"image", "id", "probabilities": float32[K], "label": int32, "prob": float32, "copies"} of
    one record or a batch, from `probabilities` (floats) or `probabilities/float16` (little-endian
    bytes); `label` and `prob` default to the argmax / max of the probabilities, `copies` to 1."""
    serialized = tf.convert_to_tensor(serialized, tf.string)
    batch = tf.reshape(serialized, [-1])
    parsed = tf.io.parse_example(batch, {
        **_IMAGE_FEATURES,
        "probabilities": tf.io.VarLenFeature(tf.float32),
        "probabilities/float16": _string(),
        "label": _int64(-1),
        "prob": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
        "copies": _int64(1)})
    # Per record: K floats, or no floats and 2K bytes of float16.
    floats, half = parsed["probabilities"], parsed["probabilities/float16"]
    num_floats = tf.math.bincount(tf.cast(floats.indices[:, 0], tf.int32),
                                  minlength=tf.size(batch), maxlength=tf.size(batch))
    has_floats = num_floats > 0
    well_formed = tf.where(has_floats, tf.equal(num_floats, num_classes),
                           tf.equal(tf.strings.length(half), 2 * num_classes))
    check = [tf.debugging.assert_equal(well_formed, True, message=(
        f"pseudo-labeled record without {num_classes} probabilities (key `probabilities` or "
        f"`probabilities/float16`)")),
             tf.debugging.assert_positive(parsed["copies"],
                                          message="pseudo-labeled record with copies < 1")]
    with tf.control_dependencies(check):
        as_float32 = tf.sparse.to_dense(tf.sparse.reset_shape(floats, [tf.size(batch),
                                                                       num_classes]))
    half_bytes = tf.io.decode_raw(half, tf.uint8, fixed_length=2 * num_classes)  # zero-padded
    as_float16 = tf.cast(tf.bitcast(tf.reshape(half_bytes, [-1, num_classes, 2]), tf.float16),
                         tf.float32)  # (little-endian bytes, as x86 and ARM hosts)
    probabilities = tf.where(has_floats[:, None], as_float32, as_float16)
    label = tf.where(parsed["label"] >= 0, parsed["label"], tf.argmax(probabilities, -1))
    prob = tf.where(parsed["prob"] >= 0, parsed["prob"], tf.reduce_max(probabilities, -1))
    record = {"image": parsed["image/encoded"], "id": _record_id(parsed, fallback_id),
              "probabilities": probabilities, "label": tf.cast(label, tf.int32), "prob": prob,
              "copies": tf.cast(parsed["copies"], tf.int32)}
    if serialized.shape.rank == 0:  # one record
        return {k: v[0] for k, v in record.items()}
    return record


def parse_diagnostic_label(serialized):
    """The true label kept in unlabeled records for reports only; -1 if absent."""
    parsed = tf.io.parse_single_example(serialized, {"diagnostic/true_label": _int64(-1)})
    return tf.cast(parsed["diagnostic/true_label"], tf.int32)


def check_records(files, decode=False, start=0):
    """Reads every record of `files` from record `start` on; returns the count. UserError naming
    the first bad file and record: broken framing, not an Example, no image/encoded or (decode:
    True for tf.io.decode_image, or a function) an undecodable image."""
    spec = {"image/id": _string(), "image/encoded": tf.io.FixedLenFeature([], tf.string)}
    view = decode if callable(decode) else (
        lambda encoded: tf.io.decode_image(encoded, expand_animations=False))
    total = 0
    for path in files:
        count = _count_if_all_decode(path, spec, view) if decode and not start else None
        if count is not None:  # the fast parallel pass found nothing: no record-by-record scan
            total += count
            continue
        index, image_id = start, ""
        try:
            for record in tf.data.TFRecordDataset(path).skip(start):
                image_id = ""
                parsed = tf.io.parse_single_example(record, spec)
                image_id = parsed["image/id"].numpy().decode("utf-8", "replace")
                if decode:
                    view(parsed["image/encoded"])
                index += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            name = f" (image/id {image_id})" if image_id else ""
            raise common.UserError(f"corrupt record file {path}, record {index}{name}: "
                                   f"{common.tf_error_line(e)}") from None
        total += index
    return total


def _count_if_all_decode(path, spec, view):
    """The record count of `path` if every record parses and decodes (one parallel pass with
    ignore_errors, sparing check_records its slow eager scan of good files), else None."""
    try:
        total = common.count_records([path])
    except common.UserError:  # broken framing: the eager scan names the record
        return None
    good = tf.data.TFRecordDataset(path).map(
        lambda r: tf.size(view(tf.io.parse_single_example(r, spec)["image/encoded"])),
        num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1)
    return total if int(good) == total else None


def check_pseudo_labeled(files, num_classes):
    """UserError naming the file unless the first record of `files` holds `num_classes` soft
    labels: raw unlabeled records (no probabilities) or another data set's labels are refused
    here, in one line, not deep in the training graph."""
    for path in files:
        try:
            first = [r.numpy() for r in tf.data.TFRecordDataset(path).take(1)]
        except tf.errors.DataLossError as e:
            raise common.UserError(f"corrupt record file {path}: {common.tf_error_line(e)}") from e
        if not first:
            continue  # an empty shard (filter_balance keeps none of some shards)
        try:
            feature = tf.train.Example.FromString(first[0]).features.feature
        except Exception:  # protobuf's DecodeError  pylint: disable=broad-except
            raise common.UserError(f"{path}: record 0 is not a tf.train.Example") from None
        if "probabilities" in feature:
            found = len(feature["probabilities"].float_list.value)
        elif "probabilities/float16" in feature:
            found = len(feature["probabilities/float16"].bytes_list.value[0]) // 2
        else:
            raise common.UserError(
                f"{path}: record 0 has no soft labels (`probabilities`): these are unlabeled "
                "images, not label_data.py or filter_balance.py output (main.py reads raw "
                "unlabeled records with --unlabel_source_dir)")
        if found != num_classes:
            raise common.UserError(f"{path}: record 0 has {found} class probabilities, the "
                                   f"model {num_classes} classes (another data set's labels?)")
        return


@contextlib.contextmanager
def translate_data_errors(files):
    """Turns tf input errors raised while consuming a dataset of `files` into a common.UserError.
    For broken records and undecodable images the files are rescanned (check_records) to name the
    bad one (minutes for ImageNet, but only after a failure); other errors explain themselves."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        files = common.list_files(files) if isinstance(files, str) else files
        message = common.tf_error_line(e)
        lower = message.lower()
        decode = any(w in lower for w in ("decode", "image format", "jpeg", "png"))
        if decode or isinstance(e, tf.errors.DataLossError) or "parse" in lower:
            logging.warning("input error (%s); scanning %d files for the bad record", message,
                            len(files))
            check_records(files, decode=decode)
        where = files[0] if len(files) == 1 else f"{len(files)} files like {files[0]}"
        raise common.UserError(f"bad input record in {where}: {message}") from e


# --- Folders of images (prepare_data.py converts them, eval_robustness.py reads them). ----------
def _images_under(folder):
    """Sorted paths of the image files anywhere under `folder` (hidden files and folders
    skipped) and the number of other files."""
    paths, skipped = [], 0
    for root, dirs, files in tf.io.gfile.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        visible = [f for f in files if not f.startswith(".")]
        images = [os.path.join(root, f) for f in visible if f.lower().endswith(IMAGE_EXTENSIONS)]
        paths, skipped = paths + images, skipped + len(visible) - len(images)
    return sorted(paths), skipped


def _check_dir(path, what):
    if not tf.io.gfile.isdir(path):
        raise common.UserError(f"{what} {path} is not a directory")


def _skipped(count, src_dir):
    if count:
        logging.warning("skipped %d files without an image extension in %s", count, src_dir)


def list_image_folder(src_dir, what="source directory"):
    """(sorted class names, [(path, label, path relative to src_dir)]) of src_dir/<class>/...
    (images at any depth below their class folder)."""
    _check_dir(src_dir, what)
    classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(src_dir)
                     if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(src_dir, d)))
    if not classes:
        raise common.UserError(f"{what} {src_dir} has no class sub-folders")
    items, skipped = [], 0
    for label, name in enumerate(classes):
        paths, n = _images_under(os.path.join(src_dir, name))
        if not paths:
            raise common.UserError(f"class folder {os.path.join(src_dir, name)} has no images "
                                   f"({', '.join(IMAGE_EXTENSIONS)})")
        items += [(p, label, os.path.relpath(p, src_dir)) for p in paths]
        skipped += n
    _skipped(skipped, src_dir)
    return classes, items


def list_image_pile(src_dir, what="source directory"):
    """[(path, None, path relative to src_dir)] of every image under src_dir: a flat or nested
    pile whose sub-folders mean nothing (no labels)."""
    _check_dir(src_dir, what)
    paths, skipped = _images_under(src_dir)
    if not paths:
        raise common.UserError(f"{what} {src_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    _skipped(skipped, src_dir)
    return [(p, None, os.path.relpath(p, src_dir)) for p in paths]


# --- Preprocessing (graph mode; usable inside tf.data map). Output: float32 [0, 255], (S, S, C).
def decode_image(encoded, num_channels):
    """JPEG/PNG/GIF/BMP bytes -> uint8 (H, W, num_channels)."""
    image = tf.io.decode_image(encoded, channels=num_channels, expand_animations=False,
                               dtype=tf.uint8)
    image.set_shape([None, None, num_channels])
    return image


def _round_to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize_bicubic(image, image_size):
    # NOTE: TF2 tf.image.resize (half-pixel centres); the reference's TF1 resize_bicubic used the
    # legacy pixel grid (a sub-pixel shift). Overshoot is clipped to [0, 255] (the reference
    # clipped only before RandAugment).
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def _small_image(encoded, info, image_size):
    """Decoded small image as uint8 (S, S, C); other sizes are resized."""
    image = decode_image(encoded, info.num_channels)
    shape = tf.shape(image)
    # NOTE: the reference requires small images to have exactly image_size pixels; other sizes
    # are resized here (bicubic) so a folder of arbitrary images can use the small pipeline.
    image = tf.cond(tf.logical_and(shape[0] == image_size, shape[1] == image_size),
                    lambda: image,
                    lambda: _round_to_uint8(_resize_bicubic(tf.cast(image, tf.float32),
                                                            image_size)))
    image.set_shape([image_size, image_size, info.num_channels])
    return image


def _center_crop(image, image_size):
    """Centre square of image_size / (image_size + 32) of the short side, resized (bicubic), as
    noisystudent's preprocessing.py (tensorflow/tpu's later crop fraction 0.875 differs off 224)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop = tf.cast(image_size / (image_size + IMAGENET_CROP_PADDING)
                   * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    crop = tf.maximum(crop, 1)  # NOTE: not in the reference, where a 1 px side crops 0 px
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return _resize_bicubic(tf.cast(image, tf.float32), image_size)


def _random_bbox_crop(image, image_size, seed):
    """Inception-style crop: area 8-100%, aspect 3/4-4/3, 10 attempts; else the centre crop."""
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    failed = tf.reduce_all(tf.equal(shape, tf.shape(crop)))  # no box found: whole image back
    return tf.cond(failed, lambda: _center_crop(image, image_size),
                   lambda: _resize_bicubic(tf.cast(crop, tf.float32), image_size))


def _check_augment_name(augment_name):
    if augment_name not in AUGMENT_NAMES:
        raise common.UserError(f"augment_name={augment_name!r} is not one of {AUGMENT_NAMES}")


def _split_seed(seed, num):
    """`num` independent [2] seeds from one [2] seed (stateless)."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _random_crop_and_flip(images, pad, flip, seed):
    """Per image of a batch [B, S, S, C]: reflect-pad `pad` px, a random S x S crop and (flip) a
    random left-right flip, as two gathers over the batch; the padding is never built (crop indices
    in it are reflected back: tf.pad REFLECT on uint8 costs more than the rest of the crop)."""
    size = images.shape[1]
    batch = tf.shape(images)[0]
    offset_seed, flip_seed = _split_seed(seed, 2)
    offsets = tf.random.stateless_uniform([batch, 2], offset_seed, maxval=2 * pad + 1,
                                          dtype=tf.int32) - pad
    reflect = lambda i: (size - 1) - tf.abs((size - 1) - tf.abs(i))  # -1 -> 1, size -> size - 2
    rows = reflect(offsets[:, :1] + tf.range(size)[None])
    cols = reflect(offsets[:, 1:] + tf.range(size)[None])
    if flip:
        mirror = tf.random.stateless_uniform([batch, 1], flip_seed) < 0.5
        cols = tf.where(mirror, tf.reverse(cols, [1]), cols)
    crops = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    crops.set_shape(images.shape)
    return crops


def decode_for_train(encoded, info, image_size, seed):
    """The per-image part of the training view (augment_batch does the rest): small: the decoded
    image, uint8; imagenet: distorted bbox crop -> bicubic resize -> random flip, float32."""
    if info.input_kind == "small":
        return _small_image(encoded, info, image_size)
    crop_seed, flip_seed = _split_seed(seed, 2)
    # decode fully, then crop (as noisystudent; records may be PNG, not only JPEG)
    image = _random_bbox_crop(decode_image(encoded, info.num_channels), image_size, crop_seed)
    image.set_shape([image_size, image_size, info.num_channels])
    return tf.image.stateless_random_flip_left_right(image, flip_seed) if info.flip else image


def augment_batch(images, info, augment_name, randaug_layer, randaug_mag, seed):
    """The batch part of the training view: `decode_for_train` images [B, S, S, C] -> float32,
    every random choice per image (as the reference's per-image map) from `seed` ([2] ints).
    small:    [RandAugment(translate = cutout const = S // 8) -> cutout 2*(S//4) px, fill 128]
              -> reflect-pad 4 + random crop S -> random flip (if info.flip)
    imagenet: [RandAugment(translate 100, cutout const 40) on the uint8-truncated image]
    (bracketed: augment_name="randaugment" only)."""
    size = images.shape[1]
    small = info.input_kind == "small"
    randaug_seed, cutout_seed, crop_seed = _split_seed(seed, 3)
    if augment_name == "randaugment":
        # The reference truncates (cast) the imagenet view to uint8 here; values are clipped.
        images = randaugment.distort_batch_with_randaugment(
            tf.cast(images, tf.uint8), randaug_layer, randaug_mag, randaug_seed,
            cutout_const=size // 8 if small else 40, translate_const=size // 8 if small else 100)
        if small:
            images = randaugment.cutout(images, pad_size=size // 4, replace=128, seed=cutout_seed)
    if small:
        images = _random_crop_and_flip(images, SMALL_IMAGE_PAD, info.flip, crop_seed)
    return tf.cast(images, tf.float32)


def train_views(encoded, info, image_size, augment_name, randaug_layer, randaug_mag, seed):
    """Training views of a batch of encoded images [B] -> float32 [B, S, S, C]: decode_for_train
    per image (one tf.map_fn), then augment_batch; augment_name="none": eval views."""
    if augment_name == "none":
        return tf.map_fn(lambda e: preprocess_for_eval(e, info, image_size), encoded,
                         fn_output_signature=tf.TensorSpec(
                             [image_size, image_size, info.num_channels], tf.float32))
    image_seed, batch_seed = _split_seed(seed, 2)
    image_seeds = tf.random.experimental.stateless_split(image_seed, tf.shape(encoded)[0])
    dtype = tf.uint8 if info.input_kind == "small" else tf.float32
    images = tf.map_fn(lambda args: decode_for_train(args[0], info, image_size, args[1]),
                       (encoded, image_seeds), fn_output_signature=tf.TensorSpec(
                           [image_size, image_size, info.num_channels], dtype))
    return augment_batch(images, info, augment_name, randaug_layer, randaug_mag, batch_seed)


def preprocess_for_eval(encoded, info, image_size):
    """Deterministic view: small -> the image as it is (S px); imagenet -> centre crop, bicubic."""
    if info.input_kind == "small":
        image = tf.cast(_small_image(encoded, info, image_size), tf.float32)
    else:
        image = _center_crop(decode_image(encoded, info.num_channels), image_size)
    image.set_shape([image_size, image_size, info.num_channels])
    return image


# --- Datasets: files (shuffled when training) -> interleaved reads -> shuffle -> batch -> parallel
# map over batches (parse, decode, noise per image: cheaper than a per-record map on 2 cores,
# bench/train_throughput.md) -> prefetch. Eval maps per record, then batches. Randomness: a
# training dataset is one stream named by (seed, stream), e.g. (0, "labeled"): its shuffles are
# seeded with hashes of the pair and batch i is noised with the stateless seed (hash, i), so the
# same (seed, stream) gives the same batches, also with parallel maps. seed=None: a fresh seed.
# start_batch=n (a resumed run at step n) continues the noise at batch n on a fresh shuffle (seeded
# with n) of the records.
def _default_shuffle_buffer(info):
    # NOTE: the reference shuffles 1024 records (16K only when the data set is cached in memory);
    # small images (~1 KB each) get a 16K buffer here, ~16 MB, without caching.
    return 16 * 1024 if info.input_kind == "small" else 1024


def _files(pattern_or_files, what):
    if isinstance(pattern_or_files, (list, tuple)):
        if not pattern_or_files:
            raise common.UserError(f"no {what} files given")
        return sorted(pattern_or_files)
    return common.list_files(pattern_or_files, what)


def stream_key(seed, stream, *more):
    """A 63-bit key naming the random stream (seed, stream, *more); seed=None: a fresh one."""
    if seed is None:
        seed = f"fresh-{np.random.SeedSequence().entropy}"
    text = "/".join(str(part) for part in (seed, stream) + more)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _stream(seed, stream, start_batch):
    """(noise key, shuffle key, deterministic) of a training stream (0: its one input pipeline)."""
    key = stream_key(seed, stream, 0)
    return key, stream_key(key, "shuffle", start_batch), seed is not None


def _records(files, is_training, key=0, shuffle_buffer=1024, deterministic=True):
    """Serialized records of `files`; training: shuffled (seeds from `key`), repeated forever."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        ds = ds.shuffle(len(files), seed=stream_key(key, "files"),
                        reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 * 1024 * 1024),
                       cycle_length=min(len(files), 16), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=deterministic or not is_training)
    if is_training:
        ds = ds.shuffle(shuffle_buffer, seed=stream_key(key, "records"),
                        reshuffle_each_iteration=True)
    return ds


# tf.data map functions made of plain TF ops (no tensor-dependent Python control flow) skip
# AutoGraph's source conversion, a start-up cost of every process that builds a pipeline.
plain = tf.autograph.experimental.do_not_convert


def _noised_batches(ds, batch_size, drop_remainder, key, start_batch, deterministic, views):
    """Batches of `ds` mapped by views(batch, seed) in parallel, batch i with seed (key, i)."""
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate(start_batch)
    ds = ds.map(plain(lambda i, batch: views(batch, tf.stack([tf.constant(key, tf.int64), i]))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def labeled_dataset(pattern, info, image_size, batch_size, is_training, augment_name="randaugment",
                    randaug_layer=2, randaug_mag=10, seed=None, stream="labeled", start_batch=0,
                    shuffle_buffer=None):
    """Batches (images float32 [B, S, S, C], labels int32 [B]). is_training: shuffled, repeated,
    noised (augment_name), full batches; else one ordered pass of eval views that keeps the last
    partial batch and names a label outside [0, num_classes) (training: main.py's step does)."""
    _check_augment_name(augment_name)
    files = _files(pattern, "labeled")
    key, shuffle_key, deterministic = _stream(seed, stream, start_batch)
    ds = _records(files, is_training, shuffle_key, shuffle_buffer or _default_shuffle_buffer(info),
                  deterministic)

    @plain
    def eval_view(serialized):
        record = parse_labeled(serialized, info.label_offset)
        label = record["label"]
        tf.debugging.assert_non_negative(label, message=(
            f"label below 0 after subtracting label_offset={info.label_offset}"))
        tf.debugging.assert_less(label, info.num_classes, message=(
            f"label >= num_classes={info.num_classes} (label_offset={info.label_offset})"))
        return preprocess_for_eval(record["image"], info, image_size), label

    def train_batch(serialized, batch_seed):  # a batch of records: parsed, decoded and noised
        # NOTE: no label-range assert here: a stateful op makes tf.data run this map serially under
        # op determinism (main.py --deterministic); the training step checks the labels instead.
        record = parse_labeled(serialized, info.label_offset)
        return train_views(record["image"], info, image_size, augment_name, randaug_layer,
                           randaug_mag, batch_seed), record["label"]

    if not is_training:
        ds = ds.map(eval_view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return _noised_batches(ds, batch_size, True, key, start_batch, deterministic, train_batch)


def pseudo_labeled_dataset(pattern, info, image_size, batch_size, num_classes, augment_name,
                           randaug_layer=2, randaug_mag=10, seed=None, stream="unlabeled",
                           start_batch=0, repeat=True, shuffle_buffer=None):
    """Batches (images float32 [B, S, S, C], probabilities float32 [B, K]) for the student: each
    record read `copies` times per pass, spread far apart, shuffled and (repeat) repeated."""
    _check_augment_name(augment_name)
    files = _files(pattern, "pseudo-labeled")
    check_pseudo_labeled(files, num_classes)
    buffer = shuffle_buffer or _default_shuffle_buffer(info)
    key, shuffle_key, deterministic = _stream(seed, stream, start_batch)
    ds = _records(files, repeat, shuffle_key, buffer, deterministic)
    # Parsed a batch at a time (one op per batch, not per record: the records' order is kept),
    # only what training reads; the copies are counted per record below.
    ds = ds.batch(PARSE_BATCH).map(
        plain(lambda r: {k: v for k, v in parse_pseudo_labeled(r, num_classes).items()
                         if k in ("image", "probabilities", "copies")}),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()

    def copies_of(record):
        copies = tf.cast(record.pop("copies"), tf.int64)
        return tf.data.Dataset.from_tensors(record).repeat(copies)

    # NOTE: the reference wrote each kept image `include_copy` times (filter_unlabel.py); here a
    # record's copies lie in its shard's copy rounds with a count per round, repeated by the reader
    # in a round-robin over L = min(buffer, 1024) records: such copies land L records apart.
    ds = ds.interleave(copies_of, cycle_length=min(buffer, 1024), block_length=1)
    if repeat:
        ds = ds.shuffle(buffer, seed=stream_key(shuffle_key, "copies"),
                        reshuffle_each_iteration=True)

    def views(batch, batch_seed):
        return (train_views(batch["image"], info, image_size, augment_name, randaug_layer,
                            randaug_mag, batch_seed), batch["probabilities"])

    return _noised_batches(ds, batch_size, repeat, key, start_batch, deterministic or not repeat,
                           views)


def unlabeled_pair_dataset(pattern, info, image_size, batch_size, augment_name, randaug_layer=2,
                           randaug_mag=10, seed=None, stream="unlabeled", start_batch=0,
                           teacher_image_size=None, shuffle_buffer=None):
    """Batches (student_images, teacher_images) of the same unlabeled images, forever: training
    views (augment_name) and eval views at teacher_image_size, for the on-the-fly teacher."""
    _check_augment_name(augment_name)
    files = _files(pattern, "unlabeled")
    teacher_size = teacher_image_size or image_size
    key, shuffle_key, deterministic = _stream(seed, stream, start_batch)
    ds = _records(files, True, shuffle_key, shuffle_buffer or _default_shuffle_buffer(info),
                  deterministic)

    def views(serialized, batch_seed):  # a batch of records
        encoded = parse_unlabeled(serialized)["image"]
        teacher = tf.map_fn(lambda e: preprocess_for_eval(e, info, teacher_size), encoded,
                            fn_output_signature=tf.TensorSpec(
                                [teacher_size, teacher_size, info.num_channels], tf.float32))
        return (train_views(encoded, info, image_size, augment_name, randaug_layer, randaug_mag,
                            batch_seed), teacher)

    return _noised_batches(ds, batch_size, True, key, start_batch, deterministic, views)


def unlabeled_records_dataset(files, info, image_size, batch_size, skip_bad_images=False):
    """One ordered pass for labeling: batches of {"image": eval view, "encoded", "id" (default
    "<file>:<index>"), "index" (in its file), "true_label" (-1 if absent)}. skip_bad_images: records
    that do not decode are left out (check the framing first: common.count_records)."""
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise common.UserError("no unlabeled files given")
    names = [os.path.basename(f) for f in files]

    def read(path, name):
        return tf.data.TFRecordDataset(path, buffer_size=8 * 1024 * 1024).enumerate().map(
            lambda i, r: (r, tf.strings.join([name, tf.strings.as_string(i)], ":"), i))

    ds = tf.data.Dataset.from_tensor_slices((files, names)).flat_map(read)

    @plain
    def parse(serialized, fallback_id, index):
        record = parse_unlabeled(serialized, fallback_id)
        return {"image": preprocess_for_eval(record["image"], info, image_size),
                "encoded": record["image"], "id": record["id"], "index": index,
                "true_label": parse_diagnostic_label(serialized)}

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_bad_images:
        ds = ds.ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
