"""Tests for pretrained.py: checkpoints written here in both namings, never downloaded.

Keras: keras.applications.EfficientNetB0(weights=None) with random weights, saved as .weights.h5,
.keras and legacy .h5; our model loaded from each gives keras.applications' logits. Official: a
tf.compat.v1 Saver checkpoint with the variable names of the authors' builder (written from the
table below, which follows their _build/call order, not from pretrained.py), EMA shadows,
optimizer slots, global_step and a teacher_model/ copy; loading it gives the same logits as the
Keras file. Most use a scaled-down B0 (our own model's save_weights is a Keras 3 file too).
"""

import os

import common  # first: it silences TensorFlow's start-up lines
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_builder as eb
import pretrained

TINY = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, width=0.25, depth=0.2)
BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
GARBAGE = 7.0   # raw values under EMA shadows, teacher_model/ and RMSProp: must not be loaded


def official_table(model):
    """{layer name: official variable names}, as the authors' builder calls its layers per block:
    [conv2d (expand), tpu_batch_normalization], depthwise_conv2d, tpu_batch_normalization[_1],
    se/conv2d, se/conv2d_1, conv2d[_1] (project), tpu_batch_normalization[_1 or _2]."""
    def bn(scope):
        return [f"{scope}/{w}" for w in BN_WEIGHTS]

    table = {"stem_conv": ["stem/conv2d/kernel"], "stem_bn": bn("stem/tpu_batch_normalization"),
             "top_conv": ["head/conv2d/kernel"], "top_bn": bn("head/tpu_batch_normalization"),
             "predictions": ["head/dense/kernel", "head/dense/bias"]}
    names = [layer.name for layer in model.layers]
    blocks = [n.removesuffix("_dwconv") for n in names if n.endswith("_dwconv")]
    for i, b in enumerate(blocks):
        s, expand = f"blocks_{i}", f"{b}_expand_conv" in names
        bn1, bn2 = ("_1", "_2") if expand else ("", "_1")
        if expand:
            table[f"{b}_expand_conv"] = [f"{s}/conv2d/kernel"]
            table[f"{b}_expand_bn"] = bn(f"{s}/tpu_batch_normalization")
        table[f"{b}_dwconv"] = [f"{s}/depthwise_conv2d/depthwise_kernel"]
        table[f"{b}_bn"] = bn(f"{s}/tpu_batch_normalization{bn1}")
        table[f"{b}_se_reduce"] = [f"{s}/se/conv2d/kernel", f"{s}/se/conv2d/bias"]
        table[f"{b}_se_expand"] = [f"{s}/se/conv2d_1/kernel", f"{s}/se/conv2d_1/bias"]
        table[f"{b}_project_conv"] = [f"{s}/conv2d{bn1}/kernel"]
        table[f"{b}_project_bn"] = bn(f"{s}/tpu_batch_normalization{bn2}")
    return table


def write_official(directory, model, ema=True, scope="efficientnet-b0"):
    """A TF1-style checkpoint of `model`'s weights in the official names; returns its prefix.
    With `ema`, the weights are the ExponentialMovingAverage shadows and the raw values garbage."""
    variables = {"global_step": tf.Variable(1234, dtype=tf.int64)}
    for layer_name, names in official_table(model).items():
        for name, weight in zip(names, model.get_layer(layer_name).weights):
            key, value = f"{scope}/{name}", weight.numpy()
            garbage = np.full(value.shape, GARBAGE, np.float32)
            if layer_name == "stem_conv":   # what else a Noisy Student checkpoint holds
                variables[f"teacher_model/{key}"] = tf.Variable(garbage)
                variables[f"{key}/RMSProp"] = tf.Variable(garbage)
            variables[key] = tf.Variable(garbage if ema else value)
            if ema:
                variables[f"{key}/ExponentialMovingAverage"] = tf.Variable(value)
    saver = tf.compat.v1.train.Saver(var_list=variables)
    return saver.save(None, os.path.join(directory, "model.ckpt"), global_step=1234)


