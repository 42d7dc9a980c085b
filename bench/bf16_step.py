"""bfloat16 against float32 (issue 19): main.Trainer's train step and labeling inference, for
float32, all-bfloat16 and per-layer splits (some layer kinds kept in float32), then a profile of
one step per precision: the op types' share of the step.

    python bench/bf16_step.py > bench/bf16_step_run.txt   (bench/bf16_step.md: the reading)

One process, same machine; every figure is the median of interleaved rounds (a round times every
contender of its table once), synthetic in-memory batches (the model step only). Precisions:
  fp32        Keras float32 policy (what main.py trains with by default);
  bf16        common.set_precision("bfloat16"): Keras mixed_bfloat16 (bf16 compute, fp32
              variables) with efficientnet_builder.FLOAT32_KINDS = {} (only the input
              normalisation and the classifier in float32);
  bf16-X32    the same with the layer kinds X kept in float32 (efficientnet_builder.LAYER_KINDS;
              'matmul' = every kind but the 1x1 convolutions: bf16 only where a matrix product is).
"""
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import efficientnet_builder as eb  # noqa: E402
import main as main_lib  # noqa: E402
from benchlib import interleave, machine  # noqa: E402  (bench/ is on sys.path as the script's dir)

flags.DEFINE_integer("steps", 10, "Timed steps per round (after 3 untimed steps).")
flags.DEFINE_integer("repeats", 3, "Rounds; each figure is the median over them.")
flags.DEFINE_list("models", ["preset_student", "preset", "b0_small", "b0_224"], "Contenders' "
                  "models (MODELS below).")
flags.DEFINE_list("splits", ["fp32", "bf16", "bf16-depthwise32", "bf16-depthwise+bn32",
                             "bf16-depthwise+bn+activation32",
                             "bf16-matmul"], "Precisions (see the docstring; ',' inside a split "
                  "name: +).")
flags.DEFINE_list("tables", ["train", "infer", "profile"], "What to run.")
flags.DEFINE_integer("infer_batch", 256, "Labeling inference batch (label_data.py's default).")
flags.DEFINE_list("profile_models", ["preset_student", "b0_small"], "Models whose step is "
                  "profiled per precision.")
flags.DEFINE_list("profile_splits", ["fp32", "bf16", "bf16-depthwise32"], "Precisions profiled.")
flags.DEFINE_integer("profile_rows", 20, "Op types shown (the largest).")
FLAGS = flags.FLAGS

SMALL = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
             small_image=True, dropout_rate=None, stochastic_depth_rate=0.2, mean=[72.9],
             std=[90.0])
# name: (model config, labeled batch, unlabeled batch)
MODELS = {
    "preset_student": (dict(SMALL, width=0.25, depth=0.25), 128, 128),
    "preset": (dict(SMALL, width=0.25, depth=0.25), 128, 0),
    "b0_small": (dict(SMALL, width=1.0, depth=1.0), 128, 0),
    "b0_224": (dict(model_name="efficientnet-b0", num_classes=1000, image_size=224,
                    num_channels=3, small_image=False), 16, 0),
}


def split_kinds(split):
    """(precision, FLOAT32_KINDS) of a split name."""
    if split == "fp32":
        return "float32", frozenset()
    if split == "bf16":
        return "bfloat16", frozenset()
    kinds = split[len("bf16-"):].removesuffix("32").replace("+", ",")
    if kinds == "matmul":
        return "bfloat16", frozenset(eb.LAYER_KINDS) - {"conv1x1"}
    kinds = frozenset(kinds.split(","))
    assert kinds <= set(eb.LAYER_KINDS), kinds
    return "bfloat16", kinds


def under(split, fn):
    """fn() with the split's global policy and FLOAT32_KINDS (models are built inside)."""
    precision, kinds = split_kinds(split)
    common.set_precision(precision)
    eb.FLOAT32_KINDS = kinds
    try:
        return fn()
    finally:
        common.set_precision("float32")
        eb.FLOAT32_KINDS = frozenset()


def batches(config, batch_l, batch_u):
    rng = np.random.RandomState(0)
    shape = (config["image_size"], config["image_size"], config["num_channels"])
    x = rng.uniform(0, 255, (batch_l,) + shape).astype("float32")
    y = rng.randint(0, config["num_classes"], (batch_l,)).astype("int32")
    if not batch_u:
        return tf.data.Dataset.from_tensors((x, y)).repeat()
    x_u = rng.uniform(0, 255, (batch_u,) + shape).astype("float32")
    u = tf.nn.softmax(rng.normal(size=(batch_u, config["num_classes"])).astype("float32")).numpy()
    return tf.data.Dataset.from_tensors((x, y, x_u, u)).repeat()


