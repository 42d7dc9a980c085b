"""Top-1 per iteration of every committed full-preset seed: the preset after issue 17's audit fixes
(after_audit/report.json, solid, stars), the preset before them, students of 75, 75 and 100
epochs, fresh end to end (preset_75_75_100/report.json, solid, plus signs), the same students with
student 3 retrained on a copy of a 75-epoch run (iter3_100ep/report.json, dash-dot, triangles),
the preset with 75-epoch students
(students75/report.json, solid, diamonds), with 50-epoch students (report.json, solid, faded)
and, if committed, its variants: growing students (growing/report.json, dotted; its supervised
model of student 3's size as a star) and the earlier constant ratio 1 (report_ratio1.json, dashed).
Writes bench/noisy_student_full.png.

    python bench/noisy_student_full_plot.py
"""
import glob
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))
# file, line style, opacity, description when the report predates its `unlabel_ratio` field,
# suffix naming the students' epochs
VERSIONS = (("after_audit/report.json", "*-", 1.0, None, ", the preset after issue 17's fixes"),
            ("preset_75_75_100/report.json", "P-", 0.7, None, ", the preset before them"),
            ("iter3_100ep/report.json", "^-.", 0.6, None, ", 75/75/100 ep (iter 3 rerun)"),
            ("students75/report.json", "D-", 0.5, None, ", 75 ep"),
            ("report.json", "o-", 0.4, None, ", 50 ep"),
            ("growing/report.json", "s:", 0.5, None, ", 50 ep"),
            ("report_ratio1.json", "x--", 0.5, "w 0.25, ratios 1/1/1", ", 50 ep"))


def describe(report):
    """'w 0.3/0.35/0.4, ratios 1/2/3' from the students' rows."""
    students = report["models"][1:]
    widths = "/".join(f"{m['architecture']['width']:g}" for m in students)
    ratios = "/".join(f"{m['unlabel_ratio']:g}" for m in students)
    return f"w {widths}, ratios {ratios}"


def main():
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, seed_dir in enumerate(sorted(glob.glob(os.path.join(HERE, "noisy_student_full", "seed*")))):
        seed = os.path.basename(seed_dir)
        for name, style, alpha, description, epochs in VERSIONS:
            path = os.path.join(seed_dir, name)
            if not os.path.exists(path):
                continue
            report = json.load(open(path))
            top1 = [100 * m["top_1"] for m in report["models"]]
            ax.plot(range(len(top1)), top1, style, color=f"C{i}", alpha=alpha,
                    label=f"{seed}, {description or describe(report)}{epochs}: "
                          f"+{top1[-1] - top1[0]:.2f}")
            baseline = report.get("supervised_baseline")
            if baseline and baseline.get("top_1") is not None:
                ax.plot([3], [100 * baseline["top_1"]], "*", ms=12, color=f"C{i}",
                        label=f"{seed}, supervised w{baseline['architecture']['width']:g}")
    ax.set_xticks(range(4), ["teacher", "student 1", "student 2", "student 3"])
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("run_iterations.sh --preset=full (4,000 labels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out = os.path.join(HERE, "noisy_student_full.png")
    fig.savefig(out + ".tmp.png", dpi=110, bbox_inches="tight")
    os.replace(out + ".tmp.png", out)
    print("wrote", out)


if __name__ == "__main__":
    main()
