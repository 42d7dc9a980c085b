"""Robustness of trained models: ImageNet-A/C/P style tests and FGSM/PGD attacks (paper Sec. 3.3, 3.4).

Sec. 3.3 evaluates Noisy Student on ImageNet-A (top-1 with the 200-class logit mask), ImageNet-C
(mean corruption error, mCE, normalised by AlexNet) and ImageNet-P (mean flip rate, mFR); Sec. 3.4
attacks the model with FGSM (and 10-step PGD) at epsilons in pixel units. The reference code has
no robustness evaluation; this file follows the benchmark definitions (../shared/REFERENCE-ROBUSTNESS.md).

Suites (--suite, any subset of clean,c,p,a,fgsm,pgd):
- clean: top-1 on --eval_data_dir (default <data_dir>/test).
- c: --c_dir with the released ImageNet-C layout (<corruption>/<severity>/<wnid>/*.JPEG) or
  CIFAR-10-C arrays (<corruption>.npy + labels.npy); without --c_dir, the 15 benchmark + 4 extra
  corruptions x 5 severities are generated from the eval images (corruptions.py). Errors per
  corruption and severity; unnormalised mCE (100 x mean error over the 15), mCE and relative mCE
  against a baseline's robustness.json, and against AlexNet for the released ImageNet-C only.
- p: --p_dir with CIFAR-10-P arrays (<perturbation>.npy, N x T x H x W x C), or sequences generated
  from the eval images. Flip probability per perturbation (noise: every frame vs frame 0, others:
  consecutive frames), its mean, and mFR against a baseline.
- a: --a_dir, class folders. ImageNet-A (200 wnid folders) with a 1000-class model: argmax over the
  200 ImageNet-A logits; any other folder data set through --class_index_json {folder: class index}.
- fgsm, pgd: untargeted attacks with the true labels, on [0, 255] pixels, model(x, training=False);
  accuracy per --epsilons. PGD: --pgd_steps (10) of --pgd_step_size, optional random start.

Teacher vs students of a run (the first model is the baseline of the normalised numbers):

    python eval_robustness.py --model_dir=runs/quick-seed0/teacher,runs/quick-seed0/iter1/student,\
runs/quick-seed0/iter2/student,runs/quick-seed0/iter3/student --eval_data_dir=runs/quick-seed0/data/test \
        --output_dir=runs/quick-seed0 --suite=clean,c,p,fgsm,pgd --num_examples=1000 \
        --p_num_examples=200 --attack_num_examples=500

Cost per image and model on 2 CPU cores: C ~96 forward passes (+22 ms to generate the 95 copies,
shared by the models), P ~300 passes, FGSM + PGD ~55 gradient passes; the command above takes
roughly 10-15 minutes for four B0 (width/depth 0.5) models at 32 px.

Writes robustness.json into every model dir (merged with the suites of earlier runs; every setting
used is recorded), and robustness.md plus robustness_c.png, robustness_p.png, robustness_adv.png
into --output_dir (default: the first model dir).
"""
import dataclasses
import json
import os
import time
import types

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import corruptions
import data
import efficientnet_builder

SUITES = ("clean", "c", "p", "a", "fgsm", "pgd")
RESULTS_FILE = "robustness.json"

# AlexNet top-1 errors on ImageNet-C per severity 1..5 (Hendrycks & Dietterich 2019), the mCE
# denominator. Only the first 15 (corruptions.BENCHMARK_CORRUPTIONS) enter mCE, never all 19.
ALEXNET_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
}
ALEXNET_CLEAN_ERROR = 0.43478  # torchvision AlexNet top-1 56.522

# ImageNet-A: the 1000-class indices of its 200 classes, in the order of their sorted wnids
# (hendrycks/natural-adv-examples eval.py, thousand_k_to_200). Folder k of the sorted ImageNet-A
# folders is class IMAGENET_A_INDICES[k].
IMAGENET_A_INDICES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97,
    99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277,
    283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324,
    326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402, 404, 407, 411,
    416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472, 483, 486, 488, 492,
    496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589,
    606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719,
    736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804,
    813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897,
    900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972, 980,
    981, 984, 986, 987, 988)


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions; errors are fractions in [0, 1]).

def _benchmark_names(errors, reference):
    return [c for c in corruptions.BENCHMARK_CORRUPTIONS if c in errors and c in reference]


def mce(errors, reference):
    """100 x mean over the 15 benchmark corruptions of sum_s E(f,s,c) / sum_s E(ref,s,c).

    errors, reference: {corruption: [error at severity 1..5]}. Extras are ignored. Returns
    (mCE or None, names used); None when a reference corruption has zero error."""
    names = _benchmark_names(errors, reference)
    ratios = [np.sum(errors[c]) / np.sum(reference[c]) for c in names if np.sum(reference[c]) > 0]
    if not names or len(ratios) < len(names):
        return None, names
    return 100.0 * float(np.mean(ratios)), names


def relative_mce(errors, clean_error, reference, reference_clean_error):
    """100 x mean over the 15 of sum_s (E(f,s,c) - E(f,clean)) / sum_s (E(ref,s,c) - E(ref,clean))."""
    names = _benchmark_names(errors, reference)
    ratios = []
    for c in names:
        denominator = np.sum(np.asarray(reference[c]) - reference_clean_error)
        if denominator <= 0:
            return None, names
        ratios.append(np.sum(np.asarray(errors[c]) - clean_error) / denominator)
    return (100.0 * float(np.mean(ratios)), names) if names else (None, names)


def unnormalized_mce(errors):
    """100 x mean error over the 15 benchmark corruptions and their severities (AugMix style)."""
    names = [c for c in corruptions.BENCHMARK_CORRUPTIONS if c in errors]
    return (100.0 * float(np.mean([errors[c] for c in names])), names) if names else (None, names)


def sequence_flip_rates(predictions, noise):
    """Per sequence: the fraction of frames whose top-1 differs from the previous frame, or, for
    noise perturbations, from frame 0 (ImageNet-P). predictions: int [N, T], T >= 2."""
    predictions = np.asarray(predictions)
    reference = predictions[:, :1] if noise else predictions[:, :-1]
    return np.mean(predictions[:, 1:] != reference, axis=1)


def flip_probability(predictions, noise):
    return float(np.mean(sequence_flip_rates(predictions, noise)))


