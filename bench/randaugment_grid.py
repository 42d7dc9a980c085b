"""Every RandAugment op at a few magnitudes on real images (paper Sec. 3.1: N = 2, M = 27).

Images: one Fashion-MNIST test image padded to 32 px (prepare_data.read_fashion_mnist) and a colour photo
shipped with matplotlib (grace_hopper.jpg), resized with Pillow.

    python bench/randaugment_grid.py --output=bench/randaugment_grid.png
        -> a PNG grid: one row per op; columns = magnitudes 0, 5, 10, 27 for each image.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402  (first: it silences TensorFlow's start-up lines)
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import prepare_data  # noqa: E402
import randaugment  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                     "grace_hopper.jpg")

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "PNG file to write the grid to (required).")
flags.DEFINE_list("magnitudes", ["0", "5", "10", "27"], "Magnitudes M, one grid column each.")
flags.DEFINE_enum("magnitude_policy", "reference", list(randaugment.MAGNITUDE_POLICIES),
                  "How Posterize and Solarize read M (see randaugment._posterize_bits).")
flags.DEFINE_integer("fashion_mnist_index", 0, "Which Fashion-MNIST test image to show.")
flags.DEFINE_integer("photo_width", 96, "Width in pixels the colour photo is resized to.")
flags.DEFINE_integer("seed", 0, "Seed of Cutout's random centres.")


def load_photo(path, width):
    """The photo at `path` resized (Pillow, bicubic) to `width` pixels wide: uint8 (h, w, 3)."""
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        height = round(photo.height * width / photo.width)
        return np.asarray(photo.resize((width, height), Image.BICUBIC))


def op_grid(images, magnitudes, cutout_const, translate_const, magnitude_policy, seed):
    """rows[op][image][magnitude] = uint8 array: each op at each magnitude on each image, with
    the positive sign for geometric ops; Cutout's centre drawn from (seed, magnitude index).
    Cutout and translation constants per image."""
    rows = {}
    for name in randaugment.AVAILABLE_OPS:
        rows[name] = [[randaugment.NAME_TO_FUNC[name](image, *randaugment.level_to_arg(
            name, m, cutout_const[i], translate_const[i], magnitude_policy),
            **({"seed": [seed, j]} if name == "Cutout" else {})).numpy()
            for j, m in enumerate(magnitudes)] for i, image in enumerate(images)]
    return rows


def draw_grid(path, images, titles, rows, magnitudes, magnitude_policy):
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


def main(argv):
    if len(argv) > 1:
        raise common.UserError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.output:
        raise common.UserError("--output is required (a .png path)")
    try:
        magnitudes = [int(m) if float(m).is_integer() else float(m) for m in FLAGS.magnitudes]
    except ValueError:
        raise common.UserError(f"--magnitudes must be numbers, got {','.join(FLAGS.magnitudes)}")
    if any(m < 0 for m in magnitudes):
        raise common.UserError(f"--magnitudes must be >= 0, got {','.join(FLAGS.magnitudes)}")
    if not 0 <= FLAGS.fashion_mnist_index < 10000:
        raise common.UserError(f"--fashion_mnist_index must be in 0..9999, "
                               f"got {FLAGS.fashion_mnist_index}")
    if FLAGS.photo_width < 16:
        raise common.UserError(f"--photo_width must be >= 16, got {FLAGS.photo_width}")
    fashion, _ = prepare_data.read_fashion_mnist(prepare_data.FASHION_MNIST_DIR, "test")
    images = [prepare_data.pad_fashion_mnist(fashion[FLAGS.fashion_mnist_index][None])[0]]
    titles = [f"Fashion-MNIST #{FLAGS.fashion_mnist_index}"]
    if os.path.exists(PHOTO):
        images.append(load_photo(PHOTO, FLAGS.photo_width))
        titles.append(os.path.basename(PHOTO))
    else:
        logging.warning("no colour photo at %s; grid without it", PHOTO)
    # Translate / cutout constants as data.py passes them: image_size // 8 for 32 px images,
    # the ImageNet values scaled to the photo's width (100 and 40 at 224 px) for the photo.
    sizes = [image.shape[1] for image in images]
    translate_const = [s // 8 if s <= 32 else round(100 * s / 224) for s in sizes]
    cutout_const = [s // 8 if s <= 32 else round(40 * s / 224) for s in sizes]
    rows = op_grid(images, magnitudes, cutout_const, translate_const, FLAGS.magnitude_policy,
                   FLAGS.seed)
    with common.atomic_output(FLAGS.output) as tmp:
        draw_grid(tmp, images, titles, rows, magnitudes, FLAGS.magnitude_policy)
    logging.info("wrote %s: %d ops x %d magnitudes x %d images", FLAGS.output, len(rows),
                 len(magnitudes), len(images))


if __name__ == "__main__":
    common.run_main(main)
