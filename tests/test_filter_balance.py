"""filter_balance.py: select() against a brute-force per-class top-K, the sharded stages against
select() on the same records, and `all` against the four stages.

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
CUTS = [0, 90, 300, 300, 520]  # shard s holds rows CUTS[s]:CUTS[s + 1] (shard 2 is empty)


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


def as_arrays(rows):
    """select()'s arguments from (id, label, prob) rows: labels, float32 probs, bytes ids."""
    ids, labels, probs = zip(*rows)
    return np.array(labels), np.array(probs, np.float32), [i.encode() for i in ids]


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
    cuts = CUTS + [len(rows)]
    for s in range(5):
        write_predictions(str(d / f"unlabeled-{s:05d}-of-00005.tfrecord"),
                          rows[cuts[s]:cuts[s + 1]], float16=(s == 3))
    return str(d)


def check_the_paper_rule(labels, probs, copies):
    """Brute force, per class: prob >= 0.3, then exactly the K most confident (any K among a tie
    at the K-th place) once each, or all of a class with fewer, duplicated to exactly K."""
    eligible = np.float64(probs) >= MIN_THRESHOLD
    assert not copies[~eligible].any()
    for c in range(C):
        mine = eligible & (labels == c)
        kept = mine & (copies > 0)
        if mine.sum() >= K:
            assert kept.sum() == K and (copies[kept] == 1).all()
            kth = np.sort(probs[mine])[::-1][K - 1]
            assert (probs[kept] >= kth).all()
            assert (probs[mine] > kth).sum() == (probs[kept] > kth).sum()
        elif mine.any():
            assert kept.sum() == mine.sum() and copies[mine].sum() == K
            assert set(copies[mine]) <= {K // mine.sum(), K // mine.sum() + 1}
    return [int(copies[labels == c].sum()) for c in range(C)]


def test_select_is_the_paper_rule():
    labels, probs, ids = as_arrays(synthetic_rows())
    # The classes the synthetic data was built for.
    eligible = np.float64(probs) >= MIN_THRESHOLD
    assert [(eligible & (labels == c)).sum() >= K for c in range(C)] == [1, 1, 0, 1, 0, 0, 0, 1]
    assert (eligible & (labels == 6)).sum() == 35  # prob 0.3 is in, 0.2995 out
    files = np.searchsorted(CUTS, np.arange(len(labels)), side="right") - 1
    kept = {}
    for seed, f in ((0, None), (0, files), (1, files)):
        copies = fb.select(labels, probs, ids, K, MIN_THRESHOLD, seed, files=f)
        assert check_the_paper_rule(labels, probs, copies) == [K, K, K, K, 0, K, K, K]
        kept[seed, f is None] = set(np.flatnonzero(copies))
    # The 100-way tie of class 7 and the 10 extra copies of class 2 are seeded choices.
    assert kept[0, False] != kept[1, False]
    assert kept[0, False] == set(np.flatnonzero(
        fb.select(labels, probs, ids, K, MIN_THRESHOLD, 0, files=files)))


def test_split_picks_and_tie_break_are_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 20, rng.integers(1, 8)).tolist()
        picks = int(rng.integers(0, sum(counts) + 1))
        parts = fb.split_picks(picks, counts, np.random.default_rng(1))
        assert sum(parts) == picks and all(0 <= p <= n for p, n in zip(parts, counts))
    taken = collections.Counter()
    ids = [f"id{i}".encode() for i in range(10)]
    for trial in range(300):  # every candidate equally likely: a uniform random subset
        chosen = fb.tie_break(ids, 3, 10, seed=trial)
        assert chosen.sum() == 3
        # In pieces (as over the batches of a shard): the same choice.
        first = fb.tie_break(ids[:4], 3, 10, seed=trial)
        rest = fb.tie_break(ids[4:], 3 - first.sum(), 6, seed=trial)
        assert np.r_[first, rest].tolist() == chosen.tolist()
        taken.update(np.flatnonzero(chosen).tolist())
    assert min(taken.values()) > 60 and max(taken.values()) < 120  # expected 90 each


