"""Why gaussian noise hurts the students more than the teacher (issue 32, arm 7; paper Sec. 3.3):
the trained models of one run, no training.

    python bench/gaussian_noise.py --run_dir=/work/exp/quick-seed0 --num_examples=2000 \
        > bench/gaussian_noise.md.new

For the teacher and each student of --run_dir, on the first --num_examples test images (data.py's
eval view) and their Fashion-MNIST-C gaussian_noise copies (corruptions.corrupt_batch, severities
1-5, the seed eval_robustness.py uses): (1) error per severity next to the clean error; (2)
calibration (mean max-softmax confidence, accuracy, ECE over 15 bins); (3) where the errors go
(share of predictions per class; the most common true -> predicted pairs); (4) the RandAugment
hypothesis without training: each RandAugment op at the run's magnitude, its pixel change (all of
it and its high-frequency part) against the noise's, and each model's error after the op; (5) the
input-gradient norm and the shift of the stem and top BN layers' input statistics under noise
against their moving statistics. Prints a markdown report (tables only; the reading is written by
hand in bench/gaussian_noise.md).
"""
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import corruptions  # noqa: E402
import data  # noqa: E402
import efficientnet_builder  # noqa: E402
import randaugment  # noqa: E402
from benchlib import machine  # noqa: E402

flags.DEFINE_string("run_dir", "/work/exp/quick-seed0", "A run_iterations.sh workdir (read only).")
flags.DEFINE_list("models", ["teacher", "iter1/student", "iter2/student", "iter3/student"],
                  "Model dirs under --run_dir (or absolute), each optionally as NAME=DIR.")
flags.DEFINE_integer("num_examples", 2000, "Test images used (the first N of data/test).")
flags.DEFINE_integer("grad_examples", 500, "Images for the input-gradient norms.")
flags.DEFINE_integer("seed", 0, "Corruption seed (eval_robustness.py's default).")
flags.DEFINE_integer("batch_size", 250, "Images per forward pass.")
flags.DEFINE_integer("randaug_mag", 5, "RandAugment magnitude of the ops (the quick preset: 5).")
FLAGS = flags.FLAGS

FASHION_MNIST = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Boot")
SEVERITIES = corruptions.SEVERITIES


