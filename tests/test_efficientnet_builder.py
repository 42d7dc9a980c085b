"""Tests for efficientnet_builder.py: architecture against keras.applications and the published
sizes, the model noise (dropout, stochastic depth), the small-image variant, model dirs.

Big models: B0..B4 are built; B5..B7 and L2 (480M parameters, ~2 GB of float32 weights, a few
seconds each but too much memory for a shared test machine) are checked with count_params below,
which is proven equal to the built models for B0..B4 and scaled-down ones.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import common
from common import UserError
import prepare_data
import efficientnet_builder as eb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A scaled-down family for fast tests: 32 px, 1 channel, 10 classes.
TINY = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
            small_image=True, width=0.25, depth=0.5)

# Published parameter counts (EfficientNet paper Table 2; Noisy Student paper for L2), in millions.
PUBLISHED_PARAMS_M = {"efficientnet-b0": 5.3, "efficientnet-b1": 7.8, "efficientnet-b2": 9.2,
                      "efficientnet-b3": 12, "efficientnet-b4": 19, "efficientnet-b5": 30,
                      "efficientnet-b6": 43, "efficientnet-b7": 66, "efficientnet-l2": 480}


def fashion_mnist_images(n):
    """The first n Fashion-MNIST test images, zero-padded to 32, float32 [0, 255], (n, 32, 32, 1)."""
    images, _ = prepare_data.read_fashion_mnist(prepare_data.FASHION_MNIST_DIR, "test")
    return prepare_data.pad_fashion_mnist(images[:n]).astype(np.float32)


def count_params(model_name="efficientnet-b0", num_classes=1000, num_channels=3, width=None,
                 depth=None, trainable_only=False):
    """Parameters of build_model(...) without building it, layer by layer from eb.block_specs:
    all weights (BN moving statistics included, like keras count_params) or the trainable ones."""
    table_width, table_depth, _, _ = eb.efficientnet_params(model_name)
    width = table_width if width is None else width
    depth = table_depth if depth is None else depth
    bn = 2 if trainable_only else 4   # gamma, beta (+ moving mean, moving variance) per channel
    stem = eb.round_filters(32, width)
    total = 3 * 3 * num_channels * stem + bn * stem
    blocks = eb.block_specs(width, depth)
    for b in blocks:
        expanded = b.expanded_filters
        if b.expand_ratio != 1:
            total += b.input_filters * expanded + bn * expanded
        total += b.kernel_size * b.kernel_size * expanded + bn * expanded
        if b.se_filters:
            total += (expanded * b.se_filters + b.se_filters) + (b.se_filters * expanded + expanded)
        total += expanded * b.output_filters + bn * b.output_filters
    head = eb.round_filters(1280, width)
    total += blocks[-1].output_filters * head + bn * head
    return total + head * num_classes + num_classes


@pytest.fixture(scope="module")
def b0():
    keras.utils.set_random_seed(0)
    return eb.build_model("efficientnet-b0")


def weight_shapes(model):
    """{layer name: [weight shapes]} of layers with weights (keras' Normalization excluded)."""
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers
            if layer.weights and not isinstance(layer, keras.layers.Normalization)}


# ---------------------------------------------------------------------------------------------
# Architecture.

def test_decode_block_string():
    args = eb.decode_block_string("r2_k5_s22_e6_i24_o40_se0.25")
    assert args == eb.BlockArgs(num_repeat=2, kernel_size=5, strides=2, expand_ratio=6,
                                input_filters=24, output_filters=40, se_ratio=0.25, id_skip=True)
    assert not eb.decode_block_string("r1_k3_s11_e1_i32_o16_noskip").id_skip
    assert eb.decode_block_string("r1_k3_s11_e1_i32_o16").se_ratio == 0.0
    for bad in ["r1_k3_s12_e1_i32_o16", "r1_k3_e1_i32_o16", "r1_kx_s11_e1_i32_o16"]:
        with pytest.raises(ValueError, match="bad block string"):
            eb.decode_block_string(bad)


