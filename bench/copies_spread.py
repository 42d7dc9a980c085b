"""How often one image appears in one unlabeled batch: balancing copies through filter_balance.py
and data.py's reader, before and after the copy rounds, against the reference's mechanism.

Simulated on image ids (no pixels): the same tf.data steps in the same order, in numpy:

  reference  filter_unlabel.py writes a shard's kept images, each `include_copy` times, into a
             list flushed every >= 10,000 records after a shuffle (L245-253, L256-265, L336-338);
             data_input.py shuffles the files (L422-423), interleaves 64 of them (L317, L435-437)
             and, with main.py's default --use_cache=True (main.py L201-202), shuffles 16K
             records (L439-441). One input pipeline (one host) forms the whole batch.
  ours       filter_balance.py writes one output shard per input shard; data.py's
             pseudo_labeled_dataset shuffles the files, interleaves min(files, 16) of them, shuffles
             a buffer (1,024 records for ImageNet-size images, 16K for small ones), repeats each
             record `copies` times through a round-robin over min(buffer, 1,024) records and
             shuffles the buffer again. "before": the kept records once each in input order with
             their copies; "after": the same laid out in filter_balance's copy rounds
             (filter_balance.round_copies, the function `write` uses).

Per batch: the most copies of one image in it. Reported: their mean and max over batches, and the
share of batches holding some image twice or more.

  python bench/copies_spread.py   # prints the table of bench/copies_spread.md
"""
import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchlib  # noqa: E402
import filter_balance  # noqa: E402

flags.DEFINE_integer("paper_files", 72, "Simulated shards of the paper's 1,024 (each of paper size).")
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- tf.data, in numpy

def shuffle(stream, buffer, rng):
    """tf.data.Dataset.shuffle: a random element of a `buffer`-slot buffer, refilled in place."""
    buf, rest, out = list(stream[:buffer]), iter(stream[buffer:]), np.empty_like(stream)
    for k, u in enumerate(rng.random(len(stream))):
        j = int(u * len(buf))
        out[k] = buf[j]
        buf[j] = next(rest, None)
        if buf[j] is None:  # input exhausted: the buffer shrinks
            buf[j] = buf[-1]
            buf.pop()
    return out


def interleave(sources, cycle):
    """tf.data.Dataset.interleave(block_length=1): one element of each of `cycle` open sources in
    turn; an exhausted source's slot takes the next source."""
    sources, out, k = (s for s in sources if len(s)), [], 0
    slots = [[s, 0] for s in (next(sources, None) for _ in range(cycle)) if s is not None]
    while slots:
        k %= len(slots)
        source, pos = slots[k]
        out.append(source[pos])
        if pos + 1 < len(source):
            slots[k][1], k = pos + 1, k + 1
        elif (nxt := next(sources, None)) is None:
            del slots[k]
        else:
            slots[k], k = [nxt, 0], k + 1
    return np.array(out)


def repeat_copies(ids, copies, cycle):
    """data.py's copies_of interleave: each record `copies` times, round-robin over `cycle`."""
    return interleave((np.full(c, i) for i, c in zip(ids, copies)), cycle)


def batch_stats(stream, batch, duplicated):
    """Per batch, the most copies of one image: their mean and max over batches, the share of
    batches with some image twice or more; and the copies of a duplicated image (copies >= 2, the
    bool array `duplicated` by id) in a batch that holds it, averaged over (image, batch) pairs."""
    n = len(stream) // batch
    most, pairs, copies = [], 0, 0
    for row in stream[:n * batch].reshape(n, batch):
        ids, counts = np.unique(row, return_counts=True)
        most.append(counts.max())
        pairs += duplicated[ids].sum()
        copies += counts[duplicated[ids]].sum()
    most = np.array(most)
    return most.mean(), most.max(), (most >= 2).mean(), copies / max(pairs, 1)


# ----------------------------------------------------------------------------- the pipelines

def reference(shards, rng, flush=10000, cycle=64, buffer=16 * 1024):
    files = []
    for ids, copies in shards:
        out, pending = [], []
        for i, c in zip(ids, copies):
            pending += [i] * c
            if len(pending) >= flush:
                rng.shuffle(pending)
                out += pending
                pending = []
        rng.shuffle(pending)
        files.append(np.array(out + pending))
    order = rng.permutation(len(files))
    return shuffle(interleave((files[k] for k in order), cycle), buffer, rng)


