"""randaugment.py against independent Pillow implementations, on real images.

Images: Fashion-MNIST test images (padded to 32 px, 1 channel) and a colour photo shipped with
matplotlib (3 channels), each also in a dimmed copy so that AutoContrast has work to do. Tests on
the photo skip (only) if no installed package ships one.

Tolerance per op against Pillow (max absolute difference of uint8 values):
- exact: Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness, Cutout,
  Rotate, ShearX/Y, TranslateX/Y, and Color / Contrast on 1-channel images.
- AutoContrast: 1, and only where the exact stretched value (v - lo) * 255 / (hi - lo) is an
  integer: the reference computes v * scale + offset in float32, Pillow in float64, and the two
  round errors put such values on either side of the integer before truncation (e.g. lo=5, hi=255,
  v=155 -> 153 exactly: float32 gives 152, Pillow 153; lo=2, v=255: Pillow gives 254).
- Sharpness: ceil(|1 - f|) at blend factor f. The smoothed image (same kernel, same untouched
  border) is truncated by the reference (and so by us) and rounded by Pillow: it differs by at most
  1, and the blend scales that difference by |1 - f| (f = 0.1 at M = 0, 4.96 at M = 27).
- Color and Contrast on RGB: ceil(|1 - f|). The reference's grey is tf.image.rgb_to_grayscale
  (weights 0.2989/0.587/0.114, x 255.5 then truncated), which is 0 or 1 below Pillow's "L"
  (integer 0.299/0.587/0.114, rounded); Contrast blends towards the mean of that grey.
- Rotate, ShearX/Y, TranslateX/Y: exact except at rounding ties. They are compared with
  Pillow's transform of the same map: Pillow samples at pixel centres (x + 0.5) and floors, TF at
  pixel indices and rounds, so the affine matrix is conjugated by the half-pixel shift
  (Image.rotate already rotates about the centre and needs nothing), with the float32-rounded
  arguments TF computes with. Where the source coordinate is exactly k + 0.5 (e.g. shear 0.15 at
  row 10), TF rounds half away from zero while Pillow's 16.16 fixed-point arithmetic lands just
  below the tie: only those pixels may differ (at most a few rows or columns).
"""
import math
import os

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
import pytest
import tensorflow as tf

import prepare_data
import randaugment as ra

MAGNITUDES = (0, 3, 5, 10, 23, 27)
SEED = (0, 0)  # the [2] seed of the random draws, where a test needs one but not a particular one
EXACT_OPS = ("Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd",
             "Brightness", "Cutout")
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
BLEND_OPS = ("Color", "Contrast", "Sharpness")


# ---------------------------------------------------------------------------------------------
# Real images.
# ---------------------------------------------------------------------------------------------
def _dimmed(image):
    return (image // 2 + 60).astype(np.uint8)  # range ~[60, 187]: AutoContrast stretches it


@pytest.fixture(scope="module")
def fashion_images():
    """The first 16 Fashion-MNIST test images, padded to (32, 32, 1)."""
    images, _ = prepare_data.read_fashion_mnist(prepare_data.FASHION_MNIST_DIR, "test")
    return prepare_data.pad_fashion_mnist(images[:16])


@pytest.fixture(scope="module")
def fashion(fashion_images):
    images = fashion_images
    return [images[0], images[3], images[7], _dimmed(images[1])]


@pytest.fixture(scope="module")
def photo_image():
    """matplotlib's grace_hopper.jpg resized (Pillow, bicubic) to 72 px wide: (84, 72, 3)."""
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                        "grace_hopper.jpg")
    if not os.path.exists(path):
        pytest.skip("no colour photo shipped by an installed package (matplotlib sample data)")
    with Image.open(path) as photo:
        return np.asarray(photo.convert("RGB").resize((72, 84), Image.BICUBIC))


@pytest.fixture(scope="module")
def photo(photo_image):
    return [photo_image, _dimmed(photo_image[10:50, 20:60])]


