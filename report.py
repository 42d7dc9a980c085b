"""The final report of run_iterations.sh (paper Sec. 3.1 Table 1, Sec. A.2 per-iteration results).

    python report.py --workdir=runs/quick-seed0

Reads the run directory (teacher/, iter1/, iter2/, ... each with labels/, filtered/, student/,
and supervised_baseline/ if trained) and writes report.json (per model: name, architecture from
its model.json, unlabeled batch ratio, top-1, top-5, robustness figures when robustness.json
exists; per iteration: pseudo-label quality and class balance), report.md, the
plots top1_per_iteration.png, pseudo_label_quality.png, class_balance.png and, with ablation/,
the Table 6 ablation table and ablation.png. Prints a short table.
"""
import glob
import os

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf


FLAGS = flags.FLAGS


def model_entry(name, model_dir):
    """One row: architecture from model.json, the unlabeled batch ratio from flags.json, accuracy
    from eval_results.json, robustness if any."""
    config = common.read_json(os.path.join(model_dir, "model.json"), default={})
    results = common.read_json(os.path.join(model_dir, "eval_results.json"), default={})
    run_flags = common.read_json(os.path.join(model_dir, "flags.json"), default={})
    entry = {"name": name, "model_dir": model_dir,
             "architecture": {k: config.get(k) for k in ("model_name", "width", "depth",
                                                          "image_size", "small_image")},
             "unlabel_ratio": run_flags.get("unlabel_ratio") if run_flags.get("unlabel_data_dir")
             or run_flags.get("teacher_model_dir") else None,
             "top_1": results.get("top_1"), "top_5": results.get("top_5"),
             "global_step": results.get("global_step")}
    robustness = common.read_json(os.path.join(model_dir, "robustness.json"), default=None)
    if robustness:
        entry["robustness"] = robustness.get("summary", robustness)
    return entry