def ours(shards, rng, buffer, rounds):
    """rounds=None: before (input order, copies once each); else filter_balance's copy rounds."""
    if rounds is not None:
        laid_out = []
        for ids, copies in shards:
            per_round = filter_balance.round_copies(copies, np.arange(len(ids)), rounds)
            r, i = np.nonzero(per_round.T)  # round-major: round 0's records, then round 1's, ...
            laid_out.append((ids[i], per_round[i, r]))
        shards = laid_out
    ids = np.concatenate([i for i, _ in shards])
    copies = np.concatenate([c for _, c in shards])
    starts = np.cumsum([0] + [len(i) for i, _ in shards])
    files = [np.arange(starts[k], starts[k + 1]) for k in rng.permutation(len(shards))]
    records = shuffle(interleave(files, min(len(files), 16)), buffer, rng)
    return shuffle(repeat_copies(ids[records], copies[records], min(buffer, 1024)), buffer, rng)


# ----------------------------------------------------------------------------- the data

def paper_classes(k=130000, classes=1000, unique=81e6, sigma=1.5, seed=0):
    """Per-class eligible counts N_c, lognormal over classes, calibrated so that sum(min(N_c, K))
    is the paper's 81M unique of 130M (Sec. 3.1). sigma=1.5 gives 254M eligible of JFT's 300M."""
    z = np.random.default_rng(seed).standard_normal(classes)
    lo, hi = 0.0, 30.0
    for _ in range(80):
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if np.minimum(np.exp(mu + sigma * z), k).sum() < unique else (lo, mu)
    return np.maximum(np.round(np.exp(mu + sigma * z)), 1).astype(int)


def kept_shards(eligible, k, num_files, per_file, rng):
    """`num_files` output shards of `per_file` unique kept images each, images in random order:
    (ids, copies) per shard; copies K // N or K // N + 1 (K mod N of the N get one more)."""
    unique = np.minimum(eligible, k)
    base, extra = np.divmod(k, eligible)
    p_extra = np.where(eligible < k, extra / eligible, 0.0)
    shards, next_id = [], 0
    for _ in range(num_files):
        cls = rng.choice(len(eligible), per_file, p=unique / unique.sum())
        copies = np.where(eligible[cls] < k, base[cls], 1) + (rng.random(per_file) < p_extra[cls])
        shards.append((np.arange(next_id, next_id + per_file), copies.astype(np.int64)))
        next_id += per_file
    return shards


def main(_):
    rng = np.random.default_rng(0)
    lines = [f"Machine: {benchlib.machine()}", ""]
    rows = []
    fmt = lambda s: f"{s[0]:.2f} / {s[1]} / {100 * s[2]:.0f}% / {s[3]:.2f}"

    def measure(scale, shards, buffer, rounds, batches):
        t = time.time()
        streams = (reference(shards, rng), ours(shards, rng, buffer, None),
                   ours(shards, rng, buffer, rounds))
        n = len(streams[0])
        duplicated = np.zeros(sum(len(i) for i, _ in shards), bool)
        for ids, copies in shards:
            duplicated[ids] = copies >= 2
        for b in batches:
            rows.append((scale, f"{len(shards)} x {len(shards[0][0]):,} unique ({n:,} records)",
                         rounds, b, *(batch_stats(s, b, duplicated) for s in streams)))
            print(f"{scale}, batch {b}: {', '.join(map(fmt, rows[-1][4:]))} "
                  f"({time.time() - t:.0f} s)", flush=True)

    # Paper scale: 130M kept (81M unique) in 1,024 shards (ImageNet's train-*-of-01024 layout):
    # 79K unique per shard; `paper_files` of them are simulated.
    eligible = paper_classes()
    measure("paper (K=130K)", kept_shards(eligible, 130000, FLAGS.paper_files, int(81e6 / 1024), rng),
            1024, min(filter_balance.ROUNDS_MAX, int(np.ceil(130000 / eligible.min()))),
            (512, 4096, 28672))

    # The presets' scale (Fashion-MNIST, 8 unlabeled shards of 7,000 images, 10 classes, small
    # images: a 16K shuffle buffer): quick's iteration-1 class counts
    # (bench/noisy_student_quick/seed0-20261201), K = 4,000; and a stressed case where a weak teacher leaves
    # one class 50 eligible images (80 copies each).
    quick = np.array([6097, 5609, 4983, 6505, 8003, 5159, 2288, 6295, 5447, 5614])
    stressed = quick.copy()
    stressed[6] = 50
    for name, counts in (("quick (K=4000)", quick), ("stressed: 50 in one class", stressed)):
        unique = int(np.minimum(counts, 4000).sum())
        measure(name, kept_shards(counts, 4000, 8, unique // 8, rng), 16384,
                min(filter_balance.ROUNDS_MAX, int(np.ceil(4000 / counts.min()))),
                (128, 384, 512))

    lines += ["| scale | simulated shards | rounds | batch | reference | ours before | ours after |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {r} | {c:,} | {fmt(d)} | {fmt(e)} | {fmt(f)} |"
              for a, b, r, c, d, e, f in rows]
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
