"""Benchmark: label_data.py end-to-end img/s against bare inference of the same model.

End-to-end = label_data.label_file on real Fashion-MNIST PNG shards: TFRecord read, PNG decode and
eval preprocessing (tf.data), the teacher's forward pass (make_predictor, the same function
label_data uses), probabilities -> tf.train.Example serialization and TFRecord writes (writer
thread). Bare = the same predict function on one preloaded, already preprocessed batch of the same
batch size, repeated. Both after a warm-up (tracing) pass; they alternate file by file so that
both see the same load of a shared machine; the median over --repeats.
Goal (issue 4): end-to-end >= 0.9x bare.

    python bench/label_throughput.py [--model_name=efficientnet-b0] [--num_images=12000] \\
        [--batch_size=256] [--repeats=3] [--output=bench/label_throughput.md]
"""

import gzip
import os
import resource
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import data  # noqa: E402
import prepare_data  # noqa: E402
import efficientnet_builder  # noqa: E402
import label_data  # noqa: E402
from benchlib import machine  # noqa: E402  (bench/ is on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_name", "efficientnet-b0", "Teacher architecture (small-image variant, "
                    "32 px, 1 channel, 10 classes: the Fashion-MNIST teacher).")
flags.DEFINE_float("width", None, "Width override (default: the table value).")
flags.DEFINE_float("depth", None, "Depth override (default: the table value).")
flags.DEFINE_integer("num_images", 12000, "Images labeled per end-to-end repeat.")
flags.DEFINE_integer("num_files", 6, "Input shards the images are split into.")
flags.DEFINE_integer("repeats", 3, "Alternating repeats; the median is reported.")
flags.DEFINE_string("output", None, "Markdown file to write the result to (default: print only).")
flags.DEFINE_integer("batch_size", 256, "Batch size of both measurements.")
flags.DEFINE_enum("probabilities_dtype", "float32", label_data.PROBABILITY_DTYPES, "Output dtype.")
flags.DEFINE_bool("deterministic", True, "enable_op_determinism(), as label_data.py's default.")


def fashion_mnist_pngs(n):
    path = os.path.join(prepare_data.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
    images = np.frombuffer(gzip.open(path).read(), np.uint8, offset=16).reshape(-1, 28, 28)
    images = np.pad(images[:n], ((0, 0), (2, 2), (2, 2)))[..., None]
    return [tf.io.encode_png(im).numpy() for im in images], images


def write_unlabeled(directory, pngs, num_files):
    files = []
    bounds = np.linspace(0, len(pngs), num_files + 1).astype(int)
    for s in range(num_files):
        path = os.path.join(directory, common.shard_name("unlabeled", s, num_files))
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(bounds[s], bounds[s + 1]):
                example = data.image_example(pngs[i], None, f"bench/{i:07d}")
                writer.write(example.SerializeToString())
        files.append(path)
    return files


def main(argv):
    del argv
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    work = tempfile.mkdtemp(prefix="label_bench_")
    config = dict(model_name=FLAGS.model_name, num_classes=10, image_size=32, num_channels=1,
                  small_image=True, width=FLAGS.width, depth=FLAGS.depth)
    model = efficientnet_builder.build_model(**config)
    teacher = os.path.join(work, "teacher")
    efficientnet_builder.save_model_dir(
        teacher, dict(config, dataset="fashion_mnist", input_kind="small", label_offset=0), model)
    pngs, images = fashion_mnist_pngs(FLAGS.num_images)
    files = write_unlabeled(work, pngs, FLAGS.num_files)

    strategy = common.make_strategy("default")
    model, _, info = label_data.load_teacher(teacher, strategy)
    predict = label_data.make_predictor(model, strategy)
    batch = tf.constant(images[:FLAGS.batch_size].astype(np.float32))
    float16 = FLAGS.probabilities_dtype == "float16"

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def timed(fn):
        wall, cpu = time.perf_counter(), cpu_seconds()
        count = fn()
        return count, time.perf_counter() - wall, cpu_seconds() - cpu

    def end_to_end(path, out):
        return label_data.label_file(path, os.path.join(out, os.path.basename(path)), predict,
                                     info, FLAGS.batch_size, float16)["count"]

    def bare(count):
        steps = -(-count // FLAGS.batch_size)
        for _ in range(steps):
            predict(batch)  # returns numpy: the step has finished
        return steps * FLAGS.batch_size

    end_to_end(files[0], os.path.join(work, "warmup"))  # traces the full and partial batch shapes
    bare(FLAGS.batch_size)
    rows = []
    for r in range(FLAGS.repeats):
        # Interleaved per file, so that both measurements see the same load of the shared machine.
        totals = np.zeros(6)
        for path in files:
            n_e, wall_e, cpu_e = timed(lambda: end_to_end(path, os.path.join(work, f"labels{r}")))
            n_b, wall_b, cpu_b = timed(lambda: bare(n_e))
            totals += (n_e, wall_e, cpu_e, n_b, wall_b, cpu_b)
        n_e, wall_e, cpu_e, n_b, wall_b, cpu_b = totals
        rows.append((n_e / wall_e, n_b / wall_b, cpu_b / n_b / (cpu_e / n_e)))
        print(f"repeat {r}: end-to-end {rows[-1][0]:.0f} img/s, bare inference {rows[-1][1]:.0f} "
              f"img/s, ratio {rows[-1][0] / rows[-1][1]:.3f} (CPU-time ratio {rows[-1][2]:.3f})",
              flush=True)
    e2e, inference, cpu_ratio = (np.array(c) for c in zip(*rows))
    ratio = np.median(e2e / inference)
    load = os.getloadavg()
    lines = [
        "# label_data.py throughput: end-to-end vs bare inference",
        "",
        f"Command: `python bench/label_throughput.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"- Machine: {machine()}, no GPU; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (shared machine: other jobs were running).",
        f"- Model: {FLAGS.model_name} small-image, 32x32x1, 10 classes "
        f"(width {FLAGS.width or 'table'}, depth {FLAGS.depth or 'table'}), "
        f"{model.count_params():,} parameters; batch {FLAGS.batch_size}; "
        f"{FLAGS.num_images} Fashion-MNIST PNGs in {FLAGS.num_files} shards; probabilities "
        f"{FLAGS.probabilities_dtype}; op determinism {'on' if FLAGS.deterministic else 'off'}.",
        "- End-to-end and bare inference alternate file by file (same load); the CPU-time ratio is "
        "(process CPU seconds per image, bare) / (same, end-to-end).",
        "",
        "| repeat | end-to-end img/s | bare inference img/s | ratio | CPU-time ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r} | {a:.0f} | {b:.0f} | {a / b:.3f} | {c:.3f} |"
              for r, (a, b, c) in enumerate(rows)]
    lines += [f"| median | {np.median(e2e):.0f} | {np.median(inference):.0f} | **{ratio:.3f}** | "
              f"{np.median(cpu_ratio):.3f} |",
              "", f"Goal >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
    shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