@pytest.fixture(params=["fashion", "photo"])
def images(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------
# Pillow: the independent implementation of each op.
# ---------------------------------------------------------------------------------------------
def to_pil(image):
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def fill_of(image):
    return 128 if image.shape[-1] == 1 else (128, 128, 128)


def pil_affine(pil, image, a, b, c, d, e, f):
    """Pillow transform for the map input_index = round(M . output_index): conjugate by the
    half-pixel shift (Pillow reads floor(M' . (x + 0.5, y + 0.5))), float32 arguments."""
    a, b, c, d, e, f = (float(np.float32(v)) for v in (a, b, c, d, e, f))
    data = (a, b, c + 0.5 - 0.5 * a - 0.5 * b, d, e, f + 0.5 - 0.5 * d - 0.5 * e)
    return pil.transform(pil.size, Image.AFFINE, data, Image.NEAREST, fillcolor=fill_of(image))


def affine_of(name, arg):
    """The op's map input = M . output (pixel indices) as (a, b, c, d, e, f)."""
    return {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
            "TranslateX": (1, 0, arg, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, arg)}[name]


def rounding_ties(image, name, arg):
    """Output pixels whose source coordinate is (within float32 error of) k + 0.5."""
    h, w = image.shape[:2]
    if name == "Rotate":  # about the centre of the pixel grid, as Image.rotate
        t, cx, cy = math.radians(arg), (w - 1) / 2, (h - 1) / 2
        cos, sin = math.cos(t), math.sin(t)
        a, b, c, d, e, f = cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy
    else:
        a, b, c, d, e, f = (float(np.float32(v)) for v in affine_of(name, arg))
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    tie = lambda v: np.abs(v - np.floor(v) - 0.5) < 2e-3  # noqa: E731
    return tie(a * xs + b * ys + c) | tie(d * xs + e * ys + f)


def pil_cutout(pil, image, pad, center):
    out = pil.copy()
    cy, cx = center
    if pad > 0:
        ImageDraw.Draw(out).rectangle([cx - pad, cy - pad, cx + pad - 1, cy + pad - 1],
                                      fill=fill_of(image))
    return out


def pillow_op(name, image, *args, center=None):
    pil = to_pil(image)
    arg = args[0] if args else None
    ops = {
        "AutoContrast": lambda: ImageOps.autocontrast(pil),
        "Equalize": lambda: ImageOps.equalize(pil),
        "Invert": lambda: ImageOps.invert(pil),
        "Rotate": lambda: pil.rotate(arg, resample=Image.NEAREST, fillcolor=fill_of(image)),
        "Posterize": lambda: ImageOps.posterize(pil, arg),
        "Solarize": lambda: ImageOps.solarize(pil, arg),
        "SolarizeAdd": lambda: pil.point(lambda v: min(255, v + arg) if v < 128 else v),
        "Color": lambda: ImageEnhance.Color(pil).enhance(arg),
        "Contrast": lambda: ImageEnhance.Contrast(pil).enhance(arg),
        "Brightness": lambda: ImageEnhance.Brightness(pil).enhance(arg),
        "Sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(arg),
        "ShearX": lambda: pil_affine(pil, image, *affine_of(name, arg)),
        "ShearY": lambda: pil_affine(pil, image, *affine_of(name, arg)),
        "TranslateX": lambda: pil_affine(pil, image, *affine_of(name, arg)),
        "TranslateY": lambda: pil_affine(pil, image, *affine_of(name, arg)),
        "Cutout": lambda: pil_cutout(pil, image, arg, center),
    }
    return np.asarray(ops[name]()).reshape(image.shape)


def autocontrast_integer_points(image):
    """Pixels whose exact AutoContrast value is an integer (per channel min lo, max hi)."""
    v = image.astype(np.int64)
    lo, hi = v.min(axis=(0, 1)), v.max(axis=(0, 1))
    return ((v - lo) * 255) % np.maximum(hi - lo, 1) == 0


def tolerance(name, args, channels):
    if name == "AutoContrast":
        return 1  # at exact-integer points only, checked in the test
    if name in EXACT_OPS + GEOMETRIC_OPS or (name in ("Color", "Contrast") and channels == 1):
        return 0
    return math.ceil(abs(1.0 - args[0]))


def op_cases(name, image, policy="reference"):
    """(args, kwargs) to compare at every magnitude: both signs for geometric ops, three
    centres (two clipped by the border) for Cutout."""
    h, w = image.shape[:2]
    for m in MAGNITUDES:
        consts = dict(cutout_const=h // 8, translate_const=w // 8) if h <= 32 else \
            dict(cutout_const=12, translate_const=30)
        args = ra.level_to_arg(name, m, magnitude_policy=policy, **consts)
        if name in ra.SIGNED_OPS:
            yield m, args, {}
            yield m, (-args[0],), {}
        elif name == "Cutout":
            for center in [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]:
                yield m, args, {"center": center}
        else:
            yield m, args, {}


# ---------------------------------------------------------------------------------------------
# Every op = Pillow.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ra.AVAILABLE_OPS)
def test_op_matches_pillow(name, images):
    changed = False
    for image in images:
        for m, args, kwargs in op_cases(name, image):
            ours = ra.NAME_TO_FUNC[name](image, *args, **kwargs).numpy()
            theirs = pillow_op(name, image, *args, **kwargs)
            assert ours.dtype == np.uint8 and ours.shape == image.shape
            if name in GEOMETRIC_OPS:
                ties = rounding_ties(image, name, args[0])
                mismatch = np.any(ours != theirs, axis=-1)
                assert not np.any(mismatch & ~ties), f"{name} M={m} {args}: differs off ties"
                assert ties.mean() < 0.15, f"{name} M={m}: too many ties for a meaningful test"
                ours, theirs = ours[~ties], theirs[~ties]
            if name == "AutoContrast":
                assert np.all((ours == theirs) | autocontrast_integer_points(image)), name
            diff = np.abs(ours.astype(int) - theirs.astype(int)).max()
            tol = tolerance(name, args, image.shape[-1])
            assert diff <= tol, f"{name} M={m} args={args} {kwargs}: max diff {diff} > {tol}"
            changed |= not np.array_equal(ours, image)
    if not (name == "Color" and images[0].shape[-1] == 1):  # grey Color is the identity
        assert changed, f"{name} never changed an image: the comparison proves nothing"


@pytest.mark.parametrize("name", ["Posterize", "Solarize"])
def test_increasing_policy_matches_pillow(name, images):
    for image in images:
        for m, args, _ in op_cases(name, image, policy="increasing"):
            ours = ra.NAME_TO_FUNC[name](image, *args).numpy()
            np.testing.assert_array_equal(ours, pillow_op(name, image, *args), err_msg=f"M={m}")


def test_sharpness_is_not_exact_only_by_rounding(photo):
    """The stated Sharpness tolerance is tight: the difference does occur, and only where the
    smoothed value's fraction decides (so the truncation/rounding explanation holds)."""
    image = photo[0]
    ours = ra.sharpness(image, 0.1).numpy().astype(int)
    theirs = pillow_op("Sharpness", image, 0.1).astype(int)
    assert 0 < np.abs(ours - theirs).max() <= 1
    assert np.array_equal(ours[0], image[0]) and np.array_equal(ours[:, -1], image[:, -1])  # border


# ---------------------------------------------------------------------------------------------
# Magnitude map.
# ---------------------------------------------------------------------------------------------
def test_level_to_arg_reference_formulas():
    arg = ra.level_to_arg
    assert arg("Rotate", 27) == pytest.approx((81.0,))
    assert arg("ShearX", 10) == pytest.approx((0.3,))
    assert arg("TranslateY", 27, translate_const=4) == pytest.approx((10.8,))
    assert arg("TranslateX", 10) == pytest.approx((100.0,))
    assert arg("Cutout", 27, cutout_const=4) == (10,)
    assert arg("Cutout", 10) == (40,)
    assert arg("SolarizeAdd", 27) == (297,)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert arg(name, 0) == pytest.approx((0.1,))
        assert arg(name, 5) == (1.0,)
        assert arg(name, 27) == pytest.approx((4.96,))
    for name in ("AutoContrast", "Equalize", "Invert"):
        assert arg(name, 27) == ()


@pytest.mark.parametrize("policy,magnitude,bits,threshold", [
    ("reference", 0, 1, 0), ("reference", 3, 1, 76), ("reference", 5, 2, 128),
    ("reference", 10, 4, 0), ("reference", 20, 8, 0), ("reference", 22, 8, 51),
    ("reference", 23, 1, 76), ("reference", 27, 1, 179),
    ("increasing", 0, 8, 256), ("increasing", 5, 6, 128), ("increasing", 10, 4, 0),
    ("increasing", 15, 2, 0), ("increasing", 27, 1, 0)])
def test_posterize_solarize_policies(policy, magnitude, bits, threshold):
    assert ra.level_to_arg("Posterize", magnitude, magnitude_policy=policy) == (bits,)
    assert ra.level_to_arg("Solarize", magnitude, magnitude_policy=policy) == (threshold,)


@pytest.mark.parametrize("magnitude", [0, 2, 5, 10, 20, 23, 27])
def test_reference_policy_is_what_the_reference_expressions_compute_on_tf(magnitude, fashion,
                                                                         photo):
    """The reference's posterize and solarize expressions, evaluated by TF with its Python-int
    arguments (uint8 wrap-around, shifts clamped to 7), equal our ops at the "reference" args."""
    for image in fashion + photo:
        x = tf.constant(image)
        shift = 8 - int((magnitude / 10.0) * 4)
        expected = tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift)
        bits, = ra.level_to_arg("Posterize", magnitude)
        np.testing.assert_array_equal(ra.posterize(x, bits), expected)
        expected = tf.where(x < int((magnitude / 10.0) * 256), x, 255 - x)
        threshold, = ra.level_to_arg("Solarize", magnitude)
        np.testing.assert_array_equal(ra.solarize(x, threshold), expected)


def test_bad_arguments_are_rejected(fashion):
    with pytest.raises(ValueError, match="magnitude_policy"):
        ra.distort_image_with_randaugment(fashion[0], 2, 10, SEED, magnitude_policy="clip")
    with pytest.raises(ValueError, match="magnitude"):
        ra.distort_image_with_randaugment(fashion[0], 2, -1, SEED)
    with pytest.raises(ValueError, match="uint8"):
        ra.distort_image_with_randaugment(fashion[0].astype(np.float32), 2, 10, SEED)
    with pytest.raises(ValueError, match="a center or a seed"):
        ra.cutout(fashion[0], 4)
    with pytest.raises(ValueError, match="shape"):
        ra.invert(np.zeros([8, 8, 2], np.uint8))


# ---------------------------------------------------------------------------------------------
# Identities.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,magnitude,policy", [
    ("Rotate", 0, "reference"), ("ShearX", 0, "reference"), ("ShearY", 0, "reference"),
    ("TranslateX", 0, "reference"), ("TranslateY", 0, "reference"), ("Cutout", 0, "reference"),
    ("SolarizeAdd", 0, "reference"), ("Posterize", 0, "increasing"),
    ("Solarize", 0, "increasing"), ("Posterize", 20, "reference"),
    ("Color", 5, "reference"), ("Contrast", 5, "reference"), ("Brightness", 5, "reference"),
    ("Sharpness", 5, "reference")])
