"""Data filtering and balancing of pseudo-labeled images (Noisy Student, step 3).

Paper: Xie et al., "Self-training with Noisy Student improves ImageNet classification" (CVPR 2020),
Sec. 2, Algorithm 1 step 3 and "Other Techniques" (data filtering and balancing), with the
numbers of Sec. 3.1 "Experiment Details": keep images whose top-1 confidence is >= 0.3; per class
keep at most K (130K) images, the most confident first; classes with fewer than K images are
duplicated up to K. `select()` below is the whole rule on arrays in memory.
Reference: filter_unlabel.py of google-research/noisystudent (a 0.01 histogram, then a filter pass).

On one machine, one command runs the four stages below; rerun it to finish a killed run (a shard's
stats are redone when its size, mtime or label_data.py summary changed; a shard whose size or
record count disagrees with that summary is one error naming it):

  python filter_balance.py all --input_pattern=LABELS_DIR --work_dir=WORK --output_dir=OUT \\
      --num_images_per_class=K [--min_threshold=0.3] [--seed=0] [--materialize_duplicates]

On a cluster, `all`'s four stages: stats (per-class confidence histograms) and write (the kept
records -> OUT/<input basename>), one job per group of shards; merge (thresholds and the exact
per-shard picks -> WORK/summary.json, class_balance.png, plan/<shard>.json) and report (checks
the written counts against the plan, then publishes OUT/summary.json and class_balance.png):

  python filter_balance.py stats --input_pattern=LABELS_DIR --work_dir=WORK --num_shards=N \\
      --shard_id=I [--min_threshold=0.3]
  python filter_balance.py merge --input_pattern=LABELS_DIR --work_dir=WORK \\
      --num_images_per_class=K [--min_threshold=0.3] [--seed=0]
  python filter_balance.py write --input_pattern=LABELS_DIR --work_dir=WORK --output_dir=OUT \\
      --num_shards=N --shard_id=I [--seed=0] [--materialize_duplicates]
  python filter_balance.py report --work_dir=WORK --output_dir=OUT

What "the K most confident" means exactly (ties and resolution):
- A record is eligible when float64(prob) >= --min_threshold (prob: the float32 top-1 probability).
- Confidence is bucketed as b = min(floor(prob * B), B) with B = --confidence_bins = 10,000
  (a 1e-4 grid, 100x finer than the reference's 0.01). Records in one bucket count as tied.
- Class c with N_c >= K eligible records: merge finds the bucket b* where the count from the top
  reaches K; every record above b* is kept and of the T records in b* exactly m = K - (count above
  b*): exactly K records, a global top-K by (bucket, tie-break).
- The tie-break, a seeded uniform subset of the T tied records without a third pass: merge splits m
  over the shards with a seeded multivariate hypergeometric draw (shard s: m_s of its T_s), and
  `write` picks m_s of the T_s in file order by selection sampling (Knuth's Algorithm S), each
  record's coin a keyed BLAKE2b hash of (seed, record id). Same inputs and seed, same bytes.
- Class c with 0 < N_c < K: every eligible record is kept with `copies` = K // N_c, and K mod N_c of
  them (the same seeded choice) get one copy more: sum(copies) == K. Empty classes stay empty.

Also WORK/stats/<shard>.json and WORK/counts/<shard>.json. summary.json: per class seen, above
threshold, threshold, kept (= sum of copies), unique, copies min/max; totals. Output records are
the input records unchanged plus `copies` (int64 >= 1; --materialize_duplicates: written `copies`
times with copies=1). An output shard is R = min(largest copies, 256) copy rounds one after the
other, each with its kept records in input order; the c copies of the n-th kept record fall evenly
over the rounds at phase n mod R (round_copies), ~1/c of the shard apart, so one student batch
rarely holds two (bench/copies_spread.md).

Memory is O(num_classes * confidence_bins) per job (write: plus R open round files), independent of
the number of records (records are streamed); time is linear in the number of records.
"""

import hashlib
import json
import os

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf


SUBCOMMANDS = ("all", "stats", "merge", "write", "report")
SUMMARY_FILE = "summary.json"
PLOT_FILE = "class_balance.png"
CONFIDENCE_BINS = 10000
READ_BATCH = 4096
ROUNDS_MAX = 256

