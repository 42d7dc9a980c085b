"""Benchmark input (issue 18): Fashion-MNIST as a researcher's image folders.

Writes the embedded run's split of --seed (400 labeled images per class, or
--num_labeled_per_class, the rest of the train set unlabeled, the 10,000 test images) as PNG files:
    OUT/labeled/<k>_<class>/<index>.png   one folder per class, sorted names = label order
    OUT/unlabeled/<index>.png             one flat pile, no label anywhere (names are train indices)
    OUT/test/<k>_<class>/<index>.png
so that `run_iterations.sh --dataset=folder` sees what `--dataset=fashion_mnist` sees and the two
runs can be compared (bench/noisy_student_folders.md). The PNGs hold the 32 px zero-padded images
the embedded records hold, so the comparison tests the folder path, not another resolution.
--out_of_domain=N adds N images from outside Fashion-MNIST's domain to the pile (issue 32's
out-of-domain arm, paper Sec. 2: soft labels and filtering on out-of-domain data):
    OUT/unlabeled/ood<index>.png          28 px gray patches of the real images matplotlib ships
                                          (a photograph, an MRI slice, two elevation maps)

    python bench/fashion_mnist_folders.py --output_dir=/tmp/fmnist-folders [--seed=0] \
        [--num_labeled_per_class=30]   # a small labeled set (bench/own_small_data.md)
    python bench/fashion_mnist_folders.py --output_dir=DIR --out_of_domain=56000   # + patches
    python bench/fashion_mnist_folders.py --score=WORKDIR   # pseudo-label accuracy of the run
    python bench/fashion_mnist_folders.py --grid=bench/out_of_domain_patches.png   # a look
"""

import glob
import gzip
import os
import sys

from absl import app
from absl import flags
from absl import logging
import matplotlib.cbook
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import prepare_data  # noqa: E402
import report  # noqa: E402

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle-boot")


def sample_images():
    """The real images matplotlib ships as sample data, gray float arrays: a photograph, an MRI
    slice (256 x 256, 16 bit) and two digital elevation maps."""
    def sample(name):
        return matplotlib.cbook.get_sample_data(name, asfileobj=False)
    photo = np.asarray(Image.open(sample("grace_hopper.jpg")).convert("L"), np.float32)
    with open(sample("s1045.ima.gz"), "rb") as f:   # (read as matplotlib's MRI example does)
        mri = np.frombuffer(gzip.decompress(f.read()), np.uint16).reshape(256, 256)
    return [photo, mri.astype(np.float32),
            np.load(sample("jacksboro_fault_dem.npz"))["elevation"].astype(np.float32),
            np.load(sample("topobathy.npz"))["topo"].astype(np.float32)]