def mean_flip_rate(flip_probabilities, reference):
    """100 x mean over common perturbations of FP(f) / FP(ref); (None, names) if a FP(ref) is 0."""
    names = [p for p in flip_probabilities if p in reference]
    if not names or any(reference[p] <= 0 for p in names):
        return None, names
    return 100.0 * float(np.mean([flip_probabilities[p] / reference[p] for p in names])), names


def masked_predictions(logits, indices):
    """The class (in the model's numbering) with the largest logit among `indices` only."""
    indices = np.asarray(indices)
    return indices[np.argmax(np.asarray(logits)[:, indices], axis=1)]


# ---------------------------------------------------------------------------------------------
# Models and inputs.

@dataclasses.dataclass
class EvalModel:
    model_dir: str
    name: str
    model: object
    config: dict
    info: data.DatasetInfo  # preprocessing of this model's data
    image_size: int
    channels: int

    def __post_init__(self):
        spec = tf.TensorSpec([None, self.image_size, self.image_size, self.channels], tf.float32)
        self._logits = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def predict(self, images, batch_size):
        """Logits of uint8 or float [0, 255] images (numpy or tensor), in chunks of batch_size."""
        return np.concatenate([self._logits(tf.cast(images[i:i + batch_size], tf.float32)).numpy()
                               for i in range(0, len(images), batch_size)])

    def group_key(self):
        return (self.info, self.image_size, self.channels)


def load_model(model_dir, name):
    model, config = efficientnet_builder.load_model_dir(model_dir)
    if config.get("dataset") not in data.DATASETS:
        raise common.UserError(f"{model_dir}/model.json: dataset {config.get('dataset')!r} is not one "
                             f"of {sorted(data.DATASETS)}")
    _, size, _, channels = model.input_shape
    preset = data.DATASETS[config["dataset"]]
    info = dataclasses.replace(
        preset, num_classes=int(config.get("num_classes") or preset.num_classes), image_size=size,
        num_channels=channels, input_kind=config.get("input_kind", preset.input_kind),
        label_offset=int(config.get("label_offset", preset.label_offset)),
        mean=tuple(config.get("mean") or preset.mean), std=tuple(config.get("std") or preset.std))
    return EvalModel(model_dir, name, model, config, info, size, channels)


def display_names(model_dirs):
    """Short unique names: the paths relative to their common parent."""
    paths = [os.path.normpath(os.path.abspath(d)) for d in model_dirs]
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    common = os.path.commonpath(paths)
    return [os.path.relpath(p, common) if p != common else os.path.basename(p) for p in paths]


def eval_batches(files, info, batch_size, limit):
    """(uint8 images [B, S, S, C], int labels [B]) of eval-preprocessed records, at most `limit`."""
    ds = data.labeled_dataset(files, info, info.image_size, batch_size, is_training=False,
                              augment_name="none")
    done = 0
    with data.translate_data_errors(files):
        for images, labels in ds:
            take = len(labels) if not limit else min(len(labels), limit - done)
            yield (np.clip(np.rint(images.numpy()[:take]), 0, 255).astype(np.uint8),
                   labels.numpy()[:take])
            done += take
            if limit and done >= limit:
                return


def _fit(images, size, channels, what):
    """uint8 arrays [N, H, W(, C)] -> float32 [N, size, size, channels] (bicubic resize if needed)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] != channels:
        raise common.UserError(f"{what}: images have {images.shape[-1]} channels, the model {channels}")
    if images.shape[1:3] != (size, size):
        # As the paper: "resize images to the resolution EfficientNet trained on".
        images = tf.clip_by_value(tf.image.resize(images, [size, size], "bicubic"), 0, 255).numpy()
    return images.astype(np.float32)


def file_batches(paths, labels, preprocess, batch_size, what):
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int64)))
    ds = ds.map(lambda p, y: (preprocess(tf.io.read_file(p)), y),
                num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    try:
        for images, y in ds:
            yield images.numpy(), y.numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise common.UserError(f"cannot read an image of {what}: {e.message.splitlines()[0]}") from e


def precropped_preprocess(info):
    """Released ImageNet-C images are already centre-cropped: decode and resize to the model size."""
    def preprocess(encoded):
        image = tf.cast(data.decode_image(encoded, info.num_channels), tf.float32)
        image = tf.image.resize(image, [info.image_size, info.image_size], "bicubic")
        return tf.clip_by_value(image, 0.0, 255.0)
    return preprocess


def read_wnids(path):
    """The 1000 ImageNet wnids from a text file (one per line, first token) or a JSON list/dict."""
    if not tf.io.gfile.exists(path):
        raise common.UserError(f"--imagenet_wnids={path}: no such file")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        loaded = json.loads(text)
        wnids = list(loaded.keys() if isinstance(loaded, dict) else loaded)
    except ValueError:
        wnids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if len(set(wnids)) != 1000 or not all(str(w).startswith("n") for w in wnids):
        raise common.UserError(f"--imagenet_wnids={path}: expected 1000 distinct wnids (n01440764 ...)")
    return sorted(wnids)


def class_mapping(folders, num_classes, class_index_json="", imagenet_wnids="", imagenet_a=False):
    """{folder name: class index of the model} and where it came from.

    --class_index_json wins; then --imagenet_wnids (index in the sorted 1000 wnids); then, for
    ImageNet-A (200 folders), IMAGENET_A_INDICES by sorted folder order; then, when the folder
    count equals the model's classes, the sorted folder order itself."""
    folders = sorted(folders)
    if class_index_json:
        if not tf.io.gfile.exists(class_index_json):
            raise common.UserError(f"--class_index_json={class_index_json}: no such file")
        mapping, source = common.read_json(class_index_json), "class_index_json"
    elif imagenet_wnids:
        mapping, source = {w: i for i, w in enumerate(read_wnids(imagenet_wnids))}, "imagenet_wnids"
    elif imagenet_a and len(folders) == len(IMAGENET_A_INDICES) and num_classes == 1000:
        mapping, source = dict(zip(folders, IMAGENET_A_INDICES)), "imagenet_a_indices"
    elif len(folders) == num_classes:
        mapping, source = {f: i for i, f in enumerate(folders)}, "sorted_folders"
    else:
        raise common.UserError(
            f"{len(folders)} class folders for a {num_classes}-class model: pass --class_index_json "
            f"(folder -> class index) or --imagenet_wnids (the 1000 ImageNet wnids)")
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise common.UserError(f"class folder {missing[0]} is not in the --{source} mapping")
    try:
        out = {f: int(mapping[f]) for f in folders}
    except (TypeError, ValueError) as e:
        raise common.UserError(f"--{source}: class indices must be integers ({e})") from e
    bad = [f for f, i in out.items() if not 0 <= i < num_classes]
    if bad:
        raise common.UserError(f"class folder {bad[0]} maps to {out[bad[0]]}, outside the model's "
                             f"{num_classes} classes")
    return out, source


