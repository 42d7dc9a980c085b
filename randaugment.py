"""RandAugment, the student's input noise, as TF ops that run inside a tf.data map (graph mode).

Paper: Sec. 2 ("Noising Student": input noise is RandAugment) and Sec. 3.1 ("Noise": two random
operations at magnitude 27 for EfficientNet-B7 and L2); RandAugment: Cubuk et al., 2020. As the
authors' randaugment.py (google-research/noisystudent, from tensorflow/tpu's autoaugment.py):
- 16 ops on uint8 images, in the reference's order (AVAILABLE_OPS). Each of N layers picks one
  op uniformly at random per image and always applies it (the reference samples a probability
  per op but never uses it) at magnitude M; M maps linearly to each op's argument
  (level_to_arg) and M > 10 extrapolates (the paper: 27). Rotate, shear and translate get a
  random sign; geometric ops and cutout fill empty pixels with 128.
- Every op has one implementation, for a batch with per-image statistics and arguments; one
  image (H, W, C) runs as a batch of one. 1-channel images are accepted (the reference: RGB).
- distort_image_with_randaugment: one image, as the reference's per-image map.
  distort_batch_with_randaugment: a batch after .batch(), what data.py runs, with the same
  per-image choices: each layer splits the batch by chosen op (tf.dynamic_partition), runs each
  op once and puts the images back in order (tf.dynamic_stitch).
- Every random draw (op choice, sign, Cutout centre) is a stateless op of an explicit `seed`, a
  [2] int tensor: the same seed gives the same result, in a tf.data map, in parallel, anywhere.

A library of data.py (which also adds the reference's extra `cutout` for 32 px images).
bench/randaugment_grid.py draws every op at a few magnitudes on real images.
"""

import functools
import math

import common  # noqa: F401  (first: it silences TensorFlow's start-up lines)
import tensorflow as tf

MAX_LEVEL = 10.0  # the reference's _MAX_LEVEL: M = 10 is the top of the searched range
FILL_VALUE = 128  # empty pixels of geometric ops and cutout

# The reference's op order (google-research/noisystudent, with its default --cutout_op=True,
# which appends Cutout; tensorflow/tpu lists Cutout before SolarizeAdd; the order only matters
# for which random index picks which op).
AVAILABLE_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "SolarizeAdd",
    "Cutout")

SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # random sign per call

# How Posterize and Solarize read the magnitude (see _posterize_bits / _solarize_threshold).
MAGNITUDE_POLICIES = ("reference", "increasing")


