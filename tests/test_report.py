"""report.py on a fake run directory (fast): a B0 teacher, students grown by name (B1, B2) with
pseudo-label shards, a supervised baseline; the tables, counts and plots follow from the files."""
import json
import os

import common  # first: it silences TensorFlow's start-up lines
import pytest
import tensorflow as tf

import report


def write_model(model_dir, model_name, image_size, top_1, unlabel_ratio=None, width=None):
    os.makedirs(model_dir)
    common.write_json(os.path.join(model_dir, "model.json"), {
        "model_name": model_name, "width": width, "depth": None, "image_size": image_size,
        "small_image": False, "num_classes": 3})
    common.write_json(os.path.join(model_dir, "eval_results.json"),
                      {"top_1": top_1, "top_5": 1.0, "global_step": 10})
    flags = {"dataset": "folder", "unlabel_ratio": unlabel_ratio or 1.0}
    if unlabel_ratio:
        flags.update(unlabel_data_dir="x", teacher_model_dir="y")
    common.write_json(os.path.join(model_dir, "flags.json"), flags)


def write_labels(path, rows):  # rows: (image id, label, true label, copies)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for image_id, label, true, copies in rows:
            feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                       for name, value in (("label", label), ("diagnostic/true_label", true),
                                           ("copies", copies)) if value is not None}
            feature["image/id"] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[image_id.encode()]))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture
def workdir(tmp_path):
    w = str(tmp_path)
    write_model(os.path.join(w, "teacher"), "efficientnet-b0", 224, 0.5)
    for i, (name, size, top_1) in enumerate([("efficientnet-b1", 240, 0.6),
                                             ("efficientnet-b2", 260, 0.7)], 1):
        write_model(os.path.join(w, f"iter{i}", "student"), name, size, top_1, unlabel_ratio=i)
        write_labels(os.path.join(w, f"iter{i}", "labels", "u-0.tfrecord"),
                     [("a", 0, 0, 1), ("b", 1, 2, 1), ("c", 2, 2, 1), ("d", 2, 2, 1)])
        write_labels(os.path.join(w, f"iter{i}", "filtered", "f-0.tfrecord"),  # "a" in 2 rounds
                     [("a", 0, 0, 2), ("c", 2, 2, 2), ("b", 1, 2, 1), ("a", 0, 0, 1)])
    write_model(os.path.join(w, "supervised_baseline"), "efficientnet-b2", 260, 0.55)
    return w


def test_report_of_a_grown_chain(workdir):
    table = report.write_report(workdir, preset="smoke", seconds=5)
    data = json.load(open(os.path.join(workdir, "report.json")))
    assert [m["name"] for m in data["models"]] == ["teacher", "student 1", "student 2"]
    assert [m["unlabel_ratio"] for m in data["models"]] == [None, 1, 2]
    assert [m["architecture"]["model_name"] for m in data["models"]] == [
        "efficientnet-b0", "efficientnet-b1", "efficientnet-b2"]
    labels, filtered = data["iterations"][1]["labels"], data["iterations"][1]["filtered"]
    assert labels == {"images": 4, "unique": 4, "per_class": [1, 1, 2], "accuracy": 0.75}
    assert filtered == {"images": 6, "unique": 3, "per_class": [3, 1, 2], "accuracy": 5 / 6}
    assert "| student 1 | efficientnet-b1 @240 | 1 | 60.00 | 100.00 | 10 |" in table
    assert "| supervised, student 2's size | efficientnet-b2 @260 | - | 55.00 |" in table
    assert "| 2 | 75.00 | 83.33 | 6 (3) |" in table
    assert [m.get("below_teacher") for m in data["models"]] == [None, False, False]
    md = open(os.path.join(workdir, "report.md")).read()
    assert md.startswith("# Noisy Student on image folders: preset smoke") and table in md
    for name in ("top1_per_iteration.png", "pseudo_label_quality.png", "class_balance.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert data["ablation"] == [] and data["seconds"] == 5
    write_model(os.path.join(workdir, "iter3", "student"), "efficientnet-b2", 260, 0.65, 3)
    assert "| student 3 (below its teacher) | efficientnet-b2 @260 | 3 | 65.00 |" in (
        report.write_report(workdir))


def test_a_fine_tuned_student_and_the_schedule_are_reported(workdir):
    """Paper Sec. 3.1: a student fine-tuned at a larger resolution (main.py writes
    student/finetune_<size>) gets its own row after the student; the schedule line is in
    report.json and under the title of report.md."""
    write_model(os.path.join(workdir, "iter2", "student", "finetune_300"), "efficientnet-b2", 300,
                0.72)
    table = report.write_report(workdir, preset="paper", schedule="paper's (made for ImageNet)")
    data = json.load(open(os.path.join(workdir, "report.json")))
    assert [m["name"] for m in data["models"]] == ["teacher", "student 1", "student 2",
                                                   "student 2, fine-tuned"]
    assert "| student 2, fine-tuned | efficientnet-b2 @300 | - | 72.00 |" in table
    assert data["schedule"] == "paper's (made for ImageNet)"
    md = open(os.path.join(workdir, "report.md")).read()
    assert md.splitlines()[2] == "Schedule: paper's (made for ImageNet)"


def test_unlabeled_images_without_true_labels_have_no_pseudo_label_accuracy(workdir):
    """Image folders carry no true labels: the accuracy is unknown ("-"), not 0%, and not plotted."""
    for i in (1, 2):
        for part in ("labels/u-0.tfrecord", "filtered/f-0.tfrecord"):
            write_labels(os.path.join(workdir, f"iter{i}", part), [("a", 0, None, 1), ("b", 2, None, 2)])
    table = report.write_report(workdir, preset="smoke", seconds=5)
    iteration = json.load(open(os.path.join(workdir, "report.json")))["iterations"][0]
    assert iteration["labels"]["accuracy"] is None and iteration["filtered"]["images"] == 3
    assert "| 1 | - | - | 3 (2) |" in table
    assert not os.path.exists(os.path.join(workdir, "pseudo_label_quality.png"))
    assert os.path.getsize(os.path.join(workdir, "class_balance.png")) > 0


def test_architecture_names_multipliers_only_when_given():
    assert report.architecture({"model_name": "efficientnet-b0", "width": 0.25, "depth": 0.5,
                                "image_size": 32}) == "efficientnet-b0 w0.25 d0.5 @32"
    assert report.architecture({"model_name": None, "image_size": None}) == "-"  # not started


def test_missing_teacher_is_one_clear_error(tmp_path):
    with pytest.raises(common.UserError, match="has no teacher/"):
        report.write_report(str(tmp_path))