def test_round_copies_spread_each_record_evenly():
    copies = np.array([1] * 40 + [2, 3, 7, 8, 20, 45])
    per_round = fb.round_copies(copies, np.arange(len(copies)), 8)
    assert per_round.sum(1).tolist() == copies.tolist()
    assert per_round[:40].sum(0).tolist() == [5] * 8  # single copies: 1/8 of them per round
    for c, row in zip(copies[40:], per_round[40:]):
        if c <= 8:  # c rounds with one copy each, ~8 / c rounds apart (cyclically)
            rounds = np.flatnonzero(row)
            gaps = np.diff(np.r_[rounds, rounds[0] + 8])
            assert len(rounds) == c and row.max() == 1 and gaps.max() - gaps.min() <= 1
        else:
            assert row.min() == c // 8 and row.max() == -(-c // 8)


def test_copies_are_spread_over_the_students_batches(tmp_path, monkeypatch):
    """One shard: 10 classes, K = 200; class 0 has 10 eligible images, 20 copies each. Read by the
    student's input (a 16-record shuffle buffer, batches of 64). In input order with their counts
    (the copy rounds off), the reader's 16-record round-robin puts each of the 10 images ~4 times
    in every batch; laid out in 20 copy rounds of 100 records, twice at most."""
    rows = [(c, 0.9) for c in range(1, 10) for _ in range(220)] + [(0, 0.9)] * 10
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    with tf.io.TFRecordWriter(str(labels_dir / "u-00000.tfrecord")) as writer:
        for i, (c, p) in enumerate(rows):  # pixels (0, 0), (0, 1): the record's index
            pixels = np.zeros((8, 8, 1), np.uint8)
            pixels[0, :2, 0] = divmod(i, 256)
            probs = np.full(10, (1 - p) / 9, np.float32)
            probs[c] = p
            writer.write(data.pseudo_label_example(tf.io.encode_png(pixels).numpy(), f"u/{i}",
                                                   probs).SerializeToString())
    info = data.dataset_info("fashion_mnist", image_size=8)
    most = {}
    for rounds_max in (1, fb.ROUNDS_MAX):
        monkeypatch.setattr(fb, "ROUNDS_MAX", rounds_max)
        work, out = str(tmp_path / f"work{rounds_max}"), str(tmp_path / f"out{rounds_max}")
        files = fb.input_files(str(labels_dir))
        fb.run_stats(files, work, MIN_THRESHOLD, 10000)
        assert fb.run_merge(files, work, 200, MIN_THRESHOLD, 0)["config"]["copy_rounds"] == min(
            rounds_max, 20)
        fb.run_write(files, work, out, 0, False)
        ds = data.pseudo_labeled_dataset(out, info, 8, 64, 10, "none", seed=0, shuffle_buffer=16)
        counts = [collections.Counter((images[:, 0, 0, 0] * 256 + images[:, 0, 1, 0]).astype(int))
                  for images, _ in ds.take(31).as_numpy_iterator()]  # one pass: 2,000 records
        most[rounds_max] = max(max((c[i] for i in c if rows[i][0] == 0), default=0) for c in counts)
    assert most[1] >= 4 and most[fb.ROUNDS_MAX] <= 2, most


