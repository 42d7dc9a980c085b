"""EfficientNet-B0..B7 and L2 in Keras 3, with the student's model noise (dropout, stoch. depth).

Paper Sec. 2 ("Noising Student": model noise = dropout + stochastic depth) and Sec. 3.1 ("Noise":
survival probability 0.8 for the final layer with the linear decay rule, dropout 0.5 on the final
layer for B7/L2). The architecture is EfficientNet (Tan & Le, 2019) as the authors' code defines
it (block strings, the (width, depth, resolution, dropout) table, round_filters / round_repeats),
plus the reference's small-image variant for 32 px inputs.

The model takes float32 images in [0, 255] (H, W, C), C = 1 or 3, normalises them inside and
returns logits. `model(x, training=True)` applies dropout, stochastic depth and batch-statistics
BN; `set_noise` switches dropout and stochastic depth off (or on for the first n rows) without
touching BN. `load_model_dir` reads the model of a model dir (model.json + a tf.train.Checkpoint
with `model` and `ema_model`); `save_model_dir` writes one.

As a script it prints parameters and FLOPs (multiply-adds of one image, B = 1e9):

    python efficientnet_builder.py --model_names=efficientnet-b0,efficientnet-b4
    python efficientnet_builder.py --model_names=efficientnet-b0 --small_image --image_size=32 \
        --num_channels=1 --num_classes=10
        -> one row per model: model, resolution, parameters (all weights, BN moving statistics
           included, as keras' count_params), trainable parameters, FLOPs.
"""

import dataclasses
import inspect
import math
import os
import re

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import keras
from keras import layers
from keras import ops
import tensorflow as tf


MODEL_CONFIG_FILE = "model.json"

# (width, depth, resolution, dropout), from the reference efficientnet_builder.py.
_PARAMS = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5),
    "efficientnet-l2": (4.3, 5.3, 800, 0.5),
}

# r: repeats, k: kernel, s: strides, e: expand ratio, i/o: input/output filters, se: SE ratio.
BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
# The reference's small-image model (32 px): blocks 2 and 3 keep the resolution, so after the
# stride-2 stem and the stride-2 blocks 4 and 6 a 32 px image ends in a 4x4 map.
SMALL_IMAGE_STRIDE_1 = (1, 2)   # 0-based indices into BLOCK_STRINGS

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
DEPTH_DIVISOR = 8
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# --precision=bfloat16 (Keras' mixed_bfloat16, float32 variables): the layer kinds computed in
# float32 nevertheless (conv1x1: expand, project, head; other: stochastic depth, add, pooling,
# dropout); the input normalisation and the logits are float32 under any policy.
# NOTE: bf16 only in the 1x1 convolutions was the fastest split on an AVX512-BF16 CPU without AMX
# (TF's bf16 depthwise-conv gradients ran ~5x slower than float32; bench/bf16_step.md).
LAYER_KINDS = ("stem", "conv1x1", "depthwise", "bn", "activation", "se", "other")
FLOAT32_KINDS = frozenset(LAYER_KINDS) - {"conv1x1"}


# --- The architecture as data: block strings -> scaled per-block specs. --------------------------

@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One stage of the network, as written in a block string."""
    num_repeat: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float = 0.0
    id_skip: bool = True


def decode_block_string(block_string):
    """'r1_k3_s11_e1_i32_o16_se0.25' -> BlockArgs (square strides; 'noskip' drops the skip)."""
    options = {}
    for op in block_string.split("_"):
        if op == "noskip":
            continue
        match = re.fullmatch(r"([a-z]+)([0-9.]+)", op)
        if not match:
            raise ValueError(f"bad block string {block_string!r}: cannot read {op!r}")
        options[match.group(1)] = match.group(2)
    missing = {"r", "k", "s", "e", "i", "o"} - set(options)
    if missing:
        raise ValueError(f"bad block string {block_string!r}: missing {sorted(missing)}")
    strides = options["s"]
    if len(strides) != 2 or strides[0] != strides[1]:
        raise ValueError(f"bad block string {block_string!r}: strides must be a pair like s22")
    return BlockArgs(
        num_repeat=int(options["r"]), kernel_size=int(options["k"]), strides=int(strides[0]),
        expand_ratio=int(options["e"]), input_filters=int(options["i"]),
        output_filters=int(options["o"]), se_ratio=float(options.get("se", 0.0)),
        id_skip="noskip" not in block_string.split("_"))


def round_filters(filters, width, divisor=DEPTH_DIVISOR):
    """Channels scaled by `width`, rounded to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    new_filters = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * scaled:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats, depth):
    """Blocks per stage scaled by `depth`, rounded up."""
    return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class Block:
    """One MBConv block of the scaled network."""
    name: str
    input_filters: int
    output_filters: int
    expand_ratio: int
    kernel_size: int
    strides: int
    se_filters: int          # 0: no squeeze-and-excitation
    residual: bool           # identity skip (stride 1 and in == out)
    drop_rate: float         # stochastic depth drop probability (residual blocks only)

    @property
    def expanded_filters(self):
        return self.input_filters * self.expand_ratio