# --- Helpers. ------------------------------------------------------------------------------------
def _check_uint8(images, ranks=(3, 4)):
    """`images` as a uint8 tensor of rank in `ranks` (3: one image, 4: a batch), C = 1 or 3."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise ValueError(f"RandAugment ops take uint8 images, got {images.dtype.name}")
    layouts = {3: "an image (H, W, C)", 4: "a batch (B, H, W, C)"}
    if images.shape.rank not in ranks or images.shape[-1] not in (1, 3):
        expected = " or ".join(layouts[rank] for rank in ranks)
        raise ValueError(f"expected {expected} with C = 1 or 3, got shape {images.shape}")
    return images


def _batch_op(op):
    """Decorator for an op written for a batch: uint8 (B, H, W, C) in, same shape out.

    The decorated op checks its input and also takes one image (H, W, C), which it runs as a
    batch of one: each op has a single implementation for both. Per-image arguments of the op
    are then scalars; on a batch they are scalars (shared) or vectors [B] (one per image).
    """
    @functools.wraps(op)
    def wrapper(images, *args, **kwargs):
        images = _check_uint8(images)
        if images.shape.rank == 4:
            out = op(images, *args, **kwargs)
        else:
            out = op(images[tf.newaxis], *args, **kwargs)[0]
        out.set_shape(images.shape)
        return out
    return wrapper


def _per_image(value, dtype):
    """A scalar or per-image [B] argument as a (B or 1, 1, 1, 1) tensor that broadcasts
    against a batch (B, H, W, C)."""
    return tf.reshape(tf.cast(value, dtype), [-1, 1, 1, 1])


def _truncate_to_uint8(image_float):
    """Clip to [0, 255] and truncate, as the reference's tf.cast (and Pillow's C code) do."""
    return tf.cast(tf.clip_by_value(image_float, 0.0, 255.0), tf.uint8)


def blend(image1, image2, factor):
    """image1 + factor * (image2 - image1) in float32, clipped and truncated to uint8.

    factor 0 gives image1, 1 gives image2, > 1 extrapolates away from image1. Same arithmetic as
    the reference's blend and Pillow's Image.blend (float, truncation), which is what the
    enhance ops (Color, Contrast, Brightness, Sharpness) are built on. The three arguments
    broadcast against each other (e.g. a per-image factor of shape (B, 1, 1, 1)).
    """
    image1 = tf.cast(image1, tf.float32)
    image2 = tf.cast(image2, tf.float32)
    return _truncate_to_uint8(image1 + tf.cast(factor, tf.float32) * (image2 - image1))


def _grayscale(images):
    """Luma as uint8 (..., 1). RGB: tf.image.rgb_to_grayscale, as the reference."""
    if images.shape[-1] == 1:
        return images
    return tf.image.rgb_to_grayscale(images)


def _transform(images, matrix, replace):
    """Nearest-neighbour affine transform of a batch; in image b, output pixel (x, y) reads input
    pixel round(a0 x + a1 y + a2, b0 x + b1 y + b2) (pixel indices); outside -> `replace`.

    `matrix` = [a0, a1, a2, b0, b1, b2], each a scalar or a vector [B] (one value per image).
    This is what tensorflow-addons' transform (and the reference's tf.contrib.image) ran:
    tf.raw_ops.ImageProjectiveTransformV3, one transform row per image. The reference marked
    empty pixels with an extra all-ones channel and filled them with 128 afterwards; the op's
    fill_value does the same in one step.
    """
    batch_size = tf.shape(images)[0]
    columns = [tf.broadcast_to(tf.cast(value, tf.float32), [batch_size]) for value in matrix]
    columns += [tf.zeros([batch_size])] * 2  # no projective part
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.stack(columns, axis=1),
        output_shape=tf.shape(images)[1:3], fill_value=tf.cast(replace, tf.float32),
        interpolation="NEAREST", fill_mode="CONSTANT")
    out.set_shape(images.shape)
    return out


# --- The 16 ops, each on a batch uint8 (B, H, W, C) or one image (H, W, C), C = 1 or 3; uint8 of
# the same shape out. Statistics (min/max, histogram, mean) are per image; arguments are scalars or
# one value per image ([B]).
@_batch_op
def autocontrast(images):
    """Per image and channel, stretch [min, max] linearly to [0, 255] (float32, truncated); a
    constant channel is left as it is. = PIL.ImageOps.autocontrast(cutoff=0)."""
    lo = tf.cast(tf.reduce_min(images, axis=[1, 2], keepdims=True), tf.float32)
    hi = tf.cast(tf.reduce_max(images, axis=[1, 2], keepdims=True), tf.float32)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    offset = -lo * scale
    stretched = _truncate_to_uint8(tf.cast(images, tf.float32) * scale + offset)
    return tf.where(hi > lo, stretched, images)


@_batch_op
def equalize(images):
    """Per image and channel histogram equalisation with Pillow's lookup table
    (PIL.ImageOps.equalize): step = (pixels - count of the brightest value) // 255;
    lut[v] = (step // 2 + #pixels < v) // step, clipped to 255; step 0 (nearly constant
    channel) leaves the channel as it is."""
    channels = images.shape[-1]
    shape = tf.shape(images)
    batch_size, num_pixels = shape[0], shape[1] * shape[2]
    num_histograms = batch_size * channels
    # One histogram per (image b, channel c): value v counts in bin 256 * (C * b + c) + v.
    histogram_of = tf.reshape(tf.range(num_histograms), [batch_size, 1, channels])
    bins = (tf.reshape(tf.cast(images, tf.int32), [batch_size, num_pixels, channels])
            + 256 * histogram_of)
    hist = tf.math.bincount(bins, minlength=256 * num_histograms,
                            maxlength=256 * num_histograms)
    hist = tf.reshape(hist, [batch_size, channels, 256])
    brightest = tf.cast(tf.reduce_max(images, axis=[1, 2]), tf.int32)  # [B, C]
    brightest_count = tf.gather(hist, brightest, batch_dims=2)
    step = (num_pixels - brightest_count)[..., None] // 255  # [B, C, 1]
    below = tf.cumsum(hist, axis=2, exclusive=True)  # pixels with a smaller value
    lut = tf.minimum((below + step // 2) // tf.maximum(step, 1), 255)
    lut = tf.where(step > 0, lut, tf.range(256))
    out = tf.gather(tf.reshape(lut, [-1]), bins)
    return tf.reshape(tf.cast(out, tf.uint8), shape)


@_batch_op
def invert(images):
    """255 - v."""
    return 255 - images


@_batch_op
def rotate(images, degrees, replace=FILL_VALUE):
    """Rotate about the image centre by `degrees`, counter-clockwise on screen for degrees > 0
    (the reference's docstring says clockwise; it calls tf.contrib.image.rotate, which is
    counter-clockwise -- the random sign makes the two the same op). = PIL Image.rotate."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    # NOTE: cos and sin are evaluated in float64 and rounded to float32; the reference evaluated
    # them in float32. TF's float32 sin/cos run a vectorised polynomial on most elements of a
    # tensor and libm on the rest, which differ in the last bit, so in a batch an image's result
    # would depend on its position (at 45 degrees that moves pixels; tested). Rounded float64
    # equals the reference's float32 value at every integer magnitude M = 0..30 and is at most
    # 1 ulp from it otherwise, which can move an output pixel only at an exact rounding tie.
    radians = tf.cast(radians, tf.float64)
    cos = tf.cast(tf.cos(radians), tf.float32)
    sin = tf.cast(tf.sin(radians), tf.float32)
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    cx, cy = (size[1] - 1.0) / 2.0, (size[0] - 1.0) / 2.0  # centre of the pixel grid
    # input = R (output - centre) + centre, R = [[cos, -sin], [sin, cos]]
    matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    return _transform(images, matrix, replace)