# The fields the report counts; the image is never decoded. (image/id: every pseudo-labeled record
# has one; filter_balance writes a duplicated image once per copy round, under the same id.)
_COUNTED = {"label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            "copies": tf.io.FixedLenFeature([], tf.int64, default_value=1),
            "diagnostic/true_label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            "image/id": tf.io.FixedLenFeature([], tf.string, default_value="")}


def counted_fields(files):
    """Batches of the records' label, copies, diagnostic/true_label and image/id (numpy)."""
    records = tf.data.TFRecordDataset(files).batch(4096).map(
        lambda raw: tf.io.parse_example(raw, _COUNTED))
    return records.as_numpy_iterator()


def pseudo_label_stats(pattern, num_classes):
    """Counts (weighted by `copies`) of pseudo-labels per class and their agreement with the
    diagnostic true labels kept in the unlabeled records (never used for training)."""
    files = sorted(glob.glob(pattern))
    if not files:
        return None
    per_class = np.zeros(num_classes, np.int64)
    correct = with_truth = 0
    ids = set()
    for batch in counted_fields(files):
        label, copies, true = batch["label"], batch["copies"], batch["diagnostic/true_label"]
        per_class += np.bincount(label, weights=copies, minlength=num_classes).astype(np.int64)
        correct += int(copies[(true == label) & (true >= 0)].sum())
        with_truth += int(copies[true >= 0].sum())
        ids.update(batch["image/id"].tolist())
    # None without true labels (image folders, real unlabeled data): unknown, not 0%.
    return {"images": int(per_class.sum()), "unique": len(ids), "per_class": per_class.tolist(),
            "accuracy": correct / with_truth if with_truth else None}


def collect(workdir):
    models = [model_entry("teacher", os.path.join(workdir, "teacher"))]
    iterations = []
    num_classes = common.read_json(os.path.join(workdir, "teacher", "model.json"),
                                   default={}).get("num_classes", 10)
    i = 1
    while os.path.isdir(it := os.path.join(workdir, f"iter{i}")):
        models.append(model_entry(f"student {i}", os.path.join(it, "student")))
        # Paper Sec. 3.1: fine-tuned at a larger resolution (main.py --finetune_image_size).
        models += [model_entry(f"student {i}, fine-tuned", d) for d in
                   sorted(glob.glob(os.path.join(it, "student", "finetune_*")))]
        iterations.append({"iteration": i, **{kind: pseudo_label_stats(
            os.path.join(it, kind, "*.tfrecord"), num_classes) for kind in ("labels", "filtered")}})
        i += 1
    for teacher, student in zip(models, models[1:]):  # Algorithm 1 expects each to gain
        student["below_teacher"] = None not in (teacher["top_1"], student["top_1"]) and (
            student["top_1"] < teacher["top_1"])
    baseline = os.path.join(workdir, "supervised_baseline")  # the last student's size, labels only
    return {"models": models, "iterations": iterations, "ablation": collect_ablation(workdir),
            "supervised_baseline": model_entry(f"supervised, student {i - 1}'s size", baseline)
            if os.path.isdir(baseline) else None}


# Paper Table 6 (B5 teacher, 130M unlabeled images, one iteration) next to our --ablation runs.
ABLATION_ROWS = [  # (name, model dir relative to the workdir, paper top-1 or None)
    ("supervised teacher (baseline)", "teacher", 84.0),
    ("NoisyStudent", "iter1/student", 84.9),
    ("student w/o Aug", "ablation/no_aug", 84.6),
    ("student w/o Aug, SD, Dropout", "ablation/no_noise", 84.3),
    ("NoisyStudent, on-the-fly teacher (no filter/balance)", "ablation/on_the_fly", None),
    ("teacher w. Aug, SD, Dropout (on the fly)", "ablation/noised_teacher", 84.4),
    ("NoisyStudent, hard pseudo-labels", "ablation/hard_labels", None),
    ("NoisyStudent, no filter/balance", "ablation/no_filter", None),
]


def collect_ablation(workdir):
    """Rows of the Table 6 ablation whose model has been evaluated ([] without ablation/)."""
    if not os.path.isdir(os.path.join(workdir, "ablation")):
        return []
    rows = []
    for name, rel, paper in ABLATION_ROWS:
        entry = model_entry(name, os.path.join(workdir, rel))
        if entry["top_1"] is not None:
            rows.append(dict(entry, paper_top_1=paper))
    return rows


def fmt(x, scale=100.0, digits=2):
    return "-" if x is None else f"{x * scale:.{digits}f}"


def architecture(a):
    """'efficientnet-b1 @240', or with multipliers given: 'efficientnet-b0 w0.25 d0.25 @32';
    '-' for a model not started yet (no model.json)."""
    if not a.get("model_name"):
        return "-"
    sizes = [f"{k[0]}{a[k]:g}" for k in ("width", "depth") if a.get(k) is not None]
    return " ".join([a["model_name"]] + sizes + [f"@{a.get('image_size')}"])


def markdown(report):
    lines = ["| model | architecture | unlabeled ratio | top-1 | top-5 | step |",
             "|---|---|---|---|---|---|"]
    for m in report["models"] + [report["supervised_baseline"]] * bool(
            report.get("supervised_baseline")):
        ratio = "-" if m.get("unlabel_ratio") is None else f"{m['unlabel_ratio']:g}"
        name = m["name"] + " (below its teacher)" * bool(m.get("below_teacher"))
        lines.append(f"| {name} | {architecture(m['architecture'])} | {ratio} | {fmt(m['top_1'])} | {fmt(m['top_5'])} | "
                     f"{m['global_step'] or '-'} |")
    lines += ["", "| iteration | pseudo-label accuracy (all) | after filter+balance | images "
              "(unique) |", "|---|---|---|---|"]
    for it in report["iterations"]:
        lab, fil = it["labels"] or {}, it["filtered"] or {}
        lines.append(f"| {it['iteration']} | {fmt(lab.get('accuracy'))} | "
                     f"{fmt(fil.get('accuracy'))} | {fil.get('images', '-')} "
                     f"({fil.get('unique', '-')}) |")
    if report.get("ablation"):
        lines += ["", "| ablation (one iteration, same-size student) | top-1 | paper Table 6 "
                  "(B5, 130M) |", "|---|---|---|"]
        for row in report["ablation"]:
            paper = "-" if row["paper_top_1"] is None else f"{row['paper_top_1']:.1f}"
            lines.append(f"| {row['name']} | {fmt(row['top_1'])} | {paper} |")
    if any("robustness" in m for m in report["models"]):
        lines += ["", "Robustness: see robustness.md."]
    return "\n".join(lines) + "\n"


def plot(report, workdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [m["name"] for m in report["models"] if m["top_1"] is not None]
    top1 = [100 * m["top_1"] for m in report["models"] if m["top_1"] is not None]
    plots = []
    if top1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(range(len(top1)), top1, "o-")
        baseline = (report.get("supervised_baseline") or {}).get("top_1")
        if baseline is not None:
            ax.axhline(100 * baseline, ls="--", c="gray",
                       label=report["supervised_baseline"]["name"])
            ax.legend()
        ax.set_xticks(range(len(top1)), names)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title("Noisy Student: top-1 per iteration")
        ax.grid(alpha=0.3)
        plots.append(save(fig, workdir, "top1_per_iteration.png"))
    its = [it for it in report["iterations"] if it["labels"]]
    if its and all(it["labels"]["accuracy"] is not None for it in its):  # true labels known
        fig, ax = plt.subplots(figsize=(5, 3.5))
        x = [it["iteration"] for it in its]
        ax.plot(x, [100 * it["labels"]["accuracy"] for it in its], "o-", label="all unlabeled")
        if all((it["filtered"] or {}).get("accuracy") is not None for it in its):
            ax.plot(x, [100 * it["filtered"]["accuracy"] for it in its], "s-",
                    label="filtered + balanced")
        ax.set_xticks(x)
        ax.set_xlabel("iteration (teacher = previous model)")
        ax.set_ylabel("pseudo-label accuracy (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        plots.append(save(fig, workdir, "pseudo_label_quality.png"))
    if its:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        k = len(its[0]["labels"]["per_class"])
        width = 0.8 / (2 * len(its))
        for j, it in enumerate(its):
            ax.bar(np.arange(k) + (2 * j) * width, it["labels"]["per_class"], width,
                   label=f"iter {it['iteration']} predicted")
            if it["filtered"]:
                ax.bar(np.arange(k) + (2 * j + 1) * width, it["filtered"]["per_class"], width,
                       label=f"iter {it['iteration']} kept (with copies)")
        ax.set_xlabel("class")
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
        plots.append(save(fig, workdir, "class_balance.png"))
    if report.get("ablation"):
        rows = report["ablation"]
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1))
        y = np.arange(len(rows))[::-1]
        ax.barh(y, [100 * r["top_1"] for r in rows], color="tab:blue")
        ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
        lo = min(100 * r["top_1"] for r in rows)
        ax.set_xlim(lo - 2, max(100 * r["top_1"] for r in rows) + 1)
        ax.set_xlabel("test top-1 (%)")
        ax.set_title("Table 6 style ablation: one iteration, same-size student")
        ax.grid(axis="x", alpha=0.3)
        plots.append(save(fig, workdir, "ablation.png"))
    return plots


def save(fig, workdir, name):
    common.write_png(fig, os.path.join(workdir, name), dpi=110, bbox_inches="tight")
    return name


DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "imagenet": "ImageNet records",
                 "folder": "image folders", "svhn": "SVHN records"}


