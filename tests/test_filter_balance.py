"""filter_balance.py against a brute-force global per-class top-K on synthetic predictions.

The synthetic label_data.py outputs cover: over-full classes with distinct confidences, with a tie
across the K-th place, with every record saturated at 1.0 (one big tie); a class with exactly K;
under-full classes (one record, several records); a class with nothing above the threshold;
records exactly at 0.3; an empty shard; a float16 shard.
"""
import collections
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import common  # noqa: E402
import data
import filter_balance as fb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 8  # classes
K = 40  # --num_images_per_class
MIN_THRESHOLD = 0.3


def synthetic_rows(seed=0):
    """(id, label, prob) rows; confidences on a 1/2000 grid (distinct values, distinct buckets)."""
    rng = np.random.default_rng(seed)
    grid = lambda lo, hi, n: rng.integers(int(lo * 2000), int(hi * 2000) + 1, n) / 2000
    per_class = {
        0: grid(0.31, 0.99, 200),                       # over-full
        1: np.r_[np.full(30, 0.9), np.full(50, 0.8), grid(0.3, 0.7, 40)],  # tie across the K-th
        2: np.r_[grid(0.35, 0.95, 15), grid(0.15, 0.29, 20)],  # under-full: 15 eligible
        3: grid(0.5, 1.0, K),                           # exactly K
        4: grid(0.15, 0.29, 30),                        # nothing eligible
        5: np.r_[[0.45], grid(0.15, 0.25, 5)],          # a single eligible record
        6: np.r_[np.full(25, 0.3), np.full(10, 0.2995), grid(0.31, 0.5, 10)],  # at the threshold
        7: np.r_[np.full(100, 1.0), grid(0.4, 0.9, 20)],  # saturated: a 100-way tie at the top
    }
    rows = [(c, float(p)) for c, probs in per_class.items() for p in probs]
    rng.shuffle(rows)
    return [(f"img/{i:05d}", c, p) for i, (c, p) in enumerate(rows)]


def write_predictions(path, rows, float16=False):
    with tf.io.TFRecordWriter(path) as writer:
        for image_id, c, p in rows:
            probs = np.full(C, (1.0 - p) / (C - 1), np.float32)
            probs[c] = p
            example = data.pseudo_label_example(f"png bytes of {image_id}".encode(), image_id,
                                                probs, true_label=(c + 1) % C, float16=float16)
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    """5 shards of unequal size (one empty, one float16) holding the synthetic rows."""
    d = tmp_path_factory.mktemp("labels")
    rows = synthetic_rows()
    cuts = [0, 90, 300, 300, 520, len(rows)]
    for s in range(5):
        write_predictions(str(d / f"unlabeled-{s:05d}-of-00005.tfrecord"),
                          rows[cuts[s]:cuts[s + 1]], float16=(s == 3))
    return str(d)


def run_pipeline(labels, work, out, seed=0, stats_jobs=3, write_jobs=2, materialize=False):
    files = fb.input_files(labels)
    for i in range(stats_jobs):
        fb.run_stats(common.shard_files(files, stats_jobs, i), work, MIN_THRESHOLD, 10000)
    summary = fb.run_merge(files, work, K, MIN_THRESHOLD, seed)
    for i in range(write_jobs):
        fb.run_write(common.shard_files(files, write_jobs, i), work, out, seed, materialize)
    return summary


def read_records(pattern):
    """[(file basename, index, {feature name: python value})] of every record, in order."""
    out = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            feature = tf.train.Example.FromString(raw).features.feature
            values = {}
            for key, f in feature.items():
                kind = f.WhichOneof("kind")
                values[key] = tuple(getattr(f, kind).value)
            out.append((os.path.basename(path), i, values))
    return out


def prob_of(record):
    return np.float32(record["prob"][0])