def out_of_domain_patches(count, seed):
    """uint8 [count, 28, 28]: squares of 12 px to half the source's side, cut at random places of
    the sample images (in turn), randomly flipped, resized to 28 px, stretched to 0-255."""
    rng = np.random.default_rng([seed, 32])
    sources, out = sample_images(), np.empty((count, 28, 28), np.uint8)
    for i in range(count):
        image = sources[i % len(sources)]
        side = int(rng.integers(12, min(image.shape) // 2 + 1))
        y, x = (int(rng.integers(0, n - side + 1)) for n in image.shape)
        patch = image[y:y + side, x:x + side]
        patch = patch[:, ::-1] if rng.random() < 0.5 else patch
        patch = np.asarray(Image.fromarray(patch).resize((28, 28), Image.BILINEAR))
        low, high = patch.min(), patch.max()
        out[i] = np.round(255 * (patch - low) / max(high - low, 1e-6))
    return out


def export(output_dir, seed, num_labeled_per_class=400, source_dir=prepare_data.FASHION_MNIST_DIR,
           out_of_domain=0):
    """Writes the three folders (under a temporary name, renamed when complete), with
    out_of_domain patches in the pile, and export.json (these arguments: the same export is
    skipped, another replaces it); returns counts."""
    args = dict(seed=seed, num_labeled_per_class=num_labeled_per_class, out_of_domain=out_of_domain)
    done = common.read_json(os.path.join(output_dir, "export.json"), default={})
    if done.get("args") == args:
        logging.info("%s: done, skipped (%s)", output_dir, done["counts"])
        return done["counts"]
    train_images, train_labels = prepare_data.read_fashion_mnist(source_dir, "train")
    test_images, test_labels = prepare_data.read_fashion_mnist(source_dir, "test")
    labeled = prepare_data.select_labeled(train_labels, num_labeled_per_class, seed)
    unlabeled = np.setdiff1d(np.arange(len(train_labels)), labeled)
    splits = {"labeled": (train_images, train_labels, labeled),
              "unlabeled": (train_images, None, unlabeled),
              "test": (test_images, test_labels, np.arange(len(test_labels)))}
    with common.atomic_output(output_dir) as tmp:
        for split, (images, labels, indices) in splits.items():
            pngs = prepare_data.encode_png_batch(prepare_data.pad_fashion_mnist(images[indices]))
            for png, i in zip(pngs, indices):
                folder = os.path.join(tmp, split)
                if labels is not None:
                    folder = os.path.join(folder, f"{labels[i]}_{CLASSES[labels[i]]}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(png)
            logging.info("%s: %d PNGs", split, len(indices))
        patches = prepare_data.pad_fashion_mnist(out_of_domain_patches(out_of_domain, seed))
        for i, png in enumerate(prepare_data.encode_png_batch(patches) if out_of_domain else []):
            with open(os.path.join(tmp, "unlabeled", f"ood{i:05d}.png"), "wb") as f:
                f.write(png)
        counts = {**{split: len(indices) for split, (_, _, indices) in splits.items()},
                  "out_of_domain": out_of_domain}
        common.write_json(os.path.join(tmp, "export.json"), {"args": args, "counts": counts})
    return counts


def score(workdir, source_dir=prepare_data.FASHION_MNIST_DIR):
    """Pseudo-label accuracy of a folder run's iterations, all images and after filter+balance
    (weighted by copies), from the PNG names (train indices): what report.py shows for the
    embedded run, whose records carry the true label, and cannot for a folder. With out-of-domain
    images (ood*.png): the accuracy on the Fashion-MNIST images, the out-of-domain share, and
    that share per pseudo-label class after filter+balance."""
    _, labels = prepare_data.read_fashion_mnist(source_dir, "train")
    rows, per_class = [], []
    for i in range(1, 4):
        row = [i]
        for part in ("labels", "filtered"):
            correct, kept = 0, np.zeros((2, len(CLASSES)), np.int64)   # (in domain, out) x class
            files = sorted(glob.glob(f"{workdir}/iter{i}/{part}/*.tfrecord"))
            for batch in report.counted_fields(files) if files else []:
                names = [os.path.basename(n).split(b".")[0] for n in batch["image/id"]]
                out = np.array([n.startswith(b"ood") for n in names], bool)
                index = np.array([0 if o else int(n) for n, o in zip(names, out)])
                copies, label = batch["copies"], batch["label"]
                for k, rows_k in enumerate((~out, out)):
                    kept[k] += np.bincount(label[rows_k], copies[rows_k], len(CLASSES)).astype(np.int64)
                correct += int(copies[~out & (labels[index] == label)].sum())
            row += [100 * correct / max(kept[0].sum(), 1), 100 * kept[1].sum() / max(kept.sum(), 1)]
        if any(row[1:]):
            rows.append(row)
            if kept[1].any():   # the filtered set's out-of-domain share per class
                per_class.append((i, 100 * kept[1] / np.maximum(kept.sum(0), 1)))
    lines = ["| iteration | pseudo-label accuracy (all) | after filter+balance | out-of-domain "
             "share (all) | after filter+balance |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {a:.2f} | {b:.2f} | {c:.1f}% | {d:.1f}% |" for i, a, c, b, d in rows]
    if per_class:
        lines += ["", "| iteration | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
        lines += [f"| {i} | " + " | ".join(f"{x:.1f}%" for x in share) + " |"
                  for i, share in per_class]
    return "\n".join(lines)

def main(argv):
    del argv
    if flags.FLAGS.score:
        print(score(flags.FLAGS.score))
    elif flags.FLAGS.grid:   # 8 rows of 16 patches, shown at 2x
        patches = out_of_domain_patches(128, flags.FLAGS.seed)
        grid = np.vstack([np.hstack(list(patches[r * 16:(r + 1) * 16])) for r in range(8)])
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
            flags.FLAGS.grid)
    else:
        print(export(flags.FLAGS.output_dir, flags.FLAGS.seed, flags.FLAGS.num_labeled_per_class,
                     out_of_domain=flags.FLAGS.out_of_domain))


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", "", "Where the labeled/, unlabeled/ and test/ folders go.")
    flags.DEFINE_integer("seed", 0, "The embedded run's --seed: which 400 images per class are "
                         "labeled.")
    flags.DEFINE_integer("num_labeled_per_class", 400, "Labeled images per class (the rest of the "
                         "train set is the unlabeled pile).")
    flags.DEFINE_integer("out_of_domain", 0, "Out-of-domain images added to the pile (ood*.png): "
                         "patches of matplotlib's sample images.")
    flags.DEFINE_string("grid", "", "Instead: a PNG of 128 out-of-domain patches of --seed.")
    flags.DEFINE_string("score", "", "Instead: a finished folder run's workdir, whose pseudo-labels "
                        "are scored against the true labels (a markdown table).")
    app.run(main)
