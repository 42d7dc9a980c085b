"""Top-1 per iteration of every committed full-preset seed (bench/full-seed*/report.json), with
the earlier constant unlabeled ratio (report_ratio1.json, dashed): writes bench/noisy_student_full.png.

    python bench/noisy_student_full_plot.py
"""
import glob
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, path in enumerate(sorted(glob.glob(os.path.join(HERE, "full-seed*", "report.json")))):
        seed = os.path.basename(os.path.dirname(path)).split("-")[-1]
        for name, style, ratios in (("report.json", "o-", "1,2,3"), ("report_ratio1.json", "x--", "1,1,1")):
            report = json.load(open(os.path.join(os.path.dirname(path), name)))
            top1 = [100 * m["top_1"] for m in report["models"]]
            ax.plot(range(len(top1)), top1, style, color=f"C{i}",
                    label=f"{seed}, ratios {ratios}: +{top1[-1] - top1[0]:.2f}")
    ax.set_xticks(range(4), ["teacher", "student 1", "student 2", "student 3"])
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("run_iterations.sh --preset=full (4,000 labels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = os.path.join(HERE, "noisy_student_full.png")
    fig.savefig(out + ".tmp.png", dpi=110, bbox_inches="tight")
    os.replace(out + ".tmp.png", out)
    print("wrote", out)


if __name__ == "__main__":
    main()