def randomise(model, seed=0):
    """Kernels redrawn from `seed` at their initial scale, random BN scales and offsets and dense
    bias, then each BN's moving statistics from a real batch (one training-mode pass at
    momentum 0, noise off), jittered, and the classifier scaled to logits of unit spread on it:
    every BN sees inputs of about unit variance, so the logits depend on the image and a weight
    loaded wrongly moves them by orders of magnitude past the tolerances below
    (test_a_wrongly_loaded_weight_fails_the_comparison)."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                              keras.layers.Dense)):
            for w in layer.weights:
                w.assign(rng.normal(0, np.std(w.numpy()), w.shape))
    for layer in bns:
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
        layer.beta.assign(rng.normal(0, 0.1, layer.beta.shape))
        layer.momentum = 0.0
    kernel, bias = model.get_layer("predictions").weights
    bias.assign(rng.normal(0, 0.1, bias.shape))
    _, size, _, channels = model.input_shape
    eb.set_noise(model, False)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:   # keras.applications' dropout and drop-connect
        layer.rate = 0.0
    batch = images(16, size, channels, seed=seed + 100)
    model(batch, training=True)
    eb.set_noise(model, True)
    for layer, rate in zip(dropouts, rates):
        layer.rate = rate
    for layer in bns:
        layer.momentum = eb.BN_MOMENTUM
        std = np.sqrt(layer.moving_variance.numpy())
        layer.moving_mean.assign(layer.moving_mean + rng.normal(0, 0.1, std.shape) * std)
        layer.moving_variance.assign(layer.moving_variance * rng.uniform(0.8, 1.25, std.shape))
    # Logits of about unit spread on the batch (float32 round-off then stays far below 1e-5).
    kernel.assign(kernel / np.std(model(batch, training=False)))
    return model


def images(n, size, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, channels)).astype(np.float32)


def logits(model, x):
    return model(x, training=False).numpy()


def weights(model):
    return [w.numpy() for w in model.weights]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """(model, its .weights.h5 path): a random scaled-down B0 saved by Keras' save_weights,
    with optimizer slots as a trained model's file has them."""
    model = randomise(eb.build_model(**TINY), seed=1)
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.weights.h5")
    model.save_weights(path)
    return model, path


# ---------------------------------------------------------------------------------------------
# Scaled-down B0 (fast, except the transfer cases).

def test_official_names_follow_the_authors_builder(tiny_file):
    source, _ = tiny_file
    assert pretrained.official_names(source) == official_table(source)


def test_keras_weights_file_loads_into_model_and_ema_model(tiny_file):
    source, path = tiny_file
    model, ema_model = eb.build_model(**TINY), eb.build_model(**TINY)
    summary = pretrained.load(model, path, ema_model=ema_model)
    assert summary["format"] == "keras" and summary["notes"] == []
    assert summary["weights"] == len(source.weights)
    x = images(4, 32)
    np.testing.assert_allclose(logits(model, x), logits(source, x), rtol=1e-5, atol=1e-5)
    for expected, loaded in zip(weights(source), weights(ema_model)):
        np.testing.assert_array_equal(expected, loaded)


