"""RandAugment, the student's input noise, as TF ops that run inside a tf.data map (graph mode).

Paper: "Self-training with Noisy Student improves ImageNet classification" (Xie et al., 2020),
Sec. 2 ("Noising Student": input noise is RandAugment) and Sec. 3.1 ("Noise": two random
operations with magnitude 27 for EfficientNet-B7 and L2). RandAugment itself: Cubuk et al., 2020.
Specification: the authors' randaugment.py (google-research/noisystudent, a copy of
tensorflow/tpu models/official/efficientnet/autoaugment.py); see ../shared/REFERENCE.md.

What the reference does, and so what this file does:
- 16 ops on uint8 images, in the reference's order (AVAILABLE_OPS). Each of N layers picks one op
  uniformly at random, per image, and always applies it (the reference samples a probability per
  op but never uses it) at the fixed magnitude M.
- Magnitude M in [0, 10] maps linearly to each op's argument (level_to_arg); M > 10 extrapolates
  the same lines (the paper uses M = 27). Rotate, shear and translate get a random sign.
- Geometric ops: projective transform, nearest neighbour, empty pixels filled with 128.
- Small (32 px) images: the reference's CIFAR/SVHN path calls RandAugment with
  cutout_const = translate_const = image_size // 8 and then adds one more cutout of
  2 * (image_size // 4) px with fill 128 (data.py does that; this file provides `cutout`).
Unlike the reference, every op also takes 1-channel (grayscale) images.

Run as a script to draw every op at a few magnitudes on real images (Fashion-MNIST padded to
32 px, and a colour photo shipped with matplotlib):

    python randaugment.py --output=bench/randaugment_grid.png
        -> a PNG grid: one row per op; columns = magnitudes 0, 5, 10, 27 for each image.
"""

import gzip
import math
import os

import numpy as np
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
available_ops = AVAILABLE_OPS  # the name used in the project's interface contract

SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # random sign per call

# How Posterize and Solarize read the magnitude (see _posterize_bits / _solarize_threshold).
MAGNITUDE_POLICIES = ("reference", "increasing")


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------
def _num_channels(image):
    channels = image.shape[-1]
    if image.shape.rank != 3 or channels not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W, 1) or (H, W, 3), got {image.shape}")
    return channels


def _check_uint8(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(f"RandAugment ops take uint8 images, got {image.dtype.name}")
    _num_channels(image)
    return image


def _to_uint8(image_float):
    """Clip to [0, 255] and truncate, as the reference's tf.cast (and Pillow's C code) do."""
    return tf.cast(tf.clip_by_value(image_float, 0.0, 255.0), tf.uint8)


def blend(image1, image2, factor):
    """image1 + factor * (image2 - image1) in float32, clipped and truncated to uint8.

    factor 0 gives image1, 1 gives image2, > 1 extrapolates away from image1. Same arithmetic as
    the reference's blend and Pillow's Image.blend (float, truncation), which is what the
    enhance ops (Color, Contrast, Brightness, Sharpness) are built on.
    """
    image1 = tf.cast(image1, tf.float32)
    image2 = tf.cast(image2, tf.float32)
    return _to_uint8(image1 + tf.cast(factor, tf.float32) * (image2 - image1))


def _grayscale(image):
    """Luma as uint8 (H, W, 1). RGB: tf.image.rgb_to_grayscale, as the reference."""
    if _num_channels(image) == 1:
        return image
    return tf.image.rgb_to_grayscale(image)


def _transform(image, matrix, replace):
    """Nearest-neighbour projective transform; output pixel (x, y) reads input pixel
    round(a0 x + a1 y + a2, b0 x + b1 y + b2) (pixel indices); outside -> `replace`.

    `matrix` = [a0, a1, a2, b0, b1, b2] (affine). This is what tensorflow-addons' transform (and
    the reference's tf.contrib.image) ran: tf.raw_ops.ImageProjectiveTransformV3. The reference
    marked empty pixels with an extra all-ones channel and filled them with 128 afterwards; the
    op's fill_value does the same in one step.
    """
    transform = tf.concat([tf.cast(tf.stack(matrix), tf.float32), tf.zeros([2])], 0)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=tf.cast(replace, tf.float32),
        interpolation="NEAREST", fill_mode="CONSTANT")[0]
    out.set_shape(image.shape)
    return out