def folder_items(root, mapping_args, limit, seed):
    """(paths, labels, mapping source, mapping) of root/<class>/<image>, a seeded subset if limit."""
    classes, items = data.list_image_folder(root)
    mapping, source = class_mapping(classes, **mapping_args)
    if limit and limit < len(items):
        items = [items[i] for i in sorted(np.random.default_rng(seed).permutation(len(items))[:limit])]
    return [p for p, _, _ in items], [mapping[classes[k]] for _, k, _ in items], source, mapping


# ---------------------------------------------------------------------------------------------
# Evaluations. Each takes the models of one input group and returns one result per model.

def evaluate_clean(models, batches, batch_size, total):
    correct, n = np.zeros(len(models)), 0
    progress = common.Progress("clean", total)
    for images, labels in batches:
        for m, model in enumerate(models):
            correct[m] += np.sum(model.predict(images, batch_size).argmax(-1) == labels)
        n += len(labels)
        progress.update(n, force=n >= total)
    return [{"top_1": c / max(n, 1), "error": 1 - c / max(n, 1), "num_examples": n} for c in correct]


def evaluate_generated_c(models, batches, names, seed, scale, batch_size, total):
    """Errors [model][corruption] per severity on corrupted copies of the eval images, and the clean
    error on the same images (for relative mCE)."""
    # NOTE: corrupts the eval-preprocessed image at the model resolution and feeds the uint8 result
    # directly; ImageNet-C corrupted a 224 crop and stored it as JPEG (quality 85) that was then
    # resized to the model resolution.
    wrong = np.zeros((len(models), len(names), len(corruptions.SEVERITIES)))
    clean_wrong, n = np.zeros(len(models)), 0
    steps = len(names) * len(corruptions.SEVERITIES)
    progress = common.Progress(f"c, corrupted images ({len(names)} corruptions x 5 severities)",
                             total * steps)
    for images, labels in batches:
        for m, model in enumerate(models):
            clean_wrong[m] += np.sum(model.predict(images, batch_size).argmax(-1) != labels)
        for i, name in enumerate(names):
            for s in corruptions.SEVERITIES:
                x = corruptions.corrupt_batch(images, name, s, seed, n, scale)
                for m, model in enumerate(models):
                    wrong[m, i, s - 1] += np.sum(model.predict(x, batch_size).argmax(-1) != labels)
                done = n * steps + (i * len(corruptions.SEVERITIES) + s) * len(labels)
                progress.update(done, force=done >= total * steps)
        n += len(labels)
    return [{"errors": {c: (wrong[m, i] / n).tolist() for i, c in enumerate(names)},
             "clean_error": clean_wrong[m] / n, "num_examples": n} for m in range(len(models))]


def evaluate_c_arrays(models, c_dir, names, limit, batch_size):
    """CIFAR-10-C layout: <c_dir>/<corruption>.npy [5N, H, W, C] (severity-major) + labels.npy."""
    labels_path = os.path.join(c_dir, "labels.npy")
    if not os.path.exists(labels_path):
        raise common.UserError(f"--c_dir={c_dir}: CIFAR-10-C arrays need {labels_path}")
    all_labels = np.load(labels_path).astype(np.int64)
    names = [c for c in names if os.path.exists(os.path.join(c_dir, c + ".npy"))]
    if not names:
        raise common.UserError(f"--c_dir={c_dir}: none of the --corruptions has a <name>.npy file")
    size, channels = models[0].image_size, models[0].channels
    results = [{"errors": {}, "num_examples": 0} for _ in models]
    progress = common.Progress("c arrays (corruption x severity)", len(names) * 5)
    for i, name in enumerate(names):
        path = os.path.join(c_dir, name + ".npy")
        array = np.load(path, mmap_mode="r")
        if len(array) != len(all_labels) or len(array) % 5:
            raise common.UserError(f"{path}: {len(array)} images for {len(all_labels)} labels "
                                 f"(expected 5 severities x N, as labels.npy)")
        per = len(array) // 5
        count = min(per, limit) if limit else per
        errors = np.zeros((len(models), 5))
        for s in range(5):
            for start in range(s * per, s * per + count, batch_size):
                stop = min(start + batch_size, s * per + count)
                x = _fit(array[start:stop], size, channels, path)
                for m, model in enumerate(models):
                    errors[m, s] += np.sum(model.predict(x, batch_size).argmax(-1) != all_labels[start:stop])
            progress.update(i * 5 + s + 1, force=True)
        for m in range(len(models)):
            results[m]["errors"][name] = (errors[m] / count).tolist()
            results[m]["num_examples"] = count
    return results


def evaluate_c_folders(models, c_dir, names, mapping_args, limit, seed, batch_size):
    """Released ImageNet-C layout: <c_dir>/<corruption>/<severity>/<class>/<image>."""
    names = [c for c in names if tf.io.gfile.isdir(os.path.join(c_dir, c))]
    if not names:
        raise common.UserError(f"--c_dir={c_dir}: none of the --corruptions has a folder")
    preprocess = precropped_preprocess(models[0].info)
    results = [{"errors": {}} for _ in models]
    progress = common.Progress("c folders (corruption x severity)", len(names) * 5)
    for i, name in enumerate(names):
        errors = np.zeros((len(models), 5))
        for s in corruptions.SEVERITIES:
            root = os.path.join(c_dir, name, str(s))
            paths, labels, source, _ = folder_items(root, mapping_args, limit, seed)
            for x, y in file_batches(paths, labels, preprocess, batch_size, root):
                for m, model in enumerate(models):
                    errors[m, s - 1] += np.sum(model.predict(x, batch_size).argmax(-1) != y)
            errors[:, s - 1] /= len(paths)
            progress.update(i * 5 + s, force=True)
        for m in range(len(models)):
            results[m]["errors"][name] = errors[m].tolist()
            results[m].update(num_examples=len(paths), class_mapping=source)
    return results


