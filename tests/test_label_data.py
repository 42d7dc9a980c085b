"""label_data.py on real Fashion-MNIST images with a tiny EfficientNet teacher.

The teacher is an untrained tiny EfficientNet-B0 (width/depth 0.25) whose head is replaced by a
seeded random projection standardised over real images, so its predictions are diverse and
confident (a real function of the image) without spending a minute on training. Its `model` and
`ema_model` weights differ, so the tests also see which ones label_data uses.
"""
import gzip
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import common  # noqa: E402
import data
import efficientnet_builder
import label_data
import prepare_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
              small_image=True, width=0.25, depth=0.25)
SHARD_SIZES = (70, 45, 100)  # not multiples of the batch size: partial last batches
BATCH = 32


def fashion_mnist_test(n):
    def read(name, offset):
        path = os.path.join(prepare_data.FASHION_MNIST_DIR, name)
        return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)
    images = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n]
    return images, read("t10k-labels-idx1-ubyte.gz", 8)[:n]


def as_model_input(images28):
    """The eval view of Fashion-MNIST written independently of data.py: zero-pad 28 -> 32."""
    return np.pad(images28, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.float32)


def tiny_model(seed, calibration_images):
    keras.utils.set_random_seed(seed)
    model = efficientnet_builder.build_model(**CONFIG)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)(
        calibration_images, training=False).numpy()
    w = np.random.default_rng(seed).normal(size=(features.shape[1], 10)).astype(np.float32)
    w = w / (features @ w).std(0) * 3.0
    head = model.get_layer("predictions")
    head.kernel.assign(w)
    head.bias.assign(-(features @ w).mean(0))
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("label")
    images, labels = fashion_mnist_test(sum(SHARD_SIZES))
    x = as_model_input(images)
    model, ema = tiny_model(1, x[:128]), tiny_model(2, x[:128])
    teacher = str(base / "teacher")
    efficientnet_builder.save_model_dir(
        teacher, dict(CONFIG, dataset="fashion_mnist", input_kind="small", label_offset=0),
        model, ema_model=ema)
    unlabeled = base / "unlabeled"
    unlabeled.mkdir()
    n = 0
    for s, size in enumerate(SHARD_SIZES):
        path = unlabeled / f"unlabeled-{s:05d}-of-{len(SHARD_SIZES):05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for _ in range(size):
                png = tf.io.encode_png(np.pad(images[n], 2)[..., None]).numpy()
                true_label = int(labels[n]) if n % 7 else None  # some records have none
                writer.write(data.image_example(png, None, f"fm/test/{n:05d}",
                                                true_label).SerializeToString())
                n += 1
    files = common.list_files(str(unlabeled))
    out = str(base / "labels")
    label_data.run(teacher, files, out, batch_size=BATCH)
    expected = tf.nn.softmax(ema(x, training=False)).numpy()
    raw_model = tf.nn.softmax(model(x, training=False)).numpy()
    return {"base": base, "teacher": teacher, "files": files, "out": out, "labels": labels,
            "expected": expected, "raw_model": raw_model}


def read_records(path):
    out = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        out.append({k: tuple(getattr(f, f.WhichOneof("kind")).value) for k, f in feature.items()})
    return out


def file_bytes(pattern):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(tf.io.gfile.glob(pattern))}