# ---------------------------------------------------------------------------------------------
# The 16 ops: uint8 (H, W, C) in, uint8 of the same shape out; C = 1 or 3.
# ---------------------------------------------------------------------------------------------
def autocontrast(image):
    """Per channel, stretch [min, max] linearly to [0, 255] (float32, truncated); a constant
    channel is left as it is. = PIL.ImageOps.autocontrast(cutoff=0)."""
    image = _check_uint8(image)
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    offset = -lo * scale
    stretched = _to_uint8(tf.cast(image, tf.float32) * scale + offset)
    return tf.where(hi > lo, stretched, image)


def equalize(image):
    """Per-channel histogram equalisation with Pillow's lookup table (PIL.ImageOps.equalize):
    step = (pixels - count of the brightest value) // 255; lut[v] = (step // 2 + #pixels < v)
    // step, clipped to 255; step 0 (nearly constant channel) leaves the channel as it is."""
    image = _check_uint8(image)
    channels = _num_channels(image)
    # One histogram per channel: value v of channel c counts in bin 256 * c + v.
    flat = tf.reshape(tf.cast(image, tf.int32), [-1, channels]) + 256 * tf.range(channels)
    hist = tf.reshape(tf.math.bincount(flat, minlength=256 * channels, maxlength=256 * channels),
                      [channels, 256])
    num_pixels = tf.shape(flat)[0]
    brightest = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
    brightest_count = tf.gather(hist, brightest, batch_dims=1)
    step = (num_pixels - brightest_count) // 255  # [C]
    below = tf.cumsum(hist, axis=1, exclusive=True)  # pixels with a smaller value
    lut = tf.minimum((below + step[:, None] // 2) // tf.maximum(step[:, None], 1), 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    out = tf.gather(tf.reshape(lut, [-1]), flat)
    return tf.reshape(tf.cast(out, tf.uint8), tf.shape(image))


def invert(image):
    """255 - v."""
    image = _check_uint8(image)
    return 255 - image


def rotate(image, degrees, replace=FILL_VALUE):
    """Rotate about the image centre by `degrees`, counter-clockwise on screen for degrees > 0
    (the reference's docstring says clockwise; it calls tf.contrib.image.rotate, which is
    counter-clockwise -- the random sign makes the two the same op). = PIL Image.rotate."""
    image = _check_uint8(image)
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0  # centre of the pixel grid
    # input = R (output - centre) + centre, R = [[cos, -sin], [sin, cos]]
    matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    return _transform(image, matrix, replace)


def posterize(image, bits):
    """Keep the `bits` (0..8) most significant bits of every value. = PIL.ImageOps.posterize."""
    image = _check_uint8(image)
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)  # bits=4 -> 0b11110000
    return tf.bitwise.bitwise_and(image, mask)


def solarize(image, threshold):
    """Invert every value >= threshold (0..256; 256 inverts nothing). = PIL.ImageOps.solarize."""
    image = _check_uint8(image)
    return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image)


def solarize_add(image, addition, threshold=128):
    """Add `addition` to every value < threshold, clipped to [0, 255]; the rest is unchanged."""
    image = _check_uint8(image)
    values = tf.cast(image, tf.int32)
    added = tf.cast(tf.clip_by_value(values + tf.cast(addition, tf.int32), 0, 255), tf.uint8)
    return tf.where(values < tf.cast(threshold, tf.int32), added, image)


def color(image, factor):
    """Blend from the image's own grey version (factor 0) to the image (1) and beyond.
    = PIL.ImageEnhance.Color. A 1-channel image is its own grey version: unchanged."""
    image = _check_uint8(image)
    if _num_channels(image) == 1:
        # NOTE: the reference handles RGB only. On 1 channel every op here gives exactly channel 0
        # of the op on the grey RGB copy (tested); for Color that is the identity.
        return image
    return blend(tf.image.grayscale_to_rgb(_grayscale(image)), image, factor)