def efficientnet_params(model_name):
    """(width, depth, resolution, dropout) of a named model; common.UserError for unknown names."""
    if model_name not in _PARAMS:
        raise common.UserError(f"unknown model name {model_name!r}; expected one of "
                               f"{', '.join(_PARAMS)}")
    return _PARAMS[model_name]


def block_specs(width, depth, small_image=False, stochastic_depth_rate=0.2,
                block_strings=BLOCK_STRINGS):
    """The scaled MBConv blocks, in order; block idx (0-based) of N drops with rate
    stochastic_depth_rate * idx / N if residual, as the reference's efficientnet_model.py."""
    # NOTE: the paper (Sec. 3.1) says survival 0.8 "for the final layer"; the reference's 0-based
    # rule, followed here, gives block idx 1 - 0.2 * idx / N; B0's last block (idx 15 of 16) has no
    # skip, so its last residual block (block6d, idx 14) survives with 0.825.
    stages = [decode_block_string(s) for s in block_strings]
    if small_image:
        stages = [dataclasses.replace(a, strides=1) if i in SMALL_IMAGE_STRIDE_1 else a
                  for i, a in enumerate(stages)]
    stages = [dataclasses.replace(a, input_filters=round_filters(a.input_filters, width),
                                  output_filters=round_filters(a.output_filters, width),
                                  num_repeat=round_repeats(a.num_repeat, depth))
              for a in stages]
    num_blocks = sum(a.num_repeat for a in stages)
    blocks = []
    for stage, args in enumerate(stages):
        for j in range(args.num_repeat):
            input_filters = args.input_filters if j == 0 else args.output_filters
            strides = args.strides if j == 0 else 1
            residual = (args.id_skip and strides == 1 and input_filters == args.output_filters)
            se_filters = max(1, int(input_filters * args.se_ratio)) if 0 < args.se_ratio <= 1 else 0
            suffix = chr(ord("a") + j) if j < 26 else f"_{j}"
            blocks.append(Block(
                name=f"block{stage + 1}{suffix}", input_filters=input_filters,
                output_filters=args.output_filters, expand_ratio=args.expand_ratio,
                kernel_size=args.kernel_size, strides=strides, se_filters=se_filters,
                residual=residual,
                drop_rate=stochastic_depth_rate * len(blocks) / num_blocks if residual else 0.0))
    return blocks


# --- Layers. -------------------------------------------------------------------------------------

def _dtype(kind):
    """A layer's dtype policy: None (the global one) unless the global policy computes in
    bfloat16 and FLOAT32_KINDS keeps `kind` in float32."""
    if kind in FLOAT32_KINDS and keras.config.dtype_policy().compute_dtype != "float32":
        return "float32"
    return None


def _conv_init():
    # N(0, sqrt(2 / fan_out)) (depthwise: fan_out = kh * kw), the reference's untruncated normal;
    # a fresh instance per layer (an unseeded Keras 3 instance fixes its seed at construction).
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _dense_init():
    # U(-1/sqrt(num_classes), +1/sqrt(num_classes)): the reference dense_kernel_initializer.
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


