"""RandAugment, the student's input noise, as TF ops that run inside a tf.data map (graph mode).

Paper: Sec. 2 ("Noising Student": input noise is RandAugment) and Sec. 3.1 ("Noise": two random
operations at magnitude 27 for EfficientNet-B7 and L2); RandAugment: Cubuk et al., 2020. As the
authors' randaugment.py (google-research/noisystudent, from tensorflow/tpu's autoaugment.py):
- 16 ops on uint8 images, in the reference's order (AVAILABLE_OPS). Each of N layers picks one
  op uniformly at random per image and always applies it (the reference samples a probability
  per op but never uses it) at magnitude M; M maps linearly to each op's argument
  (level_to_arg) and M > 10 extrapolates (the paper: 27). Rotate, shear and translate get a
  random sign; geometric ops and cutout fill empty pixels with 128.
- Every op has one implementation, for a batch with per-image statistics and arguments (one
  image runs as a batch of one); 1-channel images are accepted (the reference: RGB).
- distort_batch_with_randaugment (what data.py runs) makes distort_image_with_randaugment's
  per-image choices on a batch: each layer splits it by chosen op and runs each op once.
- Every random draw (op choice, sign, Cutout centre) is a stateless op of an explicit [2] `seed`.

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
    """Decorator for an op written for a batch (uint8 (B, H, W, C) in, same shape out): it checks
    the input and also takes one image (H, W, C), run as a batch of one."""
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
    """A scalar or per-image [B] argument as a (B or 1, 1, 1, 1) tensor (broadcasts on a batch)."""
    return tf.reshape(tf.cast(value, dtype), [-1, 1, 1, 1])


def _truncate_to_uint8(image_float):
    """Clip to [0, 255] and truncate, as the reference's tf.cast (and Pillow's C code) do."""
    return tf.cast(tf.clip_by_value(image_float, 0.0, 255.0), tf.uint8)


def blend(image1, image2, factor):
    """image1 + factor * (image2 - image1) in float32, clipped and truncated to uint8 (> 1
    extrapolates), as the reference's blend and Pillow's Image.blend; the arguments broadcast."""
    image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    return _truncate_to_uint8(image1 + tf.cast(factor, tf.float32) * (image2 - image1))


def _grayscale(images):
    """Luma as uint8 (..., 1). RGB: tf.image.rgb_to_grayscale, as the reference."""
    if images.shape[-1] == 1:
        return images
    return tf.image.rgb_to_grayscale(images)


def _transform(images, matrix, replace):
    """Nearest-neighbour affine transform of a batch: output pixel (x, y) reads input pixel
    round(a0 x + a1 y + a2, b0 x + b1 y + b2), outside -> `replace`; `matrix` = [a0, .., b2], each a
    scalar or [B]. The reference's tf.contrib.image op, whose fill the reference did by hand."""
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
    """Per image and channel, PIL.ImageOps.equalize's lookup table: step = (pixels - count of the
    brightest value) // 255, lut[v] = (step // 2 + #pixels < v) // step (step 0: unchanged)."""
    channels = images.shape[-1]
    shape = tf.shape(images)
    batch_size, num_pixels = shape[0], shape[1] * shape[2]
    num_histograms = batch_size * channels
    # One histogram per (image b, channel c): value v counts in bin 256 * (C * b + c) + v.
    histogram_of = tf.reshape(tf.range(num_histograms), [batch_size, 1, channels])
    bins = (tf.reshape(tf.cast(images, tf.int32), [batch_size, num_pixels, channels])
            + 256 * histogram_of)
    hist = tf.math.bincount(bins, minlength=256 * num_histograms, maxlength=256 * num_histograms)
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
    # NOTE: cos and sin in float64, rounded to float32 (reference: float32, whose vectorised and
    # libm paths differ in the last bit, so a batch's result would depend on the position; tested).
    # Equal to the reference at every integer M = 0..30, else at most 1 ulp (only a tie moves).
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
    # NOTE: the reference's degenerate value is H * W / 256 (4 at 32 px), not the mean it intends
    # (the bug confirmed in tensorflow/models#8328, fixed in #11219); here the mean, as Pillow.
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
    """Blend from a smoothed image (factor 0) to the image (1) and beyond: = PIL's Sharpness
    (SMOOTH kernel on the interior, border kept), smoothed values truncated as the reference."""
    channels = images.shape[-1]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    # "SAME", not the reference's "VALID" + pad: the same interior (tested), and "VALID" gets an
    # empty batch's shape wrong.
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
    """Fill rows and columns [c - pad_size, c + pad_size) (clipped) with `replace`; the centre is
    `center` (scalars or [B]) or, with `seed`, uniform per image (the reference's per-call draw)."""
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


