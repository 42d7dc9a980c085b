"""Pretrained teachers: Keras and official EfficientNet checkpoints loaded into our model.

Paper: Sec. 3.1 and 4 train the teachers (EfficientNet-B7, L2) on ImageNet before self-training;
the authors released those EfficientNet and Noisy Student checkpoints (tensorflow/tpu
models/official/efficientnet, google-research/noisystudent), and keras.applications ships
EfficientNet-B0..B7 ImageNet weights. Starting from one skips or shortens step 1 of Algorithm 1.

    main.py --init_checkpoint=PATH      (calls pretrained.load(model, PATH, ema_model))

PATH is one of
  *.weights.h5, *.h5   Keras weights: Keras 3 `save_weights`, or the legacy HDF5 files that
                       keras.applications downloads; matched by layer name (ours are Keras').
  *.keras              a Keras 3 model file; only the weights inside (model.weights.h5) are read.
  a TF checkpoint      a prefix (model.ckpt-N, with its .index) or a directory with a
                       `checkpoint` file, in the official names (efficientnet-b0/stem/conv2d/kernel,
                       .../blocks_0/tpu_batch_normalization/gamma, .../head/dense/kernel); the
                       ExponentialMovingAverage shadows are taken where present.

A checkpoint is data: no model config is deserialised and nothing in the file runs (a .keras
file's Lambda layers and pickled objects are never read, stronger than Keras' safe mode). All
weights are checked before any is assigned; names or shapes that do not fit raise one
common.UserError listing the first mismatches.

Transfer: a classifier with another class count (or none, e.g. `include_top=False` files) leaves
the model's head as initialised; grey models (num_channels=1) get the RGB stem kernel summed over
its input channels. Both are logged and returned in the summary.
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


def official_names(model):
    """{our layer name: official variable names (no model scope), in layer.weights order}.

    The authors' builder makes TF1 layers named by class (conv2d, depthwise_conv2d,
    tpu_batch_normalization, dense) and numbered in call order within each variable scope:
    stem, blocks_<i> (its squeeze-excitation convs in blocks_<i>/se) and head. Our layers are
    created in the same order, so counting them per scope gives the same numbers.
    """
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
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kind = "depthwise_conv2d"
        elif isinstance(layer, keras.layers.Conv2D):
            kind = "conv2d"
        elif isinstance(layer, keras.layers.BatchNormalization):
            kind = "tpu_batch_normalization"
        else:
            kind = "dense"
        n = seen[scope, kind]
        seen[scope, kind] += 1
        tf_layer = f"{scope}/{kind}" + (f"_{n}" if n else "")
        names[layer.name] = [
            f"{tf_layer}/{'depthwise_kernel' if kind == 'depthwise_conv2d' else w.name}"
            for w in layer.weights]
    return names


# ---------------------------------------------------------------------------------------------
# Readers: {layer name: [arrays in layer.weights order]}, plus checkpoint entries left unused.

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


def _read_keras(path, model):
    """(layers, unused) of a .h5 / .weights.h5 / .keras file; a .keras zip's config is not read."""
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
    return layers, unused


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


# ---------------------------------------------------------------------------------------------
# Matching and loading.

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
            # NOTE: not in the reference (RGB only): grey inputs see the RGB filters' sum.
            if layer.name == STEM and value.ndim == 4 and value.shape[2] != 1 \
                    and weight.shape[2] == 1:
                value = value.sum(axis=2, keepdims=True)
                notes.append(f"stem kernel summed over the checkpoint's {arrays[0].shape[2]} "
                             f"input channels for the model's 1")
            if tuple(value.shape) != tuple(weight.shape):
                problems.append(f"{weight.path}: {tuple(value.shape)} in the checkpoint, "
                                f"{tuple(weight.shape)} in the model")
            else:
                values.append((layer.name, i, value))
    return values, notes


def load(model, path, ema_model=None):
    """Loads the checkpoint at `path` into `model` (and `ema_model`, with the same values).

    Returns the summary {'path', 'format' ('keras' | 'official'), 'weights' (assigned per model),
    'ema_shadows' (official only), 'notes' (head re-initialised, stem summed)}.
    common.UserError if the file is missing, unreadable or does not fit the model.
    """
    # NOTE: parameters only. Inputs are normalised by our Normalize layer with the model's own
    # mean/std (ImageNet's on the 0-255 scale by default). That is what both sources were trained
    # with: keras.applications' Rescaling(1/255) + Normalization (+ its 1/sqrt(std) fix for
    # weights="imagenet") gives (x - 255 mean) / (255 std), and the official code subtracts
    # MEAN_RGB and divides by STDDEV_RGB outside the net. A file's Normalization weights are not
    # read, so logits agree with the source only for a model built with the same mean/std.
    is_dir = tf.io.gfile.isdir(path)
    if not (is_dir or tf.io.gfile.exists(path) or tf.io.gfile.exists(path + ".index")):
        raise common.UserError(f"checkpoint {path} does not exist")
    ema = []
    if path.endswith((".h5", ".keras")):
        fmt, (layers, problems) = "keras", _read_keras(path, model)
    else:
        fmt, prefix = "official", tf.train.latest_checkpoint(path) if is_dir else path
        if prefix is None:
            raise common.UserError(f"checkpoint directory {path} has no `checkpoint` file")
        layers, problems, ema = _read_official(prefix, model)
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
    normalize = model.get_layer("normalize")
    if (normalize.mean, normalize.std) != (efficientnet_builder.IMAGENET_MEAN,
                                           efficientnet_builder.IMAGENET_STD):
        logging.info("the model normalises with mean %s, std %s, not ImageNet's: the features "
                     "shift until fine-tuned", normalize.mean, normalize.std)
    return {"path": path, "format": fmt, "weights": len(values), "ema_shadows": len(ema),
            "notes": notes}