class Normalize(keras.layers.Layer):
    """(x - mean) / std with constant per-channel mean/std (0-255 scale); no weights."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        mean = ops.convert_to_tensor(self.mean, dtype=images.dtype)
        std = ops.convert_to_tensor(self.std, dtype=images.dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _noise_off(layer, training):
    """Not training, frozen (trainable=False) or switched off (noised_rows the Python int 0)."""
    rows = layer.noised_rows
    return not training or not layer.trainable or (isinstance(rows, int) and rows == 0)


def _noise_rows_only(noised, clean, noised_rows):
    """Rows [0, noised_rows) from `noised`, the rest from `clean` (noised_rows None: all noised)."""
    if noised_rows is None:
        return noised
    shape = (ops.shape(noised)[0],) + (1,) * (len(noised.shape) - 1)
    rows = ops.reshape(ops.arange(ops.shape(noised)[0]), shape)
    return ops.where(rows < noised_rows, noised, clean)


class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch for whole examples: x / keep * Bernoulli(keep), training only, on
    the first `noised_rows` rows (set_noise; None: all, 0: off); off when frozen (fine-tuning)."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.noised_rows = None
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if _noise_off(self, training) or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        # The draw and the mask in float32 under any policy (a bfloat16 uniform has 8 bits).
        # NOTE: in bfloat16 the kept rows' scale 1 / keep rounds (1 / 0.975 -> 1.0234, -0.2%).
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        mask = _noise_rows_only(mask / keep, ops.ones_like(mask), self.noised_rows)
        return x * ops.cast(mask, x.dtype)  # one full-size multiply

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class NoiseDropout(keras.layers.Dropout):
    """keras Dropout on the rows set_noise names (`noised_rows`, as StochasticDepth's)."""

    def __init__(self, rate, **kwargs):
        super().__init__(rate, **kwargs)
        self.noised_rows = None

    def call(self, inputs, training=False):
        if _noise_off(self, training):
            return inputs
        return _noise_rows_only(super().call(inputs, training=training), inputs, self.noised_rows)


class Conv2D(layers.Conv2D):
    """Keras Conv2D that computes a 1x1, stride-1 convolution as one matrix product over all
    pixels: the same result and weights, about half the CPU time of the conv kernels."""

    def convolution_op(self, inputs, kernel):
        if self.kernel_size != (1, 1) or self.strides != (1, 1) \
                or self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        pixels = tf.reshape(inputs, [-1, kernel.shape[2]])
        outputs = tf.matmul(pixels, kernel[0, 0])
        return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.filters]], 0))


def _conv(filters, kernel_size, strides=1, name=None, kind="conv1x1"):
    return Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                  kernel_initializer=_conv_init(), name=name, dtype=_dtype(kind))


class FusedBatchNorm(layers.BatchNormalization):
    """Keras BatchNormalization whose training pass is TF's fused kernel (Keras 3's separate ops
    cost a large share of a small convnet's CPU step); inference, frozen and non-NHWC: Keras'.
    NOTE: the fused kernel's moving variance is the unbiased batch variance, the reference's
    non-fused BN the biased one (a factor n / (n - 1), under 0.05% at our sizes)."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3) or inputs.dtype not in (tf.float32, tf.bfloat16):
            return super().call(inputs, training=training, mask=mask)
        # With exponential_avg_factor = 1 - momentum the kernel returns the updated moving
        # statistics itself (TF1's fused BN did the same), so the update is two assigns.
        y, moving_mean, moving_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=self.moving_mean,
            variance=self.moving_variance, epsilon=self.epsilon,
            exponential_avg_factor=1.0 - self.momentum, data_format="NHWC", is_training=True)
        self.moving_mean.assign(moving_mean)
        self.moving_variance.assign(moving_variance)
        return y


def live_taps(size, kernel_size, stride):
    """(first, last) kernel tap that ever meets an input pixel along one axis under TF 'same'
    padding, and that padding's (before, after): taps outside [first, last] only meet padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    before = total // 2
    return (max(0, before - (out - 1) * stride), min(kernel_size - 1, size - 1 + before),
            before, total - before)


class DepthwiseConv2D(layers.DepthwiseConv2D):
    """Keras DepthwiseConv2D ('same' padding, no bias) that skips kernel taps which only ever meet
    padding (5x5 kernels on B0's 2x2 maps at 32 px): same output, gradients and weights, faster."""

    def call(self, inputs):
        k, s = self.kernel_size[0], self.strides[0]
        size = inputs.shape[1]
        if size is None or inputs.shape[2] != size or self.kernel_size != (k, k) \
                or self.strides != (s, s) or self.padding != "same" or self.use_bias \
                or self.depth_multiplier != 1:
            return super().call(inputs)
        first, last, before, after = live_taps(size, k, s)
        if (first, last) == (0, k - 1):
            return super().call(inputs)
        kernel = self.kernel[first:last + 1, first:last + 1]
        if last == first and s == 1:   # one live tap: a per-channel scale
            return inputs * kernel[0, 0, :, 0]
        pad = [before - first, after - (k - 1 - last)]
        x = tf.pad(inputs, [[0, 0], pad, pad, [0, 0]])
        return tf.nn.depthwise_conv2d(x, kernel, [1, s, s, 1], "VALID")


