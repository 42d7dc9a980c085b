"""Pretrained teachers: Keras and official EfficientNet checkpoints loaded into our model.

Paper: Sec. 3.1 and 4 train the teachers (B7, L2) on ImageNet before self-training; the authors
released those checkpoints (tensorflow/tpu, google-research/noisystudent) and keras.applications
ships B0..B7 ImageNet weights. Starting from one skips or shortens step 1 of Algorithm 1.

    main.py --init_checkpoint=PATH      (calls pretrained.load(model, PATH, ema_model))

PATH is one of
  *.weights.h5, *.h5   Keras weights: Keras 3 `save_weights`, or the legacy HDF5 files that
                       keras.applications downloads; matched by layer name (ours are Keras').
  *.keras              a Keras 3 model file; only the weights inside (model.weights.h5) are read.
  a TF checkpoint      a prefix (model.ckpt-N, with its .index) or a directory with a
                       `checkpoint` file, in the official names (efficientnet-b0/stem/conv2d/kernel,
                       .../blocks_0/tpu_batch_normalization/gamma, .../head/dense/kernel); the
                       ExponentialMovingAverage shadows are taken where present.

A checkpoint is data: no model config is deserialised and nothing in the file runs. All weights
are checked before any is assigned; names or shapes that do not fit raise one common.UserError
listing the first mismatches. The source's input normalisation (official: ImageNet's; a Keras
file: its Normalization layer's, else the model's own) is folded into the stem conv and the stem
BN's moving mean, so the model, normalising with its own mean/std, computes the source's features
(exactly but at the padded border); a grey model gets the RGB stem summed over its channels. A
classifier with another class count (or none) leaves the model's head as initialised.

Published weights as a teacher, with no training (Algorithm 1's step 1 done by the authors):
    main.py --init_checkpoint=PATH --train_steps=0 --train_epochs=0 --model_dir=DIR
        (calls export_model_dir; run_iterations.sh --teacher_checkpoint=PATH runs it)
"""

import collections
import io
import re
import zipfile

import common  # first: it silences TensorFlow's start-up lines
from absl import logging
import h5py
import keras
import numpy as np
import tensorflow as tf

import efficientnet_builder

EMA_SUFFIX = "/ExponentialMovingAverage"
HEAD = "predictions"
STEM = "stem_conv"
# Weights of keras.applications' input normalisation; our Normalize layer has none.
KERAS_NORMALIZATION = re.compile(r"normalization(_\d+)?")
_BLOCK_LAYER = re.compile(r"(block\d+(?:[a-z]|_\d+))_(\w+)")
_OFFICIAL_KINDS = ((keras.layers.DepthwiseConv2D, "depthwise_conv2d"),
                   (keras.layers.Conv2D, "conv2d"),
                   (keras.layers.BatchNormalization, "tpu_batch_normalization"),
                   (keras.layers.Layer, "dense"))