def test_identity_magnitudes(name, magnitude, policy, images):
    for image in images:
        for k in range(4):  # both random signs, likely
            out = ra.apply_op(image, name, magnitude, (k, 0), magnitude_policy=policy).numpy()
            np.testing.assert_array_equal(out, image)


@pytest.mark.slow
@pytest.mark.parametrize("name", ra.AVAILABLE_OPS)
def test_one_channel_equals_the_op_on_the_grey_rgb_copy(name, fashion):
    """The reference is RGB-only; on 1 channel each op equals its RGB version on the grey RGB
    copy (all three output channels equal to ours), so grey images lose nothing."""
    for image in fashion:
        rgb = np.repeat(image, 3, axis=-1)
        for m in (0, 10, 27):
            args = ra.level_to_arg(name, m, cutout_const=4, translate_const=4)
            kwargs = {"center": (3, 9)} if name == "Cutout" else {}
            grey = ra.NAME_TO_FUNC[name](image, *args, **kwargs).numpy()
            colour = ra.NAME_TO_FUNC[name](rgb, *args, **kwargs).numpy()
            np.testing.assert_array_equal(colour, np.repeat(grey, 3, axis=-1), err_msg=f"M={m}")


def test_zero_layers_is_the_identity(fashion):
    np.testing.assert_array_equal(ra.distort_image_with_randaugment(fashion[0], 0, 27, SEED),
                                  fashion[0])


