"""RandAugment throughput in tf.data: randaugment.py per image and per batch vs keras.layers.RandAugment.

Paper context: the student's input noise (Sec. 2, Sec. 3.1: N = 2, M = 27) runs on every training
image, on the host CPU, so it must keep up with the model. This measures images per second of a
tf.data pipeline over 32x32 Fashion-MNIST images (uint8, 1 channel, padded 28 -> 32):

    from_tensor_slices -> repeat -> map(augment one image, AUTOTUNE) -> batch -> prefetch

for: no augmentation (the pipeline's ceiling), randaugment.distort_image_with_randaugment at
N = 2, M = 10 and M = 27, the same per batch (batch -> map(distort_batch_with_randaugment), every
choice still per image; what data.py runs) (translate = cutout const = 4, as data.py uses for 32 px), and
keras.layers.RandAugment(num_ops=2) called on one image in the same map (its factor is a 0-1
strength; 1.0, its maximum, is the nearest to M = 10 and it has nothing like M = 27).

    python bench/randaugment_throughput.py --output=bench/randaugment_throughput.md

writes the markdown table with the command, the machine (nproc, CPU model), versions and date.
One run, on whatever else the machine is doing: read it as a rough comparison.
"""
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402  (first: it silences TensorFlow's start-up lines)
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import prepare_data  # noqa: E402
import randaugment  # noqa: E402
from benchlib import machine  # noqa: E402  (bench/ is on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("output", os.path.join(ROOT, "bench", "randaugment_throughput.md"),
                    "Markdown file to write the results to.")
flags.DEFINE_integer("num_images", 32768, "Images timed per configuration (after warm-up).")
flags.DEFINE_integer("batch_size", 256, "Batch size of the pipeline.")
flags.DEFINE_integer("num_source_images", 4096,
                     "Distinct Fashion-MNIST test images the pipeline cycles through.")


def augmenters():
    """name -> function(uint8 image (32, 32, 1) or batch, seed [2]) -> the same, built once
    (the Keras layer too; it and the ceiling ignore the seed)."""
    keras_layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=1.0)

    def ours(magnitude, distort):
        return lambda image, seed: distort(image, num_layers=2, magnitude=magnitude, seed=seed,
                                           cutout_const=4, translate_const=4)

    per_image, batch = (randaugment.distort_image_with_randaugment,
                        randaugment.distort_batch_with_randaugment)
    return {  # name -> (function, whether it takes the whole batch)
        "no augmentation (pipeline ceiling)": (lambda image, seed: image, False),
        "randaugment.py N=2 M=10, per image": (ours(10, per_image), False),
        "randaugment.py N=2 M=27, per image": (ours(27, per_image), False),
        "randaugment.py N=2 M=10, per batch (as data.py)": (ours(10, batch), True),
        "randaugment.py N=2 M=27, per batch (as data.py)": (ours(27, batch), True),
        "keras.layers.RandAugment num_ops=2 factor=1.0": (
            lambda image, seed: keras_layer(image, training=True), False),
    }


def images_per_second(images, augment, batched, num_images, batch_size):
    """map(augment) per image then batch, or (batched) batch then map(augment) per batch;
    element i (an image or a batch) is augmented with the seed (0, i), as data.py seeds batches."""
    ds = tf.data.Dataset.from_tensor_slices(images).repeat()
    seeded = lambda i, x: augment(x, tf.stack([tf.constant(0, tf.int64), i]))  # noqa: E731
    if batched:
        ds = ds.batch(batch_size).enumerate().map(seeded, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.enumerate().map(seeded, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    it = iter(ds)
    for _ in range(3):  # warm-up: tracing, AUTOTUNE ramp-up
        next(it)
    num_batches = max(1, num_images // batch_size)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch_size / (time.perf_counter() - start)


def markdown(results, command, num_source_images, batch_size, num_images):
    keras_rate = results[-1][1]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        "# RandAugment throughput in a tf.data pipeline",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}; Python {platform.python_version()}.",
        "",
        "One run on a SHARED machine (other engineers' jobs use the same 2 cores): the numbers "
        f"are a rough comparison, not a clean measurement. Load average (1, 5, 15 min) when the "
        f"run ended: {load}.",
        "",
        f"Pipeline: {num_source_images} Fashion-MNIST test images (uint8 32x32x1) -> "
        f"repeat -> map(augment, AUTOTUNE) -> batch {batch_size} -> prefetch (per batch: batch "
        f"-> map(augment)); "
        f"{num_images} images timed per row after 3 warm-up batches.",
        "",
        "| augmentation | img/s | vs keras.layers.RandAugment |",
        "|---|---:|---:|",
    ]
    for name, rate in results:
        lines.append(f"| {name} | {rate:,.0f} | {rate / keras_rate:.1f}x |")
    lines += [
        "",
        "randaugment.py: 16 reference ops, one op choice per image per layer, uint8 in and out, "
        "translate = cutout const = 4 (image_size // 8, as data.py). keras.layers.RandAugment: "
        "11 ops, float32 out, strength factor in [0, 1] (1.0 = its strongest; it cannot express "
        "M = 27); called on single images so it also chooses per image.",
        "",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise common.UserError(f"unexpected arguments {argv[1:]}")
    if FLAGS.num_images < FLAGS.batch_size or FLAGS.batch_size < 1:
        raise common.UserError("--num_images must be >= --batch_size >= 1")
    if not 1 <= FLAGS.num_source_images <= 10000:
        raise common.UserError("--num_source_images must be in 1..10000 (the test set)")
    images, _ = prepare_data.read_fashion_mnist(prepare_data.FASHION_MNIST_DIR, "test")
    images = prepare_data.pad_fashion_mnist(images[:FLAGS.num_source_images])
    results = []
    for name, (augment, batched) in augmenters().items():
        rate = images_per_second(images, augment, batched, FLAGS.num_images, FLAGS.batch_size)
        logging.info("%-48s %8.0f img/s", name, rate)
        results.append((name, rate))
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    with common.atomic_output(FLAGS.output) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(results, command, FLAGS.num_source_images, FLAGS.batch_size,
                             FLAGS.num_images))
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    common.run_main(main)