def test_images(run_dir, info, n, batch_size):
    """(uint8 [n, S, S, C], labels [n]) of the run's test records, eval view."""
    files = sorted(glob.glob(os.path.join(run_dir, "data", "test", "*.tfrecord")))
    if not files:
        raise common.UserError(f"--run_dir={run_dir}: no data/test/*.tfrecord")
    images, labels = [], []
    for x, y in data.labeled_dataset(files, info, info.image_size, batch_size, is_training=False,
                                     augment_name="none"):
        images.append(np.clip(np.rint(x.numpy()), 0, 255).astype(np.uint8))
        labels.append(y.numpy())
        if sum(map(len, labels)) >= n:
            break
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def predict(model, images, batch_size):
    return np.concatenate([model(tf.cast(images[i:i + batch_size], tf.float32), training=False)
                           .numpy() for i in range(0, len(images), batch_size)])


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ece(probs, labels, bins=15):
    """Expected calibration error: |accuracy - confidence| per equal-width confidence bin,
    weighted by the bin's share of the images."""
    conf, correct = probs.max(-1), probs.argmax(-1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return sum(abs(correct[which == b].mean() - conf[which == b].mean()) * np.mean(which == b)
               for b in range(bins) if np.any(which == b))


def pixel_change(before, after):
    """(mean |after - before|, mean |high-frequency part|) in grey levels; the high-frequency part
    is the change minus its 3x3 local mean (i.i.d. pixel noise keeps 8/9 of its std there)."""
    d = after.astype(np.float32) - before.astype(np.float32)
    hf = d - ndimage.uniform_filter(d, size=(1, 3, 3, 1), mode="reflect")
    return float(np.abs(d).mean()), float(np.abs(hf).mean())


def input_gradient_norm(model, images, labels):
    """Mean L2 norm of d(cross-entropy)/d(image) per image, image in [0, 255] grey levels."""
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = keras.losses.sparse_categorical_crossentropy(labels, model(x, training=False),
                                                            from_logits=True)
    g = tape.gradient(loss, x).numpy().reshape(len(images), -1)
    return float(np.linalg.norm(g, axis=1).mean())


def bn_shift(model, images, batch_size):
    """For stem_bn and top_bn: (mean over channels of |batch mean - moving mean| / moving std,
    mean over channels of batch var / moving var) of the layer's input on `images`."""
    names = ("stem_bn", "top_bn")
    taps = keras.Model(model.input, [model.get_layer(n).input for n in names])
    outs = [np.concatenate(parts) for parts in zip(*[
        [t.numpy() for t in taps(tf.cast(images[i:i + batch_size], tf.float32), training=False)]
        for i in range(0, len(images), batch_size)])]
    result = []
    for name, act in zip(names, outs):
        bn = model.get_layer(name)
        mu, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        flat = act.reshape(-1, act.shape[-1])
        result.append((float(np.mean(np.abs(flat.mean(0) - mu) / np.sqrt(var + bn.epsilon))),
                       float(np.mean(flat.var(0) / (var + bn.epsilon)))))
    return result


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def pct(x, digits=1):
    return f"{100 * x:.{digits}f}"


def main(argv):
    del argv
    start = time.process_time()
    names, models = [], []
    for entry in FLAGS.models:
        name, _, path = entry.rpartition("=")
        model, config = efficientnet_builder.load_model_dir(os.path.join(FLAGS.run_dir, path))
        names.append(name or path)
        models.append(model)
    info = data.model_dataset_info(config, image_size=models[0].input_shape[1])
    images, labels = test_images(FLAGS.run_dir, info, FLAGS.num_examples, FLAGS.batch_size)
    n, bs = len(labels), FLAGS.batch_size
    classes = FASHION_MNIST if info.num_classes == 10 and config.get("dataset") == "fashion_mnist" \
        else tuple(str(i) for i in range(info.num_classes))
    scale = corruptions.scale_for(info.image_size)
    noised = {s: np.concatenate([corruptions.corrupt_batch(images[i:i + bs], "gaussian_noise", s,
                                                           FLAGS.seed, i, scale)
                                 for i in range(0, n, bs)]) for s in SEVERITIES}
    views = {"clean": images, **{f"s{s}": noised[s] for s in SEVERITIES}}
    probs = {(m, v): softmax(predict(model, x, bs))
             for m, model in zip(names, models) for v, x in views.items()}
    err = lambda m, v: float(np.mean(probs[m, v].argmax(-1) != labels))

    out = [f"Machine: {machine()}", "",
           f"Run: {FLAGS.run_dir}; {n} test images (the first {n} of 10,000), corruption seed "
           f"{FLAGS.seed}; constants {scale.kind} (std of the noise: "
           + ", ".join(f"{c:g}" for c in corruptions.C_CONSTANTS[scale.kind]["gaussian_noise"])
           + " of the [0, 1] range = "
           + ", ".join(f"{255 * c:.1f}" for c in corruptions.C_CONSTANTS[scale.kind]["gaussian_noise"])
           + " grey levels, before clipping to [0, 255])."]

    out += ["", "## 1. Error (%) under gaussian noise", ""]
    out.append(table(["model", "clean", *[f"s{s}" for s in SEVERITIES], "mean s1-5",
                      "mean - clean"],
                     [[m, pct(err(m, "clean")), *[pct(err(m, f"s{s}")) for s in SEVERITIES],
                       pct(np.mean([err(m, f"s{s}") for s in SEVERITIES])),
                       pct(np.mean([err(m, f"s{s}") for s in SEVERITIES]) - err(m, "clean"))]
                      for m in names]))

    out += ["", "## 2. Calibration: mean max-softmax confidence / accuracy / ECE (15 bins), %", ""]
    cal_views = ["clean", "s1", "s3", "s5"]
    out.append(table(["model", *cal_views], [
        [m, *[f"{pct(probs[m, v].max(-1).mean())} / {pct(1 - err(m, v))} / "
              f"{pct(ece(probs[m, v], labels))}" for v in cal_views]] for m in names]))

    out += ["", "## 3. Where the errors go", "",
            "Share of predictions per class (%), clean and at severity 5 (truth: the true labels' "
            "shares of these images):", ""]
    truth = np.bincount(labels, minlength=info.num_classes) / n
    rows = [["truth", "", *[pct(t, 0) for t in truth]]]
    for m in names:
        for v in ("clean", "s5"):
            share = np.bincount(probs[m, v].argmax(-1), minlength=info.num_classes) / n
            rows.append([m, v, *[pct(s, 0) for s in share]])
    out.append(table(["model", "images", *classes], rows))
    out += ["", "Errors at severity 5 that are right on the clean image (% of all images): the "
            "three commonest true -> predicted pairs, and the share of such new errors that go "
            "to the commonest predicted class:", ""]
    rows = []
    for m in names:
        new = (probs[m, "clean"].argmax(-1) == labels) & (probs[m, "s5"].argmax(-1) != labels)
        pred = probs[m, "s5"].argmax(-1)
        pairs = {}
        for t, p in zip(labels[new], pred[new]):
            pairs[t, p] = pairs.get((t, p), 0) + 1
        top = sorted(pairs.items(), key=lambda kv: -kv[1])[:3]
        by_pred = np.bincount(pred[new], minlength=info.num_classes)
        rows.append([m, pct(new.mean()), "; ".join(f"{classes[t]} -> {classes[p]} {pct(c / n)}"
                                                    for (t, p), c in top),
                     f"{classes[by_pred.argmax()]} {pct(by_pred.max() / max(new.sum(), 1), 0)}"])
    out.append(table(["model", "new errors", "commonest pairs", "commonest target (share)"], rows))

    out += ["", f"## 4. RandAugment's ops (M = {FLAGS.randaug_mag}) against the noise", "",
            "Each op alone on every image (random signs / cutout centres from one seed) with "
            "data.py's arguments for small images, then data.py's extra cutout alone and the "
            "whole training view; mean |pixel "
            "change| in grey levels (all, and its high-frequency part: the change minus its 3x3 "
            "mean) and each model's error (%).", ""]
    size = info.image_size

    def op_row(what, fn, i):  # fn(uint8 batch, [2] seed) -> uint8 batch, on every image
        seed = tf.constant([FLAGS.seed, i], tf.int32)
        x = np.concatenate([fn(tf.constant(images[j:j + bs]), seed + [0, 1000 * j]).numpy()
                            for j in range(0, n, bs)])
        return [what, *[f"{v:.1f}" for v in pixel_change(images, x)],
                *[pct(np.mean(predict(mo, x, bs).argmax(-1) != labels)) for mo in models]]

    ops = {op: lambda x, sd, op=op: randaugment.apply_op(
        x, op, FLAGS.randaug_mag, sd, cutout_const=size // 8, translate_const=size // 8)
        for op in randaugment.AVAILABLE_OPS}
    ops.update({f"data.py's extra cutout ({size // 2} px square)": lambda x, sd: randaugment.cutout(
                 x, pad_size=size // 4, replace=randaugment.FILL_VALUE, seed=sd),
             f"the whole training view (N = 2, M = {FLAGS.randaug_mag}, cutout, crop, flip)":
                 lambda x, sd: tf.cast(data.augment_batch(x, info, "randaugment", 2,
                                                          FLAGS.randaug_mag, sd), tf.uint8)})
    rows = [op_row(what, fn, i) for i, (what, fn) in enumerate(ops.items())]
    for s in SEVERITIES:
        d, hf = pixel_change(images, noised[s])
        rows.append([f"**gaussian_noise s{s}**", f"{d:.1f}", f"{hf:.1f}",
                     *[pct(err(m, f"s{s}")) for m in names]])
    out.append(table(["op", "mean abs change", "high-freq part", *names], rows))

    out += ["", "## 5. Sensitivity: input-gradient norm and BN input statistics", "",
            f"Input gradient: mean L2 norm of d(cross-entropy)/d(image in grey levels) over the "
            f"first {min(FLAGS.grad_examples, n)} images, x 1000. BN: the layer's input on all {n} "
            "images (eval mode), mean over channels of |batch mean - moving mean| / moving std "
            "and of batch var / moving var.", ""]
    rows = []
    g = min(FLAGS.grad_examples, n)
    for m, model in zip(names, models):
        grads = [input_gradient_norm(model, views[v][:g], labels[:g]) for v in ("clean", "s5")]
        bn = {v: bn_shift(model, views[v], bs) for v in ("clean", "s3", "s5")}
        rows.append([m, f"{1000 * grads[0]:.1f}", f"{1000 * grads[1]:.1f}",
                     *[f"{bn[v][0][0]:.2f} / {bn[v][0][1]:.2f}" for v in bn],
                     *[f"{bn[v][1][0]:.2f} / {bn[v][1][1]:.2f}" for v in bn]])
    out.append(table(["model", "grad clean", "grad s5", "stem_bn clean", "stem_bn s3", "stem_bn s5",
                      "top_bn clean", "top_bn s3", "top_bn s5"], rows))
    out += ["", "## 6. Where the noise acts (severity 5)", "",
            "The severity-5 noise only on the garment (pixels > 0 of the clean image), only on the "
            "black background, and the background's brightness shift without its texture (each "
            "background pixel set to the mean of the clipped noise there: "
            f"{noised[5][images == 0].mean():.1f} grey levels); error (%).", ""]
    garment = images > 0
    parts = {"clean": images, "noise everywhere": noised[5],
             "noise on the garment only": np.where(garment, noised[5], images),
             "noise on the background only": np.where(garment, images, noised[5]),
             "background offset, no texture": np.where(
                 garment, images, np.uint8(np.rint(noised[5][~garment].mean())))}
    out.append(table(["images", *names], [
        [what, *[pct(np.mean(predict(mo, x, bs).argmax(-1) != labels)) for mo in models]]
        for what, x in parts.items()]))
    out += ["", f"Process CPU time: {time.process_time() - start:.0f} s (user+sys, all threads)."]
    print("\n".join(out))


if __name__ == "__main__":
    app.run(main)