def test_round_filters_and_repeats():
    assert eb.round_filters(35.0, 1.0) == 32      # 35 -> 32 is within 10%
    assert eb.round_filters(35.9, 1.0) == 40      # 35.9 -> 32 would lose > 10%: +8
    assert eb.round_filters(16, 0.25) == 8        # minimum 8
    # Head widths of the family (keras.applications / the papers; L2's 5504 features).
    heads = {"b0": 1280, "b1": 1280, "b2": 1408, "b3": 1536, "b4": 1792, "b5": 2048,
             "b6": 2304, "b7": 2560, "l2": 5504}
    for name, head in heads.items():
        width = eb.efficientnet_params(f"efficientnet-{name}")[0]
        assert eb.round_filters(1280, width) == head, name
    assert eb.round_repeats(4, 3.1) == 13 and eb.round_repeats(1, 5.3) == 6
    assert len(eb.block_specs(1.0, 1.0)) == 16 and len(eb.block_specs(2.0, 3.1)) == 55


# In a fresh interpreter (so that what the tests imported before cannot hide a flag): the flags
# that importing each module of the project adds to absl's FLAGS, one module after the other.
IMPORT_FLAGS = """
import json, sys
from absl import flags
import keras, tensorflow  # what every module imports first
defined = {}
for name in sys.argv[1:]:
    before = set(flags.FLAGS)
    __import__(name)
    defined[name] = sorted(set(flags.FLAGS) - before)
print(json.dumps(defined))
"""


def test_import_defines_no_flags(tmp_path):
    """Stages define their flags in define_flags() when run, so that importing one (tests, another
    stage's tools) defines none: main.py's --image_size must not clash with a library's. Checked
    to see a module that does (`defines`), whichever module imports it first (`imports`)."""
    modules = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))
    assert {"main", "data", "prepare_data", "efficientnet_builder"} <= set(modules)
    (tmp_path / "defines.py").write_text("from absl import flags\n"
                                         "flags.DEFINE_integer('image_size', 0, 'clash')\n")
    (tmp_path / "imports.py").write_text("import defines\n")
    proc = subprocess.run([sys.executable, "-c", IMPORT_FLAGS, *modules, "imports", "defines"],
                          cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                             PYTHONPATH=f"{ROOT}:{tmp_path}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        **{m: [] for m in modules}, "imports": ["image_size"], "defines": []}


def test_unknown_model_name_is_a_user_error():
    with pytest.raises(UserError, match="efficientnet-b9"):
        eb.efficientnet_params("efficientnet-b9")
    with pytest.raises(UserError, match="one value per channel"):
        eb.build_model(**TINY, mean=(1.0, 2.0, 3.0))


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_architecture_equals_keras_applications(index, b0):
    """Same layers with the same weight shapes as keras.applications.EfficientNetB<index>.

    keras' model also has a Rescaling + Normalization(axis=-1) input layer whose non-trainable
    mean (3), variance (3) and count (1) make 7 extra parameters (B0: 5,330,571 = 5,330,564 + 7);
    ours normalises with constants and has no such weights.
    """
    name = f"efficientnet-b{index}"
    ours = b0 if index == 0 else eb.build_model(name)
    reference = getattr(keras.applications, f"EfficientNetB{index}")(weights=None, classes=1000)
    (normalization,) = [l for l in reference.layers if isinstance(l, keras.layers.Normalization)]
    assert normalization.count_params() == 7
    assert ours.count_params() == reference.count_params() - 7
    if index == 0:
        assert reference.count_params() == 5_330_571
    assert weight_shapes(ours) == weight_shapes(reference)
    # Residual connections (keras: `id_skip and strides == 1 and filters_in == filters_out`) and
    # their stochastic depth rates (keras: drop_connect_rate 0.2 * b / blocks, 0-based b).
    # keras has no drop layer where the rate is 0.
    ref_add = {l.name[:-len("_add")] for l in reference.layers if l.name.endswith("_add")}
    ref_drop = {l.name[:-len("_drop")]: l.rate for l in reference.layers
                if l.name.endswith("_drop")}
    our_add = {l.name[:-len("_add")] for l in ours.layers if l.name.endswith("_add")}
    our_drop = {l.name[:-len("_drop")]: l.rate for l in ours.layers
                if isinstance(l, eb.StochasticDepth)}
    assert our_add == ref_add and set(our_drop) == our_add
    for block, rate in our_drop.items():
        assert rate == pytest.approx(ref_drop.get(block, 0.0), abs=1e-12), block
    assert ours.get_layer("top_dropout").rate == eb.efficientnet_params(name)[3]
    # The analytic count used for the big models agrees with the built model.
    assert count_params(name) == ours.count_params()
    trainable = sum(math.prod(w.shape) for w in ours.trainable_weights)
    assert count_params(name, trainable_only=True) == trainable


@pytest.mark.slow
def test_analytic_params_equal_built_models():
    """count_params == the built model for B4 and for scaled-down / 1-channel variants."""
    for kwargs in [dict(model_name="efficientnet-b4"), dict(TINY),
                   dict(model_name="efficientnet-b3", width=0.5, depth=0.3, num_channels=1,
                        num_classes=7, image_size=64)]:
        model = eb.build_model(**kwargs)
        analytic_args = {k: kwargs[k] for k in ("model_name", "num_classes", "num_channels",
                                                "width", "depth") if k in kwargs}
        assert count_params(**analytic_args) == model.count_params(), kwargs
        keras.backend.clear_session()


def test_published_sizes():
    """Parameters in millions at the published rounding (two significant digits).

    The published numbers are trainable parameters (B7: 66.35M trainable -> 66M; with BN moving
    statistics it would be 66.66M -> 67M). One exception: B2 is published as 9.2M while its
    trainable count is 9.11M; 9.2M is its count with BN moving statistics (9.18M).
    """
    def rounded(n, published):
        digits = 1 if published < 10 else 0
        return round(n / 1e6, digits)
    for name, published in PUBLISHED_PARAMS_M.items():
        trainable = count_params(name, trainable_only=True)
        total = count_params(name)
        if name == "efficientnet-b2":
            assert rounded(trainable, published) == 9.1 and rounded(total, published) == 9.2
        else:
            assert rounded(trainable, published) == published, (name, trainable)
    assert count_params("efficientnet-l2", trainable_only=True) == 480_309_308


@pytest.mark.slow
def test_b0_flops(b0):
    assert round(eb.count_flops(b0) / 1e9, 2) == 0.39
    # count_flops on a model whose multiply-adds are counted by hand.
    x = inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)          # 4*4 * 3*3*3 * 4 = 1728
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)               # 4*4 * 3*3 * 4 = 576
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)                                         # 4 * 5 = 20
    assert eb.count_flops(keras.Model(inputs, x)) == 1728 + 576 + 20


