"""Robustness of trained models: ImageNet-A/C/P style tests and FGSM/PGD attacks (paper Sec. 3.3, 3.4).

Sec. 3.3: ImageNet-A (top-1 with the 200-class logit mask), ImageNet-C (mean corruption error,
mCE, normalised by AlexNet) and ImageNet-P (mean flip rate, mFR); Sec. 3.4: FGSM (and 10-step PGD)
at epsilons in pixels. The reference has no robustness evaluation; this file follows the
benchmarks' definitions (Hendrycks & Dietterich 2019 for C and P, Hendrycks et al. 2021 for A).

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

Writes robustness.json into every model dir (merged with earlier runs' suites; every setting
recorded), robustness.md and robustness_{c,p,adv}.png into --output_dir (default: the first).
"""
import dataclasses
import json
import os
import time

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
MAX_READ_ONCE_BYTES = 1 << 30  # eval images up to this size are read once and shared by every suite

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


# --- Metrics (pure functions; errors are fractions in [0, 1]). -----------------------------------

def _benchmark_names(errors, reference):
    return [c for c in corruptions.BENCHMARK_CORRUPTIONS if c in errors and c in reference]


def mce(errors, reference):
    """(100 x mean over the 15 benchmark corruptions of sum_s E(f,s,c) / sum_s E(ref,s,c), names
    used) of {corruption: [error at severity 1..5]}; None if a reference error is zero."""
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


# --- Models and inputs. --------------------------------------------------------------------------

@dataclasses.dataclass
class EvalModel:
    model_dir: str
    name: str
    model: object
    config: dict
    info: data.DatasetInfo  # this model's preprocessing, at its input size and channels
    strategy: object = None  # the tf.distribute strategy the model was built in (None: default)

    def __post_init__(self):
        self.strategy = self.strategy or tf.distribute.get_strategy()
        self._logits = common.on_replicas(self.strategy, lambda x: self.model(x, training=False))

    def predict(self, images, batch_size):
        """Logits of uint8 or float [0, 255] images (numpy or tensor), in chunks of batch_size."""
        return np.concatenate([self._logits(tf.cast(images[i:i + batch_size], tf.float32))
                               for i in range(0, len(images), batch_size)])


def load_model(model_dir, name, strategy):
    with strategy.scope():
        model, config = efficientnet_builder.load_model_dir(model_dir)
    info = data.model_dataset_info(config, image_size=model.input_shape[1],
                                   where=os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE))
    return EvalModel(model_dir, name, model, config, info, strategy)


def display_names(model_dirs):
    """Short unique names: the paths relative to their common parent."""
    paths = [os.path.normpath(os.path.abspath(d)) for d in model_dirs]
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    parent = os.path.commonpath(paths)
    return [os.path.relpath(p, parent) if p != parent else os.path.basename(p) for p in paths]


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


def _resize(images, size):
    """Bicubic to size x size, clipped to [0, 255]: as the paper, "resize images to the
    resolution EfficientNet trained on"."""
    return tf.clip_by_value(tf.image.resize(images, [size, size], "bicubic"), 0.0, 255.0)


def _fit(images, info, what):
    """uint8 arrays [N, H, W(, C)] -> float32 [N, S, S, C] of the model (resized if needed)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] != info.num_channels:
        raise common.UserError(f"{what}: images have {images.shape[-1]} channels, the model "
                               f"{info.num_channels}")
    if images.shape[1:3] != (info.image_size,) * 2:
        images = _resize(images, info.image_size).numpy()
    return images.astype(np.float32)


def file_batches(paths, labels, preprocess, batch_size, what):
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int64)))
    ds = ds.map(lambda p, y: (preprocess(tf.io.read_file(p)), y),
                num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    try:
        for images, y in ds:
            yield images.numpy(), y.numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise common.UserError(f"cannot read an image of {what}: {common.tf_error_line(e)}") from e


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
    """({folder name: class index of the model}, its source): --class_index_json, else
    --imagenet_wnids (index in the sorted 1000), else for ImageNet-A's 200 folders
    IMAGENET_A_INDICES, else the sorted folder order when it has the model's class count."""
    folders = sorted(folders)
    if class_index_json:
        mapping, source = common.read_json(class_index_json, "--class_index_json"), "class_index_json"
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