def train_step(split, model):
    """(step function, iterator, images per step) of main.Trainer for `model` under `split`."""
    config, batch_l, batch_u = MODELS[model]
    student = (main_lib.StudentConfig(unlabel_data_dir="synthetic", unlabel_ratio=1.0)
               if batch_u else None)

    def build():
        trainer = main_lib.Trainer(main_lib.TrainConfig(student=student), config, dict(
            peak_lr=0.01, warmup_steps=0, decay_steps=100, decay_factor=0.97))
        return trainer.make_train_step(batch_l, batch_u), iter(batches(config, batch_l, batch_u))
    step, it = under(split, build)
    return (lambda: step(it)["loss"]), batch_l + batch_u


def infer_step(split, model, batch):
    """Labeling's forward pass (label_data.make_predictor's: inference mode, float32 softmax)."""
    config = MODELS[model][0]
    net = under(split, lambda: eb.build_from_config(config))
    rng = np.random.RandomState(0)
    shape = (batch, config["image_size"], config["image_size"],
             config["num_channels"])
    x = tf.constant(rng.uniform(0, 255, shape).astype("float32"))

    @tf.function
    def forward(images):
        return tf.nn.softmax(tf.cast(net(images, training=False), tf.float32), -1)
    return (lambda: forward(x)), batch


def timer(fn, images, steps):
    def timed():
        for _ in range(3):
            np.asarray(fn())
        t = time.perf_counter()
        for _ in range(steps):
            out = fn()
        np.asarray(out)
        return steps * images / (time.perf_counter() - t)
    return timed


def table(title, make, models, splits, steps, repeats, infer_batch=None):
    """One table: a row per model, a column per split, img/s and the speed-up over fp32;
    make(split, model) -> (fn, images per call); infer_batch: the batch of infer_step's rows."""
    print(f"\n## {title}\n")
    print("| model | " + " | ".join(splits) + " |")
    print("|---|" + "---|" * len(splits))
    for model in models:
        timers = {}
        for split in splits:
            fn, images = make(split, model)
            timers[split] = timer(fn, images, steps)
        ips = {name: float(np.median(v)) for name, v in interleave(timers, repeats).items()}
        base = ips.get("fp32")
        cells = [f"{ips[s]:.0f}" + (f" ({ips[s] / base:.2f}x)" if base and s != "fp32" else "")
                 for s in splits]
        _, batch_l, batch_u = MODELS[model]
        batch = infer_batch or f"{batch_l}{f' + {batch_u}' if batch_u else ''}"
        print(f"| {model} (batch {batch}) | " + " | ".join(cells) + " |", flush=True)
        keras.backend.clear_session()


# ---------------------------------------------------------------------------------------------
# Profile: tf.profiler trace of a few steps, op time summed per op type from the XSpace.
# ---------------------------------------------------------------------------------------------
def op_times(fn, steps=3):
    """{op type: ms per step} on the host's TF op threads, from a tf.profiler trace."""
    for _ in range(3):
        np.asarray(fn())
    logdir = tempfile.mkdtemp(prefix="bf16-profile-")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        out = fn()
    np.asarray(out)
    tf.profiler.experimental.stop()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=C0415
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):   # the executor's op threads
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:   # "op name:op type", not the executor's
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
    return totals


def profile(model, splits, shown):
    """Op time per op type for each of `splits` (the first is the reference): the `shown`
    largest op types."""
    rows = {}
    for split in splits:
        fn, _ = train_step(split, model)
        rows[split] = op_times(fn)
        keras.backend.clear_session()
    ops = sorted(set().union(*rows.values()), key=lambda o: -max(r[o] for r in rows.values()))
    print(f"\n## Profile: {model} train step, op time per step (ms, summed over the 2 op "
          f"threads; nested oneDNN/Eigen work included)\n")
    print("| op type | " + " | ".join(f"{s} ms" for s in splits) + " |\n|---|"
          + "---|" * len(splits))
    print("| **all ops** | " + " | ".join(f"**{sum(rows[s].values()):.0f}**" for s in splits)
          + " |")
    for op in ops[:shown]:
        print(f"| {op} | " + " | ".join(f"{rows[s][op]:.1f}" for s in splits) + " |")


def main(_):
    print("# bfloat16 vs float32: train step and labeling inference\n")
    print(f"Machine: {machine()}\n")
    print(f"Command: `python bench/bf16_step.py {' '.join(sys.argv[1:])}`; img/s, the median of "
          f"{FLAGS.repeats} interleaved rounds of {FLAGS.steps} steps (after 3 untimed).")
    if "train" in FLAGS.tables:
        table("Train step (main.Trainer: RMSProp, EMA, weight decay), img/s", train_step,
              FLAGS.models, FLAGS.splits, FLAGS.steps, FLAGS.repeats)
    if "infer" in FLAGS.tables:
        table(f"Labeling inference (batch {FLAGS.infer_batch}, training=False, softmax), img/s",
              lambda split, model: infer_step(split, model, FLAGS.infer_batch), FLAGS.models,
              FLAGS.splits, FLAGS.steps, FLAGS.repeats, FLAGS.infer_batch)
    for model in FLAGS.profile_models if "profile" in FLAGS.tables else ():
        profile(model, FLAGS.profile_splits, FLAGS.profile_rows)


if __name__ == "__main__":
    app.run(main)