def evaluate_generated_p(models, batches, names, seed, scale, batch_size, total):
    rates, n, frames_per_sequence = np.zeros((len(models), len(names))), 0, {}
    progress = common.Progress(f"p, sequences ({len(names)} perturbations)", total * len(names))
    for images, _ in batches:
        for j, name in enumerate(names):
            sequences = corruptions.perturb_batch(images, name, seed, n, scale)
            b, t = sequences.shape[:2]
            frames_per_sequence[name] = t
            frames = sequences.reshape((b * t,) + sequences.shape[2:])
            for m, model in enumerate(models):
                predictions = model.predict(frames, batch_size).argmax(-1).reshape(b, t)
                rates[m, j] += sequence_flip_rates(
                    predictions, corruptions.is_noise_perturbation(name)).sum()
            done = n * len(names) + (j + 1) * b
            progress.update(done, force=done >= total * len(names))
        n += len(images)
    return [{"flip_probability": {p: rates[m, j] / n for j, p in enumerate(names)},
             "num_sequences": n, "frames": frames_per_sequence} for m in range(len(models))]


def evaluate_p_arrays(models, p_dir, names, limit, batch_size):
    """CIFAR-10-P layout: <p_dir>/<perturbation>.npy of uint8 [N, T, H, W, C]."""
    names = [p for p in names if os.path.exists(os.path.join(p_dir, p + ".npy"))]
    if not names:
        raise common.UserError(f"--p_dir={p_dir}: none of the --perturbations has a <name>.npy file")
    size, channels = models[0].image_size, models[0].channels
    results = [{"flip_probability": {}, "frames": {}} for _ in models]
    progress = common.Progress("p arrays (perturbations)", len(names))
    for j, name in enumerate(names):
        path = os.path.join(p_dir, name + ".npy")
        array = np.load(path, mmap_mode="r")
        if array.ndim not in (4, 5) or array.shape[1] < 2:
            raise common.UserError(f"{path}: expected N x T x H x W (x C) frames, got {array.shape}")
        count = min(len(array), limit) if limit else len(array)
        t = array.shape[1]
        step = max(1, batch_size // t)
        rates = np.zeros(len(models))
        for start in range(0, count, step):
            chunk = np.asarray(array[start:min(start + step, count)])
            frames = _fit(chunk.reshape((-1,) + chunk.shape[2:]), size, channels, path)
            for m, model in enumerate(models):
                predictions = model.predict(frames, batch_size).argmax(-1).reshape(len(chunk), t)
                rates[m] += sequence_flip_rates(predictions, corruptions.is_noise_perturbation(name)).sum()
        for m in range(len(models)):
            results[m]["flip_probability"][name] = rates[m] / count
            results[m]["frames"][name] = t
            results[m]["num_sequences"] = count
        progress.update(j + 1, force=True)
    return results


def evaluate_a(models, a_dir, mapping_args, limit, seed, batch_size):
    # NOTE: images go through the model's own eval preprocessing (data.preprocess_for_eval: centre
    # crop size/(size+32), bicubic), the reference resizes to 256 and centre-crops 224 (bilinear).
    paths, labels, source, mapping = folder_items(a_dir, dict(mapping_args, imagenet_a=True), limit, seed)
    indices = sorted(set(mapping.values()))
    if source == "imagenet_wnids" and len(mapping) == 200 and tuple(indices) != IMAGENET_A_INDICES:
        logging.warning("%s: the 200 folders are not ImageNet-A's classes", a_dir)
    info = models[0].info
    preprocess = lambda encoded: data.preprocess_for_eval(encoded, info, info.image_size)
    correct, unmasked, n = np.zeros(len(models)), np.zeros(len(models)), 0
    progress = common.Progress("a", len(paths))
    for x, y in file_batches(paths, labels, preprocess, batch_size, a_dir):
        for m, model in enumerate(models):
            logits = model.predict(x, batch_size)
            correct[m] += np.sum(masked_predictions(logits, indices) == y)
            unmasked[m] += np.sum(logits.argmax(-1) == y)
        n += len(y)
        progress.update(n, force=n >= len(paths))
    return [{"top_1": correct[m] / n, "top_1_without_mask": unmasked[m] / n, "num_examples": n,
             "num_classes_in_mask": len(indices), "class_mapping": source} for m in range(len(models))]


# ---------------------------------------------------------------------------------------------
# Adversarial attacks (Sec. 3.4): pixel space [0, 255], normalisation inside the model.

def make_loss_gradient(model):
    """tf.function (images, labels) -> (d sum CE / d images, logits), model in inference mode."""
    @tf.function(reduce_retracing=True)
    def loss_gradient(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=False)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, images), logits
    return loss_gradient


def fgsm(loss_gradient, images, labels, epsilon):
    """x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 255) (Goodfellow et al. 2015)."""
    gradient, _ = loss_gradient(images, labels)
    return tf.clip_by_value(images + epsilon * tf.sign(gradient), 0.0, 255.0)


def pgd(loss_gradient, images, labels, epsilon, steps, step_size, random_start=False, rng=None):
    """L-inf PGD (Madry et al. 2018): `steps` signed-gradient steps, each projected onto the
    epsilon ball around the images and onto [0, 255]; optional uniform random start."""
    # NOTE: the paper gives neither PGD's step size nor its start: the defaults here are eps/4 and no
    # random start (both flags, both recorded). Adversarial images stay float (not re-quantised to
    # uint8 pixels), for FGSM too.
    x = images
    if random_start and epsilon > 0:
        x = images + tf.constant(rng.uniform(-epsilon, epsilon, images.shape), tf.float32)
        x = tf.clip_by_value(x, 0.0, 255.0)
    for _ in range(steps):
        gradient, _ = loss_gradient(x, labels)
        x = tf.clip_by_value(x + step_size * tf.sign(gradient), images - epsilon, images + epsilon)
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x


def parse_step_size(spec):
    """'eps/K' -> (lambda eps: eps / K); a number -> that many pixels for every epsilon."""
    try:
        if spec.startswith("eps/"):
            divisor = float(spec[4:])
            if divisor > 0:
                return lambda eps: eps / divisor
        elif float(spec) > 0:
            return lambda eps: float(spec)
    except ValueError:
        pass
    raise common.UserError(f"--pgd_step_size={spec!r}: give pixels (e.g. 0.5) or 'eps/K' (e.g. eps/4)")