# --- Evaluations: each takes the models of one input group and returns one result per model. C and
# P read their images from a source (generated, arrays or folders) as a stream of chunks.

def count_wrong(models, images, labels, batch_size):
    """Per model: how many of `images` it misclassifies."""
    return np.array([np.sum(m.predict(images, batch_size).argmax(-1) != labels) for m in models])


def evaluate_clean(models, batches, total, batch_size):
    wrong, n = np.zeros(len(models), np.int64), 0
    progress = common.Progress("clean", total)
    for images, labels in batches:
        wrong += count_wrong(models, images, labels, batch_size)
        n += len(labels)
        progress.update(n, force=n >= total)
    return [{"top_1": (n - w) / max(n, 1), "error": 1 - (n - w) / max(n, 1), "num_examples": n}
            for w in wrong]


def evaluate_c(models, chunks, total, batch_size):
    """Error per model, corruption and severity 1..5 over `chunks` of (corruption, severity,
    images, labels); chunks of corruption None are clean images (their error: "clean_error")."""
    wrong, seen = {}, {}
    progress = common.Progress("c, images x corruptions x severities", total)
    for name, severity, images, labels in chunks:
        key = (name, severity)
        wrong[key] = wrong.get(key, 0) + count_wrong(models, images, labels, batch_size)
        seen[key] = seen.get(key, 0) + len(labels)
        progress.add(len(labels))
    progress.update(progress.done, force=True)
    clean_wrong, clean_seen = wrong.pop((None, None), None), seen.pop((None, None), None)
    names = list(dict.fromkeys(name for name, _ in wrong))
    results = [{"errors": {c: [wrong[c, s][m] / seen[c, s] for s in corruptions.SEVERITIES]
                           for c in names}, "num_examples": list(seen.values())[-1]}
               for m in range(len(models))]
    if clean_seen:  # the clean error of the same images, for relative mCE
        for r, w in zip(results, clean_wrong):
            r["clean_error"] = w / clean_seen
    return results


def generated_c_chunks(batches, names, seed, scale):
    """Every corrupted copy of the eval images, each batch preceded by its clean images."""
    # NOTE: corrupts the eval-preprocessed image at the model resolution and feeds the uint8 result
    # directly; ImageNet-C corrupted a 224 crop and stored it as JPEG (quality 85) that was then
    # resized to the model resolution.
    n = 0
    for images, labels in batches:
        yield None, None, images, labels
        for name in names:
            for s in corruptions.SEVERITIES:
                yield name, s, corruptions.corrupt_batch(images, name, s, seed, n, scale), labels
        n += len(labels)


def _npy_files(directory, names, flag, what):
    """{name: (path, memory-mapped array)} of the <name>.npy files there are for `names`."""
    paths = {name: os.path.join(directory, name + ".npy") for name in names}
    arrays = {name: (p, np.load(p, mmap_mode="r")) for name, p in paths.items() if os.path.exists(p)}
    if not arrays:
        raise common.UserError(f"--{flag}={directory}: none of the --{what} has a <name>.npy file")
    return arrays


def c_array_chunks(c_dir, names, limit, batch_size, info):
    """CIFAR-10-C layout: <c_dir>/<corruption>.npy [5N, H, W(, C)] (severity-major) + labels.npy.
    Returns (chunks, number of images in them)."""
    labels_path = os.path.join(c_dir, "labels.npy")
    if not os.path.exists(labels_path):
        raise common.UserError(f"--c_dir={c_dir}: CIFAR-10-C arrays need {labels_path}")
    labels = np.load(labels_path).astype(np.int64)
    arrays = _npy_files(c_dir, names, "c_dir", "corruptions")
    for path, array in arrays.values():
        if len(array) != len(labels) or len(array) % 5:
            raise common.UserError(f"{path}: {len(array)} images for {len(labels)} labels "
                                   f"(expected 5 severities x N, as labels.npy)")
    per = len(labels) // 5
    count = min(per, limit) if limit else per

    def chunks():
        for name, (path, array) in arrays.items():
            for s in corruptions.SEVERITIES:
                first = (s - 1) * per
                for start in range(first, first + count, batch_size):
                    stop = min(start + batch_size, first + count)
                    yield name, s, _fit(array[start:stop], info, path), labels[start:stop]
    return chunks(), len(arrays) * 5 * count