@pytest.mark.slow
def test_reproduces_the_teachers_predictions(setup):
    inputs = [r for f in setup["files"] for r in read_records(f)]
    outputs = [r for f in setup["files"]
               for r in read_records(os.path.join(setup["out"], os.path.basename(f)))]
    assert len(outputs) == len(inputs) == sum(SHARD_SIZES)
    probs = np.array([r["probabilities"] for r in outputs], np.float32)
    expected = setup["expected"]
    np.testing.assert_allclose(probs, expected, atol=1e-5)  # EMA weights, inference mode
    assert np.abs(probs - setup["raw_model"]).max() > 0.1  # ... not the raw weights
    assert len(set(expected.argmax(1))) >= 5  # a teacher with diverse predictions
    for i, (inp, out) in enumerate(zip(inputs, outputs)):
        assert out["image/encoded"] == inp["image/encoded"]  # the stored bytes, not re-encoded
        assert out["image/id"] == inp["image/id"] == (f"fm/test/{i:05d}".encode(),)
        assert out.get("diagnostic/true_label") == inp.get("diagnostic/true_label")
        assert out["label"] == (int(np.argmax(out["probabilities"])),)
        assert out["label"] == (int(expected[i].argmax()),)
        assert np.float32(out["prob"][0]) == np.max(np.float32(out["probabilities"]))
        assert set(out) <= {"image/encoded", "image/id", "diagnostic/true_label",
                            "probabilities", "label", "prob"}
    name = os.path.basename(setup["files"][0])
    summary = common.read_json(label_data.summary_path(setup["out"], name))
    first = probs[:SHARD_SIZES[0]]
    assert summary["count"] == SHARD_SIZES[0]
    assert summary["mean_confidence"] == pytest.approx(first.max(1).mean(), rel=1e-5)
    assert summary["class_counts"] == np.bincount(first.argmax(1), minlength=10).tolist()
    known = [i for i in range(SHARD_SIZES[0]) if i % 7]
    truth = setup["labels"][known]
    assert summary["diagnostic_accuracy"] == pytest.approx((first[known].argmax(1) == truth).mean())
    assert summary["images_per_second"] > 0 and summary["seconds"] > 0


@pytest.mark.slow
def test_float16_probabilities(setup, tmp_path):
    label_data.run(setup["teacher"], setup["files"][:1], str(tmp_path), batch_size=BATCH,
                   probabilities_dtype="float16")
    records = read_records(str(tmp_path / os.path.basename(setup["files"][0])))
    assert "probabilities" not in records[0]
    probs = np.stack([np.frombuffer(r["probabilities/float16"][0], "<f2") for r in records])
    np.testing.assert_allclose(probs, setup["expected"][:len(records)], atol=1e-3)
    float32_run = read_records(os.path.join(setup["out"], os.path.basename(setup["files"][0])))
    assert [r["label"] for r in records] == [r["label"] for r in float32_run]


def test_bfloat16_teacher_labels_close_to_float32_and_is_another_provenance(setup, tmp_path):
    out = str(tmp_path)
    try:
        label_data.run(setup["teacher"], setup["files"][:1], out, batch_size=BATCH,
                       precision="bfloat16")
    finally:
        common.set_precision("float32")  # the policy is global: later tests build float32 models
    records = read_records(str(tmp_path / os.path.basename(setup["files"][0])))
    probs = np.stack([r["probabilities"] for r in records])
    expected = setup["expected"][:len(records)]
    assert np.abs(probs - expected).max() < 0.1      # bf16 1x1 convolutions: close, not equal
    assert np.mean(probs.argmax(1) == expected.argmax(1)) >= 0.9
    # float32 into the same dir: another provenance, so the bf16 labels are redone, not kept.
    summary, = label_data.run(setup["teacher"], setup["files"][:1], out, batch_size=BATCH)
    assert summary["provenance"]["flags"]["precision"] == "float32"
    records = read_records(str(tmp_path / os.path.basename(setup["files"][0])))
    np.testing.assert_allclose(np.stack([r["probabilities"] for r in records]), expected,
                               atol=1e-5)


@pytest.mark.parametrize("num_files", [1, 3, 5, 8])
def test_sharding_covers_every_file_exactly_once(num_files):
    files = [f"f{i}" for i in range(num_files)]
    for num_shards in (1, 2, 3, 7, 8, 11):
        jobs = [common.shard_files(files, num_shards, i) for i in range(num_shards)]
        assert sorted(f for job in jobs for f in job) == files
        assert all(f"f{i}" in jobs[i % num_shards] for i in range(num_files))
    with pytest.raises(common.UserError, match="--shard_id must be in"):
        common.shard_files(files, 2, 2)


@pytest.mark.slow
def test_parallel_jobs_give_the_single_job_output(setup, tmp_path):
    out = str(tmp_path / "labels")
    for shard_id in range(2):  # two "machines" writing into one output dir
        label_data.run(setup["teacher"], common.shard_files(setup["files"], 2, shard_id), out,
                       batch_size=BATCH)
    reference = file_bytes(os.path.join(setup["out"], "*.tfrecord"))
    assert file_bytes(os.path.join(out, "*.tfrecord")) == reference
    ids = [r["image/id"] for f in sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecord")))
           for r in read_records(f)]
    assert len(ids) == len(set(ids)) == sum(SHARD_SIZES)


