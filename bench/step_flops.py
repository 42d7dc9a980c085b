"""The training step against the machine's limit (issue 31): achieved GFLOP/s of our step for the
presets' net (width/depth 0.25, small-image) and the full B0 (standard strides), against the
fp32 peak of this CPU measured in the same run (a large matmul), and keras.applications'
EfficientNetB0 step (the 1.81x of bench/train_throughput.md), all interleaved in one process.

    python bench/step_flops.py --rounds=5 > bench/step_flops.md

FLOPs per step are counted by TF's graph profiler (tf.compat.v1.profiler, float_operation) on
the traced step (forward, backward, optimizer, EMA): only ops with a registered FLOP count enter
(convolutions, matmuls and their gradients, element-wise arithmetic), so "achieved" is useful
arithmetic per second. The op-type shares of the step's time (TF profiler) say where the rest of
the time goes, i.e. which lever is left.
"""
import collections
import glob
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import main as main_lib  # noqa: E402
from benchlib import keras_b0_step, machine, step_timer  # noqa: E402

flags.DEFINE_integer("batch_size", 128, "Batch of every step.")
flags.DEFINE_integer("steps", 10, "Timed steps per contender and round (after 3 untimed).")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; figures are medians over them.")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n fp32 matmul that measures the peak.")
FLAGS = flags.FLAGS


def parse(spec):
    """'w0.25d0.25s' -> the model config (s: small-image), as bench/train_throughput.py's."""
    w, d = spec.rstrip("s")[1:].split("d")
    return dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                small_image=spec.endswith("s"), width=float(w), depth=float(d),
                dropout_rate=None, stochastic_depth_rate=0.2, mean=[72.9], std=[90.0])


def step_flops(step, iterator):
    """FLOPs of one call of the tf.function `step` (TF's registered op statistics)."""
    graph = step.get_concrete_function(iterator).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def ours(spec, dataset, batch):
    t = main_lib.Trainer(main_lib.TrainConfig(), parse(spec), dict(
        peak_lr=0.01, warmup_steps=0, decay_steps=100, decay_factor=0.97))
    return t.make_train_step(batch, 0), iter(dataset)


def keras_b0(dataset):
    return keras_b0_step(), iter(dataset)


def timed_matmul(n):
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))

    def timed():
        mm().numpy()
        t = time.perf_counter()
        for _ in range(5):
            mm().numpy()
        return 2.0 * n ** 3 * 5 / (time.perf_counter() - t) / 1e9
    return timed


def op_shares(step, it, steps=5):
    """Self time by op type, as % of all ops, over `steps` steps (TF profiler)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        float(step(it)["loss"])
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    table = json.loads(plugin.xspace_to_tools_data(path, "framework_op_stats", {})[0])[0]
    shutil.rmtree(logdir)
    cols = [c["id"] for c in table["cols"]]
    by_type = collections.Counter()
    for row in table["rows"]:
        r = dict(zip(cols, [c["v"] for c in row["c"]]))
        if r["type"] != "IDLE":
            by_type[r["type"]] += r["total_self_time"]
    total = sum(by_type.values())
    return [(op, 100 * t / total) for op, t in by_type.most_common(8)]


def main(_):
    b = FLAGS.batch_size
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (b, 32, 32, 1)).astype("float32")
    y = rng.randint(0, 10, (b,)).astype("int32")
    synthetic = tf.data.Dataset.from_tensors((x, y)).repeat()
    print("# The training step against the machine's fp32 peak\n")
    print(f"Machine: {machine()}; load average at the start {os.getloadavg()[0]:.2f}\n")
    print(f"Command: `python bench/step_flops.py {' '.join(sys.argv[1:])}`; batch {b}, 32x32x1, "
          f"in-memory batch; peak = a {FLAGS.matmul_size}^3 fp32 matmul (tf.linalg.matmul, "
          f"oneDNN, all cores); {FLAGS.rounds} interleaved rounds, each contender's figure "
          f"divided by the peak of the same round.\n")
    contenders = {"ours, presets' net (w0.25 d0.25, small-image)": ours("w0.25d0.25s", synthetic, b),
                  "ours, full B0 (w1 d1, standard strides)": ours("w1d1", synthetic, b),
                  "keras.applications.EfficientNetB0": keras_b0(synthetic)}
    flops = {n: step_flops(step, it) for n, (step, it) in contenders.items()}
    timers = {n: step_timer(step, it, FLAGS.steps, warmup=3)
              for n, (step, it) in contenders.items()}
    timers["peak"] = timed_matmul(FLAGS.matmul_size)
    runs = collections.defaultdict(list)
    for _ in range(FLAGS.rounds):
        for n, fn in timers.items():
            runs[n].append(fn())
    peak = runs["peak"]
    print(f"fp32 matmul peak: {np.median(peak):.0f} GFLOP/s (rounds {min(peak):.0f}-"
          f"{max(peak):.0f})\n")
    print("| step | GFLOP per step (per image) | ms per step | img/s | achieved GFLOP/s | "
          "share of the same round's peak |\n|---|---|---|---|---|---|")
    for n in contenders:
        sec = np.array(runs[n])
        gflops = flops[n] / 1e9 / sec
        share = gflops / np.array(peak)
        print(f"| {n} | {flops[n] / 1e9:.2f} ({flops[n] / 1e6 / b:.1f} MFLOP) | "
              f"{1e3 * np.median(sec):.0f} | {b / np.median(sec):.0f} | {np.median(gflops):.1f} | "
              f"{100 * np.median(share):.1f}% ({100 * share.min():.1f}-{100 * share.max():.1f}) |")
    k = "keras.applications.EfficientNetB0"
    ratio = np.array(runs[k]) / np.array(runs["ours, full B0 (w1 d1, standard strides)"])
    print(f"\nours full B0 / keras B0, img/s per round: {np.median(ratio):.2f}x "
          f"({ratio.min():.2f}-{ratio.max():.2f})\n")
    for n in ("ours, presets' net (w0.25 d0.25, small-image)", "ours, full B0 (w1 d1, standard strides)"):
        step, it = contenders[n]
        print(f"Op types by self time, {n}: " + ", ".join(f"{op} {p:.0f}%" for op, p in
                                                          op_shares(step, it)) + "\n")
    print(f"Load average at the end: {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    app.run(main)