def test_threshold_is_inclusive(tmp_path):
    """prob >= --min_threshold is kept (the reference's >=), compared exactly on float32 values."""
    below = float(np.nextafter(np.float32(0.375), np.float32(0)))
    rows = [("at", 1, 0.375), ("below", 1, below), ("above", 1, 0.5)]
    write_predictions(str(tmp_path / "p.tfrecord"), rows)
    stats = fb.shard_stats(str(tmp_path / "p.tfrecord"), 0.375, 10000)
    assert stats["seen"][1] == 3 and stats["above_threshold"][1] == 2
    assert fb.select(*as_arrays(rows), k=4, min_threshold=0.375).tolist() == [2, 0, 2]
    # Nothing at all above the threshold: merge says so instead of planning an empty data set.
    common.write_json(fb.work_file(str(tmp_path / "work"), "stats", "p.tfrecord"),
                      fb.shard_stats(str(tmp_path / "p.tfrecord"), 0.6, 10000))
    with pytest.raises(common.UserError, match="no record of the 3 in 1 shards has confidence >= "
                                               "--min_threshold=0.6"):
        fb.merge([str(tmp_path / "p.tfrecord")], str(tmp_path / "work"), K, 0.6, 0)


def test_missing_stats_are_named(labels_dir, tmp_path):
    files = fb.input_files(labels_dir)
    fb.run_stats(common.shard_files(files, 2, 0), str(tmp_path), MIN_THRESHOLD, 10000)  # 0, 2, 4
    with pytest.raises(common.UserError) as e:
        fb.merge(files, str(tmp_path), K, MIN_THRESHOLD, 0)
    message = str(e.value)
    assert "stats missing for 2 of 5 shards (input file indices [1, 3])" in message
    assert "unlabeled-00001-of-00005.tfrecord, unlabeled-00003-of-00005.tfrecord;" in message
    assert "00000-of" not in message and "00002-of" not in message and "00004-of" not in message
    with pytest.raises(common.UserError, match="merge output .*summary.json"):
        fb.run_write(files, str(tmp_path), str(tmp_path / "out"), 0, False)
    fb.run_stats(files, str(tmp_path), MIN_THRESHOLD, 10000)
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


def labels_summary(path, teacher="teacher-1", **fields):
    """The summary label_data.py writes beside its output shard `path` (the fields read here)."""
    count = sum(1 for _ in tf.data.TFRecordDataset(path))
    common.write_json(fb.labels_summary_path(path), {
        "count": count, "output_bytes": os.path.getsize(path), "provenance_key": teacher,
        **fields})


def test_labels_shard_cut_at_a_record_boundary_is_named(tmp_path):
    """Row "a labels shard truncated at a record boundary": its frames add up, but its size
    (and record count) disagree with label_data.py's summary."""
    path = str(tmp_path / "labels" / "a.tfrecord")
    os.makedirs(os.path.dirname(path))
    write_predictions(path, [(f"r{i}", i % C, 0.9) for i in range(10)])
    labels_summary(path)
    frames = [16 + len(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:sum(frames[:7])])
    work = str(tmp_path / "work")
    with pytest.raises(common.UserError, match=rf"a.tfrecord has {sum(frames[:7])} bytes, but "
                       rf".*summaries/a.tfrecord.json says {len(raw)} \(10 records\): cut short "
                       "or replaced after labeling; rerun label_data.py"):
        fb.run_stats([path], work, MIN_THRESHOLD, 10000)
    labels_summary(path, count=10, output_bytes=None)  # an older summary: only the count
    with pytest.raises(common.UserError, match=r"a.tfrecord has 7 records, but .*summaries/"
                       "a.tfrecord.json says 10: cut short or replaced after labeling; rerun "
                       r"label_data.py \(it relabels it\)"):
        fb.run_stats([path], work, MIN_THRESHOLD, 10000)
    assert not os.path.exists(fb.work_file(work, "stats", "a.tfrecord"))