def official_names(model):
    """{our layer name: official variable names (no model scope), in layer.weights order}: TF1
    layers named by class and numbered in call order per scope (stem, blocks_<i>, blocks_<i>/se,
    head); ours are created in the same order, so counting them per scope gives the same names."""
    names, seen, blocks = {}, collections.Counter(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        match = _BLOCK_LAYER.fullmatch(layer.name)
        if match:
            if match.group(1) not in blocks:
                blocks.append(match.group(1))
            scope = f"blocks_{blocks.index(match.group(1))}"
            scope += "/se" if match.group(2).startswith("se_") else ""
        else:
            scope = "stem" if layer.name.startswith("stem") else "head"
        kind = next(k for cls, k in _OFFICIAL_KINDS if isinstance(layer, cls))
        n = seen[scope, kind]
        seen[scope, kind] += 1
        tf_layer = f"{scope}/{kind}" + (f"_{n}" if n else "")
        names[layer.name] = [
            f"{tf_layer}/{'depthwise_kernel' if kind == 'depthwise_conv2d' else w.name}"
            for w in layer.weights]
    return names


# --- Readers: {layer name: [arrays in layer.weights order]}, plus checkpoint entries left unused.

def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _keras_layers(data, path):
    """The layers of a Keras weights file (its bytes): Keras 3 `.../vars` groups, which carry
    the layer name as an attribute, or the legacy HDF5 `layer_names`/`weight_names` layout."""
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError as e:
        raise common.UserError(f"{path} is not a Keras HDF5 weights file ({e})") from None
    layers = {}

    def visit(key, group):   # Keras 3: layers/<class name>[_<n>]/vars/<weight index>
        if key.endswith("vars") and isinstance(group, h5py.Group) and len(group) \
                and "name" in group.attrs:
            layers[_text(group.attrs["name"])] = [np.asarray(group[str(i)])
                                                  for i in range(len(group))]

    with f:
        root = f["model_weights"] if "model_weights" in f else f  # legacy model.save(".h5")
        if "layer_names" in root.attrs:
            for name in map(_text, root.attrs["layer_names"]):
                names = root[name].attrs["weight_names"]
                if len(names):
                    layers[name] = [np.asarray(root[name][_text(w)]) for w in names]
        elif "layers" in root:   # not "optimizer": its slots are no model weights
            root["layers"].visititems(visit)
    if not layers:
        raise common.UserError(f"{path} holds no named layer weights (a Keras 3 file written "
                               f"before layer names were stored?)")
    return layers


def _keras_normalisation(layers, path):
    """(mean, std) on the 0-255 scale of a Keras file's Normalization layer, None without one
    (keras.applications' published files hold ImageNet's std as the variance: tensorflow#49930)."""
    found = [arrays for name, arrays in layers.items() if KERAS_NORMALIZATION.fullmatch(name)]
    if not found:
        return None
    if len(found) > 1 or len(found[0]) < 2:
        raise common.UserError(f"{path}: {len(found)} Normalization layers, the first with "
                               f"{len(found[0])} weights; expected one, with a mean and a variance")
    mean, variance = (np.asarray(a, np.float64).reshape(-1) for a in found[0][:2])
    imagenet_std = np.asarray(efficientnet_builder.IMAGENET_STD) / 255
    if variance.shape == imagenet_std.shape and np.allclose(variance, imagenet_std, rtol=1e-3):
        std = imagenet_std   # keras.applications' published layout
    else:
        std = np.sqrt(np.maximum(variance, 0))
    return tuple(255 * mean), tuple(255 * np.maximum(std, 1e-3 / 255))


def _read_keras(path, model):
    """(layers, unused, normalisation) of a .h5 / .weights.h5 / .keras file; a .keras zip's
    config is not read."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                data = archive.read("model.weights.h5")
        except (zipfile.BadZipFile, KeyError) as e:
            raise common.UserError(f"{path} is not a Keras 3 model file ({e})") from None
    layers = _keras_layers(data, path)
    ours = {layer.name for layer in model.layers}
    unused = [f"{name}: not in the model" for name in layers
              if name not in ours and not KERAS_NORMALIZATION.fullmatch(name)]
    return layers, unused, _keras_normalisation(layers, path)


def _read_official(prefix, model):
    """(layers, unused, ema): the official checkpoint's weights for `model`, EMA shadows first."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise common.UserError(f"cannot read TF checkpoint {prefix} "
                               f"({str(e).strip().splitlines()[0]})") from None
    shapes = reader.get_variable_to_shape_map()
    # The shortest match: a Noisy Student checkpoint also holds teacher_model/<name>/...
    stems = sorted((k for k in shapes if k.endswith("stem/conv2d/kernel")), key=len)
    if not stems:
        raise common.UserError(f"{prefix} is not an official EfficientNet checkpoint (no variable "
                               f"<model name>/stem/conv2d/kernel)")
    scope = stems[0][:-len("stem/conv2d/kernel")]
    layers, used, ema = {}, set(), []
    for layer, names in official_names(model).items():
        keys = [scope + n + EMA_SUFFIX if scope + n + EMA_SUFFIX in shapes else scope + n
                for n in names]
        if all(k in shapes for k in keys):
            layers[layer] = [reader.get_tensor(k) for k in keys]
            used.update(k.removesuffix(EMA_SUFFIX) for k in keys)
            ema += [k for k in keys if k.endswith(EMA_SUFFIX)]
    # Model variables only: optimizer slots (.../RMSProp) and global_step are not weights.
    weight_names = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean",
                    "moving_variance")
    unused = [f"{k}: not in the model" for k in sorted(shapes) if k.startswith(scope)
              and k.rsplit("/", 1)[-1] in weight_names and k not in used]
    logging.info("%s: model scope %r, ExponentialMovingAverage shadows for %d of %d variables",
                 prefix, scope, len(ema), len(used))
    raw = sorted(used - {k.removesuffix(EMA_SUFFIX) for k in ema})
    if ema and raw:
        logging.info("%s: raw values (no shadow) for %s", prefix, ", ".join(raw[:5]))
    return layers, unused, ema


