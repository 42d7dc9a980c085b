"""Two training jobs at once on a small machine (run_iterations.sh --jobs=2): their combined speed
against one job alone, and their numbers against the lone job's.

    python bench/parallel_jobs.py > bench/parallel_jobs.md

The job is the presets' teacher (main.py, the quick preset's recipe, --deterministic) cut to
--train_steps, in a fresh process each time. A round runs it alone, then two copies at once (same
seed); --rounds rounds, so a slow spell of a shared machine hits both settings. Reports the steady
img/s of each (median of the progress lines after the first; for the pair, the sum of both jobs'),
the pair's speed-up per round, and whether every checkpointed tensor of each copy equals the lone
job's bit for bit (op determinism: the threads' schedule must not change the numbers).
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import prepare_data  # noqa: E402
from benchlib import RECIPE, ROOT, digest, img_per_s, machine  # noqa: E402  (bench/ is on sys.path)

flags.DEFINE_integer("train_steps", 300, "Steps of each job.")
flags.DEFINE_integer("rounds", 2, "Rounds of (alone, pair).")
flags.DEFINE_string("work_dir", "", "Scratch dir (default: a temp dir, removed at the end).")
FLAGS = flags.FLAGS


def start(model_dir, data_dir, steps):
    cmd = [sys.executable, "main.py", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
           f"--train_steps={steps}", "--log_every_steps=50", "--deterministic",
           "--mode=train"] + RECIPE
    with open(model_dir + ".log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def jobs(model_dirs, data_dir, steps):
    """Runs one job per model dir at once; returns the sum of their steady img/s."""
    procs = [start(d, data_dir, steps) for d in model_dirs]
    for d, p in zip(model_dirs, procs):
        assert p.wait() == 0, f"job failed: see {d}.log"
    return sum(img_per_s(d + ".log") for d in model_dirs)


def main(_):
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="parallel-jobs-")
    data_dir = os.path.join(work, "data")
    prepare_data.prepare_fashion_mnist(data_dir, num_labeled_per_class=400, seed=0)
    print("# Two training jobs at once (run_iterations.sh --jobs=2)\n")
    print(f"Machine: {machine()}\n")
    print(f"Command: `python bench/parallel_jobs.py {' '.join(sys.argv[1:])}`; each job: "
          f"`python main.py --train_steps={FLAGS.train_steps} --deterministic --mode=train "
          f"{' '.join(RECIPE)}` in a fresh model dir.\n")
    print("| round | one job alone, img/s | two at once, img/s (sum) | speed-up | each copy's "
          "weights = the lone job's |\n|---|---|---|---|---|")
    speedups = []
    for r in range(FLAGS.rounds):
        alone_dir = os.path.join(work, f"r{r}-alone")
        pair = [os.path.join(work, f"r{r}-pair{k}") for k in range(2)]
        alone = jobs([alone_dir], data_dir, FLAGS.train_steps)
        both = jobs(pair, data_dir, FLAGS.train_steps)
        speedups.append(both / alone)
        reference = digest(alone_dir)[0]
        same = all(digest(d)[0] == reference for d in pair)
        print(f"| {r} | {alone:.0f} | {both:.0f} | {both / alone:.2f}x | {same} |", flush=True)
    print(f"\nMedian speed-up of two jobs at once: **{np.median(speedups):.2f}x**.")
    if not FLAGS.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