def evaluate_attacks(model, batches, attacks, epsilons, steps, step_size, random_start, seed,
                     batch_size, total):
    """Accuracy per epsilon of each attack in `attacks` ("fgsm", "pgd") for one model."""
    loss_gradient = make_loss_gradient(model.model)
    correct = {a: np.zeros(len(epsilons)) for a in attacks}
    n = 0
    progress = common.Progress(f"{'+'.join(attacks)} {model.name}, images x epsilons",
                             total * len(epsilons))
    for images, labels in batches:
        for start in range(0, len(labels), batch_size):
            x = tf.constant(images[start:start + batch_size], tf.float32)
            y = tf.constant(labels[start:start + batch_size], tf.int32)
            for i, eps in enumerate(epsilons):
                for attack in attacks:
                    if eps == 0:
                        adversarial = x  # no perturbation allowed: the clean images
                    elif attack == "fgsm":
                        adversarial = fgsm(loss_gradient, x, y, eps)
                    else:
                        rng = np.random.default_rng([seed, n + start, i])
                        adversarial = pgd(loss_gradient, x, y, eps, steps, step_size(eps),
                                          random_start, rng)
                    predictions = model.predict(adversarial, batch_size).argmax(-1)
                    correct[attack][i] += np.sum(predictions == y.numpy())
                done = (n + start) * len(epsilons) + (i + 1) * len(y)
                progress.update(done, force=done >= total * len(epsilons))
        n += len(labels)
    return {a: {"epsilons": list(epsilons), "accuracy": (correct[a] / n).tolist(), "num_examples": n}
            for a in attacks}


# ---------------------------------------------------------------------------------------------
# Normalised metrics, summary, report.

def normalise_c(c, baseline_c, clean_error):
    """Adds unnormalised mCE, baseline-normalised (relative) mCE and, for the released ImageNet-C,
    AlexNet-normalised ones to a "c" result."""
    errors = c["errors"]
    c["mean_error"] = {k: float(np.mean(v)) for k, v in errors.items()}
    c["mce_unnormalized"], c["mce_corruptions"] = unnormalized_mce(errors)
    c["mce_complete"] = len(c["mce_corruptions"]) == len(corruptions.BENCHMARK_CORRUPTIONS)
    if "clean_error" not in c and clean_error is not None:
        c["clean_error"], c["clean_error_source"] = clean_error, "clean suite (--eval_data_dir)"
    clean = c.get("clean_error")
    # NOTE: AlexNet normalisation only for the released ImageNet-C folders: generated corruptions
    # (procedural frost, simplified spatter, eval-size images) are not the data AlexNet's errors
    # were measured on. mT5D (ImageNet-P top-5 distance, optional in the spec) is not computed.
    if c["settings"]["source"] == "imagenet_c_folders":
        c["mce_alexnet"] = mce(errors, ALEXNET_ERRORS)[0]
        if clean is not None:
            c["relative_mce_alexnet"] = relative_mce(errors, clean, ALEXNET_ERRORS, ALEXNET_CLEAN_ERROR)[0]
    if baseline_c:
        c["mce_baseline"] = mce(errors, baseline_c["errors"])[0]
        base_clean = baseline_c.get("clean_error")
        if clean is not None and base_clean is not None:
            c["relative_mce_baseline"] = relative_mce(errors, clean, baseline_c["errors"], base_clean)[0]
        ours, theirs = c["settings"], baseline_c.get("settings", {})
        c["baseline_settings_differ"] = sorted(k for k in ("source", "corruptions", "seed", "data",
                                                           "constants", "num_examples")
                                               if ours.get(k) != theirs.get(k))


def normalise_p(p, baseline_p):
    fps = p["flip_probability"]
    p["mean_flip_probability"] = float(np.mean(list(fps.values())))
    if baseline_p:
        p["mfr_baseline"], p["mfr_perturbations"] = mean_flip_rate(fps, baseline_p["flip_probability"])


def summary(result):
    """The headline numbers (report.py reads this)."""
    out = {}
    for key, path in (("clean_top_1", ("clean", "top_1")), ("a_top_1", ("a", "top_1")),
                      ("c_mce_unnormalized", ("c", "mce_unnormalized")),
                      ("c_mce_baseline", ("c", "mce_baseline")),
                      ("c_relative_mce_baseline", ("c", "relative_mce_baseline")),
                      ("c_mce_alexnet", ("c", "mce_alexnet")),
                      ("c_relative_mce_alexnet", ("c", "relative_mce_alexnet")),
                      ("p_mean_flip_probability", ("p", "mean_flip_probability")),
                      ("p_mfr_baseline", ("p", "mfr_baseline"))):
        value = result.get(path[0], {}).get(path[1])
        if value is not None:
            out[key] = value
    for attack in ("fgsm", "pgd"):
        if attack in result:
            r = result[attack]
            out[f"{attack}_accuracy"] = {f"{e:g}": a for e, a in zip(r["epsilons"], r["accuracy"])}
    if "baseline" in result:
        out["baseline"] = result["baseline"]
    return out


