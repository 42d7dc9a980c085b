"""Plot the supervised-teacher benchmarks on 4,000 Fashion-MNIST labels: top-1 against epochs.

Reads every bench/teacher_recipes/teacher_b0_small_4k*.md that bench/teacher_fashion_mnist.sh wrote (its main.py
command and eval_results.json) and draws one point per run, coloured by optimizer and input
noise, against the 85% goal of the teacher-training issue.

    python3 bench/teacher_recipes_plot.py      # -> bench/teacher_recipes.png
"""
import glob
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULTS = {"optimizer": "rmsprop", "augment_name": "randaugment", "weight_decay": "1e-05",
            "dropout_rate": "0.2", "base_learning_rate": "0.032"}


def read_run(text):
    """(flags of the last `python3 main.py` line, top-1) from one benchmark markdown."""
    command = next(line for line in text.splitlines() if line.startswith("python3 main.py"))
    run_flags = dict(DEFAULTS, **dict(re.findall(r"--(\w+)=(\S+)", command)))  # last one wins
    results = json.loads(text.split("eval_results.json:")[1].split("\n\n")[0])
    return run_flags, results["top_1"]


def recipe(run_flags):
    """The legend label: everything but the epochs that differs between the runs."""
    f = run_flags
    label = (f"{f['optimizer']}, {f['augment_name']}, wd {float(f['weight_decay']):g}, "
             f"lr {float(f['base_learning_rate']):g}/256")
    return label + (", no dropout/SD" if float(f["dropout_rate"]) == 0 else "")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    runs = [read_run(open(p).read())
            for p in sorted(glob.glob(os.path.join(here, "teacher_recipes", "teacher_b0_small_4k*.md")))]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for label in sorted({recipe(f) for f, _ in runs}):
        points = sorted((int(f["train_epochs"]), 100 * top1)
                        for f, top1 in runs if recipe(f) == label)
        ax.plot(*zip(*points), "o-", label=label)
    ax.axhline(85, color="gray", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], 85.2, " goal 85%", fontsize=8, color="gray")
    ax.set(xlabel="epochs", ylabel="top-1 on the 10k test set (%)",
           title="Full-width B0 (small-image) teacher, 4,000 labels")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = os.path.join(here, "teacher_recipes.png")
    fig.savefig(out + ".tmp.png", dpi=120)
    os.replace(out + ".tmp.png", out)
    print(f"wrote {out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
