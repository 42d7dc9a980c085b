"""Swish's gradient, the step's next lever (issue 31): our training step with Keras' "swish"
(tf.nn.silu: a fused forward, and a backward that recomputes the sigmoid in six element-wise
passes) against `x * tf.sigmoid(x)` differentiated as written (the forward sigmoid reused: four
passes), interleaved in one process, for the presets' net and the full B0.

    python bench/swish_grad.py --rounds=7 --steps=8 > bench/swish_grad.md
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet_builder  # noqa: E402
from benchlib import machine, step_timer  # noqa: E402
from step_flops import op_shares, ours  # noqa: E402  (and its flags)

FLAGS = flags.FLAGS  # --batch_size, --steps, --rounds: step_flops.py's

SWISHES = {"tf.nn.silu": tf.nn.silu, "x * sigmoid(x)": efficientnet_builder.swish}
NETS = {"presets' net (w0.25 d0.25, small-image)": "w0.25d0.25s", "full B0 (w1 d1)": "w1d1"}


def main(_):
    b = FLAGS.batch_size
    rng = np.random.RandomState(0)
    batch = (rng.uniform(0, 255, (b, 32, 32, 1)).astype("float32"),
             rng.randint(0, 10, (b,)).astype("int32"))
    synthetic = tf.data.Dataset.from_tensors(batch).repeat()
    steps = {}
    for net, spec in NETS.items():
        for name, fn in SWISHES.items():
            efficientnet_builder.swish = fn  # read by the builder when it builds
            steps[net, name] = ours(spec, synthetic, b)
    efficientnet_builder.swish = SWISHES["x * sigmoid(x)"]
    timers = {k: step_timer(step, it, FLAGS.steps, warmup=3) for k, (step, it) in steps.items()}
    runs = collections.defaultdict(list)
    for _ in range(FLAGS.rounds):
        for k, fn in timers.items():
            runs[k].append(fn())
    print("# Swish's gradient: tf.nn.silu against x * sigmoid(x) in our training step\n")
    print(f"Machine: {machine()}; load average at the start of the report "
          f"{os.getloadavg()[0]:.2f}\n")
    print(f"Command: `python bench/swish_grad.py {' '.join(sys.argv[1:])}`; batch {b}, 32x32x1, "
          f"in-memory batch, the optimizer and EMA of main.py; {FLAGS.rounds} interleaved "
          "rounds.\n")
    print("| net | ms per step, tf.nn.silu | ms per step, x * sigmoid(x) | speed-up per round: "
          "median (min-max) |\n|---|---|---|---|")
    for net in NETS:
        a, c = (np.array(runs[net, name]) for name in SWISHES)
        r = a / c
        print(f"| {net} | {1e3 * np.median(a):.0f} | {1e3 * np.median(c):.0f} | "
              f"**{np.median(r):.3f}x** ({r.min():.3f}-{r.max():.3f}) |")
    print()
    for (net, name), (step, it) in steps.items():
        print(f"Op types by self time, {net}, {name}: " + ", ".join(
            f"{op} {p:.0f}%" for op, p in op_shares(step, it)) + "\n")


if __name__ == "__main__":
    app.run(main)