# ---------------------------------------------------------------------------------------------
# Graph mode (tf.data), per-image choice, channels, M = 27.
# ---------------------------------------------------------------------------------------------
def possible_ops(image, out, magnitude, consts):
    """The ops whose application to `image` at `magnitude` gives `out` (either sign; any centre
    for Cutout)."""
    names = set()
    for name in ra.AVAILABLE_OPS:
        args = ra.level_to_arg(name, magnitude, **consts)
        if name == "Cutout":
            changed = np.argwhere(np.any(out != image, axis=-1))
            if len(changed) == 0:
                names.add(name)  # a square over pixels that were 128 already
                continue
            (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
            if max(y1 - y0, x1 - x0) < 2 * args[0] and np.all(out[y0:y1 + 1, x0:x1 + 1] == 128) \
                    and np.array_equal(out[out != image], np.full((out != image).sum(), 128)):
                names.add(name)
            continue
        candidates = [args] if name not in ra.SIGNED_OPS else [args, (-args[0],)]
        if any(np.array_equal(ra.NAME_TO_FUNC[name](image, *a).numpy(), out) for a in candidates):
            names.add(name)
    return frozenset(names)


@pytest.mark.slow
@pytest.mark.parametrize("batched", [False, True])
def test_op_choice_varies_per_image_within_a_batch(fashion, batched):
    """64 copies of one image in tf.data (graph mode), N = 1, either mapped per image and then
    batched, or batched (unknown batch dimension) and then distorted as a batch: every output is
    one op's result (= the single-image op exactly) and the batch holds many different ops (one
    choice per batch would give 1)."""
    image, consts, magnitude = fashion[1], dict(cutout_const=4, translate_const=4), 10
    ds = tf.data.Dataset.from_tensors(image).repeat(64)
    if batched:
        ds = ds.batch(64).map(lambda x: ra.distort_batch_with_randaugment(x, 1, magnitude, SEED,
                                                                          **consts))
        assert ds.element_spec.shape.as_list() == [None, 32, 32, 1]
    else:  # image i with the seed (0, i)
        ds = ds.enumerate().map(lambda i, x: ra.distort_image_with_randaugment(
            x, 1, magnitude, tf.stack([tf.constant(0, tf.int64), i]), **consts),
            num_parallel_calls=tf.data.AUTOTUNE).batch(64)
    batch = next(iter(ds)).numpy()
    explained = [possible_ops(image, out, magnitude, consts) for out in batch]
    assert all(explained), "an output no single op explains"
    assert len(set(explained)) >= 8, f"only {len(set(explained))} different ops in the batch"


@pytest.mark.slow
def test_random_sign_varies(fashion):
    image = fashion[0]
    ds = tf.data.Dataset.from_tensors(image).repeat(32).enumerate().map(
        lambda i, x: ra.apply_op(x, "TranslateX", 10, tf.stack([tf.constant(0, tf.int64), i]),
                                 translate_const=4)).batch(32)
    outs = {out.tobytes() for out in next(iter(ds)).numpy()}
    expected = {ra.translate_x(image, s).numpy().tobytes() for s in (4.0, -4.0)}
    assert outs == expected


@pytest.mark.slow
@pytest.mark.parametrize("magnitude,policy", [(0, "reference"), (10, "reference"),
                                              (27, "reference"), (27, "increasing")])
def test_randaugment_in_tf_data_keeps_dtype_and_shape(magnitude, policy, images):
    """Graph mode in a tf.data map, N = 2, on 1- and 3-channel images, also at M = 27 and
    with unknown spatial size (images of different sizes in one dataset)."""
    def gen():
        yield from images
    ds = tf.data.Dataset.from_generator(
        gen, output_signature=tf.TensorSpec([None, None, images[0].shape[-1]], tf.uint8))
    ds = ds.enumerate().map(lambda i, x: ra.distort_image_with_randaugment(
        x, 2, magnitude, tf.stack([tf.constant(0, tf.int64), i]), cutout_const=4,
        translate_const=4, magnitude_policy=policy), num_parallel_calls=2)
    outs = list(ds.as_numpy_iterator())
    assert len(outs) == len(images)
    for image, out in zip(images, outs):
        assert out.dtype == np.uint8 and out.shape == image.shape


@pytest.mark.slow
@pytest.mark.parametrize("name", ra.AVAILABLE_OPS)
def test_every_op_in_a_tf_data_map_equals_eager(name, fashion, photo):
    for image in (fashion[0], photo[0]):
        args = ra.level_to_arg(name, 27, cutout_const=4, translate_const=4)
        kwargs = {"center": (5, 7)} if name == "Cutout" else {}
        eager = ra.NAME_TO_FUNC[name](image, *args, **kwargs).numpy()
        ds = tf.data.Dataset.from_tensors(image).map(
            lambda x: ra.NAME_TO_FUNC[name](x, *args, **kwargs))  # noqa: B023 (used at once)
        np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


# ---------------------------------------------------------------------------------------------
# Batch ops: the same op on a batch (B, H, W, C) = the single-image op on each image, stacked.
# ---------------------------------------------------------------------------------------------
# At 4.3, 9.2 and 15 (Rotate 12.9, 27.6 and 45 degrees) TF's float32 sin/cos of a vector differ
# from those of a scalar in the last bit, and at 45 degrees that moves pixels (see rotate).
BATCH_MAGNITUDES = (0, 4.3, 5, 9.2, 10, 15, 27)


@pytest.fixture(scope="module")
def fashion_batch(fashion_images):
    """16 Fashion-MNIST images (32, 32, 1), every fourth dimmed."""
    images = fashion_images.copy()
    images[::4] = _dimmed(images[::4])
    return images


@pytest.fixture(scope="module")
def photo_batch(photo_image):
    """16 crops (40, 40, 3) of the colour photo at different offsets, every fourth dimmed."""
    image = photo_image
    crops = np.stack([image[2 * i:2 * i + 40, i:i + 40] for i in range(16)])
    crops[::4] = _dimmed(crops[::4])
    return crops


@pytest.fixture(params=["fashion_batch", "photo_batch"])
def batch(request):
    return request.getfixturevalue(request.param)


def per_image_cases(name, batch, same_magnitude):
    """[(args, kwargs)] for each image, and the same as batch arguments (one value per image).

    same_magnitude=M: every image at M (as in a RandAugment layer), alternating signs for
    geometric ops. same_magnitude=None: the magnitude cycles through BATCH_MAGNITUDES over the
    images. Cutout: a different centre per image, some clipped by the border.
    """
    size, height, width = batch.shape[:3]
    consts = dict(cutout_const=4, translate_const=4) if height <= 32 else \
        dict(cutout_const=12, translate_const=30)
    magnitudes = [same_magnitude if same_magnitude is not None else
                  BATCH_MAGNITUDES[i % len(BATCH_MAGNITUDES)] for i in range(size)]
    args = [ra.level_to_arg(name, m, **consts) for m in magnitudes]
    if name in ra.SIGNED_OPS:
        args = [(a[0] * (-1) ** i,) for i, a in enumerate(args)]
    kwargs = [{}] * size
    if name == "Cutout":
        kwargs = [{"center": ((7 * i) % height, (height - 5 * i) % width)} for i in range(size)]
    batch_args = tuple(np.array(column) for column in zip(*args))
    batch_kwargs = {}
    if name == "Cutout":
        batch_kwargs = {"center": tuple(np.array(c) for c in zip(*(k["center"] for k in kwargs)))}
    return list(zip(args, kwargs)), batch_args, batch_kwargs


@pytest.mark.slow
@pytest.mark.parametrize("same_magnitude", [0, 5, 10, 15, 27, None])
@pytest.mark.parametrize("name", ra.AVAILABLE_OPS)
def test_batch_op_equals_the_single_image_op_stacked(name, same_magnitude, batch):
    """Exact uint8 equality, eagerly and in a graph with an unknown batch dimension."""
    op = ra.NAME_TO_FUNC[name]
    cases, batch_args, batch_kwargs = per_image_cases(name, batch, same_magnitude)
    expected = np.stack([op(image, *args, **kwargs).numpy()
                         for image, (args, kwargs) in zip(batch, cases)])
    eager = op(batch, *batch_args, **batch_kwargs).numpy()
    assert eager.dtype == np.uint8 and eager.shape == batch.shape
    np.testing.assert_array_equal(eager, expected)
    graph_op = tf.function(lambda images: op(images, *batch_args, **batch_kwargs),
                           input_signature=[tf.TensorSpec((None,) + batch.shape[1:], tf.uint8)])
    np.testing.assert_array_equal(graph_op(batch).numpy(), expected)
    if not (name == "Color" and batch.shape[-1] == 1):  # grey Color is the identity
        assert not np.array_equal(expected, batch) or same_magnitude in (0, 5), \
            f"{name} changed no image: the comparison proves little"


@pytest.mark.slow
@pytest.mark.parametrize("name", ra.AVAILABLE_OPS)
def test_batch_op_takes_shared_scalar_arguments_and_an_empty_batch(name, fashion_batch):
    op = ra.NAME_TO_FUNC[name]
    args = ra.level_to_arg(name, 10, cutout_const=4, translate_const=4)
    kwargs = {"center": (5, 20)} if name == "Cutout" else {}
    expected = np.stack([op(image, *args, **kwargs).numpy() for image in fashion_batch[:4]])
    np.testing.assert_array_equal(op(fashion_batch[:4], *args, **kwargs).numpy(), expected)
    empty = op(fashion_batch[:0], *args, **kwargs).numpy()
    assert empty.shape == (0, 32, 32, 1) and empty.dtype == np.uint8


def test_sharpness_smooths_as_the_reference_valid_convolution(batch):
    """At factor 0 Sharpness returns its smoothed image: on the interior exactly the reference's
    "VALID" depthwise convolution, truncated; on the one-pixel border the image itself."""
    channels = batch.shape[-1]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(batch, tf.float32), kernel, [1, 1, 1, 1], "VALID")
    expected = batch.copy()
    expected[:, 1:-1, 1:-1] = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8).numpy()
    np.testing.assert_array_equal(ra.sharpness(batch, 0.0).numpy(), expected)
    np.testing.assert_array_equal(ra.sharpness(batch[3], 0.0).numpy(), expected[3])