def _bn(name):
    # NOTE: statistics per replica under tf.distribute; the reference uses cross-replica BN only
    # on TPU slices over 8 cores (keras BatchNormalization(synchronized=True) would be it).
    return FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name, dtype=_dtype("bn"))


def swish(x):
    """x * sigmoid(x), differentiated as written: the backward pass reuses the forward sigmoid
    (tf.nn.swish, the reference's and Keras', recomputes it in six element-wise passes): the same
    function, a 1.08-1.11x training step (bench/swish_grad.md)."""
    return x * tf.sigmoid(x)


def _swish(name):
    return layers.Activation(swish, name=name, dtype=_dtype("activation"))


def _mbconv(x, b):
    """Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> SE -> project 1x1 (+ skip)."""
    inputs = x
    n = b.name
    if b.expand_ratio != 1:
        x = _conv(b.expanded_filters, 1, name=f"{n}_expand_conv")(x)
        x = _bn(f"{n}_expand_bn")(x)
        x = _swish(f"{n}_expand_activation")(x)
    x = DepthwiseConv2D(b.kernel_size, strides=b.strides, padding="same", use_bias=False,
                        depthwise_initializer=_conv_init(), name=f"{n}_dwconv",
                        dtype=_dtype("depthwise"))(x)
    x = _bn(f"{n}_bn")(x)
    x = _swish(f"{n}_activation")(x)
    if b.se_filters:
        # Squeeze to the block INPUT width * 0.25 (reference); the only convs with biases.
        se_dtype = _dtype("se")
        se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{n}_se_squeeze", dtype=se_dtype)(x)
        se = Conv2D(b.se_filters, 1, activation=swish, kernel_initializer=_conv_init(),
                    name=f"{n}_se_reduce", dtype=se_dtype)(se)
        se = Conv2D(b.expanded_filters, 1, activation="sigmoid", kernel_initializer=_conv_init(),
                    name=f"{n}_se_expand", dtype=se_dtype)(se)
        x = layers.Multiply(name=f"{n}_se_excite", dtype=se_dtype)([x, se])
    x = _conv(b.output_filters, 1, name=f"{n}_project_conv")(x)
    x = _bn(f"{n}_project_bn")(x)
    if b.residual:
        x = StochasticDepth(b.drop_rate, name=f"{n}_drop", dtype=_dtype("other"))(x)
        x = layers.Add(name=f"{n}_add", dtype=_dtype("other"))([x, inputs])
    return x


def _normalisation_constants(num_channels, mean, std):
    # NOTE: the reference is RGB only; other channel counts default to the average ImageNet
    # mean/std (callers pass the dataset's own mean/std, data.DATASETS).
    if mean is None:
        mean = IMAGENET_MEAN if num_channels == 3 else (sum(IMAGENET_MEAN) / 3,) * num_channels
    if std is None:
        std = IMAGENET_STD if num_channels == 3 else (sum(IMAGENET_STD) / 3,) * num_channels
    mean, std = tuple(mean), tuple(std)
    if len(mean) != num_channels or len(std) != num_channels:
        raise common.UserError(f"mean {mean} and std {std} need one value per channel "
                               f"(num_channels={num_channels})")
    if min(std) <= 0:
        raise common.UserError(f"std {std} must be positive")
    return mean, std