def test_relabeled_shards_are_redone_not_reused(tmp_path):
    """Row "stats judges its outputs fresh by file size" / "relabel -> stats -> write loops": a
    shard relabeled at the same size is a new source; write refuses the old plan, stats redoes
    that shard (only), and the written records carry the new labels."""
    labels, work, out = tmp_path / "labels", str(tmp_path / "work"), str(tmp_path / "out")
    labels.mkdir()
    rows = synthetic_rows()[:240]
    paths = [str(labels / "a.tfrecord"), str(labels / "b.tfrecord")]
    for path, part in zip(paths, (rows[:120], rows[120:])):
        write_predictions(path, part)
        labels_summary(path)
    run_pipeline(str(labels), work, out, stats_jobs=1, write_jobs=1)
    relabeled = [(i, (c + 1) % C, p) for i, c, p in rows[:120]]  # another teacher's labels
    size = os.path.getsize(paths[0])
    write_predictions(paths[0], relabeled)
    labels_summary(paths[0], teacher="teacher-2")
    assert os.path.getsize(paths[0]) == size
    with pytest.raises(common.UserError, match=r"a.tfrecord changed after `stats` \(relabeled\?\)"
                       ": rerun stats and merge"):
        fb.run_write(fb.input_files(str(labels)), work, out, 0, False)
    stats_b = os.stat(fb.work_file(work, "stats", "b.tfrecord")).st_mtime_ns
    run_pipeline(str(labels), work, out, stats_jobs=1, write_jobs=1)
    assert os.stat(fb.work_file(work, "stats", "b.tfrecord")).st_mtime_ns == stats_b
    assert common.read_json(fb.work_file(work, "stats", "a.tfrecord"))["source"]["labels"] == \
        "teacher-2"
    new_label = {i.encode(): c for i, c, _ in relabeled}
    written = read_records(os.path.join(out, "a.tfrecord"))
    assert written and all(r["label"][0] == new_label[r["image/id"][0]] for r in written)
    # Without a summary (not label_data.py output), a rewrite is still seen (size + mtime; TF's
    # local stat has 1 s resolution).
    os.remove(fb.labels_summary_path(paths[1]))
    before = fb.shard_source(paths[1])
    assert before["labels"] is None
    write_predictions(paths[1], rows[120:])
    os.utime(paths[1], ns=(before["mtime_nsec"] + 2 * 10**9,) * 2)
    assert fb.shard_source(paths[1]) != before


# ----------------------------------------------------------------------------- the stages

def run_pipeline(labels, work, out, seed=0, stats_jobs=3, write_jobs=2, materialize=False):
    files = fb.input_files(labels)
    for i in range(stats_jobs):
        fb.run_stats(common.shard_files(files, stats_jobs, i), work, MIN_THRESHOLD, 10000)
    summary = fb.run_merge(files, work, K, MIN_THRESHOLD, seed)
    for i in range(write_jobs):
        fb.run_write(common.shard_files(files, write_jobs, i), work, out, seed, materialize)
    return summary


def read_records(pattern):
    """[{feature name: tuple of values}] of every record of the sorted files, in order."""
    out = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            feature = tf.train.Example.FromString(raw).features.feature
            out.append({k: tuple(getattr(f, f.WhichOneof("kind")).value)
                        for k, f in feature.items()})
    return out


def filter_balance_cli(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "filter_balance.py"), *args],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return result.returncode, result.stderr


def file_bytes(directory, pattern="*"):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(tf.io.gfile.glob(os.path.join(directory, pattern)))
            if os.path.isfile(p)}