@pytest.fixture(scope="module")
def pipeline(labels_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    work, out = str(base / "work"), str(base / "out")
    summary = run_pipeline(labels_dir, work, out)
    return {"work": work, "out": out, "summary": summary}


def test_matches_brute_force_global_top_k(labels_dir, pipeline):
    inputs = {r["image/id"][0]: r for _, _, r in read_records(os.path.join(labels_dir, "*"))}
    outputs = read_records(os.path.join(pipeline["out"], "*.tfrecord"))
    kept = {}
    for _, _, record in outputs:
        image_id = record["image/id"][0]
        assert image_id not in kept, "a record written twice without --materialize_duplicates"
        copies = record.pop("copies")[0]
        assert record == inputs[image_id]  # every input field passed through unchanged
        kept[image_id] = copies
    eligible = collections.defaultdict(list)
    for image_id, r in inputs.items():
        if np.float64(prob_of(r)) >= MIN_THRESHOLD:
            eligible[r["label"][0]].append(image_id)
    assert set(kept) <= {i for ids in eligible.values() for i in ids}
    for c in range(C):
        ids = eligible[c]
        mine = [i for i in ids if i in kept]
        if len(ids) >= K:  # exactly the K most confident (any K among a tie at the K-th place)
            assert len(mine) == K and all(kept[i] == 1 for i in mine)
            kth = sorted((prob_of(inputs[i]) for i in ids), reverse=True)[K - 1]
            assert all(prob_of(inputs[i]) >= kth for i in mine)
            assert sum(prob_of(inputs[i]) > kth for i in ids) == sum(
                prob_of(inputs[i]) > kth for i in mine)
        elif ids:  # all kept, duplicated to exactly K
            copies = [kept[i] for i in ids]
            assert len(mine) == len(ids) and sum(copies) == K
            assert set(copies) <= {K // len(ids), K // len(ids) + 1}
        else:
            assert not mine
    # The classes the synthetic data was built for.
    assert [len(eligible[c]) >= K for c in range(C)] == [1, 1, 0, 1, 0, 0, 0, 1]
    assert len(eligible[6]) == 35 and len(eligible[4]) == 0  # prob 0.3 is in, 0.2995 out

    # summary.json (merge's exact prediction) == the per-shard counts write measured == the records.
    classes = pipeline["summary"]["classes"]
    assert [p["unique"] for p in classes] == [
        sum(i in kept for i in eligible[c]) for c in range(C)]
    assert [p["kept"] for p in classes] == [sum(kept.get(i, 0) for i in eligible[c])
                                            for c in range(C)]
    assert [p["kept"] for p in classes] == [K, K, K, K, 0, K, K, K]
    counts = [common.read_json(p) for p in tf.io.gfile.glob(os.path.join(pipeline["work"],
                                                                       "counts", "*.json"))]
    assert len(counts) == 5
    assert np.sum([c["kept"] for c in counts], 0).tolist() == [p["kept"] for p in classes]
    assert np.sum([c["unique"] for c in counts], 0).tolist() == [p["unique"] for p in classes]
    assert classes[1]["threshold"] == pytest.approx(0.8) and classes[1]["picks"] == 10
    assert classes[7]["candidates"] == 100 and classes[7]["picks"] == K
    assert os.path.getsize(os.path.join(pipeline["work"], fb.PLOT_FILE)) > 10000

    # report: the written counts verified against merge's plan, published next to the shards.
    published = fb.report(pipeline["work"], pipeline["out"])
    assert published["written"] == {"verified": True, "materialize_duplicates": False,
                                     "records": len(kept), "kept": 7 * K, "unique": len(kept)}
    assert common.read_json(os.path.join(pipeline["out"], fb.SUMMARY_FILE)) == published
    assert os.path.getsize(os.path.join(pipeline["out"], fb.PLOT_FILE)) > 10000


def test_deterministic_and_seeded(labels_dir, pipeline, tmp_path):
    # Another run with other job splits: byte-identical shards, summary and plans.
    run_pipeline(labels_dir, str(tmp_path / "work"), str(tmp_path / "out"), stats_jobs=1,
                 write_jobs=5)
    for sub in ("out/*.tfrecord", "work/summary.json", "work/plan/*"):
        mine = sorted(tf.io.gfile.glob(str(tmp_path / sub)))
        theirs = sorted(tf.io.gfile.glob(os.path.join(os.path.dirname(pipeline["out"]), sub)))
        assert [os.path.basename(f) for f in mine] == [os.path.basename(f) for f in theirs]
        assert mine and all(open(a, "rb").read() == open(b, "rb").read()
                            for a, b in zip(mine, theirs))
    # Another seed: the same counts, other records picked among the ties.
    summary = run_pipeline(labels_dir, str(tmp_path / "work1"), str(tmp_path / "out1"), seed=1)
    assert [p["kept"] for p in summary["classes"]] == [
        p["kept"] for p in pipeline["summary"]["classes"]]
    ids = lambda out: {r["image/id"][0] for _, _, r in read_records(os.path.join(out, "*.tfrecord"))
                       if r["label"][0] == 7}
    assert len(ids(str(tmp_path / "out1"))) == len(ids(pipeline["out"])) == K
    assert ids(str(tmp_path / "out1")) != ids(pipeline["out"])


def test_materialized_duplicates_agree_with_copies(labels_dir, pipeline, tmp_path):
    work = str(tmp_path / "work")
    shutil.copytree(pipeline["work"], work)
    files = fb.input_files(labels_dir)
    fb.run_write(files, work, str(tmp_path / "out"), 0, materialize_duplicates=True)
    expanded = collections.Counter()
    for _, _, r in read_records(os.path.join(pipeline["out"], "*.tfrecord")):
        copies = r.pop("copies")[0]
        expanded[tuple(sorted(r.items()))] += copies
    materialized = collections.Counter()
    for _, _, r in read_records(str(tmp_path / "out" / "*")):
        assert r.pop("copies") == (1,)
        materialized[tuple(sorted(r.items()))] += 1
    assert materialized == expanded
    assert sum(materialized.values()) == 7 * K


def test_resume_rewrites_only_what_is_missing(labels_dir, pipeline, tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    shutil.copytree(pipeline["work"], work)
    shutil.copytree(pipeline["out"], out)
    name = "unlabeled-00002-of-00005.tfrecord"
    os.remove(os.path.join(out, name))
    before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
    fb.run_write(fb.input_files(labels_dir), work, out, 0, False)
    for f, mtime in before.items():
        assert os.stat(os.path.join(out, f)).st_mtime_ns == mtime
    assert open(os.path.join(out, name), "rb").read() == open(
        os.path.join(pipeline["out"], name), "rb").read()


def test_missing_stats_are_named(labels_dir, tmp_path):
    files = fb.input_files(labels_dir)
    fb.run_stats(common.shard_files(files, 2, 0), str(tmp_path), MIN_THRESHOLD, 10000)  # files 0, 2, 4
    with pytest.raises(common.UserError) as e:
        fb.merge(files, str(tmp_path), K, MIN_THRESHOLD, 0)
    message = str(e.value)
    assert "stats missing for 2 of 5 shards" in message
    assert "unlabeled-00001-of-00005.tfrecord, unlabeled-00003-of-00005.tfrecord;" in message
    assert "00000-of" not in message and "00002-of" not in message and "00004-of" not in message
    with pytest.raises(common.UserError, match="merge output .*summary.json"):
        fb.run_write(files, str(tmp_path), str(tmp_path / "out"), 0, False)
    fb.run_stats(files, str(tmp_path), MIN_THRESHOLD, 10000)
    fb.run_merge(files, str(tmp_path), K, MIN_THRESHOLD, 0)
    fb.run_write(common.shard_files(files, 5, 4), str(tmp_path), str(tmp_path / "out"), 0, False)
    with pytest.raises(common.UserError, match=r"`write` has not finished 4 of 5 shards \(input "
                       r"file indices \[0, 1, 2, 3\]\)"):
        fb.report(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(common.UserError, match="--min_threshold=0.3 but merge has --min_threshold"):
        fb.merge(files, str(tmp_path), K, 0.5, 0)


def test_bad_records_are_named(tmp_path):
    good = [("a", 1, 0.9), ("b", 2, 0.5)]
    write_predictions(str(tmp_path / "good.tfrecord"), good)
    with tf.io.TFRecordWriter(str(tmp_path / "nolabel.tfrecord")) as w:  # an unlabeled record
        w.write(data.pseudo_label_example(b"x", "a", np.eye(C)[1]).SerializeToString())
        w.write(data.image_example(b"png", None, "b").SerializeToString())
    with pytest.raises(common.UserError, match=r"nolabel.tfrecord: record 1 has no 'label'"):
        fb.shard_stats(str(tmp_path / "nolabel.tfrecord"), MIN_THRESHOLD, 10000)
    with tf.io.TFRecordWriter(str(tmp_path / "garbage.tfrecord")) as w:
        w.write(data.pseudo_label_example(b"x", "a", np.eye(C)[1]).SerializeToString())
        w.write(b"\x0a\x05not an example")
    with pytest.raises(common.UserError, match=r"garbage.tfrecord: record 1 is not a valid"):
        fb.shard_stats(str(tmp_path / "garbage.tfrecord"), MIN_THRESHOLD, 10000)
    raw = open(tmp_path / "good.tfrecord", "rb").read()
    (tmp_path / "truncated.tfrecord").write_bytes(raw[:len(raw) // 2 + 7])
    with pytest.raises(common.UserError, match=r"truncated.tfrecord: truncated .*after record 0"):
        fb.shard_stats(str(tmp_path / "truncated.tfrecord"), MIN_THRESHOLD, 10000)
    flipped = bytearray(raw)
    flipped[len(raw) // 2 + 7] ^= 0xFF  # inside the second record: its CRC no longer matches
    (tmp_path / "flipped.tfrecord").write_bytes(bytes(flipped))
    with pytest.raises(common.UserError, match=r"flipped.tfrecord: corrupt TFRecord"):
        fb.shard_stats(str(tmp_path / "flipped.tfrecord"), MIN_THRESHOLD, 10000)

    # The command line: one line naming the file, exit status 2.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "filter_balance.py"), "stats",
         f"--input_pattern={tmp_path}/flipped.tfrecord", f"--work_dir={tmp_path}/work"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "flipped.tfrecord: corrupt TFRecord" in last


def test_split_picks_and_selection_sampling_are_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 20, rng.integers(1, 8)).tolist()
        picks = int(rng.integers(0, sum(counts) + 1))
        parts = fb.split_picks(picks, counts, np.random.default_rng(1))
        assert sum(parts) == picks and all(0 <= p <= n for p, n in zip(parts, counts))
    taken = collections.Counter()
    for trial in range(300):  # every candidate equally likely: a uniform random subset
        plan = {"classes": [0], "candidates": [10], "picks": [3]}
        sampler = fb.SelectionSampler(1, plan, seed=trial, path="x")
        chosen = [i for i in range(10) if sampler.take(0, f"id{i}".encode())]
        sampler.check_done()
        assert len(chosen) == 3
        taken.update(chosen)
    assert min(taken.values()) > 60 and max(taken.values()) < 120  # expected 90 each


def test_threshold_is_inclusive(tmp_path):
    """prob >= --min_threshold is kept (the reference's >=), compared exactly on float32 values."""
    below = float(np.nextafter(np.float32(0.375), np.float32(0)))
    rows = [("at", 1, 0.375), ("below", 1, below), ("above", 1, 0.5)]
    write_predictions(str(tmp_path / "p.tfrecord"), rows)
    stats = fb.shard_stats(str(tmp_path / "p.tfrecord"), 0.375, 10000)
    assert stats["seen"][1] == 3 and stats["above_threshold"][1] == 2
    # Nothing at all above the threshold: merge says so instead of planning an empty data set.
    common.write_json(fb.stats_path(str(tmp_path / "work"), "p.tfrecord"),
                    fb.shard_stats(str(tmp_path / "p.tfrecord"), 0.6, 10000))
    with pytest.raises(common.UserError, match="no record of the 3 in 1 shards has confidence >= "
                                             "--min_threshold=0.6"):
        fb.merge([str(tmp_path / "p.tfrecord")], str(tmp_path / "work"), K, 0.6, 0)