def test_cutout_on_a_batch_draws_a_centre_per_image():
    """As data.py calls it after batching: each image gets one clipped 16 x 16 square of 128 at
    its own random centre."""
    images = np.zeros([64, 32, 32, 1], np.uint8)
    out = ra.cutout(images, pad_size=8, replace=128, seed=SEED).numpy()
    assert out.shape == images.shape and set(np.unique(out)) <= {0, 128}
    boxes = set()
    for square in out[..., 0] == 128:
        rows, cols = np.flatnonzero(square.any(1)), np.flatnonzero(square.any(0))
        assert len(rows) and len(cols), "an image without a square"
        (y0, y1), (x0, x1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
        assert square[y0:y1, x0:x1].all() and square.sum() == (y1 - y0) * (x1 - x0)
        for lo, hi in ((y0, y1), (x0, x1)):  # 16 wide unless clipped by the border
            assert hi - lo == 16 or (lo == 0 and 8 <= hi < 16) or (hi == 32 and 16 < lo < 24)
        boxes.add((y0, y1, x0, x1))
    assert len(boxes) >= 32, f"only {len(boxes)} different squares in 64 images"


# ---------------------------------------------------------------------------------------------
# distort_batch_with_randaugment.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("magnitude,policy", [(0, "reference"), (10, "reference"),
                                              (27, "reference"), (27, "increasing")])