NAME_TO_FUNC = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
                "Rotate": rotate, "Posterize": posterize, "Solarize": solarize, "Color": color,
                "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
                "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
                "TranslateY": translate_y, "SolarizeAdd": solarize_add, "Cutout": cutout}


# --- Magnitude -> op arguments. ------------------------------------------------------------------
def _posterize_bits(magnitude, magnitude_policy):
    """Bits kept by Posterize at magnitude M. "reference": bits = int(M / 10 * 4) shifted by a
      uint8 8 - bits that TF clamps to 0..7: 1..8 as asked (M = 20..22: the identity), and 0
      (M < 2.5) or >= 9 (M >= 23: wraps to 255, clamped to 7) keep 1 bit, so M = 27 binarises.
    "increasing": 8 - int(M / 10 * 4), at least 1 (identity at M = 0, 1 bit from M = 17.5)."""
    if magnitude_policy == "reference":
        bits = int((magnitude / MAX_LEVEL) * 4)
        return bits if 1 <= bits <= 8 else 1
    return max(1, 8 - int((magnitude / MAX_LEVEL) * 4))


def _solarize_threshold(magnitude, magnitude_policy):
    """Solarize threshold (values >= it are inverted) at magnitude M. "reference": int(M / 10 *
      256) compared with uint8, so modulo 256 (TF 2.21 and TF 1 alike): M = 0 and 10 invert all,
      strength falls as M grows to 10, then wraps (M = 27 -> 691 mod 256 = 179).
    "increasing": 256 - int(M / 10 * 256), at least 0 (identity at M = 0, Invert from M = 10)."""
    if magnitude_policy == "reference":
        return int((magnitude / MAX_LEVEL) * 256) % 256
    return max(0, 256 - int((magnitude / MAX_LEVEL) * 256))


def level_to_arg(name, magnitude, cutout_const=40, translate_const=100,
                 magnitude_policy="reference"):
    """The arguments (after the image) of op `name` at magnitude M, as Python numbers: linear in
    M / 10, not clamped (M = 27 extrapolates); positive (apply_op draws the sign)."""
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
    """Op `name` at magnitude M on one image or a batch, with the reference's random draws (sign,
    Cutout centre) made per image from `seed` ([2] ints)."""
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
    """RandAugment on one uint8 image (H, W, C): `num_layers` (N; paper 2) times, one op chosen
    uniformly at random at magnitude M (a number >= 0; paper 27), every draw from `seed` ([2]).
    cutout_const, translate_const: pixels at M = 10 (ImageNet 40 and 100; 32 px: size // 8).
    magnitude_policy: "reference" (bit for bit the reference's Posterize and Solarize) or
    "increasing" (monotone). Returns the uint8 image."""
    image = _check_uint8(image, ranks=(3,))
    return distort_batch_with_randaugment(image[None], num_layers, magnitude, seed, cutout_const,
                                          translate_const, magnitude_policy)[0]


def _randaugment_batch_layer(images, magnitude, seed, cutout_const, translate_const,
                             magnitude_policy):
    """One RandAugment layer on a batch: split by chosen op (tf.dynamic_partition), each op run
    once on its part, the results put back in order (tf.dynamic_stitch)."""
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
    """RandAugment on a uint8 batch (B, H, W, C; B may be unknown or 0) with the per-image
    choices of distort_image_with_randaugment (same arguments), as a few large ops per batch (each
    layer runs each op once on the images that picked it). Returns the uint8 batch."""
    images = _check_uint8(images, ranks=(4,))
    _check_randaugment_args(magnitude, cutout_const, translate_const, magnitude_policy)
    for layer in range(num_layers):
        with tf.name_scope(f"randaug_batch_layer_{layer}"):
            layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
            images = _randaugment_batch_layer(images, magnitude, layer_seed, cutout_const,
                                              translate_const, magnitude_policy)
    return images