@pytest.mark.slow
def test_killed_job_rerun_is_byte_identical(setup, tmp_path):
    out = str(tmp_path / "labels")
    names = [os.path.basename(f) for f in setup["files"]]
    # A real job, killed (SIGKILL) as soon as it reports its first finished file.
    command = [sys.executable, os.path.join(ROOT, "label_data.py"),
               f"--teacher_model_dir={setup['teacher']}",
               f"--input_pattern={os.path.dirname(setup['files'][0])}", f"--output_dir={out}",
               f"--batch_size={BATCH}"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    for line in process.stderr:  # blocking reads of the job's log, no sleeping
        if f"file 1/3 {names[0]}" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(out, names[0]))
    first_mtime = os.stat(os.path.join(out, names[0])).st_mtime_ns
    # Plant the other states a kill can leave: a temporary, and an output without its summary.
    open(os.path.join(out, f".{names[2]}.tmp-99999-deadbeef"), "wb").write(b"half a shard")
    open(os.path.join(out, names[2]), "wb").write(b"written, but the summary was not")
    if os.path.exists(label_data.summary_path(out, names[2])):
        os.remove(label_data.summary_path(out, names[2]))

    label_data.run(setup["teacher"], setup["files"], out, batch_size=BATCH)
    assert file_bytes(os.path.join(out, "*.tfrecord")) == file_bytes(
        os.path.join(setup["out"], "*.tfrecord"))
    assert sorted(os.listdir(out)) == sorted(names + ["summaries"])  # no temporaries left
    assert os.stat(os.path.join(out, names[0])).st_mtime_ns == first_mtime  # skipped, not redone