def contrast(image, factor):
    """Blend from a constant image at the mean grey level (factor 0) to the image (1) and beyond.
    = PIL.ImageEnhance.Contrast: mean of the luma, rounded half up."""
    image = _check_uint8(image)
    # NOTE: the reference's degenerate value is sum(histogram) / 256 = H * W / 256 (a constant 4
    # at 32 px, 196 at 224 px, 255 from 256 px on), not the mean it intends (its docstring says
    # "Equivalent of PIL Contrast"; the authors confirmed the bug in tensorflow/models#8328 and it
    # was fixed in tensorflow/models#11219). We use the mean grey level, as Pillow does.
    gray = tf.cast(_grayscale(image), tf.int64)
    mean = tf.cast(tf.reduce_sum(gray), tf.float64) / tf.cast(tf.size(gray), tf.float64)
    degenerate = tf.fill(tf.shape(image), tf.cast(tf.floor(mean + 0.5), tf.uint8))
    return blend(degenerate, image, factor)


def brightness(image, factor):
    """Blend from black (factor 0) to the image (1) and beyond. = PIL.ImageEnhance.Brightness."""
    image = _check_uint8(image)
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend from a smoothed image (factor 0) to the image (1) and beyond (> 1 sharpens).
    = PIL.ImageEnhance.Sharpness: Pillow's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    on the interior; the one-pixel border keeps the original values. The smoothed values are
    truncated, as in the reference (Pillow rounds them)."""
    image = _check_uint8(image)
    channels = _num_channels(image)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[tf.newaxis], kernel,
                                    strides=[1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.pad(_to_uint8(smooth), [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones(tf.shape(image)[:2] - 2, tf.bool), [[1, 1], [1, 1]])
    degenerate = tf.where(interior[:, :, None], smooth, image)
    return blend(degenerate, image, factor)


def shear_x(image, level, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x + level * y, y), origin at the top-left pixel.
    = PIL Image.transform(AFFINE, (1, level, 0, 0, 1, 0)) up to Pillow's half-pixel origin."""
    image = _check_uint8(image)
    return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0], replace)


def shear_y(image, level, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x, y + level * x)."""
    image = _check_uint8(image)
    return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0], replace)


def translate_x(image, pixels, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x + pixels, y): content moves left for pixels > 0.
    Fractional pixels round to the nearest pixel per output position, as in the reference."""
    image = _check_uint8(image)
    return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], replace)


def translate_y(image, pixels, replace=FILL_VALUE):
    """Output pixel (x, y) reads input (x, y + pixels): content moves up for pixels > 0."""
    image = _check_uint8(image)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], replace)


