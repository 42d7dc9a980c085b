"""The cost of --deterministic in one process, alternating (bench/determinism.md): the train step
of the quick preset's teacher fed by its real input pipeline with op determinism on and off, and
the checkpoint save with and without the input position.

    python bench/determinism_cost.py --data_dir=DIR > bench/determinism_cost_run.txt

Op determinism is process-wide; TF's private config.disable_op_determinism() turns it off again,
so the two steps (each traced and first run under its own setting) alternate in one process.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import config as tf_config  # noqa: E402

import common  # noqa: E402
import prepare_data  # noqa: E402
import main as main_lib  # noqa: E402
from benchlib import machine  # noqa: E402

flags.DEFINE_string("data_dir", "data/fashion_mnist", "Fashion-MNIST shards (prepared if "
                    "missing).")
flags.DEFINE_integer("timed_steps", 20, "Timed steps per round.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
FLAGS = flags.FLAGS


def determinism(on):
    (tf.config.experimental.enable_op_determinism if on else tf_config.disable_op_determinism)()


def contender(on, data_dir):
    """(trainer, iterator, step) built, traced and run once with op determinism `on` (the label
    check is in the step, so the input maps hold no stateful op that would run serially)."""
    determinism(on)
    config = main_lib.TrainConfig(
        data_dir=data_dir, train_batch_size=128, base_learning_rate=0.032,
        final_base_learning_rate=0.0016, randaug_mag=5, width_coefficient=0.25,
        depth_coefficient=0.25, deterministic=on)
    info = main_lib.dataset_info(config, os.path.join(data_dir, "labeled"))
    files = common.list_files(os.path.join(data_dir, "labeled"), "labeled")
    trainer = main_lib.Trainer(config, main_lib.model_spec(config, info), dict(
        peak_lr=0.016, warmup_steps=0, decay_steps=100, decay_factor=0.97))
    iterator = iter(main_lib.build_train_dataset(config, info, files, 0))
    step = trainer.make_train_step(128, 0)
    for _ in range(5):
        float(step(iterator)["loss"])
    return trainer, iterator, step


def timed(on, step, iterator, steps):
    determinism(on)
    t = time.perf_counter()
    for _ in range(steps):
        out = step(iterator)
    float(out["loss"])
    return steps * 128 / (time.perf_counter() - t)


def save_cost(trainer, iterator, with_input):
    """(seconds, MB) of one checkpoint save, with or without the iterator."""
    checkpoint = tf.train.Checkpoint(model=trainer.model, ema_model=trainer.ema_model,
                                     optimizer=trainer.optimizer, step=trainer.step,
                                     **({"input": iterator} if with_input else {}))
    directory = tempfile.mkdtemp(prefix="det-ckpt-")
    t = time.perf_counter()
    path = checkpoint.save(os.path.join(directory, "ckpt"))
    seconds = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.startswith(os.path.basename(path)))
    return seconds, size / 1e6


def main(_):
    prepare_data.prepare_fashion_mnist(FLAGS.data_dir, num_labeled_per_class=400, seed=0)
    contenders = {"off": contender(False, FLAGS.data_dir), "on": contender(True, FLAGS.data_dir)}
    runs = {name: [] for name in contenders}
    for _ in range(FLAGS.rounds):
        for name, (_, iterator, step) in contenders.items():
            runs[name].append(timed(name != "off", step, iterator, FLAGS.timed_steps))
    print("# --deterministic: cost in one process\n")
    print(f"Machine: {machine()}\n")
    print(f"Command: `python bench/determinism_cost.py {' '.join(sys.argv[1:])}`: the quick "
          f"preset's teacher step (batch 128, RandAugment M=5, real Fashion-MNIST pipeline), "
          f"{FLAGS.rounds} alternating rounds of {FLAGS.timed_steps} steps.\n")
    off = np.median(runs["off"])
    print("| op determinism | train img/s (median) | rounds |\n|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {np.median(values):.0f} ({np.median(values) / off:.3f}x) | "
              f"{', '.join(f'{r:.0f}' for r in values)} |")
    trainer, iterator, _ = contenders["on"]
    print("\n| checkpoint | save s (median of 3) | MB |\n|---|---|---|")
    for with_input in (False, True):
        costs = [save_cost(trainer, iterator, with_input) for _ in range(3)]
        print(f"| {'with' if with_input else 'without'} the input position | "
              f"{np.median([c[0] for c in costs]):.2f} | {costs[0][1]:.1f} |")


if __name__ == "__main__":
    app.run(main)
