"""Top-1 of the quick preset's teacher trained in float32 and in bfloat16 (issue 19), same seeds.

    python bench/bf16_top1.py [--seeds=0,1] [--extra_flags=--deterministic] \\
        > bench/bf16_top1_run.txt   (bench/bf16_step.md: the reading)

One `python main.py` process per run, alternating fp32 / bf16 per seed, on Fashion-MNIST prepared
as run_iterations.sh's quick preset does (`python prepare_data.py --dataset=fashion_mnist
--output_dir=DIR --num_labeled_per_class=400 --seed=0`), with the quick preset's teacher recipe.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from benchlib import RECIPE, ROOT, machine  # noqa: E402  (bench/ is on sys.path)


flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (--seed).")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "--precision values, alternating.")
flags.DEFINE_list("extra_flags", [], "More main.py flags for every run.")
flags.DEFINE_string("work_dir", "", "Scratch dir (default: a temp dir, removed at the end).")
FLAGS = flags.FLAGS


def main(_):
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="bf16-top1-")
    data_dir = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data_dir, "prepared.json")):
        subprocess.run([sys.executable, "prepare_data.py", "--dataset=fashion_mnist",
                        f"--output_dir={data_dir}", "--num_labeled_per_class=400", "--seed=0"],
                       cwd=ROOT, check=True, capture_output=True)
    print("# Top-1: quick-preset teacher, float32 vs bfloat16\n")
    print(f"Machine: {machine()}\n")
    print(f"Command per run: `python main.py --model_dir=DIR --data_dir=DATA --seed=S "
          f"--precision=P {' '.join(RECIPE + FLAGS.extra_flags)}`\n")
    print("| seed | precision | top-1 | top-5 | loss | train img/s | process min |\n"
          "|---|---|---|---|---|---|---|")
    results = {}
    for seed in FLAGS.seeds:
        for precision in FLAGS.precisions:
            model_dir = os.path.join(work, f"s{seed}-{precision}")
            t0 = time.time()
            proc = subprocess.run(
                [sys.executable, "main.py", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
                 f"--seed={seed}", f"--precision={precision}"] + RECIPE + FLAGS.extra_flags,
                cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                print(f"| {seed} | {precision} | failed: {proc.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.load(open(os.path.join(model_dir, "eval_results.json")))
            rates = [float(m) for m in re.findall(r"(\d+) img/s", proc.stderr)]
            results[(seed, precision)] = r["top_1"]
            print(f"| {seed} | {precision} | {100 * r['top_1']:.2f}% | {100 * r['top_5']:.2f}% | "
                  f"{r['loss']:.4f} | {np.median(rates[1:]):.0f} | {(time.time() - t0) / 60:.1f} |",
                  flush=True)
    for p in FLAGS.precisions:
        values = [results[(s, p)] for s in FLAGS.seeds if (s, p) in results]
        if values:
            print(f"\n{p}: mean top-1 {100 * np.mean(values):.2f}% over seeds "
                  f"{', '.join(FLAGS.seeds)}.")
    if not FLAGS.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
