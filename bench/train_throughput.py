"""Train-step throughput (issue: teacher training): our EfficientNet step against
keras.applications.EfficientNetB0 at the same resolution and batch, and the cost of the
RandAugment input pipeline.

    python bench/train_throughput.py --batch_size=128 --steps=20 --repeats=5 > bench/train_throughput.md

Two tables, one process, same machine, every figure the median of interleaved rounds:
  1. model step only (in-memory batch): ours (main.Trainer: RMSProp, EMA, weight decay, label
     smoothing) for several sizes, and keras.applications.EfficientNetB0 with the same loss and
     optimizer in an equivalent tf.function step;
  2. our step fed by the real tf.data pipeline on Fashion-MNIST with augment_name=basic and with
     randaugment (N=2, M=10): the slowdown RandAugment costs the step. On 2 cores the pipeline
     takes its CPU from the step, and wall-clock slowdowns of a few percent are within the spread
     of the timings, so the table also gives the pipeline's own CPU time per batch (the pipeline
     alone, process CPU time) as a share of the step's CPU time: a steadier figure of the same cost.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import data
import efficientnet_builder
import prepare_data
import main as main_lib
import benchlib  # bench/ is on sys.path

flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps per round (after 10 untimed steps).")
flags.DEFINE_integer("repeats", 5, "Rounds; each figure is the median over them.")
flags.DEFINE_string("configs", "w0.25d0.25s,w0.5d0.5s,w1d1s,w1d1", "Our models: width, depth, "
                    "s = small-image variant (stride-1 blocks 2-3).")
flags.DEFINE_string("pipeline_configs", "w1d1,w0.25d0.25s", "Models whose step is also timed fed "
                    "by the tf.data pipeline (empty: skip).")
FLAGS = flags.FLAGS


def parse(spec):
    small = spec.endswith("s")
    w, d = spec.rstrip("s")[1:].split("d")
    return dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                small_image=small, width=float(w), depth=float(d), dropout_rate=None,
                stochastic_depth_rate=0.2, mean=[72.9], std=[90.0])


def timer(step, it, steps, batch):
    """img/s of `steps` steps after 10 untimed (benchlib.step_timer)."""
    timed = benchlib.step_timer(step, it, steps)
    return lambda: batch / timed()


def cpu_ms_per_call(fn, calls=200):
    """Process CPU time (all threads) per call of `fn` (a batch or a step), after 20 untimed."""
    for _ in range(20):
        fn()
    start = time.process_time()
    for _ in range(calls):
        out = fn()
    tf.nest.map_structure(np.asarray, out)
    return 1e3 * (time.process_time() - start) / calls


def interleaved(timers, repeats):
    """Median img/s per name over `repeats` interleaved rounds (benchlib.interleave)."""
    return {name: float(np.median(v)) for name, v in benchlib.interleave(timers, repeats).items()}


def ours(cfg, datasets, batch, steps):
    """Timers of our training step (main.Trainer), one per input dataset."""
    strategy = tf.distribute.get_strategy()
    t = main_lib.Trainer(main_lib.TrainConfig(), cfg, dict(peak_lr=0.01, warmup_steps=0,
                         decay_steps=100, decay_factor=0.97), strategy)
    step = t.make_train_step(batch, 0)
    return {name: timer(step, iter(ds), steps, batch) for name, ds in datasets.items()}, step


def keras_b0(dataset, batch, steps):
    return timer(benchlib.keras_b0_step(), iter(dataset), steps, batch)


def main(_):
    b = FLAGS.batch_size
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (b, 32, 32, 1)).astype("float32")
    y = rng.randint(0, 10, (b,)).astype("int32")
    synthetic = tf.data.Dataset.from_tensors((x, y)).repeat()
    print(f"# Train-step throughput, batch {b}, 32x32x1, {FLAGS.steps} timed steps\n")
    print(f"Machine: {benchlib.machine()}\n")
    print(f"Each figure: the median of {FLAGS.repeats} rounds; a round times every contender of its "
          f"table once ({FLAGS.steps} steps each, after 10 untimed steps).\n")
    print("| model | params | img/s (step only) |\n|---|---|---|")
    specs = FLAGS.configs.split(",")
    timers = {"keras": keras_b0(synthetic, b, FLAGS.steps)}
    for spec in specs:
        timers.update({spec: ours(parse(spec), {"in-memory": synthetic}, b, FLAGS.steps)[0]["in-memory"]})
    ips = interleaved(timers, FLAGS.repeats)
    kb0 = ips["keras"]
    print(f"| keras.applications.EfficientNetB0 (same loss/optimizer) | "
          f"{keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 1), classes=10).count_params():,} | {kb0:.0f} |")
    for spec in specs:
        cfg = parse(spec)
        n = main_lib.num_params(efficientnet_builder.build_from_config(cfg))
        print(f"| ours {spec} ({'small-image' if cfg['small_image'] else 'standard strides'}) | "
              f"{n:,} | {ips[spec]:.0f} ({ips[spec] / kb0:.2f}x keras) |", flush=True)
    if FLAGS.pipeline_configs:
        info = data.DATASETS["fashion_mnist"]
        prepare_data.prepare_fashion_mnist("data/fashion_mnist")
        print("\n| model | in-memory batch img/s | tf.data basic (crop+flip) | tf.data RandAugment "
              "N=2 M=10 + cutout |\n|---|---|---|---|")
        sources = {"in-memory": synthetic}
        for aug in ("basic", "randaugment"):
            sources[aug] = data.labeled_dataset("data/fashion_mnist/labeled", info, 32, b,
                                                is_training=True, augment_name=aug,
                                                randaug_layer=2, randaug_mag=10)
        pipeline_cpu = {aug: cpu_ms_per_call(iter(sources[aug]).__next__)
                        for aug in ("basic", "randaugment")}
        for spec in FLAGS.pipeline_configs.split(","):
            timers, step = ours(parse(spec), sources, b, FLAGS.steps)
            in_memory = iter(synthetic)
            step_cpu = cpu_ms_per_call(lambda: step(in_memory)["loss"], 50)
            ips = interleaved(timers, FLAGS.repeats)
            base = ips["in-memory"]
            row = [f"ours {spec}", f"{base:.0f} (step CPU {step_cpu:.0f} ms)"] + [
                f"{ips[aug]:.0f} ({100 * (1 - ips[aug] / base):+.1f}% slower; pipeline CPU "
                f"{pipeline_cpu[aug]:.1f} ms = {100 * pipeline_cpu[aug] / step_cpu:.1f}% of the step's)"
                for aug in ("basic", "randaugment")]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