def test_distort_batch_keeps_dtype_and_shape(magnitude, policy, batch):
    out = ra.distort_batch_with_randaugment(batch, 2, magnitude, SEED, cutout_const=4,
                                            translate_const=4, magnitude_policy=policy)
    assert out.dtype == tf.uint8 and out.shape == batch.shape


def test_distort_batch_zero_layers_is_the_identity(fashion_batch):
    np.testing.assert_array_equal(ra.distort_batch_with_randaugment(fashion_batch, 0, 27, SEED),
                                  fashion_batch)


def identify_op(image, magnitude, consts):
    """A function out -> (op name, sign) for the outputs of one layer on `image`, after
    checking that every (op, sign) gives a different output (Cutout: by its square of 128)."""
    outputs = {}
    for name in ra.AVAILABLE_OPS:
        if name == "Cutout":
            continue
        args = ra.level_to_arg(name, magnitude, **consts)
        for sign in ((1, -1) if name in ra.SIGNED_OPS else (1,)):
            signed = (sign * args[0],) + args[1:] if args else args
            key = ra.NAME_TO_FUNC[name](image, *signed).numpy().tobytes()
            assert key not in outputs, f"{name} {sign} = {outputs[key]} on this image"
            outputs[key] = (name, sign)
    pad = ra.level_to_arg("Cutout", magnitude, **consts)[0]

    def identify(out):
        if out.tobytes() in outputs:
            return outputs[out.tobytes()]
        changed = np.argwhere(np.any(out != image, axis=-1))
        (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
        assert max(y1 - y0, x1 - x0) < 2 * pad and np.all(out[out != image] == 128), \
            "an output no single op explains"
        return ("Cutout", 1)
    return identify


def test_distort_batch_op_choice_and_sign_are_uniform(fashion):
    """One layer on 2048 copies of one image (seeded): the 16 ops are chosen uniformly
    (chi-square, 15 degrees of freedom, p = 0.001) and each geometric op's sign is drawn per
    image, balanced (chi-square, 5 degrees of freedom, p = 0.001).
    M = 7 and a dimmed image make every (op, sign) give a different output."""
    image, consts, magnitude = _dimmed(fashion[0]), dict(cutout_const=4, translate_const=4), 7
    identify = identify_op(image, magnitude, consts)
    batch = np.repeat(image[None], 2048, axis=0)
    outs = ra.distort_batch_with_randaugment(batch, 1, magnitude, (1234, 0), **consts).numpy()
    chosen = [identify(out) for out in outs]
    counts = np.array([sum(name == op for name, _ in chosen) for op in ra.AVAILABLE_OPS])
    expected = len(outs) / len(ra.AVAILABLE_OPS)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 37.7, f"op counts {dict(zip(ra.AVAILABLE_OPS, counts))}, chi2 = {chi2:.1f}"
    signs = {op: np.array([sign for name, sign in chosen if name == op]) for op in ra.SIGNED_OPS}
    chi2 = sum(s.sum() ** 2 / len(s) for s in signs.values())  # 5 degrees of freedom
    assert chi2 < 20.5, {op: (np.sum(s > 0), np.sum(s < 0)) for op, s in signs.items()}


@pytest.mark.slow
def test_distort_batch_of_one_and_of_none(fashion):
    consts, magnitude = dict(cutout_const=4, translate_const=4), 10
    one = ra.distort_batch_with_randaugment(fashion[1][None], 1, magnitude, SEED,
                                            **consts).numpy()
    assert one.shape == (1, 32, 32, 1) and possible_ops(fashion[1], one[0], magnitude, consts)
    empty = np.zeros([0, 32, 32, 1], np.uint8)
    out = ra.distort_batch_with_randaugment(empty, 2, magnitude, SEED, **consts)
    assert out.shape == (0, 32, 32, 1) and out.dtype == tf.uint8
    graph = tf.function(lambda x: ra.distort_batch_with_randaugment(x, 2, 27, SEED, **consts),
                        input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.uint8)])
    assert graph(empty).shape == (0, 32, 32, 1)
    assert graph(fashion[1][None]).shape == (1, 32, 32, 1)