# --- Matching and loading. -----------------------------------------------------------------------

def _round(values):
    return tuple(round(float(v), 2) for v in values)


def _fold_normalisation(layers, source, model):
    """Rewrites the stem of `layers` (conv kernel, BN moving mean) so that `model` computes what
    the source computed with `source` = (mean, std); returns the notes. On raw pixels the kernel is
    A = W / s_c; the model's W' = s' A (summed over c for a grey model) gives A (x - m'), short of
    the source's by d = sum A (m' - m_c), a constant per filter the BN's moving mean absorbs."""
    # NOTE: not in the reference (one normalisation, RGB only): the source's normalisation is
    # folded into the stem for another mean/std or a grey model.
    normalize = model.get_layer("normalize")
    channels = model.get_layer(STEM).weights[0].shape[2]
    if STEM not in layers or "stem_bn" not in layers or layers[STEM][0].ndim != 4:
        return []   # _match names what is missing
    kernel = np.asarray(layers[STEM][0], np.float64)
    source_channels = kernel.shape[2]
    # The model's mean/std per source channel (a grey model's, repeated).
    own_mean, own_std = (np.resize(np.asarray(v, np.float64), source_channels)
                         for v in (normalize.mean, normalize.std))
    mean, std = (own_mean, own_std) if source is None else (np.asarray(v, np.float64)
                                                            for v in source)
    if len(mean) != source_channels or not (channels == source_channels or channels == 1):
        return []   # a shape mismatch _match reports
    if channels == source_channels and np.allclose(mean, own_mean) and np.allclose(std, own_std):
        return []
    raw = kernel / std[:, None]                          # A: the kernel on raw pixels
    folded = raw * own_std[:, None]
    if channels == 1:
        folded = folded.sum(axis=2, keepdims=True)
    shift = np.einsum("hwco,c->o", raw, own_mean - mean)
    bn_weights = [w.name for w in model.get_layer("stem_bn").weights]
    bn = list(layers["stem_bn"])
    i = bn_weights.index("moving_mean")
    bn[i] = np.asarray(bn[i], np.float64) - shift
    layers[STEM] = [folded.astype(np.float32)] + list(layers[STEM][1:])
    layers["stem_bn"] = [np.asarray(v, np.float32) for v in bn]
    summed = (f", summed over its {source_channels} input channels for the model's 1"
              if channels != source_channels else "")
    return [f"the checkpoint's normalisation (mean {_round(mean)}, std {_round(std)}) folded "
            f"into the stem for the model's (mean {_round(normalize.mean)}, std "
            f"{_round(normalize.std)}){summed}"]