@pytest.mark.slow
def test_initialisers(b0):
    """Conv: N(0, sqrt(2 / fan_out)), untruncated; dense: U(+-1/sqrt(num_classes))."""
    kernel = np.asarray(b0.get_layer("top_conv").kernel).ravel()          # 320 x 1280
    sigma = math.sqrt(2.0 / 1280)
    assert abs(kernel.mean()) < 0.01 * sigma
    assert kernel.std() == pytest.approx(sigma, rel=0.01)
    # A normal has 4.55% beyond 2 sigma (a truncated normal 0%); n = 409,600, sd 0.03%.
    assert np.mean(np.abs(kernel) > 2 * sigma) == pytest.approx(0.0455, abs=0.003)
    dw = np.asarray(b0.get_layer("block6a_dwconv").kernel)                # 5x5, fan_out = 25
    assert dw.std() == pytest.approx(math.sqrt(2.0 / 25), rel=0.02)
    dense = np.asarray(b0.get_layer("predictions").kernel)                # 1280 x 1000
    bound = 1 / math.sqrt(1000)
    assert np.abs(dense).max() <= bound and np.abs(dense).max() > 0.999 * bound
    assert dense.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    # Every layer gets its own random draw (an unseeded keras initializer instance would not).
    a = np.asarray(b0.get_layer("block2b_expand_conv").kernel)
    b = np.asarray(b0.get_layer("block3a_expand_conv").kernel)
    assert a.shape == b.shape and not np.array_equal(a, b)
    # Conv biases only in SE.
    biased = {l.name.split("_", 1)[1] for l in b0.layers
              if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and l.use_bias}
    assert biased == {"se_reduce", "se_expand"}
    bn = b0.get_layer("block3a_bn")
    assert bn.momentum == 0.99 and bn.epsilon == 1e-3


