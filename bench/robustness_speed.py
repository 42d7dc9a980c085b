"""The generated robustness sets (eval_robustness.py without --c_dir/--p_dir): today's corruptions.py
against a baseline commit's, in one process, interleaved, with the arrays compared byte for byte.

    python bench/robustness_speed.py --baseline=COMMIT --num_images=500 > bench/robustness_speed.md

Generates what the quick preset's robustness stage generates from N test images (Fashion-MNIST,
32 px, 1 channel; random images if --data_dir has none): the 19 corruptions x 5 severities, and
(N / 5 images) the 10 perturbation sequences; process CPU time per image of each version.
"""
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import corruptions  # noqa: E402
from benchlib import machine, module_at  # noqa: E402

flags.DEFINE_string("baseline", "HEAD", "The commit whose corruptions.py is the baseline.")
flags.DEFINE_integer("num_images", 500, "Images corrupted (the quick preset: 500; P: a fifth).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("batch_size", 256, "Images per corrupt_batch call (eval_robustness's batch).")
FLAGS = flags.FLAGS


def generate(C, images, what, batch_size):
    """The C sets (what='c') or the P sequences (what='p') of `images`, as eval_robustness makes
    them batch by batch; returns ({name: array}, process CPU seconds)."""
    scale, out = C.scale_for(images.shape[1]), collections.defaultdict(list)
    start = time.process_time()
    for first in range(0, len(images), batch_size):
        batch = images[first:first + batch_size]
        if what == "c":
            for name in C.ALL_CORRUPTIONS:
                for s in C.SEVERITIES:
                    out[name, s].append(C.corrupt_batch(batch, name, s, 0, first, scale))
        else:
            for name in C.PERTURBATIONS:
                out[name].append(C.perturb_batch(batch, name, 0, first, scale))
    return {k: np.concatenate(v) for k, v in out.items()}, time.process_time() - start


def main(_):
    images = np.random.default_rng(0).integers(0, 256, (FLAGS.num_images, 32, 32, 1), np.uint8)
    sets = {"c": images, "p": images[:max(1, FLAGS.num_images // 5)]}
    versions = {FLAGS.baseline: module_at(FLAGS.baseline, "corruptions"), "today": corruptions}
    cpu, same = collections.defaultdict(list), {}
    for _ in range(FLAGS.rounds):
        for what, x in sets.items():
            arrays = {}
            for v, C in versions.items():
                arrays[v], seconds = generate(C, x, what, FLAGS.batch_size)
                cpu[what, v].append(1e3 * seconds / len(x))
            same[what] = all(np.array_equal(arrays[FLAGS.baseline][k], arrays["today"][k])
                             for k in arrays["today"])
    print("# Generated robustness sets: today's corruptions.py against a baseline\n")
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}\n")
    print(f"Command: `python bench/robustness_speed.py {' '.join(sys.argv[1:])}`; random uint8 "
          f"32x32x1 images; {FLAGS.rounds} interleaved rounds (process CPU time).\n")
    print(f"| set | images | baseline ({FLAGS.baseline}) CPU ms per image | today | speed-up "
          f"(per round) | identical arrays |\n|---|---|---|---|---|---|")
    for what, x in sets.items():
        a, b = np.array(cpu[what, FLAGS.baseline]), np.array(cpu[what, "today"])
        r = a / b
        label = "C: 19 corruptions x 5 severities" if what == "c" else "P: 10 sequences"
        print(f"| {label} | {len(x)} | {np.median(a):.1f} | {np.median(b):.1f} | "
              f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f}) | {same[what]} |")


if __name__ == "__main__":
    app.run(main)