@pytest.mark.slow
def test_distort_batch_in_tf_data_with_a_partial_last_batch(batch):
    """.batch(6).map(...) over 16 images: batches of 6, 6 and 4 with an unknown batch
    dimension at graph-build time; N = 2, M = 27."""
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(6).enumerate().map(
        lambda i, x: ra.distort_batch_with_randaugment(
            x, 2, 27, tf.stack([tf.constant(0, tf.int64), i]), cutout_const=4, translate_const=4),
        num_parallel_calls=2)
    assert ds.element_spec.shape.as_list() == [None] + list(batch.shape[1:])
    outs = list(ds.as_numpy_iterator())
    assert [len(out) for out in outs] == [6, 6, 4]
    assert all(out.dtype == np.uint8 and out.shape[1:] == batch.shape[1:] for out in outs)
    assert not np.array_equal(np.concatenate(outs), batch)


def test_distort_batch_rejects_bad_arguments(fashion_batch):
    with pytest.raises(ValueError, match="shape"):
        ra.distort_batch_with_randaugment(fashion_batch[0], 2, 10, SEED)  # one image, not a batch
    with pytest.raises(ValueError, match="shape"):
        ra.distort_image_with_randaugment(fashion_batch, 2, 10, SEED)  # a batch, not one image
    with pytest.raises(ValueError, match="uint8"):
        ra.distort_batch_with_randaugment(fashion_batch.astype(np.float32), 2, 10, SEED)
    with pytest.raises(ValueError, match="magnitude_policy"):
        ra.distort_batch_with_randaugment(fashion_batch, 2, 10, SEED, magnitude_policy="clip")
    with pytest.raises(ValueError, match="magnitude"):
        ra.distort_batch_with_randaugment(fashion_batch, 2, -1, SEED)