def _plain(obj):
    """JSON-safe: numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _pct(value, digits=1):
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _num(value):
    return "-" if value is None else f"{value:.1f}"


def markdown_report(names, results):
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    row = lambda label, cells: f"| {label} | " + " | ".join(cells) + " |"
    get = lambda r, s, k: r.get(s, {}).get(k)
    lines = ["# Robustness (paper Sec. 3.3-3.4)", "",
             "Settings of every suite are in each model dir's robustness.json.", "",
             "| model | model dir |", "|---|---|"]
    lines += [f"| {n} | {r['model_dir']} |" for n, r in zip(names, results)]
    lines += ["", "## Summary (lower is better for mCE / flip rates)", "", head]
    table = [("clean top-1 (%)", lambda r: _pct(get(r, "clean", "top_1"))),
             ("C mCE, unnormalised", lambda r: _num(get(r, "c", "mce_unnormalized"))),
             ("C mCE vs baseline", lambda r: _num(get(r, "c", "mce_baseline"))),
             ("C relative mCE vs baseline", lambda r: _num(get(r, "c", "relative_mce_baseline"))),
             ("C mCE vs AlexNet (ImageNet-C)", lambda r: _num(get(r, "c", "mce_alexnet"))),
             ("P mean flip probability (%)", lambda r: _pct(get(r, "p", "mean_flip_probability"), 2)),
             ("P mFR vs baseline", lambda r: _num(get(r, "p", "mfr_baseline"))),
             ("A top-1 (%)", lambda r: _pct(get(r, "a", "top_1")))]
    lines += [row(label, [fn(r) for r in results]) for label, fn in table
              if any(fn(r) != "-" for r in results)]
    corrs = [c for c in corruptions.ALL_CORRUPTIONS
             if any(c in (get(r, "c", "errors") or {}) for r in results)]
    if corrs:
        lines += ["", "## C: error (%) per corruption, mean over severities 1-5 (* = extra, not in mCE)",
                  "", head]
        lines += [row(c + ("*" if c in corruptions.EXTRA_CORRUPTIONS else ""),
                      [_pct(np.mean(get(r, "c", "errors")[c])) if c in (get(r, "c", "errors") or {})
                       else "-" for r in results]) for c in corrs]
    perts = sorted({p for r in results for p in (get(r, "p", "flip_probability") or {})})
    if perts:
        lines += ["", "## P: flip probability (%) per perturbation", "", head]
        lines += [row(p, [_pct((get(r, "p", "flip_probability") or {}).get(p), 2) for r in results])
                  for p in perts]
    for attack in ("fgsm", "pgd"):
        runs = [r.get(attack) for r in results]
        if any(runs):
            epsilons = next(x for x in runs if x)["epsilons"]
            lines += ["", f"## {attack.upper()}: accuracy (%) per epsilon (pixels of 255)", "", head]
            lines += [row(f"eps={e:g}", [_pct(x["accuracy"][i]) if x else "-" for x in runs])
                      for i, e in enumerate(epsilons)]
    return "\n".join(lines) + "\n"


def _save(fig, path):
    with common.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(names, results, output_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    errors = [r.get("c", {}).get("errors", {}) for r in results]
    corrs = [c for c in corruptions.ALL_CORRUPTIONS if any(c in e for e in errors)]
    if corrs:
        cols = min(5, len(corrs))
        rows = -(-len(corrs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.3 * rows), sharex=True,
                                 sharey=True, squeeze=False, layout="constrained")
        for ax, c in zip(axes.ravel(), corrs):
            for name, e in zip(names, errors):
                if c in e:
                    ax.plot(corruptions.SEVERITIES, 100 * np.asarray(e[c]), marker="o", label=name)
            ax.set_title(c + (" (extra)" if c in corruptions.EXTRA_CORRUPTIONS else ""), fontsize=9)
            ax.set_xticks(corruptions.SEVERITIES)
        for ax in axes.ravel()[len(corrs):]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7)
        fig.supxlabel("severity")
        fig.supylabel("error (%)")
        _save(fig, os.path.join(output_dir, "robustness_c.png"))
        written.append("robustness_c.png")
    fps = [r.get("p", {}).get("flip_probability", {}) for r in results]
    perts = sorted({p for f in fps for p in f})
    if perts:
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(perts), 3.5))
        width = 0.8 / len(names)
        for k, (name, f) in enumerate(zip(names, fps)):
            ax.bar(np.arange(len(perts)) + k * width, [100 * f.get(p, np.nan) for p in perts], width, label=name)
        ax.set_xticks(np.arange(len(perts)) + 0.4 - width / 2, perts, rotation=30, ha="right")
        ax.set_ylabel("flip probability (%)")
        ax.legend(fontsize=7)
        _save(fig, os.path.join(output_dir, "robustness_p.png"))
        written.append("robustness_p.png")
    if any("fgsm" in r or "pgd" in r for r in results):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k, (name, r) in enumerate(zip(names, results)):
            for attack, style in (("fgsm", "-"), ("pgd", "--")):
                if attack in r:
                    ax.plot(r[attack]["epsilons"], 100 * np.asarray(r[attack]["accuracy"]), style,
                            marker="o", color=f"C{k}", label=f"{name} {attack.upper()}")
        ax.set_xlabel("epsilon (pixels of 255)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
        _save(fig, os.path.join(output_dir, "robustness_adv.png"))
        written.append("robustness_adv.png")
    plt.close("all")
    return written


# ---------------------------------------------------------------------------------------------
# main

def define_flags(flag_values=flags.FLAGS):
    """The script's flags. Defined only when run as a script (or into a private FlagValues in
    tests), so that importing this file next to other stage scripts defines no flags."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_list("model_dir", [], "Model dir(s) written by main.py, comma-separated (e.g. the "
                      "teacher, then students). Each gets its robustness.json.", **f)
    flags.DEFINE_list("suite", ["clean", "c", "p", "fgsm", "pgd"], f"Any subset of {','.join(SUITES)}.", **f)
    flags.DEFINE_string("data_dir", "data/fashion_mnist", "Prepared data dir (data.py output); the "
                        "eval split defaults to <data_dir>/test.", **f)
    flags.DEFINE_string("eval_data_dir", "", "Eval records (a dir or a glob) for clean, generated C/P "
                        "and the attacks. Default: <data_dir>/test.", **f)
    flags.DEFINE_string("output_dir", "", "Where robustness.md and the plots go. Default: the first "
                        "model dir.", **f)
    flags.DEFINE_string("baseline_results", "", "A baseline's robustness.json for mCE / mFR normalised "
                        "by it (e.g. the teacher's). Default: the first --model_dir when several are "
                        "given; 'none' disables. A model dir of this run may be named: its fresh "
                        "results are used.", **f)
    flags.DEFINE_integer("num_examples", 0, "Cap on images for clean, C (per corruption and severity) "
                         "and A; 0 = all.", **f)
    flags.DEFINE_integer("p_num_examples", 0, "Cap on P sequences (16-41 frames each); 0 = "
                         "--num_examples.", **f)
    flags.DEFINE_integer("attack_num_examples", 0, "Cap on images attacked; 0 = --num_examples.", **f)
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.", **f)
    flags.DEFINE_integer("seed", 0, "Seed of generated corruptions/sequences, subsets and PGD starts.", **f)
    flags.DEFINE_list("corruptions", list(corruptions.ALL_CORRUPTIONS), "C corruptions to evaluate "
                      "(mCE uses the 15 benchmark ones only).", **f)
    flags.DEFINE_list("perturbations", list(corruptions.PERTURBATIONS), "P perturbations to evaluate.", **f)
    flags.DEFINE_string("c_dir", "", "ImageNet-C folders or CIFAR-10-C .npy arrays; empty = generate.", **f)
    flags.DEFINE_string("p_dir", "", "CIFAR-10-P style .npy arrays; empty = generate.", **f)
    flags.DEFINE_string("a_dir", "", "Class folders of ImageNet-A (or any folder data set), for suite a.", **f)
    flags.DEFINE_string("class_index_json", "", "JSON {folder name: model class index} for folder "
                        "inputs (A, ImageNet-C folders).", **f)
    flags.DEFINE_string("imagenet_wnids", "", "The 1000 ImageNet wnids (text, one per line, or JSON); "
                        "folder wnids map to their index in the sorted list.", **f)
    flags.DEFINE_list("epsilons", ["0", "1", "2", "4", "8", "16"], "Attack epsilons in pixels of "
                      "[0, 255].", **f)
    flags.DEFINE_integer("pgd_steps", 10, "PGD iterations (paper: 10).", **f)
    flags.DEFINE_string("pgd_step_size", "eps/4", "PGD step: pixels, or 'eps/K' (the paper gives "
                        "none).", **f)
    flags.DEFINE_bool("pgd_random_start", False, "Start PGD at a uniform random point of the eps ball.", **f)