def c_folder_chunks(c_dir, names, mapping_args, limit, seed, batch_size, info):
    """Released ImageNet-C layout: <c_dir>/<corruption>/<severity>/<class>/<image>.
    Returns (chunks, number of images in them, class mapping source)."""
    names = [c for c in names if tf.io.gfile.isdir(os.path.join(c_dir, c))]
    if not names:
        raise common.UserError(f"--c_dir={c_dir}: none of the --corruptions has a folder")
    roots = {(c, s): os.path.join(c_dir, c, str(s)) for c in names for s in corruptions.SEVERITIES}
    items = {key: folder_items(root, mapping_args, limit, seed) for key, root in roots.items()}
    # Released ImageNet-C images are already centre-cropped: decoded and resized to the model size.
    preprocess = lambda encoded: _resize(tf.cast(data.decode_image(encoded, info.num_channels),
                                                 tf.float32), info.image_size)
    chunks = ((name, s, images, y) for (name, s), (paths, labels, _, _) in items.items()
              for images, y in file_batches(paths, labels, preprocess, batch_size, roots[name, s]))
    return chunks, sum(len(paths) for paths, *_ in items.values()), list(items.values())[-1][2]


def evaluate_p(models, chunks, total, batch_size):
    """Flip probability per model and perturbation over `chunks` of (perturbation, frames
    [B, T, S, S, C])."""
    sums, seen, frames = {}, {}, {}
    progress = common.Progress("p, sequences x perturbations", total, unit="seq")
    for name, sequences in chunks:
        b, t = sequences.shape[:2]
        flat = sequences.reshape((b * t,) + sequences.shape[2:])
        noise = corruptions.is_noise_perturbation(name)
        rates = [sequence_flip_rates(m.predict(flat, batch_size).argmax(-1).reshape(b, t), noise).sum()
                 for m in models]
        sums[name] = sums.get(name, 0) + np.array(rates)
        seen[name] = seen.get(name, 0) + b
        frames[name] = t
        progress.add(b)
    progress.update(progress.done, force=True)
    return [{"flip_probability": {p: sums[p][m] / seen[p] for p in sums},
             "num_sequences": list(seen.values())[-1], "frames": frames} for m in range(len(models))]


def generated_p_chunks(batches, names, seed, scale):
    n = 0
    for images, _ in batches:
        for name in names:
            yield name, corruptions.perturb_batch(images, name, seed, n, scale)
        n += len(images)


