"""Benchmark input (issue 18): Fashion-MNIST as a researcher's image folders.

Writes the embedded run's split of --seed (400 labeled images per class, the other 56,000 of the
train set unlabeled, the 10,000 test images) as PNG files:
    OUT/labeled/<k>_<class>/<index>.png   one folder per class, sorted names = label order
    OUT/unlabeled/<index>.png             one flat pile, no label anywhere (names are train indices)
    OUT/test/<k>_<class>/<index>.png
so that `run_iterations.sh --dataset=folder` sees what `--dataset=fashion_mnist` sees and the two
runs can be compared (bench/noisy_student_folders.md). The PNGs hold the 32 px zero-padded images
the embedded records hold, so the comparison tests the folder path, not another resolution.

    python bench/fashion_mnist_folders.py --output_dir=/tmp/fmnist-folders [--seed=0]
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import data  # noqa: E402

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle-boot")


def export(output_dir, seed, num_labeled_per_class=400, source_dir=data.FASHION_MNIST_DIR):
    """Writes the three folders (under a temporary name, renamed when complete); returns counts."""
    train_images, train_labels = data.read_fashion_mnist(source_dir, "train")
    test_images, test_labels = data.read_fashion_mnist(source_dir, "test")
    labeled = data.select_labeled(train_labels, num_labeled_per_class, seed)
    unlabeled = np.setdiff1d(np.arange(len(train_labels)), labeled)
    splits = {"labeled": (train_images, train_labels, labeled),
              "unlabeled": (train_images, None, unlabeled),
              "test": (test_images, test_labels, np.arange(len(test_labels)))}
    with common.atomic_output(output_dir) as tmp:
        for split, (images, labels, indices) in splits.items():
            pngs = data.encode_png_batch(data.pad_fashion_mnist(images[indices]))
            for png, i in zip(pngs, indices):
                folder = os.path.join(tmp, split)
                if labels is not None:
                    folder = os.path.join(folder, f"{labels[i]}_{CLASSES[labels[i]]}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(png)
            logging.info("%s: %d PNGs", split, len(indices))
    return {split: len(indices) for split, (_, _, indices) in splits.items()}


def main(argv):
    del argv
    print(export(flags.FLAGS.output_dir, flags.FLAGS.seed))


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", None, "Where the labeled/, unlabeled/ and test/ folders go.")
    flags.DEFINE_integer("seed", 0, "The embedded run's --seed: which 400 images per class are "
                         "labeled.")
    flags.mark_flag_as_required("output_dir")
    app.run(main)