@pytest.mark.slow
def test_mirrored_strategy_on_two_devices_keeps_the_order(setup, tmp_path):
    script = f"""
import sys
sys.path.insert(0, {ROOT!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import common, label_data
common.make_strategy = lambda *_, **__: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
summary, = label_data.run({setup['teacher']!r}, [{setup['files'][0]!r}], {str(tmp_path)!r},
                          batch_size={BATCH}, strategy_name="mirrored")
assert summary["num_replicas"] == 2, summary
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name = os.path.basename(setup["files"][0])
    mirrored = read_records(str(tmp_path / name))
    single = read_records(os.path.join(setup["out"], name))
    assert [r["image/id"] for r in mirrored] == [r["image/id"] for r in single]
    np.testing.assert_allclose([r["probabilities"] for r in mirrored],  # batch halves: other
                               [r["probabilities"] for r in single], atol=1e-5)  # summation order


def test_arguments_are_checked_before_labeling(tmp_path):
    files = [str(tmp_path / "unlabeled.tfrecord"), str(tmp_path / "other" / "unlabeled.tfrecord")]
    with pytest.raises(common.UserError, match="--batch_size must be >= 1, got 0"):
        label_data.run(str(tmp_path), files, str(tmp_path / "o"), batch_size=0)
    with pytest.raises(common.UserError, match="--probabilities_dtype must be one of"):
        label_data.run(str(tmp_path), files, str(tmp_path / "o"), probabilities_dtype="int8")
    with pytest.raises(common.UserError, match="distinct basenames"):
        label_data.run(str(tmp_path), files, str(tmp_path / "o"))
    with pytest.raises(common.UserError, match="--strategy must be one of default, mirrored"):
        label_data.run(str(tmp_path), files[:1], str(tmp_path / "o"), strategy_name="gpu")
    with pytest.raises(common.UserError, match=r"--tpu=v3 needs --strategy=tpu"):
        label_data.run(str(tmp_path), files[:1], str(tmp_path / "o"), tpu="v3")
    with pytest.raises(common.UserError, match=f"model dir {tmp_path}/nope does not exist"):
        label_data.run(str(tmp_path / "nope"), files[:1], str(tmp_path / "o"))


def test_a_teacher_near_chance_is_refused_before_anything_is_labeled(tmp_path):
    """efficientnet_builder.check_teacher_strength, through label_data.run: judged on the
    teacher's eval_results.json and the last training loss of its TensorBoard events."""
    teacher = str(tmp_path / "teacher")
    config = dict(CONFIG, width=0.1, depth=0.1, dataset="fashion_mnist", input_kind="small",
                  label_offset=0)
    efficientnet_builder.save_model_dir(teacher, config, efficientnet_builder.build_model(
        **{k: config[k] for k in CONFIG}))
    with tf.summary.create_file_writer(os.path.join(teacher, "train")).as_default():
        tf.summary.scalar("loss", 9.0, step=1)
        tf.summary.scalar("loss", 1.2, step=300)  # the last one counts

    def judge(top_1, loss, allow_weak=False):
        common.write_json(os.path.join(teacher, "eval_results.json"),
                          {"top_1": top_1, "top_5": 0.5, "loss": loss, "global_step": 300})
        efficientnet_builder.check_teacher_strength(teacher, allow_weak)

    out = str(tmp_path / "labels")
    common.write_json(os.path.join(teacher, "eval_results.json"),
                      {"top_1": 0.102, "top_5": 0.5, "loss": 6556.0, "global_step": 59})
    with pytest.raises(common.UserError) as e:  # the teacher: chance, BN unsettled
        label_data.run(teacher, [str(tmp_path / "unlabeled.tfrecord")], out)
    assert str(e.value) == (
        f"the teacher in {teacher} is too weak to label data: top-1 10.2% is near chance (10.0% "
        f"for 10 classes) and its evaluation loss 6556 is far above its training loss 1.2; train "
        f"it longer (more steps or epochs), use a smaller model (width/depth 0.25) or a "
        f"pretrained teacher (--init_checkpoint), or pass --allow_weak_teacher")
    assert not os.path.exists(out)
    with pytest.raises(common.UserError, match="top-1 18.0% is near chance"):
        judge(0.18, 2.0)   # below min(2 x 10%, 10% + 90% / 10)
    with pytest.raises(common.UserError, match="evaluation loss 9.3 is far above"):
        judge(0.60, 9.3)   # above 4 x max(1.2, ln 10)
    judge(0.20, 9.1)       # clearly above chance, loss within 4 x ln 10: good enough
    judge(0.102, 6556.0, allow_weak=True)  # --allow_weak_teacher: a warning, no error
    os.remove(os.path.join(teacher, "eval_results.json"))
    efficientnet_builder.check_teacher_strength(teacher)  # not evaluated: not judged


def test_serialized_records_carry_the_image_and_the_soft_label():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    for float16 in (False, True):
        records = label_data.serialize_batch([b"fm/1", b"fm/2"], [b"png 1", b"png 2"],
                                             np.array([2, -1]), probabilities, float16)
        first, second = (tf.train.Example.FromString(r).features.feature for r in records)
        assert first["image/id"].bytes_list.value == [b"fm/1"]
        assert first["image/encoded"].bytes_list.value == [b"png 1"]
        assert first["label"].int64_list.value == [1] and second["label"].int64_list.value == [0]
        assert first["prob"].float_list.value == [np.float32(0.7)]
        assert first["diagnostic/true_label"].int64_list.value == [2]
        assert "diagnostic/true_label" not in second  # -1: no hidden label
        stored = (np.frombuffer(second["probabilities/float16"].bytes_list.value[0], "<f2")
                  if float16 else np.array(second["probabilities"].float_list.value))
        np.testing.assert_allclose(stored, probabilities[1], atol=1e-3 if float16 else 0)


def copy_records(src, dst, count=None, bad_at=()):
    """The first `count` records of `src` into `dst`, with records whose image is not an image
    at the indices `bad_at` (ids bad/<index>)."""
    records = list(tf.data.TFRecordDataset(src).as_numpy_iterator())[:count]
    with tf.io.TFRecordWriter(str(dst)) as writer:
        for i, record in enumerate(records):
            if i in bad_at:
                record = data.image_example(b"not a png", None, f"bad/{i}").SerializeToString()
            writer.write(record)
    return len(records)