@_batch_op
def posterize(images, bits):
    """Keep the `bits` (0..8) most significant bits of every value. = PIL.ImageOps.posterize."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = 256 - tf.bitwise.left_shift(1, 8 - bits)  # bits=4 -> 0b11110000
    return tf.bitwise.bitwise_and(images, _per_image(mask, tf.uint8))


@_batch_op
def solarize(images, threshold):
    """Invert every value >= threshold (0..256; 256 inverts nothing). = PIL.ImageOps.solarize."""
    below = tf.cast(images, tf.int32) < _per_image(threshold, tf.int32)
    return tf.where(below, images, 255 - images)


@_batch_op
def solarize_add(images, addition, threshold=128):
    """Add `addition` to every value < threshold, clipped to [0, 255]; the rest is unchanged."""
    values = tf.cast(images, tf.int32)
    added = tf.clip_by_value(values + _per_image(addition, tf.int32), 0, 255)
    return tf.where(values < _per_image(threshold, tf.int32), tf.cast(added, tf.uint8), images)


@_batch_op
def color(images, factor):
    """Blend from the image's own grey version (factor 0) to the image (1) and beyond.
    = PIL.ImageEnhance.Color. A 1-channel image is its own grey version: unchanged."""
    if images.shape[-1] == 1:
        # NOTE: the reference handles RGB only. On 1 channel every op here gives exactly channel 0
        # of the op on the grey RGB copy (tested); for Color that is the identity.
        return images
    # The grey (B, H, W, 1) broadcasts over the 3 channels, as grayscale_to_rgb would copy it.
    return blend(_grayscale(images), images, _per_image(factor, tf.float32))


@_batch_op
def contrast(images, factor):
    """Blend from a constant image at the mean grey level (factor 0) to the image (1) and beyond.
    = PIL.ImageEnhance.Contrast: mean of the luma, rounded half up, per image."""
    # NOTE: the reference's degenerate value is sum(histogram) / 256 = H * W / 256 (a constant 4
    # at 32 px, 196 at 224 px, 255 from 256 px on), not the mean it intends (its docstring says
    # "Equivalent of PIL Contrast"; the authors confirmed the bug in tensorflow/models#8328 and it
    # was fixed in tensorflow/models#11219). We use the mean grey level, as Pillow does.
    gray = tf.cast(_grayscale(images), tf.int64)
    num_pixels = tf.cast(tf.reduce_prod(tf.shape(gray)[1:]), tf.float64)
    mean = tf.cast(tf.reduce_sum(gray, axis=[1, 2, 3], keepdims=True), tf.float64) / num_pixels
    degenerate = tf.cast(tf.floor(mean + 0.5), tf.uint8)  # (B, 1, 1, 1): a constant image each
    return blend(degenerate, images, _per_image(factor, tf.float32))


@_batch_op
def brightness(images, factor):
    """Blend from black (factor 0) to the image (1) and beyond. = PIL.ImageEnhance.Brightness."""
    return blend(tf.zeros([], tf.uint8), images, _per_image(factor, tf.float32))


@_batch_op
def sharpness(images, factor):
    """Blend from a smoothed image (factor 0) to the image (1) and beyond (> 1 sharpens).
    = PIL.ImageEnhance.Sharpness: Pillow's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    on the interior; the one-pixel border keeps the original values. The smoothed values are
    truncated, as in the reference (Pillow rounds them)."""
    channels = images.shape[-1]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    # "SAME" rather than the reference's "VALID" + pad: on the interior it sums the same
    # products (tested), and TF's "VALID" depthwise conv returns the input's shape, not
    # (0, H - 2, W - 2, C), on an empty batch.
    smooth = tf.nn.depthwise_conv2d(tf.cast(images, tf.float32), kernel, strides=[1, 1, 1, 1],
                                    padding="SAME")
    interior = tf.pad(tf.ones(tf.shape(images)[1:3] - 2, tf.bool), [[1, 1], [1, 1]])
    degenerate = tf.where(interior[:, :, None], _truncate_to_uint8(smooth), images)
    return blend(degenerate, images, _per_image(factor, tf.float32))


@_batch_op
def shear_x(images, level, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x + level * y, y), origin at the top-left pixel.
    = PIL Image.transform(AFFINE, (1, level, 0, 0, 1, 0)) up to Pillow's half-pixel origin."""
    return _transform(images, [1.0, level, 0.0, 0.0, 1.0, 0.0], replace)