@pytest.fixture(scope="module")
def pipeline(labels_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    work, out = str(base / "work"), str(base / "out")
    summary = run_pipeline(labels_dir, work, out)
    return {"work": work, "out": out, "summary": summary, "report": fb.report(work, out)}


@pytest.mark.slow
def test_sharded_stages_write_what_select_selects(labels_dir, pipeline):
    files = fb.input_files(labels_dir)
    inputs = [(s, r) for s, f in enumerate(files) for r in read_records(f)]
    labels = np.array([r["label"][0] for _, r in inputs])
    probs = np.array([r["prob"][0] for _, r in inputs], np.float32)
    ids = [r["image/id"][0] for _, r in inputs]
    expected = fb.select(labels, probs, ids, K, MIN_THRESHOLD, seed=0,
                         files=np.array([s for s, _ in inputs]))
    by_id = {r["image/id"][0]: r for _, r in inputs}
    written = collections.Counter()
    for record in read_records(os.path.join(pipeline["out"], "*.tfrecord")):
        image_id = record["image/id"][0]
        written[image_id] += record.pop("copies")[0]
        assert record == by_id[image_id]  # every input field passed through unchanged
    assert written == {i: c for i, c in zip(ids, expected.tolist()) if c}
    assert check_the_paper_rule(labels, probs, expected) == [K, K, K, K, 0, K, K, K]

    # summary.json (merge's exact prediction) == the per-shard counts write measured == select.
    classes = pipeline["summary"]["classes"]
    assert [p["kept"] for p in classes] == [int(expected[labels == c].sum()) for c in range(C)]
    assert [p["unique"] for p in classes] == [int((expected[labels == c] > 0).sum())
                                              for c in range(C)]
    counts = [common.read_json(p)
              for p in tf.io.gfile.glob(os.path.join(pipeline["work"], "counts", "*.json"))]
    assert len(counts) == 5
    assert np.sum([c["kept"] for c in counts], 0).tolist() == [p["kept"] for p in classes]
    assert np.sum([c["unique"] for c in counts], 0).tolist() == [p["unique"] for p in classes]
    assert classes[1]["threshold"] == pytest.approx(0.8) and classes[1]["picks"] == 10
    assert classes[7]["candidates"] == 100 and classes[7]["picks"] == K
    assert os.path.getsize(os.path.join(pipeline["work"], fb.PLOT_FILE)) > 10000

    # report: the written counts verified against merge's plan, published next to the shards.
    assert pipeline["summary"]["config"]["copy_rounds"] == K  # class 5: 1 record, K copies
    assert pipeline["report"]["written"] == {
        "verified": True, "materialize_duplicates": False,
        "records": sum(min(c, K) for c in written.values()), "kept": 7 * K,
        "unique": len(written)}
    assert common.read_json(os.path.join(pipeline["out"], fb.SUMMARY_FILE)) == pipeline["report"]
    assert os.path.getsize(os.path.join(pipeline["out"], fb.PLOT_FILE)) > 10000


@pytest.mark.slow
def test_deterministic_and_seeded(labels_dir, pipeline, tmp_path):
    # Another run with other job splits: byte-identical shards, summary and plans.
    run_pipeline(labels_dir, str(tmp_path / "work"), str(tmp_path / "out"), stats_jobs=1,
                 write_jobs=5)
    for sub, pattern in (("out", "*.tfrecord"), ("work", fb.SUMMARY_FILE), ("work/plan", "*")):
        mine = file_bytes(str(tmp_path / sub), pattern)
        assert mine and mine == file_bytes(os.path.join(pipeline["work"], "..", sub), pattern)
    # Another seed: the same counts, other records picked among the ties.
    summary = run_pipeline(labels_dir, str(tmp_path / "work1"), str(tmp_path / "out1"), seed=1)
    assert [p["kept"] for p in summary["classes"]] == [
        p["kept"] for p in pipeline["summary"]["classes"]]
    ids = lambda out: {r["image/id"][0] for r in read_records(os.path.join(out, "*.tfrecord"))
                       if r["label"][0] == 7}
    assert len(ids(str(tmp_path / "out1"))) == len(ids(pipeline["out"])) == K
    assert ids(str(tmp_path / "out1")) != ids(pipeline["out"])


@pytest.mark.slow
def test_materialized_duplicates_agree_with_copies(labels_dir, pipeline, tmp_path):
    work = str(tmp_path / "work")
    shutil.copytree(pipeline["work"], work)
    fb.run_write(fb.input_files(labels_dir), work, str(tmp_path / "out"), 0,
                 materialize_duplicates=True)
    expanded = collections.Counter()
    for r in read_records(os.path.join(pipeline["out"], "*.tfrecord")):
        copies = r.pop("copies")[0]
        expanded[tuple(sorted(r.items()))] += copies
    materialized = collections.Counter()
    for r in read_records(str(tmp_path / "out" / "*")):
        assert r.pop("copies") == (1,)
        materialized[tuple(sorted(r.items()))] += 1
    assert materialized == expanded
    assert sum(materialized.values()) == 7 * K


@pytest.mark.slow
def test_resume_rewrites_only_what_is_missing(labels_dir, pipeline, tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    shutil.copytree(pipeline["work"], work)
    shutil.copytree(pipeline["out"], out)
    name = "unlabeled-00002-of-00005.tfrecord"
    os.remove(os.path.join(out, name))
    with pytest.raises(common.UserError, match=r"`write` has not finished 1 of 5 shards \(input "
                       rf"file indices \[2\]\): {name}"):
        fb.report(work, out)
    with pytest.raises(common.UserError, match="--seed=1 but merge used --seed=0"):
        fb.run_write(fb.input_files(labels_dir), work, out, 1, False)
    before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
    fb.run_write(fb.input_files(labels_dir), work, out, 0, False)
    for f, mtime in before.items():
        assert os.stat(os.path.join(out, f)).st_mtime_ns == mtime
    assert open(os.path.join(out, name), "rb").read() == open(
        os.path.join(pipeline["out"], name), "rb").read()


@pytest.mark.slow
def test_all_is_the_four_stages_in_one_command(labels_dir, pipeline, tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    flags = [f"--input_pattern={labels_dir}", f"--work_dir={work}", f"--output_dir={out}",
             f"--num_images_per_class={K}", f"--min_threshold={MIN_THRESHOLD}", "--seed=0"]
    assert filter_balance_cli("all", *flags)[0] == 0
    assert file_bytes(out) == file_bytes(pipeline["out"])  # shards, summary.json, the plot
    for sub in ("", "stats", "plan"):  # (the counts hold records/s)
        assert file_bytes(os.path.join(work, sub)) == file_bytes(
            os.path.join(pipeline["work"], sub))
    # Rerun after a kill that left one shard unwritten: only that shard is written again.
    os.remove(os.path.join(out, "unlabeled-00001-of-00005.tfrecord"))
    before = {p: os.stat(p).st_mtime_ns for p in tf.io.gfile.glob(f"{out}/*.tfrecord") +
              tf.io.gfile.glob(f"{work}/stats/*") + tf.io.gfile.glob(f"{work}/plan/*") +
              [f"{work}/{fb.SUMMARY_FILE}", f"{work}/{fb.PLOT_FILE}"]}
    status, log = filter_balance_cli("all", *flags)
    assert status == 0
    assert log.count("done before, skipped") == 5 + 1 + 4  # stats, merge, write
    assert all(os.stat(p).st_mtime_ns == mtime for p, mtime in before.items())
    assert file_bytes(out) == file_bytes(pipeline["out"])


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
    write_predictions(str(tmp_path / "good.tfrecord"), [("a", 1, 0.9), ("b", 2, 0.5)])
    raw = bytearray(open(tmp_path / "good.tfrecord", "rb").read())
    raw[len(raw) // 2 + 7] ^= 0xFF
    (tmp_path / "flipped.tfrecord").write_bytes(bytes(raw))
    status, log = filter_balance_cli("all", f"--input_pattern={tmp_path}/flipped.tfrecord",
                                     f"--work_dir={tmp_path}/work", f"--output_dir={tmp_path}/o",
                                     f"--num_images_per_class={K}")
    last = log.strip().splitlines()[-1]
    assert status == 2 and last.startswith("error: ") and "flipped.tfrecord: corrupt" in last
    status, log = filter_balance_cli("all", f"--input_pattern={tmp_path}", f"--work_dir={tmp_path}",
                                     f"--output_dir={tmp_path}/o")
    assert (status, log.strip().splitlines()[-1]) == (2, "error: all needs --num_images_per_class")