@pytest.mark.slow
def test_bad_images_are_named_or_skipped(setup, tmp_path):
    """Rows "a corrupt image inside a record" and "label_data.py --skip_bad_images"."""
    bad = tmp_path / "bad.tfrecord"
    copy_records(setup["files"][0], bad, 40, bad_at=(35,))
    with pytest.raises(common.UserError, match=r"corrupt record file .*bad.tfrecord, record 35 "
                       r"\(image/id bad/35\): .*\(--skip_bad_images skips such records\)"):
        label_data.run(setup["teacher"], [str(bad)], str(tmp_path / "o"), batch_size=BATCH)
    assert not os.path.exists(tmp_path / "o" / "bad.tfrecord")  # nothing half-written
    assert [f for f in os.listdir(tmp_path / "o") if f.startswith(".")] == []
    summary, = label_data.run(setup["teacher"], [str(bad)], str(tmp_path / "o"),
                              batch_size=BATCH, skip_bad_images=True)
    assert (summary["count"], summary["skipped_bad_images"], summary["skipped_records"]) == (
        39, 1, [35])
    kept = read_records(str(tmp_path / "o" / "bad.tfrecord"))
    good = read_records(setup["files"][0])[:40]
    assert [r["image/id"] for r in kept] == [r["image/id"] for i, r in enumerate(good) if i != 35]
    copy_records(setup["files"][0], bad, 3, bad_at=(0, 1, 2))
    with pytest.raises(common.UserError, match="bad.tfrecord: none of its 3 records decodes"):
        label_data.run(setup["teacher"], [str(bad)], str(tmp_path / "o2"), skip_bad_images=True)


@pytest.mark.slow
def test_outputs_of_another_teacher_or_input_are_relabeled(setup, tmp_path, caplog):
    """Row "label_data.py into a dir labeled by another teacher": the outputs record what made
    them; another teacher, another input file or an older summary -> labeled again."""
    inputs, out = tmp_path / "in", str(tmp_path / "labels")
    inputs.mkdir()
    files = [str(inputs / os.path.basename(f)) for f in setup["files"][:2]]
    for src, dst in zip(setup["files"], files):
        shutil.copy2(src, dst)  # the same name, size and mtime: the same input
    shutil.copytree(setup["out"], out)
    summary = common.read_json(label_data.summary_path(out, os.path.basename(files[0])))
    prov = summary["provenance"]
    assert prov["teacher"]["checkpoint"] == "ckpt-0" and len(prov["teacher"]["fingerprint"]) == 16
    assert prov["input"]["size_bytes"] == os.path.getsize(files[0])
    assert summary["output_bytes"] == os.path.getsize(os.path.join(out, os.path.basename(files[0])))
    assert label_data.run(setup["teacher"], files, out, batch_size=BATCH) == []  # all done
    # Another teacher: its EMA weights are the first teacher's raw weights.
    raw, config = efficientnet_builder.load_model_dir(setup["teacher"], use_ema=False)
    other = str(tmp_path / "other")
    efficientnet_builder.save_model_dir(other, config, raw, ema_model=raw, step=5)
    with caplog.at_level("WARNING"):
        again = label_data.run(other, files, out, batch_size=BATCH)
    assert len(again) == 2 and "labeled by another teacher" in caplog.text
    relabeled = read_records(os.path.join(out, os.path.basename(files[0])))
    probs = [r["probabilities"] for r in relabeled]
    np.testing.assert_allclose(probs, setup["raw_model"][:SHARD_SIZES[0]], atol=1e-5)
    assert again[0]["provenance"]["teacher"]["step"] == 5
    # Another input file under the same name; an older summary without provenance.
    copy_records(setup["files"][2], files[1], 30)
    summary_file = label_data.summary_path(out, os.path.basename(files[0]))
    common.write_json(summary_file, {k: v for k, v in common.read_json(summary_file).items()
                                     if k != "provenance"})
    caplog.clear()
    with caplog.at_level("WARNING"):
        third = label_data.run(other, files, out, batch_size=BATCH)
    assert [s["count"] for s in third] == [SHARD_SIZES[0], 30]
    assert "no provenance" in caplog.text and "another input file" in caplog.text
