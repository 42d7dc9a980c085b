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
    """Random BN parameters and statistics and dense bias (convs are randomly initialised)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.weights[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape),
                               rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape)])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.weights
            layer.set_weights([kernel.numpy(), rng.normal(0, 0.1, bias.shape)])
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
    model = eb.build_model(**TINY)
    # The directory (read through its `checkpoint` file) and the prefix name the same checkpoint.
    summary = pretrained.load(model, str(tmp_path) if ema else prefix)
    assert summary["format"] == "official"
    assert summary["ema_shadows"] == (len(source.weights) if ema else 0)
    x = images(4, 32)
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


def test_unreadable_paths_are_user_errors(tiny_file, tmp_path):
    source, _ = tiny_file   # every error comes before any weight is assigned
    with pytest.raises(common.UserError, match="does not exist"):
        pretrained.load(source, str(tmp_path / "missing.weights.h5"))
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


@pytest.mark.slow
def test_grey_model_sums_the_rgb_stem_kernel(tmp_path):
    # Equal per-channel normalisation: a grey image then gives the RGB model's logits of the same
    # image repeated on 3 channels, exactly when the stem kernel is summed over its channels.
    rgb = randomise(eb.build_model(**TINY, mean=(100.0,) * 3, std=(60.0,) * 3), seed=2)
    path = str(tmp_path / "rgb.weights.h5")
    rgb.save_weights(path)
    grey = eb.build_model(**TINY, num_channels=1, mean=(100.0,), std=(60.0,))
    summary = pretrained.load(grey, path)
    assert summary["notes"] == ["stem kernel summed over the checkpoint's 3 input channels for "
                                "the model's 1"]
    x = images(4, 32, channels=1)
    np.testing.assert_allclose(logits(grey, x), logits(rgb, np.repeat(x, 3, axis=-1)),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Slow: full-width B0 against keras.applications.

@pytest.fixture(scope="module")
def keras_b0(tmp_path_factory):
    """(keras.applications B0 with random weights and ImageNet normalisation, {format: path})."""
    model = randomise(keras.applications.EfficientNetB0(
        weights=None, classes=7, input_shape=(64, 64, 3), classifier_activation=None), seed=3)
    norm = model.get_layer("normalization")
    norm.set_weights([np.array(eb.IMAGENET_MEAN) / 255, (np.array(eb.IMAGENET_STD) / 255) ** 2,
                      norm.weights[2].numpy()])
    norm.finalize_state()   # Normalization reads its weights when finalised
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