def cutout(image, pad_size, replace=FILL_VALUE, center=None):
    """Fill a (2 pad_size) x (2 pad_size) square, clipped at the image border, with `replace`.

    The square covers rows [cy - pad_size, cy + pad_size) and the same for columns; the centre
    (cy, cx) is uniform over all pixels (as in the reference) unless `center` = (cy, cx) is given.
    """
    image = _check_uint8(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if center is None:
        cy = tf.random.uniform([], 0, height, dtype=tf.int32)
        cx = tf.random.uniform([], 0, width, dtype=tf.int32)
    else:
        cy, cx = (tf.cast(c, tf.int32) for c in center)
    pad_size = tf.cast(pad_size, tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = ((rows >= cy - pad_size) & (rows < cy + pad_size)
              & (cols >= cx - pad_size) & (cols < cx + pad_size))
    return tf.where(inside[:, :, None], tf.cast(replace, tf.uint8), image)


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


# ---------------------------------------------------------------------------------------------
# Magnitude -> op arguments.
# ---------------------------------------------------------------------------------------------
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


def _random_sign(value):
    return tf.where(tf.random.uniform([]) < 0.5, -value, value)


def apply_op(image, name, magnitude, cutout_const=40, translate_const=100,
             magnitude_policy="reference"):
    """Op `name` at magnitude M, with the reference's random sign for geometric ops."""
    args = level_to_arg(name, magnitude, cutout_const, translate_const, magnitude_policy)
    if name in SIGNED_OPS:
        args = (_random_sign(tf.constant(args[0], tf.float32)),)
    return NAME_TO_FUNC[name](image, *args)


def distort_image_with_randaugment(image, num_layers, magnitude, cutout_const=40,
                                   translate_const=100, magnitude_policy="reference"):
    """RandAugment: `num_layers` times, apply one op chosen uniformly at random at magnitude M.

    Args:
      image: uint8 (H, W, C), C = 1 or 3 (static), one image (call it inside a tf.data map for a
        per-image choice).
      num_layers: N, the number of ops applied in sequence (the paper: 2).
      magnitude: M, a Python number >= 0 shared by all ops (the paper: 27; 10 = top of the
        original range).
      cutout_const, translate_const: Cutout pad and translation in pixels at M = 10. ImageNet:
        40 and 100 (the defaults); the reference's 32 px path: image_size // 8 for both.
      magnitude_policy: how Posterize and Solarize read M: "reference" (default; bit-for-bit what
        the reference's TF code computes, uint8 wrap-around above M = 10 included) or
        "increasing" (monotone in M, saturating). See _posterize_bits and _solarize_threshold.
    Returns:
      uint8 image of the same shape.
    """
    image = _check_uint8(image)
    for name in AVAILABLE_OPS:  # fail early, outside the graph, on a bad policy or magnitude
        level_to_arg(name, magnitude, cutout_const, translate_const, magnitude_policy)
    for layer in range(num_layers):
        with tf.name_scope(f"randaug_layer_{layer}"):
            op_index = tf.random.uniform([], maxval=len(AVAILABLE_OPS), dtype=tf.int32)
            branches = [
                lambda name=name, image=image: apply_op(image, name, magnitude, cutout_const,
                                                        translate_const, magnitude_policy)
                for name in AVAILABLE_OPS]
            out = tf.switch_case(op_index, branches)
            out.set_shape(image.shape)
            image = out
    return image


# ---------------------------------------------------------------------------------------------
# Real images for the grid, the tests and the benchmark.
# ---------------------------------------------------------------------------------------------
FASHION_MNIST_TEST_IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def load_fashion_mnist(count, path=FASHION_MNIST_TEST_IMAGES):
    """The first `count` images of an IDX image file, zero-padded 28 -> 32: uint8 (n, 32, 32, 1)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:4] != b"\x00\x00\x08\x03":
        raise ValueError(f"{path} is not an IDX file of uint8 images")
    num, rows, cols = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(num, rows, cols)[:count]
    return np.pad(images, [(0, 0), (2, 2), (2, 2)])[..., None]


def sample_photo_path():
    """A real colour photo shipped by an installed package (matplotlib's grace_hopper.jpg), or
    None if there is none."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                        "grace_hopper.jpg")
    return path if os.path.exists(path) else None


def load_photo(path, width):
    """The photo at `path` resized (Pillow, bicubic) to `width` pixels wide: uint8 (h, w, 3)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        height = round(photo.height * width / photo.width)
        return np.asarray(photo.resize((width, height), Image.BICUBIC))


# ---------------------------------------------------------------------------------------------
# Script: the grid picture.
# ---------------------------------------------------------------------------------------------
def op_grid(images, magnitudes, cutout_const, translate_const, magnitude_policy):
    """rows[op][image][magnitude] = uint8 array: each op at each magnitude on each image, with
    the positive sign for geometric ops. Cutout and translation constants per image."""
    rows = {}
    for name in AVAILABLE_OPS:
        rows[name] = [[NAME_TO_FUNC[name](image, *level_to_arg(
            name, m, cutout_const[i], translate_const[i], magnitude_policy)).numpy()
            for m in magnitudes] for i, image in enumerate(images)]
    return rows


def draw_grid(path, images, titles, rows, magnitudes, magnitude_policy):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    num_cols = len(images) * (len(magnitudes) + 1)
    fig, axes = plt.subplots(len(rows) + 1, num_cols,
                             figsize=(1.1 * num_cols, 1.15 * (len(rows) + 1)))
    for i, image in enumerate(images):
        col0 = i * (len(magnitudes) + 1)
        ax = axes[0, col0]
        ax.imshow(image.squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=7)
        for j, m in enumerate(magnitudes):
            axes[0, col0 + 1 + j].set_title(f"M={m}", fontsize=8)
        for r, name in enumerate(rows):
            axes[r + 1, col0].text(0.5, 0.5, name, ha="center", va="center", fontsize=8,
                                   transform=axes[r + 1, col0].transAxes)
            for j in range(len(magnitudes)):
                axes[r + 1, col0 + 1 + j].imshow(rows[name][i][j].squeeze(), cmap="gray",
                                                 vmin=0, vmax=255, interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(f"RandAugment ops at M = {', '.join(map(str, magnitudes))} "
                 f"(magnitude_policy={magnitude_policy}; geometric ops with the + sign).\n"
                 "32 px: translate = cutout const = 4 (image_size // 8); photo: the ImageNet "
                 "constants (100, 40 at 224 px) scaled to its width", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def define_flags():
    """Defined only when run as a script: importing this file registers no flags."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("output", None, "PNG file to write the grid to (required).")
    flags.DEFINE_list("magnitudes", ["0", "5", "10", "27"], "Magnitudes M, one grid column each.")
    flags.DEFINE_enum("magnitude_policy", "reference", list(MAGNITUDE_POLICIES),
                      "How Posterize and Solarize read M (see _posterize_bits).")
    flags.DEFINE_integer("fashion_mnist_index", 0, "Which Fashion-MNIST test image to show.")
    flags.DEFINE_integer("photo_width", 96, "Width in pixels the colour photo is resized to.")
    flags.DEFINE_integer("seed", 0, "TF seed (Cutout's random centre).")


def main(argv):
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    import data  # data.py imports this file: import it here, not at the top
    F = flags.FLAGS
    if len(argv) > 1:
        raise data.UserError(f"unexpected arguments {argv[1:]}")
    if not F.output:
        raise data.UserError("--output is required (a .png path)")
    try:
        magnitudes = [int(m) if float(m).is_integer() else float(m) for m in F.magnitudes]
    except ValueError:
        raise data.UserError(f"--magnitudes must be numbers, got {','.join(F.magnitudes)}")
    if any(m < 0 for m in magnitudes):
        raise data.UserError(f"--magnitudes must be >= 0, got {','.join(F.magnitudes)}")
    if not os.path.exists(FASHION_MNIST_TEST_IMAGES):
        raise data.UserError(f"missing file {FASHION_MNIST_TEST_IMAGES} (run setup.sh)")
    if not 0 <= F.fashion_mnist_index < 10000:
        raise data.UserError(f"--fashion_mnist_index must be in 0..9999, "
                             f"got {F.fashion_mnist_index}")
    if F.photo_width < 16:
        raise data.UserError(f"--photo_width must be >= 16, got {F.photo_width}")
    tf.random.set_seed(F.seed)
    images = [load_fashion_mnist(F.fashion_mnist_index + 1)[-1]]
    titles = [f"Fashion-MNIST #{F.fashion_mnist_index}"]
    photo = sample_photo_path()
    if photo is None:
        logging.warning("no colour photo found (matplotlib sample data); grid without it")
    else:
        images.append(load_photo(photo, F.photo_width))
        titles.append(os.path.basename(photo))
    # Translate / cutout constants as data.py passes them: image_size // 8 for 32 px images,
    # the ImageNet values scaled to the photo's width (100 and 40 at 224 px) for the photo.
    sizes = [image.shape[1] for image in images]
    translate_const = [s // 8 if s <= 32 else round(100 * s / 224) for s in sizes]
    cutout_const = [s // 8 if s <= 32 else round(40 * s / 224) for s in sizes]
    rows = op_grid(images, magnitudes, cutout_const, translate_const, F.magnitude_policy)
    with data.atomic_output(F.output) as tmp:
        draw_grid(tmp, images, titles, rows, magnitudes, F.magnitude_policy)
    logging.info("wrote %s: %d ops x %d magnitudes x %d images", F.output, len(rows),
                 len(magnitudes), len(images))


if __name__ == "__main__":
    import data as _data  # pylint: disable=import-outside-toplevel
    define_flags()
    _data.run_main(main)