def _match(model, layers, problems):
    """[(layer name, weight index, value)] for `model` from `layers`, and the transfer notes;
    appends names or shapes that do not fit to `problems`."""
    values, notes = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = layers.get(layer.name)
        # NOTE: the reference's init_model needs every variable; another class count keeps our head.
        if layer.name == HEAD and (arrays is None or len(arrays) != 2
                                   or arrays[0].shape[-1] != layer.weights[0].shape[-1]):
            classes = "no classifier" if arrays is None else f"{arrays[-1].shape[-1]} classes"
            notes.append(f"head re-initialised: the checkpoint has {classes}, the model "
                         f"{layer.weights[0].shape[-1]}")
            continue
        if arrays is None:
            problems.append(f"{layer.name}: not in the checkpoint")
            continue
        if len(arrays) != len(layer.weights):
            problems.append(f"{layer.name}: {len(arrays)} weights in the checkpoint, "
                            f"{len(layer.weights)} in the model")
            continue
        for i, (weight, value) in enumerate(zip(layer.weights, arrays)):
            if tuple(value.shape) != tuple(weight.shape):
                problems.append(f"{weight.path}: {tuple(value.shape)} in the checkpoint, "
                                f"{tuple(weight.shape)} in the model")
            else:
                values.append((layer.name, i, value))
    return values, notes


def load(model, path, ema_model=None):
    """Loads the checkpoint at `path` into `model` (and `ema_model`); returns the summary {'path',
    'format' ('keras' | 'official'), 'weights', 'ema_shadows', 'notes'}. UserError if the file is
    missing, unreadable or does not fit the model."""
    path = checkpoint_path(path)
    ema = []
    if path.endswith((".h5", ".keras")):
        fmt, (layers, problems, source) = "keras", _read_keras(path, model)
    else:
        fmt, prefix = "official", (tf.train.latest_checkpoint(path)
                                   if tf.io.gfile.isdir(path) else path)
        layers, problems, ema = _read_official(prefix, model)
        # The official code subtracts MEAN_RGB and divides by STDDEV_RGB outside the net.
        source = efficientnet_builder.IMAGENET_MEAN, efficientnet_builder.IMAGENET_STD
    folds = _fold_normalisation(layers, source, model)
    values, notes = _match(model, layers, problems)
    if problems:
        raise common.UserError(f"{path} does not fit the model {model.name}: {len(problems)} "
                               f"mismatches, the first: {'; '.join(problems[:5])}")
    for target in [model] + ([ema_model] if ema_model is not None else []):
        for name, i, value in values:
            weight = target.get_layer(name).weights[i]
            weight.assign(np.asarray(value, dtype=weight.dtype))
    logging.info("loaded %d weights from %s (%s)", len(values), path, fmt)
    for note in notes:
        logging.info("%s: %s", path, note)
    for note in folds:
        logging.warning("%s: %s", path, note)
    return {"path": path, "format": fmt, "weights": len(values), "ema_shadows": len(ema),
            "notes": folds + notes}


def checkpoint_path(path):
    """`path` as load() reads it: a Keras file, a TF checkpoint prefix (also named by its .index
    or .data-* file) or a directory with a `checkpoint` file. common.UserError if none is there."""
    if not path.endswith((".h5", ".keras")):
        path = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
        if tf.io.gfile.isdir(path):
            if tf.train.latest_checkpoint(path) is None:
                raise common.UserError(f"checkpoint directory {path} has no `checkpoint` file")
            return path
        if tf.io.gfile.exists(path + ".index"):
            return path
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise common.UserError(f"checkpoint {path} does not exist (expected a Keras .h5/.keras "
                               f"file, a TF checkpoint prefix with its .index, or a directory "
                               f"with a `checkpoint` file)")
    return path


def export_model_dir(path, model_dir, config):
    """The checkpoint at `path` as it is, as a model dir: model.json (`config`) and ckpt-0 whose
    model and EMA model hold its weights; returns load()'s summary (None if model_dir has a
    checkpoint already). UserError if it does not fit or has another class count."""
    if tf.train.latest_checkpoint(model_dir):
        logging.info("%s already holds a checkpoint: not exported again from %s", model_dir, path)
        return None
    model = efficientnet_builder.build_from_config(config)
    summary = load(model, path)
    heads = [n for n in summary["notes"] if n.startswith("head re-initialised")]
    if heads:
        raise common.UserError(f"{path} cannot label as it is: {heads[0]}; fine-tune it on the "
                               f"labels instead (main.py --init_checkpoint with training)")
    efficientnet_builder.save_model_dir(model_dir, config, model, step=0)
    logging.info("exported %s as it is into %s (ckpt-0, EMA = model)", path, model_dir)
    return summary