@pytest.mark.parametrize("ema", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_official_checkpoint_prefers_ema_shadows(tiny_file, tmp_path, ema):
    source, _ = tiny_file
    prefix = write_official(str(tmp_path), source, ema=ema)
    x = images(4, 32)
    # The prefix (what tf.train.latest_checkpoint returns), its .index file and the directory
    # (read through its `checkpoint` file) name the same checkpoint.
    for path in [prefix, prefix + ".index", str(tmp_path)][:3 if ema else 1]:
        model = eb.build_model(**TINY)
        summary = pretrained.load(model, path)
        assert summary["format"] == "official" and summary["path"] in (prefix, str(tmp_path))
        assert summary["ema_shadows"] == (len(source.weights) if ema else 0)
        np.testing.assert_allclose(logits(model, x), logits(source, x), rtol=1e-5, atol=1e-5)


def test_mismatched_checkpoint_is_one_user_error_and_loads_nothing(tiny_file):
    _, path = tiny_file
    wider = eb.build_model(**{**TINY, "width": 0.5})
    before = weights(wider)
    with pytest.raises(common.UserError, match=r"does not fit the model efficientnet-b0: \d+ "
                       r"mismatches, the first: stem_conv/kernel: \(3, 3, 3, 8\) in the "
                       r"checkpoint, \(3, 3, 3, 16\) in the model"):
        pretrained.load(wider, path)
    for b, a in zip(before, weights(wider)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("mistake", ["depthwise kernel transposed",
                                     "BN scale and offset swapped in one layer",
                                     "stem kernel's channels reversed"])
def test_a_wrongly_loaded_weight_fails_the_comparison(tiny_file, monkeypatch, mistake):
    # The networks here are input-sensitive: a loader with one of these mistakes misses the
    # source's logits by orders of magnitude more than the tests' tolerance (1e-5).
    source, path = tiny_file
    read = pretrained._read_keras

    def broken(*args):
        layers, unused, normalisation = read(*args)
        for name, arrays in layers.items():
            if mistake.startswith("depthwise") and name.endswith("_dwconv"):
                layers[name] = [np.swapaxes(arrays[0], 0, 1)]
            elif mistake.startswith("BN") and name == "block2a_bn":
                layers[name] = [arrays[1], arrays[0]] + arrays[2:]
            elif mistake.startswith("stem") and name == "stem_conv":
                layers[name] = [arrays[0][:, :, ::-1]]
        return layers, unused, normalisation

    monkeypatch.setattr(pretrained, "_read_keras", broken)
    model = eb.build_model(**TINY)
    pretrained.load(model, path)
    x = images(4, 32)
    assert np.abs(logits(model, x) - logits(source, x)).max() > 1e3 * 1e-5


def add_keras_normalization(path, mean, variance):
    """Adds a keras.applications Normalization layer (Keras 3 layout) to the weights file."""
    with h5py.File(path, "a") as f:
        group = f.create_group("layers/normalization/vars")
        group.attrs["name"] = "normalization"
        for i, value in enumerate([mean, variance, 0]):
            group[str(i)] = np.asarray(value, dtype=np.int64 if i == 2 else np.float32)


def test_keras_file_with_other_normalisation_warns_and_gives_the_source_logits(tmp_path,
                                                                               caplog):
    # A keras.applications model whose Normalization was never adapted (mean 0, variance 1)
    # computes x / 255: our model normalises with ImageNet's mean/std and folds the file's into
    # its stem, with one warning line.
    size = 128   # the fold is exact but at the padded border
    source = randomise(eb.build_model(**{**TINY, "image_size": size}, mean=(0.0,) * 3,
                                      std=(255.0,) * 3), seed=4)
    path = str(tmp_path / "never_adapted.weights.h5")
    source.save_weights(path)
    add_keras_normalization(path, [0, 0, 0], [1, 1, 1])
    model = eb.build_model(**{**TINY, "image_size": size})
    caplog.set_level("WARNING", logger="absl")
    summary = pretrained.load(model, path)
    expected = ("the checkpoint's normalisation (mean (0.0, 0.0, 0.0), std (255.0, 255.0, 255.0)) "
                "folded into the stem for the model's (mean (123.67, 116.28, 103.53), std "
                "(58.4, 57.12, 57.38))")
    assert summary["notes"] == [expected]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path}: {expected}"]
    x = images(4, size)
    expected = logits(source, x)   # logit spread ~1.3
    # Exact but at the padded border: there each model pads with its own mean, 124 vs 0 here.
    np.testing.assert_allclose(logits(model, x), expected, atol=0.5)
    # keras.applications' published layout (variance = ImageNet's std) is ImageNet's: no fold,
    # and these weights are then off by orders of magnitude (~1,000 in the logits).
    imagenet = str(tmp_path / "imagenet_layout.weights.h5")
    source.save_weights(imagenet)
    add_keras_normalization(imagenet, np.array(eb.IMAGENET_MEAN) / 255,
                            np.array(eb.IMAGENET_STD) / 255)
    unfolded = eb.build_model(**{**TINY, "image_size": size})
    assert pretrained.load(unfolded, imagenet)["notes"] == []
    assert np.abs(logits(unfolded, x) - expected).max() > 100


def test_unreadable_paths_are_user_errors(tiny_file, tmp_path):
    source, _ = tiny_file   # every error comes before any weight is assigned
    for missing in ["missing.weights.h5", "model.ckpt-3", "model.ckpt-3.index"]:
        with pytest.raises(common.UserError, match=r"model.ckpt-3 does not exist \(expected"
                           if "ckpt" in missing else "missing.weights.h5 does not exist"):
            pretrained.load(source, str(tmp_path / missing))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(common.UserError, match="not a Keras HDF5 weights file"):
        pretrained.load(source, str(tmp_path / "junk.h5"))
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(common.UserError, match="not a Keras 3 model file"):
        pretrained.load(source, str(tmp_path / "junk.keras"))
    with pytest.raises(common.UserError, match="has no `checkpoint` file"):
        pretrained.load(source, str(tmp_path))
    # Our own model dirs hold object-based checkpoints, not the official names.
    model_dir = str(tmp_path / "model_dir")
    eb.save_model_dir(model_dir, dict(TINY), source)
    with pytest.raises(common.UserError, match="not an official EfficientNet checkpoint"):
        pretrained.load(source, model_dir)


@pytest.mark.slow
def test_other_depths_name_missing_and_unused_weights(tiny_file, tmp_path):
    source, path = tiny_file
    deeper = eb.build_model(**{**TINY, "depth": 0.5})
    with pytest.raises(common.UserError, match=r"block4b_expand_conv: not in the checkpoint"):
        pretrained.load(deeper, path)
    prefix = write_official(str(tmp_path), deeper, ema=False)
    with pytest.raises(common.UserError,
                       match=r"efficientnet-b0/blocks_7/conv2d/kernel: not in the model"):
        pretrained.load(source, prefix)


@pytest.mark.slow
def test_other_class_count_reinitialises_the_head(tiny_file):
    source, path = tiny_file
    model = eb.build_model(**{**TINY, "num_classes": 4})
    head = [w.numpy() for w in model.get_layer("predictions").weights]
    summary = pretrained.load(model, path)
    assert summary["weights"] == len(source.weights) - 2
    assert summary["notes"] == ["head re-initialised: the checkpoint has 10 classes, the model 4"]
    for before, after in zip(head, model.get_layer("predictions").weights):
        np.testing.assert_array_equal(before, after.numpy())
    np.testing.assert_array_equal(model.get_layer("top_conv").weights[0].numpy(),
                                  source.get_layer("top_conv").weights[0].numpy())


def test_grey_model_from_rgb_weights_gives_the_rgb_logits_of_the_grey_image(tmp_path):
    # An official (ImageNet-normalised) RGB checkpoint into a grey model normalised with the
    # channel average: each channel's normalisation is folded into the summed stem kernel and the
    # stem BN's moving mean, so a grey image gives the RGB model's logits of it on 3 channels.
    size = 128   # the fold is exact but at the padded border
    rgb = randomise(eb.build_model(**{**TINY, "image_size": size}), seed=2)
    prefix = write_official(str(tmp_path), rgb)
    grey = eb.build_model(**{**TINY, "image_size": size}, num_channels=1)
    summary = pretrained.load(grey, prefix)
    assert summary["notes"][0].endswith("summed over its 3 input channels for the model's 1")
    x = images(8, size, channels=1)
    expected = logits(rgb, np.repeat(x, 3, axis=-1))
    np.testing.assert_allclose(logits(grey, x), expected, atol=0.1)
    # The kernel summed with the average normalisation (no fold) is off by far more.
    unfolded = eb.build_model(**{**TINY, "image_size": size}, num_channels=1)
    unfolded.set_weights(grey.get_weights())
    unfolded.get_layer("stem_conv").kernel.assign(rgb.get_layer("stem_conv").kernel.numpy()
                                                  .sum(axis=2, keepdims=True))
    unfolded.get_layer("stem_bn").set_weights(rgb.get_layer("stem_bn").get_weights())
    assert np.abs(logits(unfolded, x) - expected).max() > 0.3


@pytest.mark.slow
def test_grey_model_sums_our_own_rgb_stem_kernel(tmp_path):
    # A Keras file without a Normalization layer (ours) is taken to share the model's mean/std:
    # with equal per-channel normalisation the sum alone gives the RGB logits, exactly.
    rgb = randomise(eb.build_model(**TINY, mean=(100.0,) * 3, std=(60.0,) * 3), seed=2)
    path = str(tmp_path / "rgb.weights.h5")
    rgb.save_weights(path)
    grey = eb.build_model(**TINY, num_channels=1, mean=(100.0,), std=(60.0,))
    summary = pretrained.load(grey, path)
    assert summary["notes"] == ["the checkpoint's normalisation (mean (100.0, 100.0, 100.0), std "
                                "(60.0, 60.0, 60.0)) folded into the stem for the model's (mean "
                                "(100.0,), std (60.0,)), summed over its 3 input channels for "
                                "the model's 1"]
    x = images(4, 32, channels=1)
    np.testing.assert_allclose(logits(grey, x), logits(rgb, np.repeat(x, 3, axis=-1)),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Slow: full-width B0 against keras.applications.

@pytest.fixture(scope="module")
def keras_b0(tmp_path_factory):
    """(keras.applications B0 with random weights and ImageNet normalisation, {format: path})."""
    model = keras.applications.EfficientNetB0(
        weights=None, classes=7, input_shape=(64, 64, 3), classifier_activation=None)
    norm = model.get_layer("normalization")
    norm.set_weights([np.array(eb.IMAGENET_MEAN) / 255, (np.array(eb.IMAGENET_STD) / 255) ** 2,
                      norm.weights[2].numpy()])
    norm.finalize_state()   # Normalization reads its weights when finalised
    randomise(model, seed=3)
    tmp = tmp_path_factory.mktemp("keras_b0")
    paths = {"weights.h5": str(tmp / "b0.weights.h5"), "keras": str(tmp / "b0.keras"),
             "legacy h5": str(tmp / "b0.h5")}
    model.save_weights(paths["weights.h5"])
    model.save(paths["keras"])
    model.save(paths["legacy h5"])
    return model, paths


@pytest.mark.slow
def test_keras_applications_files_give_keras_logits(keras_b0):
    source, paths = keras_b0
    x = images(4, 64)
    expected = logits(source, x)
    for fmt, path in paths.items():
        model = eb.build_model("efficientnet-b0", num_classes=7, image_size=64)
        summary = pretrained.load(model, path)
        assert summary["weights"] == len(model.weights), fmt
        np.testing.assert_allclose(logits(model, x), expected, rtol=1e-4, atol=1e-4, err_msg=fmt)


@pytest.mark.slow
def test_official_b0_checkpoint_gives_the_keras_files_logits(keras_b0, tmp_path):
    source, paths = keras_b0
    prefix = write_official(str(tmp_path), source)
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    # Names (and shapes) of the released efficientnet-b0 checkpoints.
    for name, shape in [("stem/conv2d/kernel", [3, 3, 3, 32]),
                        ("blocks_0/se/conv2d_1/bias", [32]),
                        ("blocks_1/tpu_batch_normalization_2/moving_variance", [24]),
                        ("blocks_15/conv2d_1/kernel", [1, 1, 1152, 320]),
                        ("head/dense/kernel", [1280, 7])]:
        assert shapes[f"efficientnet-b0/{name}/ExponentialMovingAverage"] == shape, name
    from_keras = eb.build_model("efficientnet-b0", num_classes=7, image_size=64)
    pretrained.load(from_keras, paths["weights.h5"])
    official = eb.build_model("efficientnet-b0", num_classes=7, image_size=64)
    summary = pretrained.load(official, prefix)
    assert summary["ema_shadows"] == summary["weights"] == len(official.weights)
    x = images(4, 64, seed=1)
    np.testing.assert_allclose(logits(official, x), logits(from_keras, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_keras_file_code_never_runs(keras_b0, tmp_path, monkeypatch):
    source, _ = keras_b0
    marker = tmp_path / "lambda_ran"
    monkeypatch.setenv("LAMBDA_MARKER", str(marker))
    # A Python lambda is stored as bytecode in the .keras file (imports inlined: it runs with
    # Keras' globals when deserialised).
    side_effect = lambda x: (__import__("pathlib").Path(  # noqa: E731
        __import__("os").environ["LAMBDA_MARKER"]).write_text("ran"), x)[1]
    evil = keras.layers.Lambda(side_effect, name="evil")
    wrapped = keras.Model(source.input, evil(source.output))
    path = str(tmp_path / "evil.keras")
    wrapped.save(path)
    marker.unlink(missing_ok=True)
    # The file carries code: Keras refuses it in safe mode and runs it without.
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(path)
    assert not marker.exists()
    keras.saving.load_model(path, safe_mode=False)
    assert marker.exists()
    marker.unlink()
    model = eb.build_model("efficientnet-b0", num_classes=7, image_size=64)
    pretrained.load(model, path)
    assert not marker.exists()
    x = images(2, 64)
    np.testing.assert_allclose(logits(model, x), logits(source, x), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_as_it_is_becomes_a_teacher_model_dir(tiny_file, tmp_path):
    # Published weights as the teacher (Algorithm 1's step 1 done by their authors): a model dir
    # whose model and EMA model are the official checkpoint's EMA shadows, read like any teacher.
    source, _ = tiny_file
    (tmp_path / "official").mkdir()
    prefix = write_official(str(tmp_path / "official"), source)
    model_dir = str(tmp_path / "teacher")
    summary = pretrained.export_model_dir(prefix, model_dir, dict(TINY))
    assert summary["ema_shadows"] == len(source.weights)
    x = images(4, 32)
    for use_ema in (True, False):
        model, config = eb.load_model_dir(model_dir, use_ema=use_ema)
        assert config == TINY
        np.testing.assert_allclose(logits(model, x), logits(source, x), rtol=1e-5, atol=1e-5)
    assert pretrained.export_model_dir(prefix, model_dir, dict(TINY)) is None   # not redone
    # Another class count would label with a random head.
    with pytest.raises(common.UserError, match=r"cannot label as it is: head re-initialised: the "
                       r"checkpoint has 10 classes, the model 4; fine-tune it"):
        pretrained.export_model_dir(prefix, str(tmp_path / "other"), dict(TINY, num_classes=4))
    assert not (tmp_path / "other").exists()
