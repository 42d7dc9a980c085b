"""Benchmark input (issue 18): Fashion-MNIST as a researcher's image folders.

Writes the embedded run's split of --seed (400 labeled images per class, or
--num_labeled_per_class, the rest of the train set unlabeled, the 10,000 test images) as PNG files:
    OUT/labeled/<k>_<class>/<index>.png   one folder per class, sorted names = label order
    OUT/unlabeled/<index>.png             one flat pile, no label anywhere (names are train indices)
    OUT/test/<k>_<class>/<index>.png
so that `run_iterations.sh --dataset=folder` sees what `--dataset=fashion_mnist` sees and the two
runs can be compared (bench/noisy_student_folders.md). The PNGs hold the 32 px zero-padded images
the embedded records hold, so the comparison tests the folder path, not another resolution.

    python bench/fashion_mnist_folders.py --output_dir=/tmp/fmnist-folders [--seed=0] \
        [--num_labeled_per_class=30]   # a small labeled set (bench/own_small_data.md)
    python bench/fashion_mnist_folders.py --score=WORKDIR   # pseudo-label accuracy of the run
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import data  # noqa: E402
import prepare_data  # noqa: E402

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle-boot")


def export(output_dir, seed, num_labeled_per_class=400, source_dir=prepare_data.FASHION_MNIST_DIR):
    """Writes the three folders (under a temporary name, renamed when complete); returns counts."""
    train_images, train_labels = prepare_data.read_fashion_mnist(source_dir, "train")
    test_images, test_labels = prepare_data.read_fashion_mnist(source_dir, "test")
    labeled = prepare_data.select_labeled(train_labels, num_labeled_per_class, seed)
    unlabeled = np.setdiff1d(np.arange(len(train_labels)), labeled)
    splits = {"labeled": (train_images, train_labels, labeled),
              "unlabeled": (train_images, None, unlabeled),
              "test": (test_images, test_labels, np.arange(len(test_labels)))}
    with common.atomic_output(output_dir) as tmp:
        for split, (images, labels, indices) in splits.items():
            pngs = prepare_data.encode_png_batch(prepare_data.pad_fashion_mnist(images[indices]))
            for png, i in zip(pngs, indices):
                folder = os.path.join(tmp, split)
                if labels is not None:
                    folder = os.path.join(folder, f"{labels[i]}_{CLASSES[labels[i]]}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(png)
            logging.info("%s: %d PNGs", split, len(indices))
    return {split: len(indices) for split, (_, _, indices) in splits.items()}


def score(workdir, source_dir=prepare_data.FASHION_MNIST_DIR):
    """Pseudo-label accuracy of a folder run's iterations, all images and after filter+balance
    (weighted by copies), from the PNG names (train indices): what report.py shows for the
    embedded run, whose records carry the true label, and cannot for a folder."""
    _, labels = prepare_data.read_fashion_mnist(source_dir, "train")
    rows = []
    for i in (1, 2, 3):
        row = [i]
        for part in ("labels", "filtered"):
            correct = total = 0
            for path in sorted(tf.io.gfile.glob(f"{workdir}/iter{i}/{part}/*.tfrecord")):
                for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
                    f = tf.train.Example.FromString(raw).features.feature
                    index = int(os.path.basename(f["image/id"].bytes_list.value[0]).split(b".")[0])
                    copies = f["copies"].int64_list.value[0] if "copies" in f else 1
                    correct += copies * int(labels[index] == f["label"].int64_list.value[0])
                    total += copies
            row.append(100 * correct / total)
        rows.append(row)
    return "\n".join(["| iteration | pseudo-label accuracy (all) | after filter+balance |",
                      "|---|---|---|"] + [f"| {i} | {a:.2f} | {b:.2f} |" for i, a, b in rows])


def main(argv):
    del argv
    if flags.FLAGS.score:
        print(score(flags.FLAGS.score))
    else:
        print(export(flags.FLAGS.output_dir, flags.FLAGS.seed, flags.FLAGS.num_labeled_per_class))


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", "", "Where the labeled/, unlabeled/ and test/ folders go.")
    flags.DEFINE_integer("seed", 0, "The embedded run's --seed: which 400 images per class are "
                         "labeled.")
    flags.DEFINE_integer("num_labeled_per_class", 400, "Labeled images per class (the rest of the "
                         "train set is the unlabeled pile).")
    flags.DEFINE_string("score", "", "Instead: a finished folder run's workdir, whose pseudo-labels "
                        "are scored against the true labels (a markdown table).")
    app.run(main)