def build_model(model_name="efficientnet-b0", num_classes=1000, image_size=None, num_channels=3,
                small_image=False, width=None, depth=None, dropout_rate=None,
                stochastic_depth_rate=0.2, mean=None, std=None, name=None):
    """An EfficientNet as a functional keras.Model: float32 [0, 255] (H, W, C) images -> logits.
    None: the table's width, depth, image_size and dropout_rate, ImageNet's mean/std."""
    table_width, table_depth, resolution, table_dropout = efficientnet_params(model_name)
    width = table_width if width is None else float(width)
    depth = table_depth if depth is None else float(depth)
    image_size = resolution if image_size is None else int(image_size)
    dropout_rate = table_dropout if dropout_rate is None else float(dropout_rate)
    stochastic_depth_rate = 0.2 if stochastic_depth_rate is None else float(stochastic_depth_rate)
    mean, std = _normalisation_constants(num_channels, mean, std)

    inputs = keras.Input((image_size, image_size, num_channels), dtype="float32", name="images")
    # TF 'same' padding also for stride 2, as the reference (keras.applications: 'valid' after a
    # symmetric pad); under --precision=bfloat16 the normalised images and the logits stay float32.
    x = Normalize(mean, std, name="normalize", dtype="float32")(inputs)
    x = _conv(round_filters(32, width), 3, strides=2, name="stem_conv", kind="stem")(x)
    x = _bn("stem_bn")(x)
    x = _swish("stem_activation")(x)
    for block in block_specs(width, depth, small_image, stochastic_depth_rate):
        x = _mbconv(x, block)
    x = _conv(round_filters(1280, width), 1, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _swish("top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool", dtype=_dtype("other"))(x)
    x = NoiseDropout(dropout_rate, name="top_dropout", dtype=_dtype("other"))(x)
    logits = layers.Dense(num_classes, kernel_initializer=_dense_init(), name="predictions",
                          dtype="float32")(x)
    return keras.Model(inputs, logits, name=name or model_name)


def build_from_config(config):
    """build_model from a model.json `config`: its build_model arguments, other keys ignored."""
    arguments = inspect.signature(build_model).parameters
    return build_model(**{k: v for k, v in config.items() if k in arguments})


def _all_layers(model):
    """Every layer of `model`, nested ones included (Keras' own walker is private)."""
    for layer in model.layers:
        yield layer
        yield from _all_layers(layer) if hasattr(layer, "layers") else ()


def set_noise(model, enabled, noised_rows=None):
    """Switches dropout and stochastic depth on (all rows, or the first `noised_rows`) or off; BN
    untouched; returns the layers switched. A Python attribute read in call(): set it inside the
    traced function (a tf.function traced before the switch keeps the old behaviour)."""
    switched = 0
    for layer in _all_layers(model):
        if isinstance(layer, (StochasticDepth, NoiseDropout)):
            layer.noised_rows = noised_rows if enabled else 0
            switched += 1
    return switched


def noise_states(model):
    """The seed-generator states of the model noise (stochastic depth, dropout): Keras keeps them
    out of model.weights and checkpoints; main.py saves them so a resumed run draws on."""
    return [layer.seed_generator.state for layer in _all_layers(model)
            if isinstance(layer, (StochasticDepth, NoiseDropout))
            and getattr(layer, "seed_generator", None)]  # Keras' Dropout(0) has none


def count_flops(model):
    """Multiply-adds of one image in the convolutions and dense layers (kernel size x output
    pixels; the convention behind the published 0.39B for B0)."""
    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
            pixels = 1 if isinstance(layer, layers.Dense) else math.prod(layer.output.shape[1:3])
            total += pixels * math.prod(layer.kernel.shape)
    return int(total)


# --- Model dirs. ---------------------------------------------------------------------------------

def save_model_dir(model_dir, config, model, ema_model=None, step=0):
    """Writes model.json (config) and <model_dir>/ckpt-<step> (main.py's layout); returns the
    checkpoint path."""
    common.write_json(os.path.join(model_dir, MODEL_CONFIG_FILE), config)
    checkpoint = tf.train.Checkpoint(model=model, ema_model=ema_model or model,
                                     step=tf.Variable(step, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=None,
                                         checkpoint_name="ckpt")
    return manager.save(checkpoint_number=step)


def load_model_dir(model_dir, use_ema=True):
    """(model, config) of the model in `model_dir`: built from model.json, weights from the latest
    checkpoint's `ema_model` (use_ema) or `model`. UserError if anything is missing/mismatched."""
    if not tf.io.gfile.isdir(model_dir):
        raise common.UserError(f"model dir {model_dir} does not exist")
    config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    config = common.read_json(config_path, what="model config (written by main.py)")
    checkpoint_path = tf.train.latest_checkpoint(model_dir)
    if checkpoint_path is None:
        raise common.UserError(f"no checkpoint in model dir {model_dir}")
    model = build_from_config(config)
    key = "ema_model" if use_ema else "model"
    try:   # shape mismatches raise ValueError in read(), missing weights fail the assertion
        status = tf.train.Checkpoint(**{key: model}).read(checkpoint_path)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise common.UserError(f"{checkpoint_path}: `{key}` does not match {config_path} "
                               f"({str(e).splitlines()[0]})") from e
    logging.info("loaded %s (%s) from %s", config.get("model_name"), key, checkpoint_path)
    return model, config


def last_training_loss(model_dir):
    """The last `loss` main.py logged to model_dir/train's TensorBoard events (None without)."""
    step_loss = None
    for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, "train", "events.*"))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(raw)
            for value in event.summary.value:
                if value.tag == "loss" and (step_loss is None or event.step >= step_loss[0]):
                    step_loss = (event.step, float(tf.make_ndarray(value.tensor)))
    return step_loss and step_loss[1]