OWN_FLAGS = ("model_dir", "suite", "data_dir", "eval_data_dir", "output_dir", "baseline_results",
             "num_examples", "p_num_examples", "attack_num_examples", "batch_size", "seed",
             "corruptions", "perturbations", "c_dir", "p_dir", "a_dir", "class_index_json",
             "imagenet_wnids", "epsilons", "pgd_steps", "pgd_step_size", "pgd_random_start")


def _choose(values, known, flag):
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise common.UserError(f"--{flag}: {unknown or 'empty'}; choose from {', '.join(known)}")
    return list(values)


def input_layout(path, flag, videos_ok=False):
    """'arrays' (*.npy) or 'folders'; UserError for anything else (ImageNet-P videos included)."""
    if not tf.io.gfile.isdir(path):
        raise common.UserError(f"--{flag}={path} is not a directory")
    if tf.io.gfile.glob(os.path.join(path, "*.npy")):
        return "arrays"
    # NOTE: ImageNet-P ships MP4 videos; no decoder is available without new dependencies, so they
    # are refused with instructions to convert them to arrays.
    if tf.io.gfile.glob(os.path.join(path, "*", "*", "*.mp4")) or tf.io.gfile.glob(os.path.join(path, "*", "*.mp4")):
        raise common.UserError(
            f"--{flag}={path} holds ImageNet-P videos (.mp4): no video decoder is available "
            f"without new dependencies (OpenCV/PyAV/imageio); convert them to <perturbation>.npy "
            f"arrays of N x T x H x W x C frames (the CIFAR-10-P layout) and pass that directory")
    if not videos_ok and tf.io.gfile.glob(os.path.join(path, "*", "[1-5]")):
        return "folders"
    raise common.UserError(f"--{flag}={path}: expected <name>.npy arrays"
                         + ("" if videos_ok else " or <corruption>/<severity>/<class>/ folders"))


def resolve_baseline(flag_value, model_dirs):
    """(model index of this run or None, loaded results or None, description)."""
    if flag_value == "none" or (not flag_value and len(model_dirs) < 2):
        return None, None, None
    path = flag_value or os.path.join(model_dirs[0], RESULTS_FILE)
    for i, d in enumerate(model_dirs):
        if os.path.abspath(path) in (os.path.abspath(d), os.path.abspath(os.path.join(d, RESULTS_FILE))):
            return i, None, os.path.join(d, RESULTS_FILE)
    if not tf.io.gfile.exists(path):
        raise common.UserError(f"--baseline_results={path}: no such file")
    return None, common.read_json(path), path


def run_group(models, suites, F, files, total_for, scale_settings):
    """All suites for models sharing one input pipeline; returns one result dict per model.
    F: the run's settings (a namespace of the flag values, read once by main())."""
    results = [{} for _ in models]
    info, bs, seed = models[0].info, F.batch_size, F.seed
    batches = lambda limit: eval_batches(files, info, bs, limit)
    mapping_args = dict(num_classes=info.num_classes, class_index_json=F.class_index_json,
                        imagenet_wnids=F.imagenet_wnids)
    scale = corruptions.scale_for(models[0].image_size)
    generated = dict(data=F.eval_data_dir, seed=seed, constants=scale.kind, length_scale=scale.factor,
                     image_size=models[0].image_size, **scale_settings)
    if "clean" in suites:
        for r, out in zip(results, evaluate_clean(models, batches(F.num_examples), bs, total_for(F.num_examples))):
            r["clean"] = dict(out, settings=dict(data=F.eval_data_dir, num_examples=F.num_examples))
    if "c" in suites:
        names = F.corruptions
        if not F.c_dir:
            outs = evaluate_generated_c(models, batches(F.num_examples), names, seed, scale, bs,
                                        total_for(F.num_examples))
            settings = dict(generated, source="generated", corruptions=names, num_examples=F.num_examples)
        elif input_layout(F.c_dir, "c_dir") == "arrays":
            outs = evaluate_c_arrays(models, F.c_dir, names, F.num_examples, bs)
            settings = dict(source="cifar_c_arrays", data=F.c_dir, corruptions=names, num_examples=F.num_examples)
        else:
            outs = evaluate_c_folders(models, F.c_dir, names, mapping_args, F.num_examples, seed, bs)
            settings = dict(source="imagenet_c_folders", data=F.c_dir, corruptions=names, seed=seed,
                            num_examples=F.num_examples,
                            preprocessing="released crops resized (bicubic) to the model size")
        for r, out in zip(results, outs):
            r["c"] = dict(out, settings=settings)
    if "p" in suites:
        n_p = F.p_num_examples or F.num_examples
        if not F.p_dir:
            outs = evaluate_generated_p(models, batches(n_p), F.perturbations, seed, scale, bs, total_for(n_p))
            settings = dict(generated, source="generated", perturbations=F.perturbations, num_examples=n_p)
        else:
            input_layout(F.p_dir, "p_dir", videos_ok=True)
            outs = evaluate_p_arrays(models, F.p_dir, F.perturbations, n_p, bs)
            settings = dict(source="cifar_p_arrays", data=F.p_dir, perturbations=F.perturbations, num_examples=n_p)
        for r, out in zip(results, outs):
            r["p"] = dict(out, settings=dict(settings, noise_rule="frames of *noise* vs frame 0, "
                                                                   "others vs the previous frame"))
    if "a" in suites:
        for r, out in zip(results, evaluate_a(models, F.a_dir, mapping_args, F.num_examples, seed, bs)):
            r["a"] = dict(out, settings=dict(data=F.a_dir, num_examples=F.num_examples, seed=seed,
                                             class_index_json=F.class_index_json,
                                             imagenet_wnids=F.imagenet_wnids))
    attacks = [a for a in ("fgsm", "pgd") if a in suites]
    if attacks:
        n_a = F.attack_num_examples or F.num_examples
        epsilons = [float(e) for e in F.epsilons]
        step_size = parse_step_size(F.pgd_step_size)
        settings = dict(data=F.eval_data_dir, num_examples=n_a, epsilons=epsilons, pixel_range=[0, 255],
                        loss="softmax cross-entropy with the true labels (untargeted)",
                        model_mode="model(x, training=False); normalisation inside the model",
                        adversarial_images="float, not re-quantised to uint8")
        pgd_settings = dict(settings, steps=F.pgd_steps, step_size=F.pgd_step_size, seed=seed,
                            step_sizes=[step_size(e) for e in epsilons], random_start=F.pgd_random_start)
        for r, model in zip(results, models):
            out = evaluate_attacks(model, batches(n_a), attacks, epsilons, F.pgd_steps, step_size,
                                   F.pgd_random_start, seed, bs, total_for(n_a))
            for a in attacks:
                r[a] = dict(out[a], settings=settings if a == "fgsm" else pgd_settings)
    return results