# Fields read by this stage. Defaults mark a missing field so the error can name the record.
_PARSE_SPEC = {
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "prob": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    "image/id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


# ----------------------------------------------------------------------------- the rule

def select(labels, probs, ids, k, min_threshold=0.3, seed=0, files=None, bins=CONFIDENCE_BINS):
    """The copies of each record (0: dropped): the whole rule (module docstring) on in-memory
    arrays; `files`: each record's input file index (the tie-break depends on it). The sharded
    stages write exactly these copies."""
    labels, ids = np.asarray(labels), np.asarray(ids, dtype=object)
    files = np.zeros(len(labels), np.int64) if files is None else np.asarray(files)
    bucket = eligible_bucket(probs, min_threshold, bins)
    copies = np.zeros(len(labels), np.int64)
    for c in np.unique(labels[bucket >= 0]):
        mine = np.flatnonzero((labels == c) & (bucket >= 0))
        plan = class_plan(np.bincount(bucket[mine], minlength=bins + 1), k, min_threshold, bins)
        copies[mine] = np.where(bucket[mine] > plan["threshold_bucket"], plan["base_copies"], 0)
        tied = mine[bucket[mine] == plan["threshold_bucket"]] if plan["kind"] == "top_k" else mine
        shards, counts = np.unique(files[tied], return_counts=True)
        picks = split_picks(plan["picks"], counts, np.random.default_rng([seed, int(c)]))
        for shard, n, m in zip(shards, counts, picks):
            in_shard = tied[files[tied] == shard]
            copies[in_shard] += tie_break(ids[in_shard], m, n, seed)
    return copies


def eligible_bucket(prob, min_threshold, bins):
    """Confidence bucket on a 1/bins grid (monotone in prob; prob >= 1 -> bins); -1: ineligible."""
    prob = np.asarray(prob, np.float64)
    # NOTE: prob >= threshold as in the reference (the paper says "higher than 0.3").
    return np.where(prob >= min_threshold,
                    np.minimum(np.floor(prob * bins), bins).astype(np.int64), -1)


def class_plan(hist_c, k, min_threshold, bins):
    """Threshold and tie-break of one class from its eligible-confidence histogram."""
    # NOTE: the reference keeps the whole 0.01 bucket at its threshold and thins/duplicates by
    # unseeded stochastic rounding (sum of copies ~ K); here a 1e-4 grid and a seeded exact choice
    # of the tied (top_k) or extra-copy (duplicate) records: every non-empty class sums to K.
    eligible = int(hist_c.sum())
    if eligible >= k:  # over-full: everything above bucket b*, plus `picks` of the tied bucket b*
        b_star = bins - int(np.argmax(np.cumsum(hist_c[::-1]) >= k))
        return {"kind": "top_k", "threshold_bucket": b_star,
                "threshold": max(b_star / bins, min_threshold), "candidates": int(hist_c[b_star]),
                "picks": k - int(hist_c[b_star + 1:].sum()), "base_copies": 1, "kept": k,
                "unique": k, "copies": [1, 1]}
    if eligible > 0:  # under-full: all kept, K // N copies each, K % N random ones get one more
        base, extra = divmod(k, eligible)
        return {"kind": "duplicate", "threshold_bucket": -1, "threshold": min_threshold,
                "candidates": eligible, "picks": extra, "base_copies": base, "kept": k,
                "unique": eligible, "copies": [base, base + 1 if extra else base]}
    return {"kind": "empty", "threshold_bucket": -1, "threshold": min_threshold, "candidates": 0,
            "picks": 0, "base_copies": 0, "kept": 0, "unique": 0, "copies": [0, 0]}


def split_picks(picks, candidates_per_shard, rng):
    """Splits `picks` among shards as a uniform random subset of all candidates would fall: a
    multivariate hypergeometric draw, one shard at a time (the parts sum to `picks`)."""
    remaining = int(sum(candidates_per_shard))
    parts = []
    for n in candidates_per_shard:
        take = int(rng.hypergeometric(n, remaining - n, picks)) if picks and n else 0
        parts.append(take)
        picks -= take
        remaining -= n
    assert picks == 0
    return parts


def round_copies(copies, index, rounds):
    """[records, rounds]: how many of each record's `copies` go to each copy round; rows sum to
    `copies`. Record `index` (its place in the shard) starts at phase index % rounds, and its
    copies fall evenly over the rounds: c <= rounds copies land in c rounds ~rounds / c apart."""
    phase = np.asarray(index)[:, None] % rounds + np.arange(rounds)
    copies = np.asarray(copies)[:, None]
    return (phase + 1) * copies // rounds - phase * copies // rounds


def tie_break(ids, picks, candidates, seed):
    """Which of the candidate records `ids` (in file order) are picked, `picks` among the
    `candidates` (>= len(ids)) left in the shard: Knuth's Algorithm S, u * (candidates left) <
    (picks left) with u in [0, 1) a keyed BLAKE2b hash of (seed, id), in integer arithmetic."""
    key = str(int(seed)).encode()
    picked, picks = np.zeros(len(ids), bool), int(picks)
    for j, record_id in enumerate(ids):
        u53 = int.from_bytes(hashlib.blake2b(record_id, digest_size=8, key=key).digest(),
                             "little") >> 11
        picked[j] = u53 * (int(candidates) - j) < (picks << 53)
        picks -= int(picked[j])
    return picked


# ----------------------------------------------------------------------------- reading records

def input_files(pattern):
    """Sorted input shards; their basenames name every per-shard file, so they must be unique."""
    files = common.list_files(pattern, "pseudo-labeled (label_data.py output)")
    names = [os.path.basename(f) for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise common.UserError(f"--input_pattern={pattern} matches several files named {dup[:5]}; "
                               "per-shard outputs are keyed by basename")
    return files


def labels_summary_path(path):
    """label_data.py's summary of the output shard `path`: <its dir>/summaries/<name>.json."""
    return os.path.join(os.path.dirname(path), "summaries", os.path.basename(path) + ".json")


def shard_source(path):
    """The freshness key of a labels shard's stats and plan: size, mtime and label_data.py's
    provenance key and record count; UserError if its size differs from the one its summary
    recorded (cut short or replaced after labeling)."""
    stat = tf.io.gfile.stat(path)
    summary_file = labels_summary_path(path)
    summary = common.read_json(summary_file, "label_data.py summary", default=None) or {}
    recorded = summary.get("output_bytes")
    if recorded is not None and recorded != stat.length:
        raise common.UserError(f"{path} has {stat.length} bytes, but {summary_file} says "
                               f"{recorded} ({summary.get('count')} records): cut short or "
                               "replaced after labeling; rerun label_data.py (it relabels it)")
    return {"size_bytes": stat.length, "mtime_nsec": stat.mtime_nsec,
            "labels": summary.get("provenance_key"), "count": summary.get("count")}


def work_file(work_dir, kind, name):
    """WORK/<stats|plan|counts>/<shard name>.json"""
    return os.path.join(work_dir, kind, name + ".json")


def num_classes_of(serialized, path, index):
    """Length of the probability vector of one record (float32 list or float16 bytes)."""
    feature = tf.train.Example.FromString(serialized).features.feature
    if "probabilities" in feature:
        return len(feature["probabilities"].float_list.value)
    if "probabilities/float16" in feature:
        return len(feature["probabilities/float16"].bytes_list.value[0]) // 2
    raise common.UserError(f"{path}: record {index} has neither 'probabilities' nor "
                           "'probabilities/float16' (is this a label_data.py output?)")


def _parse_batch(serialized, path, start):
    """tf.io.parse_example on one batch; a bad record -> UserError naming file and record index."""
    try:
        return {k: v.numpy() for k, v in tf.io.parse_example(serialized, _PARSE_SPEC).items()}
    except tf.errors.InvalidArgumentError:
        for i in range(len(serialized)):  # find the culprit
            try:
                tf.io.parse_example(serialized[i:i + 1], _PARSE_SPEC)
            except tf.errors.InvalidArgumentError as e:
                raise common.UserError(f"{path}: record {start + i} is not a valid pseudo-labeled "
                                       f"tf.train.Example ({common.tf_error_line(e)})") from None
        raise


def read_batches(path, num_classes=None, batch_size=READ_BATCH, expected_count=None):
    """Streams a label_data.py output shard: dicts of "serialized", "label", "prob", "id" (image/id,
    else image/filename, else b"<basename>:<index>") and "num_classes" (given, else the first
    record's). A missing or out-of-range field, or a record count other than `expected_count`
    (label_data.py's summary), is a UserError naming file and record."""
    batches = iter(tf.data.TFRecordDataset(path, buffer_size=1 << 22).batch(batch_size).prefetch(2))
    start, framed_bytes = 0, 0
    while True:
        try:
            serialized = next(batches).numpy()
        except StopIteration:
            break
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise common.UserError(f"{path}: corrupt TFRecord file after record {start} "
                                   f"({common.tf_error_line(e)})") from None
        parsed = _parse_batch(serialized, path, start)
        label, prob = parsed["label"], parsed["prob"]
        num_classes = num_classes or num_classes_of(serialized[0], path, start)
        bad = np.flatnonzero((label < 0) | (label >= num_classes))
        if bad.size:
            i = bad[0]
            what = ("has no 'label'" if label[i] < 0
                    else f"has label {label[i]} >= {num_classes} classes")
            raise common.UserError(f"{path}: record {start + i} {what}")
        bad = np.flatnonzero(~np.isfinite(prob) | (prob < 0) | (prob > 1.001))
        if bad.size:
            i = bad[0]
            what = "has no 'prob'" if prob[i] == -1 else f"has prob {prob[i]} outside [0, 1]"
            raise common.UserError(f"{path}: record {start + i} {what}")
        ids = np.array([rid or name or f"{os.path.basename(path)}:{start + j}".encode()
                        for j, (rid, name) in enumerate(zip(parsed["image/id"],
                                                            parsed["image/filename"]))], object)
        yield {"serialized": serialized, "label": label, "prob": prob, "id": ids,
               "num_classes": num_classes}
        start += len(serialized)
        framed_bytes += 16 * len(serialized) + sum(map(len, serialized))
    # NOTE: TFRecordDataset silently drops a truncated last record; a TFRecord frame is 16 bytes
    # (length, 2 CRCs) + the record, so the frames must add up to the file size.
    size = tf.io.gfile.stat(path).length
    if framed_bytes != size:
        raise common.UserError(f"{path}: truncated or not an uncompressed TFRecord file "
                               f"({size - framed_bytes} bytes after record {start - 1})")
    if expected_count is not None and start != expected_count:
        raise common.UserError(f"{path} has {start} records, but {labels_summary_path(path)} "
                               f"says {expected_count}: cut short or replaced after labeling; "
                               "rerun label_data.py (it relabels it)")


# ----------------------------------------------------------------------------- stage 1: stats

def shard_stats(path, min_threshold, bins, source=None):
    """Per-class counts and confidence histogram of eligible records of one shard (a small dict)."""
    source = source or shard_source(path)
    progress = common.Progress(f"stats {os.path.basename(path)}", unit="records")
    hist = np.zeros((0, bins + 2), np.int64)  # column 0: below the threshold; 1 + b: bucket b
    for batch in read_batches(path, expected_count=source["count"]):
        if not len(hist):
            hist = np.zeros((batch["num_classes"], bins + 2), np.int64)
        bucket = eligible_bucket(batch["prob"], min_threshold, bins)
        np.add.at(hist, (batch["label"], 1 + bucket), 1)
        progress.add(len(batch["label"]))
    progress.update(progress.done, force=True)
    eligible = hist[:, 1:]
    return {"file": os.path.basename(path), "input": os.path.abspath(path), "source": source,
            "num_records": progress.done, "num_classes": len(hist) or None,
            "min_threshold": min_threshold, "confidence_bins": bins, "seen": hist.sum(1).tolist(),
            "above_threshold": eligible.sum(1).tolist(),
            "histogram": [{"bins": np.flatnonzero(row).tolist(), "counts": row[row > 0].tolist()}
                          for row in eligible]}


def run_stats(files, work_dir, min_threshold, bins):
    """Writes WORK/stats/<shard>.json for each file; skips files whose stats are there, made
    with the same flags from the same source (shard_source: not only the same size)."""
    if not 0.0 <= min_threshold <= 1.0:
        raise common.UserError(f"--min_threshold must be in [0, 1], got {min_threshold}")
    if bins < 100:
        raise common.UserError(f"--confidence_bins must be >= 100, got {bins}")
    for k, path in enumerate(files):
        out = work_file(work_dir, "stats", os.path.basename(path))
        old = common.read_json(out, "stats file", default={})
        source = shard_source(path)
        if (old.get("min_threshold") == min_threshold and old.get("confidence_bins") == bins
                and old.get("source") == source):
            logging.info("stats %d/%d: %s done before, skipped", k + 1, len(files), out)
            continue
        if old:
            logging.info("stats %d/%d: %s is stale (the shard or the flags changed), redone",
                         k + 1, len(files), out)
        common.write_json(out, shard_stats(path, min_threshold, bins, source))
        logging.info("stats %d/%d: wrote %s", k + 1, len(files), out)


# ----------------------------------------------------------------------------- stage 2: merge

def _dense_histogram(stats, bins):
    hist = np.zeros((len(stats["histogram"]), bins + 1), np.int64)
    for c, row in enumerate(stats["histogram"]):
        hist[c, row["bins"]] = row["counts"]
    return hist


def merge(files, work_dir, k, min_threshold, seed):
    """Reads all per-shard stats; returns (summary dict, {shard name: plan dict}). Two passes over
    the small stats files (sum, then per-shard tie counts)."""
    if k is None or k < 1:
        raise common.UserError(f"--num_images_per_class must be >= 1, got {k}")
    if seed < 0:
        raise common.UserError(f"--seed must be >= 0, got {seed}")
    names = [os.path.basename(f) for f in files]
    paths = [work_file(work_dir, "stats", n) for n in names]
    missing = [i for i, p in enumerate(paths) if not tf.io.gfile.exists(p)]
    if missing:
        raise common.UserError(
            f"stats missing for {len(missing)} of {len(names)} shards (input file indices "
            f"{missing}): {', '.join(names[i] for i in missing)}; run `filter_balance.py stats` "
            f"for them (file i belongs to --shard_id = i % --num_shards) into "
            f"{os.path.join(work_dir, 'stats')}")

    # Pass 1: global per-class histograms.
    first, hist, seen, num_records, sources = None, 0, 0, [], []
    for name, path in zip(names, paths):
        stats = common.read_json(path, "stats file")
        if stats.get("file") != name:
            raise common.UserError(f"{path} holds the stats of {stats.get('file')!r}, not {name!r}")
        if stats["min_threshold"] != min_threshold:
            raise common.UserError(
                f"{path} was computed with --min_threshold={stats['min_threshold']} but merge has "
                f"--min_threshold={min_threshold}: rerun stats with the same flag")
        num_records.append(stats["num_records"])
        sources.append(stats.get("source"))
        if stats["num_classes"] is None:  # empty shard
            continue
        first = first or stats
        for key in ("confidence_bins", "num_classes"):
            if stats[key] != first[key]:
                raise common.UserError(f"{path} has {key}={stats[key]}, other shards {first[key]}")
        hist = hist + _dense_histogram(stats, first["confidence_bins"])
        seen = seen + np.asarray(stats["seen"], np.int64)
    if first is None:
        raise common.UserError(f"all {len(names)} input shards are empty")
    num_classes, bins = first["num_classes"], first["confidence_bins"]
    classes = [class_plan(hist[c], k, min_threshold, bins) for c in range(num_classes)]
    empty = [c for c, plan in enumerate(classes) if plan["kind"] == "empty"]
    if len(empty) == num_classes:
        raise common.UserError(f"no record of the {int(seen.sum())} in {len(names)} shards has "
                               f"confidence >= --min_threshold={min_threshold}: nothing to keep "
                               "(is the teacher trained?)")
    if empty:
        logging.warning("classes without any record >= %s stay empty: %s", min_threshold, empty)

    # Pass 2: each shard's tied (top_k) or duplicated (duplicate) candidates, then the seeded split.
    kind = np.array([p["kind"] for p in classes])
    threshold_bucket = np.array([p["threshold_bucket"] for p in classes])
    candidates = np.zeros((len(names), num_classes), np.int64)
    for s, path in enumerate(paths):
        stats = common.read_json(path, "stats file")
        if stats["num_classes"] is not None:
            shard_hist = _dense_histogram(stats, bins)
            candidates[s] = np.select([kind == "top_k", kind == "duplicate"], [
                shard_hist[np.arange(num_classes), threshold_bucket], shard_hist.sum(1)])
    picks = np.zeros_like(candidates)
    for c, plan in enumerate(classes):
        assert candidates[:, c].sum() == plan["candidates"]
        picks[:, c] = split_picks(plan["picks"], candidates[:, c].tolist(),
                                  np.random.default_rng([seed, c]))
        plan.update({"class": c, "seen": int(seen[c]), "above_threshold": int(hist[c].sum())})

    totals = {key: int(sum(p[key] for p in classes))
              for key in ("seen", "above_threshold", "kept", "unique")}
    totals.update(num_records=int(sum(num_records)), num_shards=len(names),
                  num_classes_below_k=sum(p["kind"] == "duplicate" for p in classes),
                  num_empty_classes=len(empty))
    config = {"num_images_per_class": k, "min_threshold": min_threshold, "confidence_bins": bins,
              "seed": seed, "num_classes": num_classes, "shards": names,
              "copy_rounds": min(ROUNDS_MAX, max(p["copies"][1] for p in classes))}  # >= 1
    fingerprint = hashlib.sha256(json.dumps([config, classes, picks.tolist(), sources],
                                            sort_keys=True).encode()).hexdigest()[:16]
    summary = {"config": config, "plan_fingerprint": fingerprint, "totals": totals,
               "thresholds": [p["threshold"] for p in classes], "classes": classes}
    plans = {}
    for s, name in enumerate(names):
        nz = np.flatnonzero(candidates[s])
        plans[name] = {"file": name, "num_records": num_records[s], "source": sources[s],
                       "plan_fingerprint": fingerprint, "classes": nz.tolist(),
                       "candidates": candidates[s, nz].tolist(), "picks": picks[s, nz].tolist()}
    return summary, plans


def plot_class_balance(summary, path):
    """Bar chart: images per predicted class before (all / confident) and after balancing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes, k = summary["classes"], summary["config"]["num_images_per_class"]
    x = np.arange(len(classes))
    get = lambda key: np.array([p[key] for p in classes])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(classes) * 0.08), 6), sharex=True)
    width = 0.8 if len(classes) <= 100 else 1.0
    top.bar(x, get("seen"), width, color="lightgray", label="predicted (all)")
    top.bar(x, get("above_threshold"), width, color="tab:blue",
            label=f"confidence >= {summary['config']['min_threshold']}")
    top.set_ylim(0, 1.3 * max(1, get("seen").max()))
    top.set_title("before: teacher's pseudo-labels per class")
    top.legend(fontsize=8, loc="upper right", ncols=2)
    unique = get("unique")
    bottom.bar(x, unique, width, color="tab:green", label="unique images")
    bottom.bar(x, get("kept") - unique, width, bottom=unique, color="tab:orange",
               label="duplicates (copies > 1)")
    bottom.axhline(k, color="k", lw=0.8, ls="--", label=f"K = {k}")
    bottom.set_ylim(0, 1.3 * max(k, get("kept").max()))
    bottom.set_title("after filtering and balancing (training examples per class)")
    bottom.set_xlabel("class")
    bottom.legend(fontsize=8, loc="upper right", ncols=3)
    fig.tight_layout()
    common.write_png(fig, path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def run_merge(files, work_dir, k, min_threshold, seed):
    """merge(), written to WORK (plans, summary.json, the plot) unless the same plan is there."""
    summary, plans = merge(files, work_dir, k, min_threshold, seed)
    summary_file = os.path.join(work_dir, SUMMARY_FILE)
    if (common.read_json(summary_file, default=None) == summary
            and tf.io.gfile.exists(os.path.join(work_dir, PLOT_FILE))
            and all(common.read_json(work_file(work_dir, "plan", name), default=None) == plan
                    for name, plan in plans.items())):
        logging.info("merge: %s done before, skipped", summary_file)
        return summary
    for name, plan in plans.items():
        common.write_json(work_file(work_dir, "plan", name), plan)
    common.write_json(summary_file, summary)
    plot_class_balance(summary, os.path.join(work_dir, PLOT_FILE))
    t = summary["totals"]
    logging.info("merge: %d shards, %d records, %d above %.3g, kept %d (%d unique) in %d classes "
                 "(%d duplicated, %d empty) -> %s", t["num_shards"], t["num_records"],
                 t["above_threshold"], min_threshold, t["kept"], t["unique"],
                 summary["config"]["num_classes"], t["num_classes_below_k"], t["num_empty_classes"],
                 summary_file)
    return summary


# ----------------------------------------------------------------------------- stage 3: write

def with_copies(serialized, copies):
    """The input record plus the int64 feature `copies` (deterministic serialization)."""
    example = tf.train.Example.FromString(serialized)
    example.features.feature["copies"].CopyFrom(
        tf.train.Feature(int64_list=tf.train.Int64List(value=[copies])))
    return example.SerializeToString(deterministic=True)


def write_shard(path, output_path, summary, plan, materialize_duplicates=False):
    """Streams one shard and writes its kept records (select() on a stream, with merge's summary
    and this shard's plan); returns the per-class counts written."""
    config = summary["config"]
    num_classes, bins, seed = config["num_classes"], config["confidence_bins"], config["seed"]
    per_class = lambda key: np.array([p[key] for p in summary["classes"]])
    threshold_bucket, base_copies = per_class("threshold_bucket"), per_class("base_copies")
    duplicated = per_class("kind") == "duplicate"
    left, picks = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    left[plan["classes"]], picks[plan["classes"]] = plan["candidates"], plan["picks"]
    changed = "the file changed after `stats`; rerun stats and merge"
    kept, unique = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    rounds, written, n_kept = config["copy_rounds"], 0, 0
    progress = common.Progress(f"write {os.path.basename(path)}", unit="records")
    # NOTE: the reference writes every copy and shuffles 10K-record flushes; here the kept records
    # lie in `rounds` copy rounds (round_copies), each written once with its count (`copies`, the
    # reader repeats it). The reference's sample JPEGs are not written.
    with common.atomic_output(output_path) as tmp:
        parts = [tmp] if rounds == 1 else [f"{tmp}.round{r}" for r in range(rounds)]
        writers = [tf.io.TFRecordWriter(part) for part in parts]
        try:
            for batch in read_batches(path, num_classes, expected_count=plan["source"]["count"]):
                label = batch["label"]
                bucket = eligible_bucket(batch["prob"], config["min_threshold"], bins)
                copies = np.where(bucket > threshold_bucket[label], base_copies[label], 0)
                tied = (bucket >= 0) & (duplicated[label] | (bucket == threshold_bucket[label]))
                for c in np.unique(label[tied]):
                    mine = np.flatnonzero(tied & (label == c))
                    if len(mine) > left[c]:
                        raise common.UserError(f"{path} has more candidates of class {c} than "
                                               f"its stats say: {changed}")
                    picked = tie_break(batch["id"][mine], picks[c], left[c], seed)
                    copies[mine] += picked
                    left[c] -= len(mine)
                    picks[c] -= picked.sum()
                chosen = np.flatnonzero(copies)
                per_round = round_copies(copies[chosen], n_kept + np.arange(len(chosen)), rounds)
                for i, counts in zip(chosen, per_round):
                    for r in np.flatnonzero(counts):
                        n = 1 if materialize_duplicates else int(counts[r])
                        record = with_copies(batch["serialized"][i], n)
                        for _ in range(counts[r] // n):
                            writers[r].write(record)
                        written += counts[r] // n
                n_kept += len(chosen)
                np.add.at(kept, label, copies)
                np.add.at(unique, label, copies > 0)
                progress.add(len(label))
            if left.any():
                raise common.UserError(f"{path} has fewer candidates of class "
                                       f"{int(np.flatnonzero(left)[0])} than its stats say: "
                                       f"{changed}")
            if progress.done != plan["num_records"]:
                raise common.UserError(f"{path} has {progress.done} records but its stats say "
                                       f"{plan['num_records']}: {changed}")
            for writer in writers:
                writer.close()
            if rounds > 1:  # round 0, then round 1, ...: TFRecord files concatenate
                with tf.io.gfile.GFile(tmp, "wb") as out:
                    out.write(b"")  # GFile creates the file at its first write: also if empty
                    for part in parts:
                        with tf.io.gfile.GFile(part, "rb") as f:
                            while chunk := f.read(1 << 24):
                                out.write(chunk)
        finally:
            for writer in writers:
                writer.close()
            for part in (parts if rounds > 1 else []):
                common.remove(part)
    return {"file": os.path.basename(path), "num_records": progress.done,
            "plan_fingerprint": summary["plan_fingerprint"], "records_written": int(written),
            "materialize_duplicates": materialize_duplicates, "kept": kept.tolist(),
            "unique": unique.tolist(), "records_per_second": progress.rate()}


def run_write(files, work_dir, output_dir, seed, materialize_duplicates):
    summary = common.read_json(os.path.join(work_dir, SUMMARY_FILE),
                               "merge output (run `filter_balance.py merge` first)")
    if summary["config"]["seed"] != seed:
        raise common.UserError(f"--seed={seed} but merge used --seed={summary['config']['seed']}; "
                               "pass the same seed (or rerun merge)")
    for k, path in enumerate(files):
        name = os.path.basename(path)
        if name not in summary["config"]["shards"]:
            raise common.UserError(f"{path} was not part of the merge in {work_dir}; rerun stats "
                                   "and merge with the same --input_pattern")
        out, counts_file = os.path.join(output_dir, name), work_file(work_dir, "counts", name)
        plan_file = work_file(work_dir, "plan", name)
        plan = common.read_json(plan_file, "merge plan (rerun `filter_balance.py merge`)")
        if plan["plan_fingerprint"] != summary["plan_fingerprint"]:
            raise common.UserError(f"{plan_file} is from another merge than {SUMMARY_FILE}; "
                                   "rerun merge")
        if plan.get("source") != shard_source(path):
            raise common.UserError(f"{path} changed after `stats` (relabeled?): rerun stats "
                                   "and merge (stats redoes the shards that changed)")
        old = common.read_json(counts_file, "counts file", default={})
        if (tf.io.gfile.exists(out) and old.get("plan_fingerprint") == summary["plan_fingerprint"]
                and old.get("materialize_duplicates") == materialize_duplicates):
            logging.info("write %d/%d: %s done before, skipped", k + 1, len(files), out)
            continue
        common.remove_stale_temporaries(out)
        counts = write_shard(path, out, summary, plan, materialize_duplicates)
        common.write_json(counts_file, counts)
        logging.info("write %d/%d: %s, %d of %d records kept (%d with copies), %.0f records/s",
                     k + 1, len(files), out, sum(counts["unique"]), counts["num_records"],
                     sum(counts["kept"]), counts["records_per_second"])


# ----------------------------------------------------------------------------- stage 4: report

def report(work_dir, output_dir):
    """merge's summary plus the counts every `write` shard measured; UserError if any is missing
    or differs from the plan. Writes OUT/summary.json and OUT/class_balance.png."""
    summary = common.read_json(os.path.join(work_dir, SUMMARY_FILE),
                               "merge output (run `filter_balance.py merge` first)")
    names = summary["config"]["shards"]
    missing = [i for i, n in enumerate(names) if not (
        tf.io.gfile.exists(work_file(work_dir, "counts", n))
        and tf.io.gfile.exists(os.path.join(output_dir, n)))]
    if missing:
        raise common.UserError(f"`write` has not finished {len(missing)} of {len(names)} shards "
                               f"(input file indices {missing}): "
                               f"{', '.join(names[i] for i in missing)}")
    counts = [common.read_json(work_file(work_dir, "counts", n), "counts file") for n in names]
    stale = [n for n, c in zip(names, counts)
             if c["plan_fingerprint"] != summary["plan_fingerprint"]]
    if stale:
        raise common.UserError(f"shards written with another merge plan: {', '.join(stale)}; "
                               "rerun `write` for them")
    materialized = {c["materialize_duplicates"] for c in counts}
    if len(materialized) > 1:
        raise common.UserError("some shards were written with --materialize_duplicates, others "
                               "not; rerun `write` with one setting")
    kept = np.sum([c["kept"] for c in counts], 0).tolist()
    unique = np.sum([c["unique"] for c in counts], 0).tolist()
    if (kept, unique) != ([p["kept"] for p in summary["classes"]],
                          [p["unique"] for p in summary["classes"]]):
        raise common.UserError(f"the written counts in {os.path.join(work_dir, 'counts')} differ "
                               "from merge's plan: inputs changed after `stats`? rerun all stages")
    out = dict(summary, written={
        "verified": True, "materialize_duplicates": materialized.pop(),
        "records": int(sum(c["records_written"] for c in counts)),
        "kept": int(sum(kept)), "unique": int(sum(unique))})
    common.write_json(os.path.join(output_dir, SUMMARY_FILE), out)
    plot_class_balance(summary, os.path.join(output_dir, PLOT_FILE))
    logging.info("report: %d shards verified, %d records written (%d training examples) -> %s",
                 len(names), out["written"]["records"], out["written"]["kept"],
                 os.path.join(output_dir, SUMMARY_FILE))
    return out


# ----------------------------------------------------------------------------- main

FLAGS = flags.FLAGS


def define_flags():
    """The flags, defined only when run as a script (importing the file defines none)."""
    flags.DEFINE_string("input_pattern", None, "label_data.py output shards: a directory (all "
                        "*.tfrecord* in it) or a glob. The same value for stats, merge and write.")
    flags.DEFINE_string("work_dir", None, "Small intermediate files: stats/, plan/, counts/, "
                        "summary.json and class_balance.png.")
    flags.DEFINE_string("output_dir", None, "write: the filtered shards, one per input shard, "
                        "same basename (main.py --unlabel_data_dir); report: summary.json and "
                        "class_balance.png next to them.")
    flags.DEFINE_integer("num_images_per_class", None, "merge: K, images per class after "
                         "balancing (paper: 130000 on JFT for ImageNet's 1000 classes).")
    # NOTE: --min_threshold defaults to the paper's 0.3 (the reference's flag defaults to 0.0).
    flags.DEFINE_float("min_threshold", 0.3, "stats/merge: keep only records whose top-1 "
                       "probability is >= this (paper: 0.3).")
    flags.DEFINE_integer("confidence_bins", CONFIDENCE_BINS, "stats: histogram buckets on [0, 1]; "
                         "records in one bucket count as tied and are split by the seeded "
                         "tie-break.")
    flags.DEFINE_integer("seed", 0, "merge/write: seed of the tie-break and of which records get "
                         "one extra copy (the same value for merge and write).")
    flags.DEFINE_integer("num_shards", 1, "stats/write: number of parallel jobs; file i of the "
                         "sorted input goes to job i % num_shards (`all`: one job, all files).")
    flags.DEFINE_integer("shard_id", 0, "stats/write: this job's index in [0, num_shards).")
    flags.DEFINE_bool("materialize_duplicates", False, "write: write a record `copies` times "
                      "(with copies=1) instead of once with a `copies` count.")


def main(argv):
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise common.UserError(f"usage: filter_balance.py {{{'|'.join(SUBCOMMANDS)}}} --flags "
                               f"(got {argv[1:]})")
    command = argv[1]
    needs = {"all": ("input_pattern", "work_dir", "output_dir", "num_images_per_class"),
             "stats": ("input_pattern", "work_dir"),
             "merge": ("input_pattern", "work_dir", "num_images_per_class"),
             "write": ("input_pattern", "work_dir", "output_dir"),
             "report": ("work_dir", "output_dir")}[command]
    for name in needs:
        if not FLAGS[name].value:
            raise common.UserError(f"{command} needs --{name}")
    files = [] if command == "report" else input_files(FLAGS.input_pattern)
    mine = files
    if command in ("stats", "write"):
        mine = common.shard_files(files, FLAGS.num_shards, FLAGS.shard_id)
    if command in ("all", "stats"):
        run_stats(mine, FLAGS.work_dir, FLAGS.min_threshold, FLAGS.confidence_bins)
    if command in ("all", "merge"):
        run_merge(files, FLAGS.work_dir, FLAGS.num_images_per_class, FLAGS.min_threshold,
                  FLAGS.seed)
    if command in ("all", "write"):
        run_write(mine, FLAGS.work_dir, FLAGS.output_dir, FLAGS.seed, FLAGS.materialize_duplicates)
    if command in ("all", "report"):
        report(FLAGS.work_dir, FLAGS.output_dir)


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
