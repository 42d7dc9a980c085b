"""Helpers the benchmark scripts share (no flags, so any script can import them): the machine
line every reading starts with, the quick preset's teacher recipe, checkpoint digests, img/s."""
import collections
import hashlib
import os
import platform
import re
import subprocess
import time
import types

import keras
import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = ("--train_batch_size=128 --base_learning_rate=0.032 --final_base_learning_rate=0.0016 "
          "--lr_warmup_epochs=5 --randaug_mag=5 --model_name=efficientnet-b0 "
          "--width_coefficient=0.25 --depth_coefficient=0.25 --train_epochs=25").split()


def machine():
    """CPU model, family and model number, cores, bf16 instruction sets, TF and Keras, UTC time."""
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in cpu.splitlines() if ":" in line)
    flags_ = fields.get("Flags", "").split()
    field = lambda name: fields.get(name, "?").strip()
    return (f"{field('Model name')}, CPU family {field('CPU family')}"
            f" model {field('Model')}, {os.cpu_count()} cores, "
            f"bf16 ISA: {', '.join(f for f in flags_ if 'bf16' in f or 'amx' in f) or 'none'}; "
            f"{platform.machine()}; TF {tf.__version__}, Keras {keras.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def digest(model_dir):
    """sha256 over every checkpointed tensor of the latest checkpoint but the input position,
    and the tensors themselves (name -> array) for differences."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    h, tensors = hashlib.sha256(), {}
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(("input/", "_CHECKPOINTABLE_OBJECT_GRAPH")):
            continue
        value = np.asarray(reader.get_tensor(name))
        h.update(name.encode())
        h.update(value.tobytes())
        tensors[name] = value
    return h.hexdigest()[:16], tensors


def img_per_s(log_path):
    """main.py's training img/s: the median of its progress lines after the first (tracing)."""
    rates = [float(m) for m in re.findall(r"(\d+) img/s", open(log_path).read())]
    return float(np.median(rates[1:])) if len(rates) > 1 else float("nan")


def module_at(commit, name):
    """Module `name` (a .py file at the repository's root) as it is at `commit`, loaded beside
    today's: a before/after in one process."""
    source = subprocess.run(["git", "show", f"{commit}:{name}.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"{name}_at_{commit}")
    exec(compile(source, f"{commit}:{name}.py", "exec"), module.__dict__)
    return module


def keras_b0_step():
    """keras.applications' EfficientNetB0 (32x32x1, 10 classes) train step with our optimizer
    (main.TF1RMSprop) and smoothed cross-entropy: a tf.function of an iterator, like
    main.Trainer's step."""
    import main as main_lib  # here: benchlib itself stays light
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 1), classes=10)
    opt = main_lib.TF1RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    opt.build(model.trainable_variables)

    @tf.function
    def step(it):
        x, y = next(it)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
                main_lib.smooth(tf.one_hot(y, 10), 0.1), logits, from_logits=False))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss}
    return step


def interleave(fns, rounds):
    """{name: [result of each round]}: each round calls every fn once, in order, so that a slow
    spell of the machine hits all contenders alike instead of one of them."""
    runs = collections.defaultdict(list)
    for _ in range(rounds):
        for name, fn in fns.items():
            runs[name].append(fn())
    return runs


def step_timer(step, it, steps, warmup=10):
    """A function that runs `warmup` untimed steps (trace, warm-up, and a tf.data pipeline's
    prefetch buffers filled while other contenders ran are drained), then times `steps` steps:
    seconds per step."""
    def timed():
        for _ in range(warmup):
            float(step(it)["loss"])
        t = time.perf_counter()
        for _ in range(steps):
            out = step(it)
        float(out["loss"])
        return (time.perf_counter() - t) / steps
    return timed