def main(argv, flag_values=flags.FLAGS):
    del argv
    F = types.SimpleNamespace(**{k: flag_values[k].value for k in OWN_FLAGS})
    started = time.time()
    suites = _choose(F.suite, SUITES, "suite")
    F.corruptions = _choose(F.corruptions, corruptions.ALL_CORRUPTIONS, "corruptions")
    F.perturbations = _choose(F.perturbations, corruptions.PERTURBATIONS, "perturbations")
    model_dirs = [d for d in F.model_dir if d]
    if not model_dirs:
        raise common.UserError("--model_dir is required (one or more model dirs, comma-separated)")
    try:
        epsilons = [float(e) for e in F.epsilons]
    except ValueError as e:
        raise common.UserError(f"--epsilons={','.join(F.epsilons)}: not numbers") from e
    if any(e < 0 for e in epsilons) or F.pgd_steps < 1 or F.batch_size < 1:
        raise common.UserError("--epsilons must be >= 0, --pgd_steps and --batch_size >= 1")
    parse_step_size(F.pgd_step_size)
    if "a" in suites and not F.a_dir:
        raise common.UserError("--suite includes a: pass --a_dir (class folders, e.g. ImageNet-A)")
    if "c" in suites and F.c_dir:
        input_layout(F.c_dir, "c_dir")
    if "p" in suites and F.p_dir:
        input_layout(F.p_dir, "p_dir", videos_ok=True)
    needs_eval = {"clean", "fgsm", "pgd"} & set(suites) or ("c" in suites and not F.c_dir) or (
        "p" in suites and not F.p_dir)
    F.eval_data_dir = F.eval_data_dir or os.path.join(F.data_dir, "test")
    files = common.list_files(F.eval_data_dir, "eval (--eval_data_dir / --data_dir)") if needs_eval else None
    baseline_index, baseline, baseline_path = resolve_baseline(F.baseline_results, model_dirs)
    output_dir = F.output_dir or model_dirs[0]

    names = display_names(model_dirs)
    models = [load_model(d, n) for d, n in zip(model_dirs, names)]
    counted = {}

    def total_for(limit):  # images a suite will see, for progress lines
        if "all" not in counted:
            counted["all"] = common.count_records(files)
        return min(limit, counted["all"]) if limit else counted["all"]

    scale_settings = dict(notes=[
        "frost: procedural substitute for the benchmark's frost photos (not comparable)",
        "spatter (water, severities 1-3): simplified shading; saturate: identity on 1 channel",
        "corruptions applied to the eval-preprocessed image at model resolution, kept as uint8"])
    results = [None] * len(models)
    groups = {}
    for i, m in enumerate(models):
        groups.setdefault(m.group_key(), []).append(i)
    for indices in groups.values():
        group = [models[i] for i in indices]
        logging.info("evaluating %s on %s", ", ".join(m.name for m in group), ", ".join(suites))
        for i, r in zip(indices, run_group(group, suites, F, files, total_for, scale_settings)):
            results[i] = r

    # Merge with earlier runs' suites, then normalise against the baseline.
    merged = []
    for m, r in zip(models, results):
        path = os.path.join(m.model_dir, RESULTS_FILE)
        old = common.read_json(path) if tf.io.gfile.exists(path) else {}
        merged.append({**old, **r, "model_dir": m.model_dir, "model_config": m.config,
                       "settings": vars(F)})
    if baseline_index is not None:
        baseline = merged[baseline_index]
    for r in merged:
        clean_error = r.get("clean", {}).get("error")
        if "c" in r and "c" in suites:
            normalise_c(r["c"], (baseline or {}).get("c"), clean_error)
        if "p" in r and "p" in suites:
            normalise_p(r["p"], (baseline or {}).get("p"))
        if baseline_path:
            r["baseline"] = baseline_path
        r["summary"] = summary(r)
    for m, r in zip(models, merged):
        common.write_json(os.path.join(m.model_dir, RESULTS_FILE), _plain(r))
    tf.io.gfile.makedirs(output_dir)
    plots = write_plots(names, merged, output_dir)
    report = markdown_report(names, merged) + "".join(f"\n![{p}]({p})\n" for p in plots)
    with common.atomic_output(os.path.join(output_dir, "robustness.md")) as tmp:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(report)
    logging.info("wrote %s in each model dir and robustness.md, %s to %s (%.0fs)", RESULTS_FILE,
                 ", ".join(plots) or "no plots", output_dir, time.time() - started)
    print(report)


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
