"""Benchmark: filter_balance.py on synthetic prediction shards of growing size.

Writes N synthetic label_data.py outputs (100 classes, shards of --records_per_shard records,
skewed class frequencies, confidences from a Beta distribution plus saturated 1.0s), then runs the
command-line stages exactly as a user would (stats as one job over all shards, merge, write,
report), each in its own process, and records wall time, records/s and the peak resident memory
of that process (os.wait4 -> ru_maxrss). The largest size's shards are reused for the smaller ones
(a directory of symlinks to the first shards), so generation happens once.

    python bench/filter_balance_scale.py [--sizes=100000,1000000,5000000] \\
        [--records_per_shard=100000] [--num_classes=100] [--output=bench/filter_balance_scale.md]
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import data  # noqa: E402
from benchlib import machine  # noqa: E402  (bench/ is on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["100000", "1000000", "5000000"], "Numbers of records.")
flags.DEFINE_integer("records_per_shard", 100000, "Records per synthetic shard.")
flags.DEFINE_integer("num_classes", 100, "Classes.")
flags.DEFINE_float("k_fraction", 0.5, "K = k_fraction * N / num_classes (so some classes are "
                   "over-full and the rarest are duplicated).")
flags.DEFINE_string("work_dir", None, "Scratch directory (default: a new temp dir, deleted).")
flags.DEFINE_string("output", None, "Markdown file for the results (default: print only).")


# ----------------------------------------------------------------------------- synthetic records
# tf.train.Example wire format, written directly: building 5M Examples with the protobuf API takes
# minutes in Python. check_encoding() proves the bytes parse to what data.pseudo_label_example
# makes (the filter reads them with tf.io.parse_example and tf.train.Example like any record).

def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_entry(key, feature):  # one entry of Features.feature (map<string, Feature>)
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def _bytes_feature(value):
    return _field(1, _field(1, value))


def _float_feature(packed):
    return _field(2, _field(1, packed))


def _int64_feature(value):
    return _field(3, _field(1, _varint(value)))


def encode_records(images, ids, probabilities, true_labels):
    """Serialized tf.train.Examples of a batch, as in data.pseudo_label_example (keys sorted).

    All fields have a fixed size here (num_classes <= 128: one-byte varints), so every record has
    the same layout: constant tag/length prefixes followed by the field's bytes, built with numpy.
    """
    n, num_classes = probabilities.shape
    assert num_classes <= 128
    labels = probabilities.argmax(1)
    columns = [  # (key, feature builder, [n, width] uint8 payload)
        ("diagnostic/true_label", _int64_feature, true_labels.astype(np.uint8)[:, None]),
        ("image/encoded", _bytes_feature, images),
        ("image/id", _bytes_feature, ids),
        ("label", _int64_feature, labels.astype(np.uint8)[:, None]),
        ("prob", _float_feature, probabilities[np.arange(n), labels].astype("<f4")[:, None]),
        ("probabilities", _float_feature, probabilities.astype("<f4")),
    ]
    parts = []
    for key, feature, payload in columns:
        payload = payload.view(np.uint8).reshape(n, -1)
        if feature is _int64_feature:  # the varint of a value < 128 is the value's byte
            entry = _feature_entry(key, feature(0))
        else:
            entry = _feature_entry(key, feature(bytes(payload.shape[1])))
        prefix = np.frombuffer(entry[:len(entry) - payload.shape[1]], np.uint8)
        parts += [np.broadcast_to(prefix, (n, len(prefix))), payload]
    body = np.concatenate(parts, axis=1)
    head = np.frombuffer(_varint(1 << 3 | 2) + _varint(body.shape[1]), np.uint8)
    records = np.concatenate([np.broadcast_to(head, (n, len(head))), body], axis=1)
    return [row.tobytes() for row in records]


def check_encoding(num_classes):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(num_classes), 3).astype(np.float32)
    images = rng.integers(0, 256, (3, 64), np.uint8)
    ids = np.frombuffer(b"id/1id/2id/3", np.uint8).reshape(3, 4)
    ours = encode_records(images, ids, probs, np.array([7, 0, 127]))
    for i, true_label in enumerate([7, 0, 127]):
        theirs = data.pseudo_label_example(images[i].tobytes(), ids[i].tobytes().decode(),
                                           probs[i], true_label=true_label)
        assert tf.train.Example.FromString(ours[i]) == theirs, (ours[i], theirs)


def synthetic_shard(path, start, n, num_classes, seed):
    """n records: class frequencies from 0.2x to 1.8x the mean; top-1 confidence mostly
    Beta(4, 1.5) in [1/C, 1], 10% saturated at 1.0; image bytes are 64 random bytes."""
    rng = np.random.default_rng(seed)
    weights = 0.2 + 1.6 * np.arange(num_classes) / (num_classes - 1)
    labels = rng.choice(num_classes, n, p=weights / weights.sum())
    top = 1.0 / num_classes + (1 - 1.0 / num_classes) * rng.beta(4, 1.5, n)
    top[rng.random(n) < 0.1] = 1.0
    ids = np.array([b"syn/%010d" % i for i in range(start, start + n)])
    ids = ids.view(np.uint8).reshape(n, -1)
    with tf.io.TFRecordWriter(path) as writer:
        for lo in range(0, n, 10000):
            hi = min(n, lo + 10000)
            probs = np.repeat(((1 - top[lo:hi]) / (num_classes - 1))[:, None], num_classes, 1)
            probs[np.arange(hi - lo), labels[lo:hi]] = top[lo:hi]
            images = rng.integers(0, 256, (hi - lo, 64), np.uint8)
            for record in encode_records(images, ids[lo:hi], probs.astype(np.float32),
                                         labels[lo:hi]):
                writer.write(record)


# ----------------------------------------------------------------------------- measurement

# ru_maxrss survives fork + exec on Linux, so a child forked from this TensorFlow-sized process
# would report at least our own peak. A small launcher process (no TensorFlow) starts each stage.
_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:], stdout=sys.stderr)
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(
    f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


def run_stage(args, log_path):
    """Runs `python filter_balance.py args...`; returns (wall s, peak RSS MiB, CPU s) of it."""
    command = [sys.executable, os.path.join(ROOT, "filter_balance.py")] + args
    result = log_path + ".rusage"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    with open(log_path, "a") as log:
        subprocess.run([sys.executable, "-c", _LAUNCHER, result] + command, stderr=log, env=env,
                       check=True)
    seconds = time.perf_counter() - start
    status, maxrss_kib, cpu = open(result).read().split()
    if int(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log_path}")
    return seconds, int(maxrss_kib) / 1024, float(cpu)  # Linux: ru_maxrss in KiB


def main(argv):
    del argv
    check_encoding(FLAGS.num_classes)
    sizes = sorted(int(s) for s in FLAGS.sizes)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="filter_bench_")
    shards_dir = os.path.join(work, "shards")
    os.makedirs(shards_dir, exist_ok=True)
    per_shard, num_classes = FLAGS.records_per_shard, FLAGS.num_classes
    num_shards = -(-sizes[-1] // per_shard)
    start = time.perf_counter()
    for s in range(num_shards):
        path = os.path.join(shards_dir, common.shard_name("pred", s, num_shards))
        if not os.path.exists(path):
            n = min(per_shard, sizes[-1] - s * per_shard)
            synthetic_shard(path, s * per_shard, n, num_classes, seed=s)
    generation = time.perf_counter() - start
    shard_bytes = sum(os.path.getsize(os.path.join(shards_dir, f)) for f in os.listdir(shards_dir))
    print(f"generated {sizes[-1]:,} records ({shard_bytes / 2**30:.2f} GiB) in {generation:.0f}s",
          flush=True)

    rows = []
    for size in sizes:
        if size % per_shard:
            raise app.UsageError(f"size {size} is not a multiple of --records_per_shard")
        run = os.path.join(work, f"run{size}")
        inputs = os.path.join(run, "labels")
        os.makedirs(inputs)
        for s in range(size // per_shard):
            name = common.shard_name("pred", s, num_shards)
            os.symlink(os.path.join(shards_dir, name), os.path.join(inputs, name))
        k = int(FLAGS.k_fraction * size / num_classes)
        shared = [f"--input_pattern={inputs}", f"--work_dir={run}/work"]
        log = os.path.join(run, "log.txt")
        stages = {
            "stats": run_stage(["stats"] + shared, log),
            "merge": run_stage(["merge"] + shared + [f"--num_images_per_class={k}"], log),
            "write": run_stage(["write"] + shared + [f"--output_dir={run}/out"], log),
            "report": run_stage(["report", f"--work_dir={run}/work", f"--output_dir={run}/out"],
                                log),
        }
        summary = common.read_json(os.path.join(run, "out", "summary.json"))
        rows.append((size, k, summary, stages))
        print(size, {name: f"{t:.1f}s {m:.0f}MiB {c:.1f}s CPU"
                     for name, (t, m, c) in stages.items()}, flush=True)
        shutil.rmtree(os.path.join(run, "out"))  # keep the disk use bounded

    load = os.getloadavg()
    lines = [
        "# filter_balance.py at scale: time and peak memory vs number of records",
        "",
        f"Command: `python bench/filter_balance_scale.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"- Machine: {machine()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine: other jobs were running).",
        f"- Synthetic label_data.py outputs: {num_classes} classes, {per_shard:,} records per "
        f"shard, ~{shard_bytes / sizes[-1]:.0f} bytes per record (64-byte fake image, float32 "
        f"probabilities); class frequencies 0.2x..1.8x the mean, top-1 confidence Beta(4, 1.5), "
        f"10% at exactly 1.0. K = {FLAGS.k_fraction} x N / {num_classes}. Generated in "
        f"{generation:.0f}s.",
        "- Each stage is one process run from the command line (stats and write as a single job "
        "over all shards). Wall seconds include the Python/TensorFlow start-up (~4 s idle, more "
        "under load) and swing with the shared machine's load; CPU seconds (user + sys of that "
        "process) are steadier. records/s = N / wall seconds. Memory = that process's peak RSS "
        "(os.wait4 ru_maxrss, from a launcher without TensorFlow).",
        "",
        "| records N | shards | K | kept (unique) | stats wall s (CPU s) | stats rec/s | "
        "merge wall s | write wall s (CPU s) | write rec/s | report wall s | "
        "peak RSS MiB stats / merge / write / report |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, k, summary, st in rows:
        t = summary["totals"]
        lines.append(
            f"| {size:,} | {size // per_shard} | {k:,} | {t['kept']:,} ({t['unique']:,}) | "
            f"{st['stats'][0]:.1f} ({st['stats'][2]:.1f}) | {size / st['stats'][0]:,.0f} | "
            f"{st['merge'][0]:.1f} | {st['write'][0]:.1f} ({st['write'][2]:.1f}) | "
            f"{size / st['write'][0]:,.0f} | {st['report'][0]:.1f} | "
            f"{' / '.join(f'{st[s][1]:.0f}' for s in ('stats', 'merge', 'write', 'report'))} |")
    if len(rows) >= 2:
        lines.append("")
        lines.append("Linearity: CPU seconds per million records beyond the smallest size "
                     "(start-up cancels out):")
        lines.append("")
        (n0, _, _, a) = rows[0]
        for size, _, _, b in rows[1:]:
            per_m = {s: (b[s][2] - a[s][2]) / (size - n0) * 1e6 for s in ("stats", "write")}
            lines.append(f"- {n0:,} -> {size:,}: stats {per_m['stats']:.1f} CPU s/M records, "
                         f"write {per_m['write']:.1f} CPU s/M records.")
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
    if not FLAGS.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    app.run(main)