def p_array_chunks(p_dir, names, limit, batch_size, info):
    """CIFAR-10-P layout: <p_dir>/<perturbation>.npy of uint8 [N, T, H, W(, C)].
    Returns (chunks, number of sequences in them)."""
    arrays = _npy_files(p_dir, names, "p_dir", "perturbations")
    for path, array in arrays.values():
        if array.ndim not in (4, 5) or array.shape[1] < 2:
            raise common.UserError(f"{path}: expected N x T x H x W (x C) frames, got {array.shape}")
    arrays = {name: (path, array[:limit or None]) for name, (path, array) in arrays.items()}

    def chunks():
        for name, (path, array) in arrays.items():
            step = max(1, batch_size // array.shape[1])
            for start in range(0, len(array), step):
                chunk = np.asarray(array[start:start + step])
                frames = _fit(chunk.reshape((-1,) + chunk.shape[2:]), info, path)
                yield name, frames.reshape(chunk.shape[:2] + frames.shape[1:])
    return chunks(), sum(len(array) for _, array in arrays.values())


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


# --- Adversarial attacks (Sec. 3.4): pixel space [0, 255], normalisation inside the model. -------

def make_loss_gradient(model):
    """(images, labels) -> (d sum CE / d images, logits), numpy, an EvalModel in inference mode."""
    def loss_gradient(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model.model(images, training=False)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, images), logits
    return common.on_replicas(model.strategy, loss_gradient)


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


def evaluate_attacks(model, batches, total, attacks, epsilons, steps, step_size, random_start, seed,
                     batch_size):
    """Accuracy per epsilon of each attack in `attacks` ("fgsm", "pgd") for one model."""
    loss_gradient = make_loss_gradient(model)
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


# --- Normalised metrics, summary, report. --------------------------------------------------------

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
        keys = ("source", "corruptions", "seed", "data", "constants", "num_examples")
        c["baseline_settings_differ"] = sorted(k for k in keys if ours.get(k) != theirs.get(k))


def normalise_p(p, baseline_p):
    fps = p["flip_probability"]
    p["mean_flip_probability"] = float(np.mean(list(fps.values())))
    if baseline_p:
        p["mfr_baseline"], p["mfr_perturbations"] = mean_flip_rate(fps, baseline_p["flip_probability"])


SUMMARY_KEYS = (("clean", "top_1"), ("a", "top_1"), ("c", "mce_unnormalized"), ("c", "mce_baseline"),
                ("c", "relative_mce_baseline"), ("c", "mce_alexnet"), ("c", "relative_mce_alexnet"),
                ("p", "mean_flip_probability"), ("p", "mfr_baseline"))


def summary(result):
    """The headline numbers, as <suite>_<key> (report.py reads this)."""
    out = {f"{suite}_{key}": result[suite][key] for suite, key in SUMMARY_KEYS
           if result.get(suite, {}).get(key) is not None}
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


def write_plots(names, results, output_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []

    def save(fig, name):
        common.write_png(fig, os.path.join(output_dir, name), dpi=110, bbox_inches="tight")
        written.append(name)

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
        save(fig, "robustness_c.png")
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
        save(fig, "robustness_p.png")
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
        save(fig, "robustness_adv.png")
    plt.close("all")
    return written


# --- The run: one evaluation per input group; results merged, normalised and reported. -----------

def input_layout(path, flag):
    """'arrays' (*.npy) or, for --c_dir, 'folders'; UserError for anything else."""
    if not tf.io.gfile.isdir(path):
        raise common.UserError(f"--{flag}={path} is not a directory")
    if tf.io.gfile.glob(os.path.join(path, "*.npy")):
        return "arrays"
    if flag == "c_dir" and tf.io.gfile.glob(os.path.join(path, "*", "[1-5]")):
        return "folders"
    if flag == "c_dir":
        raise common.UserError(f"--c_dir={path}: expected <corruption>.npy arrays or "
                               f"<corruption>/<severity>/<class>/ folders")
    # NOTE: ImageNet-P ships MP4 videos; no decoder is available without new dependencies.
    raise common.UserError(f"--p_dir={path}: expected <perturbation>.npy arrays of N x T x H x W x C "
                           f"frames (the CIFAR-10-P layout); ImageNet-P videos (.mp4) cannot be read "
                           f"without new dependencies (OpenCV/PyAV/imageio): convert them to such arrays")


def resolve_baseline(baseline_results, model_dirs):
    """(model index of this run or None, loaded results or None, description)."""
    if baseline_results == "none" or (not baseline_results and len(model_dirs) < 2):
        return None, None, None
    path = baseline_results or os.path.join(model_dirs[0], RESULTS_FILE)
    for i, d in enumerate(model_dirs):
        if os.path.abspath(path) in (os.path.abspath(d), os.path.abspath(os.path.join(d, RESULTS_FILE))):
            return i, None, os.path.join(d, RESULTS_FILE)
    return None, common.read_json(path, "--baseline_results"), path


GENERATED_NOTES = (
    "frost: procedural substitute for the benchmark's frost photos (not comparable)",
    "spatter (water, severities 1-3): simplified shading; saturate: identity on 1 channel",
    "corruptions applied to the eval-preprocessed image at model resolution, kept as uint8")


def evaluate_group(models, cfg, c_layout, files, num_records):
    """Every suite of `cfg` (a RobustnessConfig) for models sharing one preprocessing; c_layout:
    that of --c_dir, None: generate. Returns per model {suite: its results and "settings"}."""
    info, bs, seed, suites = models[0].info, cfg.batch_size, cfg.seed, cfg.suite
    scale = corruptions.scale_for(info.image_size)
    mapping_args = dict(num_classes=info.num_classes, class_index_json=cfg.class_index_json,
                        imagenet_wnids=cfg.imagenet_wnids)
    generated = dict(source="generated", data=cfg.eval_data_dir, seed=seed, constants=scale.kind,
                     length_scale=scale.factor, image_size=info.image_size, notes=GENERATED_NOTES)

    read = {}  # the eval images read so far (every suite and model takes the first n of them)

    def batches(limit):  # the eval images (at most `limit`) in batches of bs, and their number
        n = min(limit, num_records) if limit else num_records
        if n * info.image_size ** 2 * info.num_channels > MAX_READ_ONCE_BYTES:
            return eval_batches(files, info, bs, limit), n  # too many to hold: read again
        if n and len(read.get("labels", ())) < n:
            images, labels = zip(*eval_batches(files, info, bs, n))
            read.update(images=np.concatenate(images), labels=np.concatenate(labels))
        return ((read["images"][i:min(i + bs, n)], read["labels"][i:min(i + bs, n)])
                for i in range(0, n, bs)), n

    runs = {}  # suite -> (one result per model, the suite's settings)
    if "clean" in suites:
        runs["clean"] = (evaluate_clean(models, *batches(cfg.num_examples), bs),
                         dict(data=cfg.eval_data_dir, num_examples=cfg.num_examples))
    if "c" in suites:
        n, extra = cfg.num_examples, {}
        settings = dict(corruptions=cfg.corruptions, num_examples=n)
        if c_layout is None:
            images, total = batches(n)
            chunks = generated_c_chunks(images, cfg.corruptions, seed, scale)
            total *= 1 + len(corruptions.SEVERITIES) * len(cfg.corruptions)  # + the clean images
            settings.update(generated)
        elif c_layout == "arrays":
            chunks, total = c_array_chunks(cfg.c_dir, cfg.corruptions, n, bs, info)
            settings.update(source="cifar_c_arrays", data=cfg.c_dir)
        else:
            chunks, total, extra["class_mapping"] = c_folder_chunks(
                cfg.c_dir, cfg.corruptions, mapping_args, n, seed, bs, info)
            settings.update(source="imagenet_c_folders", data=cfg.c_dir, seed=seed,
                            preprocessing="released crops resized (bicubic) to the model size")
        runs["c"] = [dict(r, **extra) for r in evaluate_c(models, chunks, total, bs)], settings
    if "p" in suites:
        n = cfg.p_num_examples or cfg.num_examples
        settings = dict(perturbations=cfg.perturbations, num_examples=n,
                        noise_rule="frames of *noise* vs frame 0, others vs the previous frame")
        if cfg.p_dir:
            chunks, total = p_array_chunks(cfg.p_dir, cfg.perturbations, n, bs, info)
            settings.update(source="cifar_p_arrays", data=cfg.p_dir)
        else:
            images, total = batches(n)
            chunks = generated_p_chunks(images, cfg.perturbations, seed, scale)
            total *= len(cfg.perturbations)
            settings.update(generated)
        runs["p"] = evaluate_p(models, chunks, total, bs), settings
    if "a" in suites:
        runs["a"] = (evaluate_a(models, cfg.a_dir, mapping_args, cfg.num_examples, seed, bs),
                     dict(data=cfg.a_dir, num_examples=cfg.num_examples, seed=seed,
                          class_index_json=cfg.class_index_json, imagenet_wnids=cfg.imagenet_wnids))
    attacks = [a for a in ("fgsm", "pgd") if a in suites]
    if attacks:
        n = cfg.attack_num_examples or cfg.num_examples
        step_size = parse_step_size(cfg.pgd_step_size)
        outs = [evaluate_attacks(m, *batches(n), attacks, cfg.epsilons, cfg.pgd_steps, step_size,
                                 cfg.pgd_random_start, seed, bs) for m in models]
        settings = dict(data=cfg.eval_data_dir, num_examples=n, epsilons=cfg.epsilons, pixel_range=[0, 255],
                        loss="softmax cross-entropy with the true labels (untargeted)",
                        model_mode="model(x, training=False); normalisation inside the model",
                        adversarial_images="float, not re-quantised to uint8")
        pgd_settings = dict(settings, steps=cfg.pgd_steps, step_size=cfg.pgd_step_size, seed=seed,
                            step_sizes=[step_size(e) for e in cfg.epsilons],
                            random_start=cfg.pgd_random_start)
        for a in attacks:
            runs[a] = [out[a] for out in outs], settings if a == "fgsm" else pgd_settings
    return [{suite: dict(results[m], settings=settings) for suite, (results, settings) in runs.items()}
            for m in range(len(models))]


def run(config):
    """Evaluates the model dirs of `config`: writes robustness.json into each, then robustness.md
    and the plots into the output dir. Returns the markdown report."""
    started, suites = time.time(), config.suite
    common.set_precision(config.precision)  # before the models are built
    c_layout = input_layout(config.c_dir, "c_dir") if "c" in suites and config.c_dir else None
    if "p" in suites and config.p_dir:
        input_layout(config.p_dir, "p_dir")
    needs_eval = {"clean", "fgsm", "pgd"} & set(suites) or ("c" in suites and not config.c_dir) or (
        "p" in suites and not config.p_dir)
    files = common.list_files(config.eval_data_dir, "eval (--eval_data_dir / --data_dir)") if needs_eval else None
    baseline_index, baseline, baseline_path = resolve_baseline(config.baseline_results, config.model_dir)
    output_dir = config.output_dir or config.model_dir[0]

    names = display_names(config.model_dir)
    strategy = common.make_strategy(config.strategy, config.tpu, one_host=True)
    models = [load_model(d, n, strategy) for d, n in zip(config.model_dir, names)]
    num_records = common.count_records(files) if files else 0
    results = {}  # model index -> its results
    for info in dict.fromkeys(m.info for m in models):  # the same preprocessing: the same inputs
        group = [i for i, m in enumerate(models) if m.info == info]
        logging.info("evaluating %s on %s", ", ".join(models[i].name for i in group), ", ".join(suites))
        results.update(zip(group, evaluate_group([models[i] for i in group], config, c_layout,
                                                 files, num_records)))

    # Merge with earlier runs' suites, then normalise against the baseline.
    merged = []
    for i, m in enumerate(models):
        old = common.read_json(os.path.join(m.model_dir, RESULTS_FILE), RESULTS_FILE, default={})
        merged.append({**old, **results[i], "model_dir": m.model_dir, "model_config": m.config,
                       "settings": dataclasses.asdict(config)})
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
    plots = write_plots(names, merged, output_dir)
    report = markdown_report(names, merged) + "".join(f"\n![{p}]({p})\n" for p in plots)
    common.write_file(os.path.join(output_dir, "robustness.md"), report)
    logging.info("wrote %s in each model dir and robustness.md, %s to %s (%.0fs)", RESULTS_FILE,
                 ", ".join(plots) or "no plots", output_dir, time.time() - started)
    return report


# --- Settings and flags: each RobustnessConfig field is the flag of its name, default and help.

def _choose(values, known, flag):
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise common.UserError(f"--{flag}: {unknown or 'empty'}; choose from {', '.join(known)}")
    return tuple(values)


@dataclasses.dataclass
class RobustnessConfig:
    """The settings of a run, checked on construction; recorded in every robustness.json."""
    model_dir: tuple = common.setting((), "Model dir(s) written by main.py, comma-separated (e.g. the "
                               "teacher, then students). Each gets its robustness.json.")
    suite: tuple = common.setting(("clean", "c", "p", "fgsm", "pgd"), f"Any subset of {','.join(SUITES)}.")
    data_dir: str = common.setting("data/fashion_mnist", "Prepared data dir (prepare_data.py output); the eval split "
                            "defaults to <data_dir>/test.")
    eval_data_dir: str = common.setting("", "Eval records (a dir or a glob) for clean, generated C/P and the "
                                 "attacks. Default: <data_dir>/test.")
    output_dir: str = common.setting("", "Where robustness.md and the plots go. Default: the first model dir.")
    baseline_results: str = common.setting("", "A baseline's robustness.json (or model dir of this "
        "run) for normalised mCE / mFR. Default: the first of several --model_dir; 'none': off.")
    num_examples: int = common.setting(0, "Cap on images for clean, C (per corruption and severity) and A; "
                                "0 = all.")
    p_num_examples: int = common.setting(0, "Cap on P sequences (16-41 frames each); 0 = --num_examples.")
    attack_num_examples: int = common.setting(0, "Cap on images attacked; 0 = --num_examples.")
    batch_size: int = common.setting(256, "Images per forward pass.")
    seed: int = common.setting(0, "Seed of generated corruptions/sequences, subsets and PGD starts.")
    perturbations: tuple = common.setting(corruptions.PERTURBATIONS, "P perturbations to evaluate.")
    # (below this field, `corruptions` in this class body is the field, not the module)
    corruptions: tuple = common.setting(corruptions.ALL_CORRUPTIONS, "C corruptions to evaluate (mCE uses the "
                                 "15 benchmark ones only).")
    c_dir: str = common.setting("", "ImageNet-C folders or CIFAR-10-C .npy arrays; empty = generate.")
    p_dir: str = common.setting("", "CIFAR-10-P style .npy arrays; empty = generate.")
    a_dir: str = common.setting("", "Class folders of ImageNet-A (or any folder data set), for suite a.")
    class_index_json: str = common.setting("", "JSON {folder name: model class index} for folder inputs (A, "
                                    "ImageNet-C folders).")
    imagenet_wnids: str = common.setting("", "The 1000 ImageNet wnids (text, one per line, or JSON); folder "
                                  "wnids map to their index in the sorted list.")
    epsilons: tuple = common.setting((0, 1, 2, 4, 8, 16), "Attack epsilons in pixels of [0, 255].")
    pgd_steps: int = common.setting(10, "PGD iterations (paper: 10).")
    pgd_step_size: str = common.setting("eps/4", "PGD step: pixels, or 'eps/K' (the paper gives none).")
    pgd_random_start: bool = common.setting(False, "Start PGD at a uniform random point of the eps ball.")
    precision: str = common.setting("float32", "float32, or bfloat16: Keras mixed precision, as "
                                    "main.py's --precision.", list(common.PRECISIONS))
    strategy: str = common.setting("default", "tf.distribute strategy: default (one device), "
                                   "mirrored (local GPUs; multi_worker too) or tpu (--tpu).",
                                   list(common.STRATEGIES))
    tpu: str = common.setting("", "TPU name or grpc address for --strategy=tpu.")

    def __post_init__(self):
        self.suite = _choose(self.suite, SUITES, "suite")
        self.corruptions = _choose(self.corruptions, corruptions.ALL_CORRUPTIONS, "corruptions")
        self.perturbations = _choose(self.perturbations, corruptions.PERTURBATIONS, "perturbations")
        self.model_dir = tuple(d for d in self.model_dir if d)
        if not self.model_dir:
            raise common.UserError("--model_dir is required (one or more model dirs, comma-separated)")
        try:
            self.epsilons = tuple(float(e) for e in self.epsilons)
        except ValueError:
            raise common.UserError(f"--epsilons={','.join(self.epsilons)}: not numbers") from None
        if any(e < 0 for e in self.epsilons) or self.pgd_steps < 1 or self.batch_size < 1:
            raise common.UserError("--epsilons must be >= 0, --pgd_steps and --batch_size >= 1")
        parse_step_size(self.pgd_step_size)
        common.check_strategy(self.strategy, self.tpu)
        if "a" in self.suite and not self.a_dir:
            raise common.UserError("--suite includes a: pass --a_dir (class folders, e.g. ImageNet-A)")
        self.eval_data_dir = self.eval_data_dir or os.path.join(self.data_dir, "test")


def define_flags(flag_values=flags.FLAGS):
    """One flag per RobustnessConfig field, defined only when run as a script (or in tests)."""
    common.define_config_flags([RobustnessConfig], flag_values)


def main(argv, flag_values=flags.FLAGS):
    del argv
    config = common.config_from_flags(RobustnessConfig, flag_values)
    print(run(config))


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