@_batch_op
def shear_y(images, level, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x, y + level * x)."""
    return _transform(images, [1.0, 0.0, 0.0, level, 1.0, 0.0], replace)


@_batch_op
def translate_x(images, pixels, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x + pixels, y): content moves left for pixels > 0.
    Fractional pixels round to the nearest pixel per output position, as in the reference."""
    return _transform(images, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], replace)


@_batch_op
def translate_y(images, pixels, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x, y + pixels): content moves up for pixels > 0."""
    return _transform(images, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], replace)


@_batch_op
def cutout(images, pad_size, replace=FILL_VALUE, center=None, seed=None):
    """Fill a (2 pad_size) x (2 pad_size) square, clipped at the image border, with `replace`.

    The square covers rows [cy - pad_size, cy + pad_size) and the same for columns. Its centre
    (cy, cx) is `center` (scalars, or vectors [B] for a batch) or, with `seed` instead, uniform
    over all pixels, drawn independently for each image of a batch (as the reference draws it per
    call). `pad_size` is a scalar or one value per image.
    """
    shape = tf.shape(images)
    batch_size, height, width = shape[0], shape[1], shape[2]
    if center is None:
        if seed is None:
            raise ValueError("cutout needs a center or a seed")
        cy_seed, cx_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        cy = tf.random.stateless_uniform([batch_size], cy_seed, maxval=height, dtype=tf.int32)
        cx = tf.random.stateless_uniform([batch_size], cx_seed, maxval=width, dtype=tf.int32)
    else:
        cy, cx = center
    cy, cx, pad_size = (tf.reshape(tf.cast(v, tf.int32), [-1, 1, 1]) for v in (cy, cx, pad_size))
    rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
    inside = ((rows >= cy - pad_size) & (rows < cy + pad_size)
              & (cols >= cx - pad_size) & (cols < cx + pad_size))  # (B or 1, H, W)
    return tf.where(inside[..., None], tf.cast(replace, tf.uint8), images)


NAME_TO_FUNC = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "SolarizeAdd": solarize_add,
    "Cutout": cutout,
}


# --- Magnitude -> op arguments. ------------------------------------------------------------------
def _posterize_bits(magnitude, magnitude_policy):
    """Bits kept by Posterize at magnitude M.

    "reference": what the reference computes. It keeps bits = int(M / 10 * 4) by shifting right
      and left by 8 - bits, with 8 - bits converted to uint8 and TF clamping shifts to 0..7. So
      bits = 1..8 are kept as asked (M = 10: 4 bits; M = 20..22: all 8 bits, the identity), and
      bits = 0 (M < 2.5) and bits >= 9 (M >= 23: 8 - bits < 0 wraps to 255, clamped to 7) both
      keep 1 bit. The paper's M = 27 (bits = 10) therefore binarises every channel at 128.
    "increasing": 8 - int(M / 10 * 4), at least 1: 8 bits (identity) at M = 0, 4 at M = 10,
      1 from M = 17.5 on (27 included). Strength grows with M, like every other op.
    """
    if magnitude_policy == "reference":
        bits = int((magnitude / MAX_LEVEL) * 4)
        return bits if 1 <= bits <= 8 else 1
    return max(1, 8 - int((magnitude / MAX_LEVEL) * 4))


def _solarize_threshold(magnitude, magnitude_policy):
    """Solarize threshold (values >= threshold are inverted) at magnitude M.

    "reference": what the reference computes: threshold int(M / 10 * 256), compared with a uint8
      image, so TF converts it to uint8 modulo 256 (checked on TF 2.21 in graph and eager mode;
      TF 1 did the same through numpy < 1.24). M = 0 and M = 10 invert every pixel, M in (0, 10)
      inverts the values >= M * 25.6 (strength falls as M grows), and M > 10 wraps around:
      M = 27 -> 691 mod 256 = 179, so values >= 179 are inverted.
    "increasing": 256 - int(M / 10 * 256), at least 0: nothing inverted (identity) at M = 0,
      values >= 128 at M = 5, everything (= Invert) from M = 10 on.
    """
    if magnitude_policy == "reference":
        return int((magnitude / MAX_LEVEL) * 256) % 256
    return max(0, 256 - int((magnitude / MAX_LEVEL) * 256))


def level_to_arg(name, magnitude, cutout_const=40, translate_const=100,
                 magnitude_policy="reference"):
    """The arguments (after the image) of op `name` at magnitude M, as Python numbers.

    Linear in M / 10 and not clamped, as in the reference (M = 27 extrapolates). Rotate, shear
    and translate are returned positive; apply_op gives them a random sign.
    """
    if magnitude_policy not in MAGNITUDE_POLICIES:
        raise ValueError(f"magnitude_policy={magnitude_policy!r} is not one of "
                         f"{MAGNITUDE_POLICIES}")
    if magnitude < 0:
        raise ValueError(f"magnitude must be >= 0, got {magnitude}")
    level = float(magnitude) / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (level * 30.0,)  # degrees
    if name in ("ShearX", "ShearY"):
        return (level * 0.3,)
    if name in ("TranslateX", "TranslateY"):
        return (level * float(translate_const),)  # pixels
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (level * 1.8 + 0.1,)  # blend factor; 1.0 (identity) at M = 5
    if name == "Posterize":
        # NOTE: magnitude_policy="reference" reproduces the reference's uint8 wrap-around (1 bit
        # at M >= 23, see _posterize_bits); "increasing" is a monotone alternative.
        return (_posterize_bits(magnitude, magnitude_policy),)
    if name == "Solarize":
        # NOTE: magnitude_policy="reference" reproduces the reference's threshold modulo 256
        # (M = 27 -> 179, see _solarize_threshold); "increasing" is a monotone alternative.
        return (_solarize_threshold(magnitude, magnitude_policy),)
    if name == "SolarizeAdd":
        return (int(level * 110),)
    if name == "Cutout":
        return (int(level * cutout_const),)  # pad size: the square is 2 * pad_size wide
    raise ValueError(f"unknown RandAugment op {name!r}; known: {AVAILABLE_OPS}")


def _random_sign(value, batch_size, seed):
    """`value` (float32) with a random sign for each of `batch_size` images: [batch_size]."""
    value = tf.constant(value, tf.float32)
    return tf.where(tf.random.stateless_uniform([batch_size], seed) < 0.5, -value, value)


@_batch_op
def apply_op(images, name, magnitude, seed, cutout_const=40, translate_const=100,
             magnitude_policy="reference"):
    """Op `name` at magnitude M on one image or a batch, with the reference's random draws made
    per image from `seed` ([2] ints): a random sign for geometric ops, a random centre for
    Cutout."""
    args = level_to_arg(name, magnitude, cutout_const, translate_const, magnitude_policy)
    if name in SIGNED_OPS:
        args = (_random_sign(args[0], tf.shape(images)[0], seed),)
    if name == "Cutout":
        return cutout(images, *args, seed=seed)
    return NAME_TO_FUNC[name](images, *args)


def _check_randaugment_args(magnitude, cutout_const, translate_const, magnitude_policy):
    """Fail early, outside the graph, on a bad policy or magnitude."""
    for name in AVAILABLE_OPS:
        level_to_arg(name, magnitude, cutout_const, translate_const, magnitude_policy)


def distort_image_with_randaugment(image, num_layers, magnitude, seed, cutout_const=40,
                                   translate_const=100, magnitude_policy="reference"):
    """RandAugment: `num_layers` times, apply one op chosen uniformly at random at magnitude M.

    Args:
      image: uint8 (H, W, C), C = 1 or 3 (static), one image (call it inside a tf.data map for a
        per-image choice; for a batch, distort_batch_with_randaugment is much cheaper).
      num_layers: N, the number of ops applied in sequence (the paper: 2).
      magnitude: M, a Python number >= 0 shared by all ops (the paper: 27; 10 = top of the
        original range).
      seed: [2] ints (a tensor in a tf.data map) from which every random choice is drawn.
      cutout_const, translate_const: Cutout pad and translation in pixels at M = 10. ImageNet:
        40 and 100 (the defaults); the reference's 32 px path: image_size // 8 for both.
      magnitude_policy: how Posterize and Solarize read M: "reference" (default; bit-for-bit what
        the reference's TF code computes, uint8 wrap-around above M = 10 included) or
        "increasing" (monotone in M, saturating). See _posterize_bits and _solarize_threshold.
    Returns:
      uint8 image of the same shape.
    """
    image = _check_uint8(image, ranks=(3,))
    return distort_batch_with_randaugment(image[None], num_layers, magnitude, seed, cutout_const,
                                          translate_const, magnitude_policy)[0]


def _randaugment_batch_layer(images, magnitude, seed, cutout_const, translate_const,
                             magnitude_policy):
    """One RandAugment layer on a batch: each image gets one op chosen uniformly at random.

    The batch is split by chosen op (tf.dynamic_partition; a part may be empty), each op runs
    once on its part, and the results are put back in the images' order (tf.dynamic_stitch).
    """
    num_ops = len(AVAILABLE_OPS)
    batch_size = tf.shape(images)[0]
    # NOTE: the reference draws with stateful ops (tf.random_uniform); stateless draws from `seed`
    # have the same distributions and make streams reproducible and independent of each other.
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 1 + num_ops))
    op_index = tf.random.stateless_uniform([batch_size], seeds[0], maxval=num_ops, dtype=tf.int32)
    positions = tf.dynamic_partition(tf.range(batch_size), op_index, num_ops)
    parts = tf.dynamic_partition(images, op_index, num_ops)
    outs = [apply_op(part, name, magnitude, op_seed, cutout_const, translate_const,
                     magnitude_policy)
            for name, part, op_seed in zip(AVAILABLE_OPS, parts, seeds[1:])]
    out = tf.dynamic_stitch(positions, outs)
    out.set_shape(images.shape)
    return out


def distort_batch_with_randaugment(images, num_layers, magnitude, seed, cutout_const=40,
                                   translate_const=100, magnitude_policy="reference"):
    """RandAugment on a batch, with the per-image semantics of distort_image_with_randaugment.

    `num_layers` times, every image independently picks one op uniformly at random and gets it
    at magnitude M (with its own random sign for geometric ops and its own Cutout centre), as if
    distort_image_with_randaugment had run on each image. Each layer runs each of the 16 ops
    once, on the images that picked it: a few large ops per batch instead of many small ones
    per image. Use it after .batch() in a tf.data pipeline.

    Args:
      images: uint8 (B, H, W, C), C = 1 or 3 (static); B may be unknown (None) and may be 0.
      num_layers, magnitude, seed, cutout_const, translate_const, magnitude_policy: as in
        distort_image_with_randaugment.
    Returns:
      uint8 batch of the same shape.
    """
    images = _check_uint8(images, ranks=(4,))
    _check_randaugment_args(magnitude, cutout_const, translate_const, magnitude_policy)
    for layer in range(num_layers):
        with tf.name_scope(f"randaug_batch_layer_{layer}"):
            layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
            images = _randaugment_batch_layer(images, magnitude, layer_seed, cutout_const,
                                              translate_const, magnitude_policy)
    return images