def check_teacher_strength(model_dir, allow_weak=False):
    """Refuses a teacher whose pseudo-labels would be noise (eval_results.json: top-1 below min(2x
    chance, chance + a tenth of the rest), or loss above 4x max(training loss, ln classes)).
    NOTE: not in the reference (it labels with any teacher); allow_weak goes on with a warning."""
    results = common.read_json(os.path.join(model_dir, "eval_results.json"), default=None)
    if not results:
        logging.warning("%s has no eval_results.json: its accuracy is not checked", model_dir)
        return
    classes = common.read_json(os.path.join(model_dir, MODEL_CONFIG_FILE))["num_classes"]
    chance, top_1, loss = 1 / classes, results["top_1"], results["loss"]
    train_loss = last_training_loss(model_dir)
    problems = []
    if top_1 < min(2 * chance, chance + (1 - chance) / 10):
        problems.append(f"top-1 {100 * top_1:.1f}% is near chance ({100 * chance:.1f}% for "
                        f"{classes} classes)")
    if not math.isfinite(loss) or loss > 4 * max(train_loss or 0, math.log(classes)):
        problems.append(f"its evaluation loss {loss:.4g} is far above its training loss "
                        f"{train_loss if train_loss is None else round(train_loss, 3)}")
    if not problems:
        return
    line = (f"the teacher in {model_dir} is too weak to label data: {' and '.join(problems)}; "
            f"train it longer (more steps or epochs), use a smaller model (width/depth 0.25) or "
            f"a pretrained teacher (--init_checkpoint), or pass --allow_weak_teacher")
    if not allow_weak:
        raise common.UserError(line)
    logging.warning("%s (--allow_weak_teacher: going on)", line.split(";")[0])


# --- Script: parameters and FLOPs table. ---------------------------------------------------------

def define_flags():
    """The script's flags, defined only when run as a script (main.py has its own)."""
    flags.DEFINE_list("model_names", ["efficientnet-b0"],
                      f"Comma-separated model names to report; any of {', '.join(_PARAMS)}.")
    flags.DEFINE_bool("small_image", False,
                      "Small-image variant (blocks 2 and 3 stride 1), for 32 px inputs.")
    flags.DEFINE_integer("image_size", None,
                         "Input size in pixels; default: each model's resolution.")
    flags.DEFINE_integer("num_channels", 3, "Input channels (1 for Fashion-MNIST, 3 for RGB).")
    flags.DEFINE_integer("num_classes", 1000, "Output classes.")
    flags.DEFINE_float("width", None, "Width coefficient override; default: the table value.")
    flags.DEFINE_float("depth", None, "Depth coefficient override; default: the table value.")


def model_summary(**build_kwargs):
    """{'model', 'resolution', 'params', 'trainable_params', 'flops'} of one built model."""
    model = build_model(**build_kwargs)
    return {"model": build_kwargs["model_name"], "resolution": model.input_shape[1],
            "params": model.count_params(),
            "trainable_params": sum(int(math.prod(w.shape)) for w in model.trainable_weights),
            "flops": count_flops(model)}


def format_table(rows):
    lines = [f"{'model':<18}{'resolution':>11}{'params':>16}{'trainable':>16}{'FLOPs':>10}"]
    for r in rows:
        lines.append(f"{r['model']:<18}{r['resolution']:>11}"
                     f"{r['params']:>16,}{r['trainable_params']:>16,}{r['flops'] / 1e9:>9.2f}B")
    return "\n".join(lines)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    for name in FLAGS.model_names:
        efficientnet_params(name)   # fail fast on a bad name
    rows = []
    for name in FLAGS.model_names:
        logging.info("building %s", name)
        rows.append(model_summary(
            model_name=name, num_classes=FLAGS.num_classes, image_size=FLAGS.image_size,
            num_channels=FLAGS.num_channels, small_image=FLAGS.small_image,
            width=FLAGS.width, depth=FLAGS.depth))
        keras.backend.clear_session()
    print(format_table(rows))


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
