"""Diagnostic: top-1 of a model dir's EMA weights (what every stage uses) against its raw weights.

  python bench/ema_vs_raw.py MODEL_DIR [MODEL_DIR ...]   # Fashion-MNIST test split in data/fashion_mnist
Prints one line per model dir and weight set. Results: bench/ema_vs_raw.md.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tensorflow as tf  # pylint: disable=wrong-import-position

import data  # pylint: disable=wrong-import-position
import efficientnet_builder  # pylint: disable=wrong-import-position
import main  # pylint: disable=wrong-import-position


def top1(model_dir, use_ema, test_pattern="data/fashion_mnist/test/*"):
    info = data.DATASETS["fashion_mnist"]
    model, config = efficientnet_builder.load_model_dir(model_dir, use_ema=use_ema)
    dataset = data.labeled_dataset(test_pattern, info, config["image_size"], 256, is_training=False)
    return main.evaluate(tf.distribute.get_strategy(), model, dataset, info.num_classes)["top_1"]


if __name__ == "__main__":
    for model_dir in sys.argv[1:]:
        ema, raw = top1(model_dir, True), top1(model_dir, False)
        print(f"{model_dir}: EMA {ema:.4f}  raw {raw:.4f}  raw - EMA {100 * (raw - ema):+.2f} points")