def write_report(workdir, preset="", seconds=0, schedule=""):
    """report.json, report.md and the plots into `workdir`; returns the markdown table.
    `schedule`: which preset's schedule the run used and what it was made for."""
    if not os.path.isdir(os.path.join(workdir, "teacher")):
        raise common.UserError(f"--workdir={workdir} has no teacher/ (run run_iterations.sh first)")
    report = collect(workdir)
    report.update(preset=preset, seconds=seconds, schedule=schedule)
    common.write_json(os.path.join(workdir, "report.json"), report)
    table = markdown(report)
    plots = plot(report, workdir)
    dataset = common.read_json(os.path.join(workdir, "teacher", "flags.json"),
                               default={}).get("dataset", "fashion_mnist")
    common.write_file(os.path.join(workdir, "report.md"),
                      f"# Noisy Student on {DATASET_NAMES.get(dataset, dataset)}: preset {preset}"
                      f"\n\n" + (f"Schedule: {schedule}\n\n" if schedule else "") + f"{table}\n"
                      + "".join(f"![{p}]({p})\n" for p in plots))
    logging.info("Wrote %s/report.json, report.md and %d plots.", workdir, len(plots))
    return table


def main(_):
    print(write_report(FLAGS.workdir, FLAGS.preset, FLAGS.seconds, FLAGS.schedule))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The run directory of run_iterations.sh.")
    flags.DEFINE_string("preset", "", "Preset name, recorded in the report.")
    flags.DEFINE_integer("seconds", 0, "Wall time of the run, recorded in the report.")
    flags.DEFINE_string("schedule", "", "Which preset's schedule the run used and what it was made "
                        "for, recorded in the report.")
    flags.mark_flag_as_required("workdir")
    common.run_main(main)
