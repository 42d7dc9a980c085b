"""Same command, same numbers (issue 19): main.py --deterministic against the default, on the
same 200-step teacher command run several times, alternating, on one machine.

    python bench/determinism.py > bench/determinism_run.txt   (bench/determinism.md: the reading)

Every run is a fresh `python main.py` process (op determinism is process-global) with the quick
preset's teacher recipe cut to --train_steps (default 200). Per run: top-1 of the EMA model, a
digest of every checkpointed tensor (model, EMA model, optimizer slots, step; not the saved input
position), the training img/s (median of the progress lines after the first) and the checkpoint
size. Then the resume: the same command killed after its checkpoint at half way and run again to
the end, with and without --deterministic: is the result the uninterrupted run's?
"""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import prepare_data  # noqa: E402
from benchlib import RECIPE, ROOT, digest, img_per_s, machine  # noqa: E402  (bench/ is on sys.path)

flags.DEFINE_integer("train_steps", 200, "Steps of each run.")
flags.DEFINE_integer("runs", 3, "Runs per setting (alternating default / --deterministic).")
flags.DEFINE_string("work_dir", "", "Scratch dir (default: a temp dir, removed at the end).")
FLAGS = flags.FLAGS


def command(model_dir, data_dir, deterministic, steps):
    return ([sys.executable, "main.py", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
             f"--train_steps={steps}", "--log_every_steps=20",
             f"--save_checkpoints_steps={steps // 2}", f"--deterministic={deterministic}"]
            + RECIPE)


def run(model_dir, data_dir, deterministic, steps, kill_at=None):
    """One main.py process; kill_at: SIGKILL it once ckpt-<kill_at> is written."""
    cmd = command(model_dir, data_dir, deterministic, steps)
    log = open(os.path.join(os.path.dirname(model_dir), os.path.basename(model_dir) + ".log"),
               "a")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if kill_at:
        state = os.path.join(model_dir, "checkpoint")
        while proc.poll() is None:
            if os.path.exists(state) and f"ckpt-{kill_at}\"" in open(state).read():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    proc.wait()
    log.close()
    return time.time() - t0, proc.returncode


def checkpoint_mb(model_dir):
    latest = tf.train.latest_checkpoint(model_dir)
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
               if f.startswith(os.path.basename(latest) + ".")) / 1e6


def main(_):
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="determinism-")
    data_dir = os.path.join(work, "data")
    prepare_data.prepare_fashion_mnist(data_dir, num_labeled_per_class=400, seed=0)
    print("# --deterministic: cost and reproducibility\n")
    print(f"Machine: {machine()}\n")
    args = " ".join(command("DIR", "DATA", "X", FLAGS.train_steps)[2:])
    print(f"Command (per run, fresh model dir): `python main.py {args}`, "
          f"X = false (default) or true; {FLAGS.runs} runs each, alternating.\n")
    rows, digests = [], collections.defaultdict(list)
    reference = {}
    for i in range(FLAGS.runs):
        for det in ("false", "true"):
            model_dir = os.path.join(work, f"run{i}-det{det}")
            secs, rc = run(model_dir, data_dir, det, FLAGS.train_steps)
            assert rc == 0, f"run failed: see {model_dir}.log"
            top1 = json.load(open(os.path.join(model_dir, "eval_results.json")))["top_1"]
            d, tensors = digest(model_dir)
            reference.setdefault(det, tensors)
            digests[det].append(d)
            rows.append((det, i, top1, d, img_per_s(model_dir + ".log"), secs,
                         checkpoint_mb(model_dir)))
            print(f"<!-- {rows[-1]} -->", flush=True)
    print("| --deterministic | run | top-1 | weights digest | train img/s | process s | "
          "checkpoint MB |\n|---|---|---|---|---|---|---|")
    for det, i, top1, d, ips, secs, mb in rows:
        print(f"| {det} | {i} | {100 * top1:.2f}% | {d} | {ips:.0f} | {secs:.0f} | {mb:.1f} |")
    for det in ("false", "true"):
        ips = [r[4] for r in rows if r[0] == det]
        print(f"\n--deterministic={det}: {len(set(digests[det]))} distinct digest(s) in "
              f"{len(digests[det])} runs; train img/s median {np.median(ips):.0f}.")

    print("\n## Resume: killed after ckpt-%d, rerun to the end\n" % (FLAGS.train_steps // 2))
    print("| --deterministic | digest | = uninterrupted run 0? | max abs weight diff | top-1 |"
          "\n|---|---|---|---|---|")
    for det in ("false", "true"):
        model_dir = os.path.join(work, f"resume-det{det}")
        run(model_dir, data_dir, det, FLAGS.train_steps, kill_at=FLAGS.train_steps // 2)
        secs, rc = run(model_dir, data_dir, det, FLAGS.train_steps)
        assert rc == 0, f"resumed run failed: see {model_dir}.log"
        d, tensors = digest(model_dir)
        diff = max(float(np.max(np.abs(tensors[k].astype(np.float64)
                                       - reference[det][k].astype(np.float64))))
                   for k in tensors if tensors[k].dtype.kind == "f")
        top1 = json.load(open(os.path.join(model_dir, "eval_results.json")))["top_1"]
        print(f"| {det} | {d} | {d == digests[det][0]} | {diff:.3g} | {100 * top1:.2f}% |",
              flush=True)
    if not FLAGS.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