# ---------------------------------------------------------------------------------------------
# Noise.

def test_stochastic_depth_drops_at_rate_per_example():
    keras.utils.set_random_seed(1)
    rate, n = 0.3, 20_000
    layer = eb.StochasticDepth(rate)
    x = np.ones((n, 2, 2, 3), np.float32)
    y = np.asarray(layer(x, training=True))
    per_example = y.reshape(n, -1)
    # Whole examples are dropped (all zero) or kept and scaled by 1 / keep.
    kept = np.all(per_example == np.float32(1 / 0.7), axis=1)
    dropped = np.all(per_example == 0, axis=1)
    assert np.all(kept | dropped)
    # Binomial(n, 0.3): sd = sqrt(0.3 * 0.7 / n) = 0.0032; tolerance 5 sd = 0.016.
    assert abs(dropped.mean() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    assert abs(y.mean() - 1.0) < 5 * math.sqrt(rate / (1 - rate) / (n * 1.0))  # unbiased
    # Identity in inference, when switched off, and at rate 0.
    np.testing.assert_array_equal(layer(x, training=False), x)
    layer.noised_rows = 0
    np.testing.assert_array_equal(layer(x, training=True), x)
    np.testing.assert_array_equal(eb.StochasticDepth(0.0)(x, training=True), x)


@pytest.mark.parametrize("layer", [eb.StochasticDepth(0.5), eb.NoiseDropout(0.5)],
                         ids=["stochastic_depth", "dropout"])
def test_noised_rows_and_frozen_layers(layer):
    """noised_rows = n noises the first n rows only (the `none` ablation's one pass); a frozen
    layer (fine-tuning's fixed blocks) is the identity, as the reference's training=False."""
    x = np.ones((400, 3, 3, 2), np.float32)
    layer.noised_rows = tf.constant(300)
    y = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(y[300:], x[300:])
    assert 0.3 < np.mean(y[:300] == 0) < 0.7      # Bernoulli(0.5) over >= 300 draws
    layer.noised_rows = None
    assert 0.3 < np.mean(np.asarray(layer(x, training=True))[300:] == 0) < 0.7
    layer.trainable = False
    np.testing.assert_array_equal(layer(x, training=True), x)


def test_block_specs_stochastic_depth_rule():
    """Block idx (0-based) of N gets rate * idx / N on residual blocks only (reference rule)."""
    blocks = eb.block_specs(1.0, 1.0, stochastic_depth_rate=0.2)
    n = len(blocks)
    for idx, block in enumerate(blocks):
        residual = block.strides == 1 and block.input_filters == block.output_filters
        assert block.residual == residual
        assert block.drop_rate == (pytest.approx(0.2 * idx / n) if residual else 0.0)
    assert blocks[-1].drop_rate == 0.0    # B0's last block (192 -> 320) has no skip
    assert max(b.drop_rate for b in blocks) == pytest.approx(0.2 * 14 / 16)
    # In EfficientNet in == out implies stride 1; a custom stage shows the stride matters too.
    custom = eb.block_specs(1.0, 1.0, block_strings=("r2_k3_s22_e6_i16_o16_se0.25",
                                                     "r2_k3_s11_e6_i16_o16_noskip"))
    assert [b.residual for b in custom] == [False, True, False, False]
    assert [b.strides for b in custom] == [2, 1, 1, 1]
    assert [b.se_filters for b in custom] == [4, 4, 0, 0]


@pytest.mark.slow
def test_model_noise_switches():
    keras.utils.set_random_seed(2)
    images = fashion_mnist_images(16)
    model = eb.build_model(**TINY, dropout_rate=0.5, stochastic_depth_rate=0.5)
    n_sd = sum(isinstance(l, eb.StochasticDepth) for l in model.layers)
    assert n_sd >= 3
    noisy = [np.asarray(model(images, training=True)) for _ in range(2)]
    assert not np.allclose(noisy[0], noisy[1])
    # The model's dropout drops at its rate: 100,000 Bernoulli(0.5), sd 0.0016, tolerance 5 sd.
    ones = np.ones((1000, 100), np.float32)
    zero_fraction = np.mean(np.asarray(model.get_layer("top_dropout")(ones, training=True)) == 0)
    assert abs(zero_fraction - 0.5) < 5 * math.sqrt(0.25 / ones.size)

    assert eb.set_noise(model, False) == n_sd + 1
    quiet = [np.asarray(model(images, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(quiet[0], quiet[1])
    # BN is untouched: training still uses batch statistics, unlike inference.
    inference = np.asarray(model(images, training=False))
    assert not np.allclose(quiet[0], inference, atol=1e-3)
    eb.set_noise(model, True)
    assert not np.allclose(np.asarray(model(images, training=True)), quiet[0])

    # Inside a tf.function the switch is read while tracing: toggling between two calls in the
    # traced code (main.py's Table 6 ablation) gives one quiet and one noisy call.
    @tf.function
    def noisy_then_quiet(x):
        noisy = model(x, training=True)
        eb.set_noise(model, False)
        quiet = (model(x, training=True), model(x, training=True))
        eb.set_noise(model, True)
        return noisy, quiet, model(x, training=True)
    noisy, quiet, noisy_again = noisy_then_quiet(images)
    np.testing.assert_array_equal(quiet[0], quiet[1])
    assert not np.allclose(noisy, noisy_again)

    # Rates of 0 switch both off.
    off = eb.build_model(**TINY, dropout_rate=0.0, stochastic_depth_rate=0.0)
    np.testing.assert_array_equal(off(images, training=True), off(images, training=True))


# ---------------------------------------------------------------------------------------------
# Inputs.

def test_small_image_variant_keeps_a_4x4_map_and_takes_1_channel():
    small = eb.build_from_config({**TINY, "dataset": "fashion_mnist"})  # model.json keys
    assert small.get_layer("top_conv").output.shape[1:3] == (4, 4)
    images = fashion_mnist_images(8)
    logits = np.asarray(small(images, training=False))
    assert logits.shape == (8, 10) and np.all(np.isfinite(logits))
    # The same net without the small-image strides ends in 1x1 at 32 px.
    plain = eb.build_model(**{**TINY, "small_image": False})
    assert plain.get_layer("top_conv").output.shape[1:3] == (1, 1)


@pytest.mark.slow
def test_normalisation_inside_the_model():
    gray = eb.build_model(**TINY)
    normalize = gray.get_layer("normalize")
    mean = sum(eb.IMAGENET_MEAN) / 3
    std = sum(eb.IMAGENET_STD) / 3
    assert normalize.mean == pytest.approx((mean,)) and normalize.std == pytest.approx((std,))
    images = fashion_mnist_images(2)
    np.testing.assert_allclose(normalize(images), (images - mean) / std, rtol=1e-6, atol=1e-6)
    rgb = eb.build_model(**{**TINY, "num_channels": 3}, mean=(10, 20, 30), std=(2, 4, 8))
    x = np.full((1, 32, 32, 3), 50.0, np.float32)
    np.testing.assert_allclose(rgb.get_layer("normalize")(x)[0, 0, 0], [20, 7.5, 2.5])


# ---------------------------------------------------------------------------------------------
# Model dirs.

@pytest.mark.slow
def test_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(3)
    config = {**TINY, "dropout_rate": 0.2, "stochastic_depth_rate": 0.2,
              "dataset": "fashion_mnist", "input_kind": "small", "label_offset": 0}
    build_args = {k: v for k, v in config.items()
                  if k not in ("dataset", "input_kind", "label_offset")}
    model = eb.build_model(**build_args)
    ema = eb.build_model(**build_args)
    # EMA weights distinct from the raw ones, BN moving statistics included.
    for w_ema, w in zip(ema.weights, model.weights):
        w_ema.assign(np.asarray(w) * 0.9 + 0.01)
    images = fashion_mnist_images(8)
    raw_logits = np.asarray(model(images, training=False))
    ema_logits = np.asarray(ema(images, training=False))
    assert not np.allclose(raw_logits, ema_logits, atol=1e-3)

    staging = str(tmp_path / "student.tmp")
    path = eb.save_model_dir(staging, config, model, ema, step=7)
    assert os.path.basename(path) == "ckpt-7"
    model_dir = str(tmp_path / "student")
    os.rename(staging, model_dir)          # as the driver's temp-then-rename does

    loaded, loaded_config = eb.load_model_dir(model_dir)
    assert loaded_config == config
    np.testing.assert_array_equal(loaded(images, training=False), ema_logits)
    loaded_raw, _ = eb.load_model_dir(model_dir, use_ema=False)
    np.testing.assert_array_equal(loaded_raw(images, training=False), raw_logits)

    # Without an EMA model, `ema_model` is the model itself.
    only = str(tmp_path / "only")
    eb.save_model_dir(only, config, model)
    np.testing.assert_array_equal(eb.load_model_dir(only)[0](images, training=False), raw_logits)


@pytest.mark.slow
def test_load_errors(tmp_path):
    missing = str(tmp_path / "no_such_dir")
    with pytest.raises(UserError, match=missing):
        eb.load_model_dir(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="model config .*not found: .*model.json"):
        eb.load_model_dir(str(empty))
    (empty / eb.MODEL_CONFIG_FILE).write_text('{"model_name": ')
    with pytest.raises(UserError, match="not valid JSON: .*model.json"):
        eb.load_model_dir(str(empty))
    (empty / eb.MODEL_CONFIG_FILE).write_text('{"model_name": "efficientnet-b0"}')
    with pytest.raises(UserError, match="no checkpoint"):
        eb.load_model_dir(str(empty))
    # A checkpoint that does not fit model.json.
    model_dir = str(tmp_path / "mismatch")
    eb.save_model_dir(model_dir, {**TINY, "width": 0.5}, eb.build_model(**TINY))
    with pytest.raises(UserError, match="does not match"):
        eb.load_model_dir(model_dir)


# ---------------------------------------------------------------------------------------------
# Script.

@pytest.mark.slow
def test_script_prints_the_table():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [sys.executable, os.path.join(ROOT, "efficientnet_builder.py"),
            "--model_names=efficientnet-b0", "--small_image", "--image_size=32",
            "--num_channels=1", "--num_classes=10"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    header, row = result.stdout.strip().splitlines()
    assert header.split() == ["model", "resolution", "params", "trainable", "FLOPs"]
    expected = eb.model_summary(model_name="efficientnet-b0", num_classes=10, image_size=32,
                                num_channels=1, small_image=True)
    assert row.split() == [
        "efficientnet-b0", "32", f"{expected['params']:,}", f"{expected['trainable_params']:,}",
        f"{expected['flops'] / 1e9:.2f}B"]
    assert expected["params"] == count_params(num_classes=10, num_channels=1)

    bad = subprocess.run(args[:2] + ["--model_names=efficientnet-b9"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode != 0
    assert "efficientnet-b9" in bad.stderr.strip().splitlines()[-1]


def test_fused_batch_norm_matches_keras_batch_norm():
    """The fused training pass gives Keras BN's output and gradients; the moving mean is the
    same and the moving variance uses the unbiased batch variance (n / (n - 1); the reference's
    non-fused BN: the biased one); inference and frozen layers are Keras BN itself."""
    x = tf.constant(np.random.RandomState(0).normal(2, 3, (8, 5, 5, 4)).astype("float32"))
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    fused = eb.FusedBatchNorm(momentum=0.9, epsilon=1e-3)
    for layer in (ref, fused):
        layer.build(x.shape)
        layer.gamma.assign(tf.linspace(0.5, 2.0, 4))
        layer.beta.assign(tf.linspace(-1.0, 1.0, 4))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ref, y_fused = ref(x, training=True), fused(x, training=True)
        loss_ref = tf.reduce_sum(y_ref * tf.sin(y_ref))
        loss_fused = tf.reduce_sum(y_fused * tf.sin(y_fused))
    np.testing.assert_allclose(y_fused, y_ref, atol=1e-5)
    for a, b in ((ref.gamma, fused.gamma), (ref.beta, fused.beta)):
        np.testing.assert_allclose(tape.gradient(loss_fused, b), tape.gradient(loss_ref, a),
                                   rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(loss_fused, x), tape.gradient(loss_ref, x),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, ref.moving_mean, atol=1e-6)
    n = 8 * 5 * 5
    np.testing.assert_allclose(fused.moving_variance - 0.9,
                               (ref.moving_variance - 0.9) * n / (n - 1), rtol=1e-5)
    fused.moving_variance.assign(ref.moving_variance)
    np.testing.assert_allclose(fused(x, training=False), ref(x, training=False), atol=1e-5)
    fused.trainable = ref.trainable = False
    np.testing.assert_allclose(fused(x, training=True), ref(x, training=True), atol=1e-5)


def assert_same_outputs_and_gradients(ref, ours, x, tol, grad_tol):
    """ours(x) = ref(x), and so are the gradients of a nonlinear loss for x and every weight."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ref, y_ours = ref(x), ours(x)
        loss_ref, loss_ours = (tf.reduce_sum(y * tf.sin(y)) for y in (y_ref, y_ours))
    np.testing.assert_allclose(y_ours, y_ref, rtol=tol, atol=tol)
    for a, b in zip([x] + ref.weights, [x] + ours.weights):
        np.testing.assert_allclose(tape.gradient(loss_ours, b), tape.gradient(loss_ref, a),
                                   rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("size,kernel_size,stride",
                         [(n, k, s) for n in (1, 2, 3, 4, 6) for k in (3, 5) for s in (1, 2)])
def test_live_taps_are_the_taps_that_meet_pixels(size, kernel_size, stride):
    """live_taps against brute force over TF 'same' padding: a tap is live when some output
    position reads an input pixel through it."""
    first, last, before, after = eb.live_taps(size, kernel_size, stride)
    out = -(-size // stride)
    assert (size + before + after - kernel_size) // stride + 1 == out   # TF's 'same' padding
    live = [t for t in range(kernel_size)
            if any(0 <= o * stride - before + t < size for o in range(out))]
    assert (first, last) == (live[0], live[-1]) and live == list(range(first, last + 1))


@pytest.mark.slow
@pytest.mark.parametrize("size,kernel_size,stride",
                         [(n, k, s) for n in (1, 2, 3, 4) for k in (3, 5) for s in (1, 2)])
def test_trimmed_depthwise_conv_equals_keras(size, kernel_size, stride):
    """Skipping the taps that only meet padding changes nothing: same output, same gradients
    for the input and the whole kernel (zero for the skipped taps)."""
    rng = np.random.RandomState(size * 100 + kernel_size * 10 + stride)
    x = tf.constant(rng.normal(0, 1, (3, size, size, 4)).astype("float32"))
    ref = keras.layers.DepthwiseConv2D(kernel_size, strides=stride, padding="same", use_bias=False)
    ours = eb.DepthwiseConv2D(kernel_size, strides=stride, padding="same", use_bias=False)
    for layer in (ref, ours):
        layer.build(x.shape)
    ours.kernel.assign(rng.normal(0, 1, ours.kernel.shape).astype("float32"))
    ref.kernel.assign(ours.kernel)
    assert_same_outputs_and_gradients(ref, ours, x, 1e-5, 1e-5)


@pytest.mark.parametrize("kernel_size,stride,bias", [(1, 1, False), (1, 1, True), (3, 1, False),
                                                     (1, 2, False)])
def test_conv2d_as_matmul_equals_keras(kernel_size, stride, bias):
    """A 1x1 stride-1 conv computed as a matrix product: Keras' output and gradients (input,
    kernel, bias); other convs are Keras' own path."""
    rng = np.random.RandomState(kernel_size * 10 + stride)
    x = tf.constant(rng.normal(0, 1, (3, 5, 5, 6)).astype("float32"))
    kwargs = dict(strides=stride, padding="same", use_bias=bias, activation="swish")
    ref, ours = keras.layers.Conv2D(7, kernel_size, **kwargs), eb.Conv2D(7, kernel_size, **kwargs)
    for layer in (ref, ours):
        layer.build(x.shape)
    for a, b in zip(ref.weights, ours.weights):
        b.assign(rng.normal(0, 1, b.shape).astype("float32"))
        a.assign(b)
    assert_same_outputs_and_gradients(ref, ours, x, 1e-5, 1e-4)


# ---------------------------------------------------------------------------------------------
# --precision=bfloat16: Keras mixed_bfloat16 (common.set_precision) with the FLOAT32_KINDS split.

@pytest.fixture
def bfloat16():
    common.set_precision("bfloat16")
    yield
    common.set_precision("float32")


def layer_kinds(model):
    """{layer name: kind} as build_model assigns them (efficientnet_builder.LAYER_KINDS)."""
    kinds = {}
    for layer in model.layers[1:]:  # not the input layer (its float32 images)
        n = layer.name
        kinds[n] = ("stem" if n == "stem_conv" else "se" if "_se_" in n
                    else "depthwise" if isinstance(layer, eb.DepthwiseConv2D)
                    else "conv1x1" if isinstance(layer, eb.Conv2D)
                    else "bn" if isinstance(layer, eb.FusedBatchNorm)
                    else "activation" if isinstance(layer, keras.layers.Activation)
                    else None if n in ("normalize", "predictions") else "other")
    return kinds


@pytest.mark.parametrize("float32_kinds", [eb.FLOAT32_KINDS, {"depthwise", "bn"}],
                         ids=["chosen_split", "depthwise_bn_float32"])
def test_bfloat16_computes_in_bf16_with_float32_weights_inputs_and_logits(bfloat16, float32_kinds,
                                                                          monkeypatch):
    monkeypatch.setattr(eb, "FLOAT32_KINDS", frozenset(float32_kinds))
    keras.utils.set_random_seed(0)
    model = eb.build_model(**TINY)
    for name, kind in layer_kinds(model).items():
        want = "float32" if kind is None or kind in float32_kinds else "bfloat16"
        assert model.get_layer(name).compute_dtype == want, name
    assert {w.dtype for w in model.weights if "seed_generator" not in w.path} == {"float32"}
    images = fashion_mnist_images(32)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            np.zeros(32, np.int32), logits))
    assert logits.dtype == tf.float32
    grads = tape.gradient(loss, model.trainable_weights)
    assert {g.dtype for g in grads} == {tf.float32} and all(np.isfinite(g).all() for g in grads)
    # The same weights in float32: close logits, but not the same bits (bf16 ran).
    common.set_precision("float32")
    ref = eb.build_model(**TINY)
    ref.set_weights(model.get_weights())
    bf16, fp32 = np.asarray(model(images, training=False)), np.asarray(ref(images, training=False))
    assert not np.array_equal(bf16, fp32)
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())


def test_stochastic_depth_draws_in_float32_under_bfloat16():
    """A bfloat16 draw (8 bits) rounds keep + u and drops 1.5% instead of 1.25% (the
    rate of B0's second block); the mask is drawn in float32 and cast."""
    keras.utils.set_random_seed(3)
    rate, n = 0.0125, 400_000
    layer = eb.StochasticDepth(rate, dtype="mixed_bfloat16")
    y = np.asarray(tf.cast(layer(np.ones((n, 1, 1, 1), np.float32), training=True), tf.float32))
    assert layer.compute_dtype == "bfloat16"
    dropped = np.mean(y == 0)
    assert abs(dropped - rate) < 5 * math.sqrt(rate * (1 - rate) / n)   # 5 sd = 0.09 points
    assert set(np.unique(y)) == {0.0, float(tf.cast(1 / (1 - rate), tf.bfloat16))}


def test_noise_states_are_the_noise_layers_seed_states():
    """What main.py checkpoints so a resumed run draws new masks: one state per stochastic-depth
    layer and the dropout's (none for dropout 0, which Keras builds without a generator)."""
    for dropout, extra in ((0.0, 0), (0.3, 1)):
        model = eb.build_model(**TINY, dropout_rate=dropout)
        n_sd = sum(isinstance(l, eb.StochasticDepth) for l in model.layers)
        states = eb.noise_states(model)
        assert len(states) == n_sd + extra
        layer = next(l for l in model.layers if isinstance(l, eb.StochasticDepth) and l.rate)
        assert any(s is layer.seed_generator.state for s in states)
        before = np.asarray(layer.seed_generator.state)
        layer(np.ones((4, 2, 2, 3), np.float32), training=True)   # a draw advances the state
        np.testing.assert_array_equal(layer.seed_generator.state, before + [0, 1])
