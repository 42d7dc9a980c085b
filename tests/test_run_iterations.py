"""run_iterations.sh: flag errors are one line before any work (fast); the whole pipeline (teacher,
two label/filter/student iterations with --jobs=2 labeling, byte-identical to one job, and the
report) on generated image folders, then a rerun that skips every finished stage and refuses one
that another command made; --preset=smoke's Fashion-MNIST data and teacher; ImageNet-schema JPEG
records in the paper preset's shape (a checkpoint teacher, two B1 students, the first fine-tuned
and the second's teacher, the Table 6 ablation; slow); the --plan of the paper's and the reference's SVHN runs against their
values, and of own image folders (the model and batch their images get; fast). The smoke preset's
promise (every 300-step model well above chance) is a benchmark: bench/smoke_preset.md."""
import json
import os
import shlex
import re
import subprocess
import sys

import common  # noqa: F401  (first: it silences TensorFlow's start-up lines)
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import data
import efficientnet_builder
import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(["bash", "run_iterations.sh", "--preset=smoke", f"--workdir={workdir}",
                           "--skip_setup", *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)  # (a shared 2-core machine)


# Algorithm 1 end to end on generated folders: tiny models (TINY, below), two iterations (student
# 1 labels for student 2: every path of the loop), --jobs=2 labeling, one number of epochs and one
# unlabeled ratio per student. (Growing students, the supervised baseline and --ablation: the
# ImageNet-records test below.) Shared by the tests that read or rerun it.
FOLDER_FLAGS = ("--iterations=2", "--jobs=2", "--student_epochs=7,8,9", "--unlabel_ratios=1,2,1",
                "--allow_weak_teacher")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("folders")
    folders = own_folders(tmp_path, 8, 32, 3, 3, test_per_class=4)   # a pile of 12 ...
    write_images(str(tmp_path / "pile" / "a"), 18, 32, seed=5)   # ... + 18 in a meaningless folder
    flags = (*folders, *FOLDER_FLAGS, TINY)
    workdir = tmp_path / "run"
    proc = run(workdir, *flags)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, flags, proc


@pytest.mark.slow
def test_driver_report_has_every_model_and_iteration(folder_run):
    workdir, _, proc = folder_run
    report = json.load(open(workdir / "report.json"))
    assert [m["name"] for m in report["models"]] == ["teacher", "student 1", "student 2"]
    assert all(0.0 <= m["top_1"] <= m["top_5"] <= 1.0 and m["global_step"] == 8
               for m in report["models"])
    assert report["models"][0]["architecture"]["image_size"] == 32   # small-image data
    # --unlabel_ratios: one per iteration, recorded in the report (the teacher has none).
    assert [m["unlabel_ratio"] for m in report["models"]] == [None, 1, 2]
    table = (workdir / "report.md").read_text()
    # (a tiny student may be marked below its teacher: 8 steps promise no gain)
    assert re.search(r"^\| student 2( \(below its teacher\))? \| efficientnet-b0 w0.1 d0.1 @32 \| 2 \|",
                     table, re.M), table
    for it in report["iterations"]:
        # Every unlabeled image is labeled; K = 30 images / 3 classes for own data.
        assert it["labels"]["images"] == 30
        assert set(it["filtered"]["per_class"]) <= {0, 10} and it["filtered"]["images"] >= 10
    for name in ("report.md", "top1_per_iteration.png", "class_balance.png"):
        assert (workdir / name).stat().st_size > 0   # (pseudo-label quality: no true labels here)
    assert "student 2" in proc.stdout               # the final table is printed
    # --student_epochs reaches each student's main.py (--train_steps, from --train_flags, wins);
    # each model its own --seed (teacher SEED, student i SEED*10+i).
    flags = {d: json.load(open(workdir / d / "flags.json"))
             for d in ("teacher", "iter1/student", "iter2/student")}
    assert flags["teacher"]["train_epochs"] != 7
    assert [flags[f"iter{i}/student"]["train_epochs"] for i in (1, 2)] == [7, 8]
    assert [f["seed"] for f in flags.values()] == [0, 1, 2]
    assert flags["iter2/student"]["teacher_model_dir"] == f"{workdir}/iter1/student"
    assert not (workdir / "iter3").exists()   # --iterations=2
    assert report["supervised_baseline"] is None   # students of the teacher's size: no baseline


@pytest.mark.slow
def test_two_labeling_jobs_write_what_one_job_writes(folder_run, tmp_path):
    workdir, _, _ = folder_run
    single = tmp_path / "single"
    subprocess.run([sys.executable, "label_data.py", f"--teacher_model_dir={workdir}/teacher",
                    f"--input_pattern={workdir}/data/unlabeled/*", f"--output_dir={single}",
                    "--allow_weak_teacher"],
                   cwd=ROOT, check=True, capture_output=True)
    names = sorted(p.name for p in single.glob("*") if p.is_file())
    assert len(names) >= 2   # (shards: one for each job)
    assert all((single / n).read_bytes() == (workdir / "iter1/labels" / n).read_bytes()
               for n in names)


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_refuses_another_commands(folder_run):
    workdir, flags, _ = folder_run
    proc = run(workdir, *flags)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # data, teacher, 3 x (label, filter, student)
    assert proc.stderr.count("done, skipped") == 1 + 1 + 2 * 3
    assert "running" not in proc.stderr
    # A finished stage that another command made is refused, not reused: student 2's epochs
    # changed, so everything before it is skipped and student 2 is named.
    proc = run(workdir, *flags, "--student_epochs=7,10,9")
    # (--jobs=2: the student ran as a job, its line prefixed with its name; then the driver's)
    error = next(l for l in proc.stderr.splitlines() if "error: train+eval" in l)
    assert proc.returncode == 2 and proc.stderr.count("done, skipped") == 1 + 1 + 3 + 2
    assert error.startswith(f"[iter2/student] error: train+eval {workdir}/iter2/student: {workdir}/iter2/student "
                            "was made by another command; remove it or use another --workdir")
    assert "--train_epochs=8" in error and "--train_epochs=10" in error
    record = (workdir / "iter2/student/eval_results.json.command").read_text()
    assert record.startswith("main.py ") and "--train_epochs=8 " in record


@pytest.mark.slow
def test_smoke_preset_prepares_fashion_mnist_and_trains_its_teacher(tmp_path):
    """--preset=smoke on the embedded Fashion-MNIST: the data stage (4,000 labels of seed 0) and
    the teacher, shrunk by TINY (its 300-step models' accuracy: bench/smoke_preset.md)."""
    workdir = tmp_path / "run"
    proc = run(workdir, "--teacher_only", "--allow_weak_teacher", TINY)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.load(open(workdir / "data" / "prepared.json"))["counts"] == {
        "labeled": 4000, "unlabeled": 56000, "test": 10000}
    flags = json.load(open(workdir / "teacher" / "flags.json"))
    assert (flags["dataset"], flags["num_labeled_per_class"], flags["data_seed"]) == (
        "fashion_mnist", 400, 0)
    results = json.load(open(workdir / "teacher" / "eval_results.json"))
    assert results["num_examples"] == 10000 and results["global_step"] == 8
    assert not [n for n in os.listdir(workdir) if n.startswith("iter")]   # --teacher_only


def test_unknown_preset_is_one_line(tmp_path):
    proc = subprocess.run(["bash", "run_iterations.sh", "--preset=huge", "--skip_setup",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --preset=huge is not one of smoke, demo, quick, full, "
                                   "paper, svhn")


EPOCHS_ERROR = "must be one number of epochs or three, one per iteration (e.g. 50 or 50,50,75)"


@pytest.mark.parametrize("flag,error", [
    ("--unlabel_ratios=1,2", "must be three numbers, one per iteration (e.g. 1,2,3)"),
    ("--student_widths=0.3,wide,0.4",
     "must be three multipliers, one per iteration (e.g. 0.3,0.35,0.4)"),
    ("--student_epochs=many", EPOCHS_ERROR), ("--student_epochs=50,75", EPOCHS_ERROR),
    ("--iterations=4", "must be 1, 2 or 3 (students)"),
    ("--ablation=no_aug,hard", "names hard, not one of no_aug,no_noise,hard_labels,no_filter,"
                               "on_the_fly,noised_teacher")])
def test_bad_flag_is_one_line_before_any_work(tmp_path, flag, error):
    proc = subprocess.run(["bash", "run_iterations.sh", flag, "--skip_setup",
                           f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {flag} {error}"
    assert not os.path.exists(tmp_path / "run")


def test_a_finished_stage_of_another_command_is_refused(tmp_path):
    """A workdir whose data stage another command made (its record, data.py's from before
    prepare_data.py, says --seed=1): the driver with --seed=0 refuses before any work, naming the
    stage and both commands."""
    data_dir = tmp_path / "run" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "prepared.json").write_text("{}")
    then = (f"data.py --dataset=fashion_mnist --output_dir={data_dir} --num_labeled_per_class=400"
            " --seed=1")
    (data_dir / "prepared.json.command").write_text(then + "\n")
    proc = subprocess.run(["bash", "run_iterations.sh", "--preset=smoke", "--skip_setup",
                           f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    first, error = proc.stderr.strip().splitlines()
    assert (proc.returncode, error) == (2, (
        f"error: prepare Fashion-MNIST: {data_dir} was made by another command; remove it or use "
        f"another --workdir (then: {then}; now: prepare_{then[:-1]}0)"))
    # The run's first line states the schedule and what it was made for.
    assert first.endswith("schedule: preset smoke's, made for checking the plumbing in minutes "
                          "(300 steps per model), not accuracy")
    assert sorted(os.listdir(tmp_path / "run")) == ["data"]


def test_help_prints_the_whole_header():
    proc = subprocess.run(["bash", "run_iterations.sh", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# The reproducible Noisy Student run")
    assert lines[-1] == "# one from its last checkpoint."
    assert any("--student_epochs=50" in line for line in lines)


@pytest.mark.parametrize("flag,error", [
    ("--dataset=mnist", "is not one of fashion_mnist, folder, imagenet, svhn"),
    ("--jobs=0", "must be a positive number of labeling jobs"),
    ("--precision=float16", "is not one of float32, bfloat16"),
    ("--num_images_per_class=many", "must be a positive number of images"),
    ("--num_labeled_per_class=6000", "must be 1 to 5000 (Fashion-MNIST has 6,000 train images per "
     "class; the rest are the unlabeled pile)"),
    ("--unlabeled_shards=0", "must be 1 to 8 (of the 8 unlabeled shards)"),
    ("--student_models=efficientnet-b1", "must be three model names, one per iteration "
     "(e.g. efficientnet-b1,efficientnet-b2,efficientnet-b3)"),
    ("--init_checkpoint=/nonexistent.weights.h5", "does not exist (expected a Keras .h5/.keras "
     "file, a TF checkpoint prefix with its .index, or a directory)")])
def test_bad_data_or_model_flag_is_one_line_before_any_work(tmp_path, flag, error):
    proc = subprocess.run(["bash", "run_iterations.sh", flag, "--skip_setup",
                           f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"error: {flag} {error}")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("dataset,missing", [("folder", "labeled_dir"),
                                             ("imagenet", "label_data_dir")])
def test_own_data_names_the_missing_flag(tmp_path, dataset, missing):
    proc = subprocess.run(["bash", "run_iterations.sh", f"--dataset={dataset}", "--skip_setup",
                           f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"error: --dataset={dataset} needs "
                                                         f"--{missing}")


def write_images(folder, count, size, seed, classes=None, num_classes=3, channels=3, signal=True):
    """`count` PNGs (classes: one sub-folder each, brightness by class unless not signal; else a
    flat pile)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        c = i % num_classes
        sub = os.path.join(folder, f"class_{c}") if classes else folder
        os.makedirs(sub, exist_ok=True)
        mean = 60 + 140 * c / (num_classes - 1) if signal else 130
        pixels = np.clip(rng.normal(mean, 20, (size, size, channels)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels.squeeze()).save(os.path.join(sub, f"{i:03d}.png"))


def plan(tmp_path, *flags):
    """`run_iterations.sh --plan`: [(stage name, tasks, waits for, {flag: value})], nothing run.
    Flags are read as absl does (the last of a repeated flag wins)."""
    proc = subprocess.run(["bash", "run_iterations.sh", "--plan", f"--workdir={tmp_path}/run",
                           *flags], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(tmp_path / "run")   # nothing was run or written
    lines, stages = proc.stdout.splitlines(), []
    for head, command in zip(lines, lines[1:]):
        if head.startswith("# stage "):
            name, tasks, waits = head.split(": ", 1)[1].rsplit("; ", 2)
            if command.startswith("for TASK in"):
                command = command.split("; do ", 1)[1].rsplit("; done", 1)[0]
            argv = shlex.split(command)
            values = dict((a[2:] if "=" in a else a[2:] + "=true").split("=", 1)  # --x: true
                          for a in argv if a.startswith("--"))
            stages.append((name, tasks, waits.removeprefix("waits for: "), argv[1], values))
    return proc.stdout, stages


RECORDS = ("--label_data_dir=/data/train-*", "--eval_data_dir=/data/validation-*",
           "--unlabel_data_dir=/data/unlabeled-*")

# The paper's run, typed from the paper's text (Sec. 3.1 unless said), not from the driver:
# "Iterative training": B7 teacher, then L2 students at unlabeled batch 14x, 14x, 28x.
PAPER_MODELS = ["efficientnet-b7", "efficientnet-l2", "efficientnet-l2", "efficientnet-l2"]
PAPER_RATIOS = [14, 14, 28]
# "Training details": labeled batch 2048; lr 0.128 for batch 2048, x0.97 every 2.4 epochs for
# 350 epochs (models larger than B4, incl. L2) or every 4.8 epochs for 700 (smaller models).
PAPER_BATCH, PAPER_PEAK_LR, PAPER_DECAY = 2048, 0.128, 0.97
PAPER_EPOCHS = {"efficientnet-b7": (350, 2.4), "efficientnet-l2": (350, 2.4),
                "efficientnet-b5": (350, 2.4), "efficientnet-b4": (700, 4.8),
                "efficientnet-b0": (700, 4.8)}
# L2 trained at a smaller resolution (475: the released L2-475 checkpoint), then fine-tuned 1.5
# epochs at a larger one (800x800: Sec. 3.4) on unaugmented labeled images.
PAPER_L2_SIZE, PAPER_FINETUNE_SIZE, PAPER_FINETUNE_EPOCHS = 475, 800, 1.5
# "Noise": survival 0.8 at the last layer, dropout 0.5, RandAugment N=2, M=27 (B7 and L2).
PAPER_SURVIVAL, PAPER_DROPOUT, PAPER_N, PAPER_M = 0.8, 0.5, 2, 27
# "Unlabeled dataset": confidence above 0.3, at most 130K images per class.
PAPER_THRESHOLD, PAPER_K = 0.3, 130000
# Not in the paper; google-research/noisystudent main.py: EMA 0.9999 (l.179), weight decay
# 1e-5 (l.183), label smoothing 0.1 (l.187), warm-up 5 epochs (l.583).
REFERENCE_EMA, REFERENCE_WD, REFERENCE_SMOOTHING, REFERENCE_WARMUP = 0.9999, 1e-5, 0.1, 5


def test_paper_plan_is_the_papers_run(tmp_path):
    out, stages = plan(tmp_path, "--preset=paper", "--jobs=64", *RECORDS)
    assert "made for ImageNet + 300M unlabeled images on a TPU v3 pod" in out
    names = [s[0] for s in stages]
    train = [s for s in stages if s[3] == "main.py"]
    assert [t[4]["model_name"] for t in train] == PAPER_MODELS
    for i, (name, tasks, waits, script, f) in enumerate(train):
        epochs, decay = PAPER_EPOCHS[f["model_name"]]
        assert float(f["train_epochs"]) == epochs and float(f["lr_decay_epochs"]) == decay
        assert int(f["train_batch_size"]) == PAPER_BATCH
        assert float(f["base_learning_rate"]) * PAPER_BATCH / 256 == pytest.approx(PAPER_PEAK_LR)
        assert float(f["lr_decay_factor"]) == PAPER_DECAY
        assert float(f["final_base_learning_rate"]) == 0    # the plain staircase
        assert 1 - float(f["stochastic_depth_rate"]) == pytest.approx(PAPER_SURVIVAL)
        assert float(f["dropout_rate"]) == PAPER_DROPOUT
        assert (int(f["randaug_layer"]), int(f["randaug_mag"])) == (PAPER_N, PAPER_M)
        assert (float(f["moving_average_decay"]), float(f["weight_decay"]),
                float(f["label_smoothing"]), float(f["lr_warmup_epochs"])) == (
            REFERENCE_EMA, REFERENCE_WD, REFERENCE_SMOOTHING, REFERENCE_WARMUP)
        if i == 0:   # the B7 teacher at its own resolution, trained on the labels only
            assert "image_size" not in f and "unlabel_ratio" not in f
            continue
        assert float(f["unlabel_ratio"]) == PAPER_RATIOS[i - 1]
        assert int(f["image_size"]) == PAPER_L2_SIZE
        assert int(f["finetune_image_size"]) == PAPER_FINETUNE_SIZE
        assert float(f["finetune_epochs"]) == PAPER_FINETUNE_EPOCHS
        # Student i is taught by model i-1 (the fine-tuned L2 from iteration 2 on).
        teacher = "teacher" if i == 1 else f"iter{i - 1}/student/finetune_800"
        assert f["teacher_model_dir"] == f"{tmp_path}/run/{teacher}"
    for _, _, _, script, f in stages:
        if script == "filter_balance.py" and "min_threshold" in f:
            assert float(f["min_threshold"]) == PAPER_THRESHOLD
        if "num_images_per_class" in f:
            assert int(f["num_images_per_class"]) == PAPER_K
    # The order and the waits: teacher; 3 x (label on 64 tasks, 4 filter passes, student); report.
    per_iteration = ["label", "filter, per-class confidence histograms",
                     "filter, thresholds and picks per shard", "filter, write the kept records",
                     "filter, check and publish"]
    assert names == ([f"train+eval {tmp_path}/run/teacher"] + [
        n for i in (1, 2, 3) for n in [f"iter {i}: {p}" for p in per_iteration]
        + [f"train+eval {tmp_path}/run/iter{i}/student"]] + ["report"])
    assert [s[1] for s in stages[1:6]] == ["64 tasks", "64 tasks", "1 job", "64 tasks", "1 job"]
    waits = [s[2] for s in stages]
    assert waits[:8] == ["nothing", "stage 1", "stage 2", "stage 2 3", "stage 2 4", "stage 4 5",
                         "stage 1 6", "stage 7"] and waits[-1] == "all stages above"
    # Smaller students train 700 epochs with the decay every 4.8 (Sec. 3.1), at their own size.
    _, stages = plan(tmp_path, "--preset=paper", "--teacher_model=efficientnet-b0",
                     "--student_models=efficientnet-b4,efficientnet-b5,efficientnet-b5", *RECORDS)
    train = [s[4] for s in stages if s[3] == "main.py"]
    assert [(t["model_name"], float(t["train_epochs"]), float(t["lr_decay_epochs"]))
            for t in train[:4]] == [(m, *PAPER_EPOCHS[m]) for m in (
                "efficientnet-b0", "efficientnet-b4", "efficientnet-b5", "efficientnet-b5")]
    assert not any("image_size" in t or "finetune_image_size" in t for t in train)


# The reference's SVHN example, typed from google-research/noisystudent's scripts:
# local_scripts/svhn/svhn_offline.sh l.22 model, 27 batch, 30 unlabel_ratio, 31 soft (T=1),
# 32-33 RandAugment M=5, 34 final_base_lr, 35 weight decay; filter_unlabel.sh l.36 threshold,
# l.39 K; main.py l.76 train_steps, l.174 base lr, l.179 EMA, l.187 smoothing, l.259 N,
# l.583 warm-up; task_info.py l.39 training images (73257 - 4000).
SVHN = dict(model_name="efficientnet-b0", train_batch_size=128, unlabel_ratio=5, randaug_mag=5,
            randaug_layer=2, final_base_learning_rate=0.0002, base_learning_rate=0.016,
            weight_decay=1e-4, train_steps=109474, num_train_images=69257,
            moving_average_decay=0.9999, label_smoothing=0.1, lr_warmup_epochs=5)
SVHN_THRESHOLD, SVHN_K = 0.3, 53113


def test_svhn_plan_is_the_references_example(tmp_path):
    out, stages = plan(tmp_path, "--preset=svhn", *RECORDS)
    assert "made for SVHN" in out
    teacher, student = [s[4] for s in stages if s[3] == "main.py"]
    assert student["dataset"] == "svhn" and student["teacher_model_dir"].endswith("/teacher")
    for key, value in SVHN.items():
        assert float(student[key]) == value if key != "model_name" else student[key] == value, key
        if key != "unlabel_ratio":
            assert teacher[key] == student[key], key
    assert student.get("label_type", "soft") == "soft" and "lr_decay_epochs" not in student
    merge = [s[4] for s in stages if "thresholds" in s[0]]
    assert [(float(m["min_threshold"]), int(m["num_images_per_class"])) for m in merge] == [
        (SVHN_THRESHOLD, SVHN_K)]                     # one iteration, B0 -> B0


def test_plan_of_a_checkpoint_teacher_on_tpu_and_own_schedule(tmp_path):
    """--teacher_checkpoint: the teacher's model dir without training; --strategy/--tpu reach
    training, labeling and evaluation; the schedule's knobs are driver flags; --plan on own data
    needs K."""
    _, stages = plan(tmp_path, "--preset=quick", "--dataset=imagenet", *RECORDS,
                     "--teacher_checkpoint=/ckpt/model.ckpt-10", "--strategy=tpu", "--tpu=pod",
                     "--num_images_per_class=50", "--base_learning_rate=0.1",
                     "--final_base_learning_rate=0", "--lr_decay_epochs=3", "--randaug_mag=9",
                     "--teacher_epochs=7", "--train_batch_size=64", "--image_sizes=0,260,0,300",
                     "--finetune_sizes=0,0,380", "--unlabel_ratios=2,3,4", "--student_epochs=11")
    teacher = stages[0][4]
    assert teacher["init_checkpoint"] == "/ckpt/model.ckpt-10"
    assert (teacher["train_steps"], teacher["train_epochs"]) == ("0", "0")
    for _, _, _, script, f in stages:
        if script in ("main.py", "label_data.py"):
            assert (f["strategy"], f["tpu"]) == ("tpu", "pod"), script
    students = [s[4] for s in stages if s[3] == "main.py"][1:]
    assert [(s["base_learning_rate"], s["final_base_learning_rate"], s["lr_decay_epochs"],
             s["randaug_mag"], s["train_batch_size"], s["train_epochs"]) for s in students] == [
        ("0.1", "0", "3", "9", "64", "11")] * 3
    assert [s.get("image_size") for s in students] == ["260", None, "300"]
    assert [s.get("finetune_image_size") for s in students] == [None, None, "380"]
    assert [s["unlabel_ratio"] for s in students] == ["2", "3", "4"]
    # Another class count: the checkpoint fine-tuned on the labels, a fine-tuning schedule (1/10
    # of the preset's peak, no warm-up from 0, the plain staircase).
    _, stages = plan(tmp_path, "--preset=quick", "--dataset=imagenet", *RECORDS,
                     "--teacher_checkpoint=/ckpt/model.ckpt-10", "--teacher_finetune_epochs=3",
                     "--num_images_per_class=50")
    teacher = stages[0][4]
    assert (teacher["init_checkpoint"], teacher["train_epochs"], teacher["lr_warmup_epochs"],
            teacher["final_base_learning_rate"]) == ("/ckpt/model.ckpt-10", "3", "0", "0")
    assert float(teacher["base_learning_rate"]) == pytest.approx(0.032 / 10)
    proc = subprocess.run(["bash", "run_iterations.sh", "--plan", "--dataset=imagenet", *RECORDS],
                          cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr.strip()) == (2, (
        "error: --plan on --dataset=imagenet needs --num_images_per_class (the default, unlabeled "
        "images / classes, is counted after labeling)"))


def test_relative_paths_are_the_callers_and_a_checkpoint_prefix_is_accepted(tmp_path):
    """Run from another directory: every relative path flag (globs too) names the caller's files,
    and an official checkpoint prefix (model.ckpt-3, with its .index) is a checkpoint."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.ckpt-3.index").touch()
    flags = ["--plan", "--workdir=run", "--dataset=imagenet", "--label_data_dir=data/train-*",
             "--eval_data_dir=data/validation-*", "--unlabel_data_dir=data/unlabeled-*",
             "--num_images_per_class=5"]
    script = os.path.join(ROOT, "run_iterations.sh")
    proc = subprocess.run(["bash", script, *flags, "--init_checkpoint=ckpt/model.ckpt-3"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    teacher = shlex.split(proc.stdout.split("# stage 1: ")[1].splitlines()[1])
    for flag, value in [("model_dir", "run/teacher"), ("label_data_dir", "data/train-*"),
                        ("eval_data_dir", "data/validation-*"),
                        ("init_checkpoint", "ckpt/model.ckpt-3")]:
        assert f"--{flag}={tmp_path}/{value}" in teacher, flag
    assert f"--input_pattern={tmp_path}/data/unlabeled-*" in proc.stdout
    proc = subprocess.run(["bash", script, *flags, "--teacher_checkpoint=ckpt/model.ckpt-4"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert f"--init_checkpoint={tmp_path}/ckpt/model.ckpt-4 " in proc.stdout   # --plan: unchecked
    proc = subprocess.run(["bash", script, *flags[1:], "--init_checkpoint=ckpt/model.ckpt-4"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr.strip()) == (2, (
        f"error: --init_checkpoint={tmp_path}/ckpt/model.ckpt-4 does not exist (expected a Keras "
        f".h5/.keras file, a TF checkpoint prefix with its .index, or a directory)"))
    assert os.listdir(tmp_path) == ["ckpt"]


def test_a_supervised_baseline_is_planned_on_request_or_for_grown_students(tmp_path):
    """--supervised_baseline (students of the teacher's size) or grown students add the last
    student's architecture trained on the labels only, seed SEED*10+4; else there is none.
    (Trained and reported: the ImageNet-records driver test.)"""
    def baselines(*flags):
        _, stages = plan(tmp_path, "--preset=quick", "--seed=2", "--dataset=imagenet", *RECORDS,
                         "--num_images_per_class=5", *flags)
        return [(s[4]["model_name"], s[4]["seed"]) for s in stages
                if s[0] == f"train+eval {tmp_path}/run/supervised_baseline"]
    assert baselines() == []
    assert baselines("--supervised_baseline") == [("efficientnet-b0", "24")]
    assert baselines("--student_models=efficientnet-b0,efficientnet-b1,efficientnet-b2") == [
        ("efficientnet-b2", "24")]


def test_one_iteration_with_the_ablation_is_table_6s_run(tmp_path):
    """--iterations=1: one student (Table 6 has one iteration), its --ablation students beside
    it (or those --ablation=a,b names), robustness of the teacher and that student; no second
    iteration."""
    out, stages = plan(tmp_path, "--iterations=1", "--ablation", "--jobs=2")
    run = f"{tmp_path}/run"
    trained = [s[0].removeprefix(f"train+eval {run}/") for s in stages if s[3] == "main.py"]
    assert trained == ["teacher", "iter1/student", "ablation/no_aug", "ablation/no_noise",
                       "ablation/hard_labels", "ablation/no_filter", "ablation/on_the_fly",
                       "ablation/noised_teacher"]
    flags = {s[0].removeprefix(f"train+eval {run}/"): s[4] for s in stages if s[3] == "main.py"}
    assert flags["ablation/no_filter"]["unlabel_data_dir"] == f"{run}/iter1/labels"  # unfiltered
    # What tells each student apart (the end-to-end run trains no_filter).
    assert [tuple(flags[f"ablation/{a}"].get(k) for k in ("unlabeled_noise", "label_type",
                                                           "noised_teacher"))
            for a in ("no_aug", "no_noise", "hard_labels", "on_the_fly", "noised_teacher")] == [
        ("no_aug", None, None), ("none", None, None), (None, "hard", None), (None, None, None),
        (None, None, "true")]
    for a in ("on_the_fly", "noised_teacher"):   # the teacher labels the pile as it trains
        assert "unlabel_data_dir" not in flags[f"ablation/{a}"]
        assert flags[f"ablation/{a}"]["teacher_model_dir"] == f"{run}/teacher"
    assert "iter2" not in out and "1 iteration(s)" in out
    robustness = next(s for s in stages if s[3] == "eval_robustness.py")
    assert robustness[4]["model_dir"] == f"{run}/teacher,{run}/iter1/student"
    # --ablation=a,b: only those students
    _, stages = plan(tmp_path, "--iterations=1", "--ablation=no_filter,hard_labels")
    assert [s[0].removeprefix(f"train+eval {run}/") for s in stages if s[3] == "main.py"] == [
        "teacher", "iter1/student", "ablation/hard_labels", "ablation/no_filter"]
    # On ImageNet records the on-the-fly teacher labels the --unlabel_data_dir shards as it trains.
    _, stages = plan(tmp_path, "--iterations=1", "--ablation=on_the_fly", "--dataset=imagenet",
                     *RECORDS, "--num_images_per_class=5")
    assert next(s[4] for s in stages if s[0] == f"train+eval {run}/ablation/on_the_fly")[
        "unlabel_source_dir"] == "/data/unlabeled-*"


# Tiny steps on any data: --preset=smoke with every model shrunk and shortened.
# (depth 0.1: one block per stage, so each model builds and traces in seconds)
TINY = ("--train_flags=--train_steps=8 --train_batch_size=8 --width_coefficient=0.1"
        " --depth_coefficient=0.1")


def own_folders(tmp_path, per_class, size, channels, num_classes, signal=True, test_per_class=6):
    """A user's three folders: per_class labeled and test_per_class test images per class, a pile
    of 12."""
    for split, count, seed in (("labeled", per_class, 1), ("test", test_per_class, 2)):
        write_images(str(tmp_path / split), count * num_classes, size, seed, True, num_classes,
                     channels, signal)
    write_images(str(tmp_path / "pile"), 12, size, 3, None, num_classes, channels, signal)
    return (f"--labeled_dir={tmp_path}/labeled", f"--unlabeled_dir={tmp_path}/pile",
            f"--test_dir={tmp_path}/test", "--dataset=folder")


def test_plan_on_own_folders_states_the_model_and_batch_of_the_images(tmp_path):
    """--plan reads the labeled folder before any conversion (its images counted, one opened):
    B0 at width/depth 0.25 up to 64 px, else B0; a labeled set smaller than the preset's batch
    trains with a batch of its size, unless --train_batch_size is given; both in the first lines
    and the commands. Unchanged: the benchmark's 300 and 1,000 labels (bench/own_small_data.md)
    and the Fashion-MNIST presets (4,000 labels). No readable image: one line."""
    def first_lines_and_models(*flags):
        out, stages = plan(tmp_path, *flags)
        said = dict(line[2:].split(": ", 1) for line in out.splitlines()
                    if line.startswith(("# model: ", "# steps: ")))
        return said, [s[4] for s in stages if s[3] == "main.py"]

    b0 = "--model_name=efficientnet-b0"
    quarter = f"{b0} --width_coefficient=0.25 --depth_coefficient=0.25"
    folders = {size: own_folders(tmp_path / f"own{size}", per_class, size, channels, num_classes)
               for size, channels, per_class, num_classes in [(28, 1, 5, 4), (64, 3, 4, 3),
                                                              (96, 3, 4, 3)]}
    for size, n, net in [(28, 20, quarter), (64, 12, quarter), (96, 12, b0)]:
        said, models = first_lines_and_models("--num_images_per_class=5", *folders[size])
        assert said["model"] == (f"{net}; {n} labeled images, batch {n} (the preset's 128 cut to "
                                 "the labeled images): 1 steps per epoch (at least 24, "
                                 "--min_steps_per_epoch)")
        assert said["steps"] == (f"teacher 600, student 1 720 (+ {n} unlabeled images a step), "
                                 f"student 2 720 (+ {2 * n} unlabeled images a step), student 3 "
                                 f"960 (+ {3 * n} unlabeled images a step)")
        assert [(m["train_batch_size"], m.get("width_coefficient")) for m in models] == [
            (str(n), "0.25" if size <= 64 else None)] * 4
    _, models = first_lines_and_models("--num_images_per_class=5", "--train_batch_size=64",
                                       *folders[28])
    assert {m["train_batch_size"] for m in models} == {"64"}          # the flag wins
    for per_class in (30, 100):   # bench/own_small_data.md's 30 and 100 labels per class
        said, models = first_lines_and_models("--num_images_per_class=5", *own_folders(
            tmp_path / f"fm{per_class}", per_class, 28, 1, 10))
        assert said["model"].startswith(f"{quarter}; {per_class * 10} labeled images, batch 128: ")
        assert {m["train_batch_size"] for m in models} == {"128"}
    for preset, batch, labels in (("smoke", 32, 4000), ("demo", 128, 4000), ("quick", 128, 4000),
                                  ("full", 128, 4000), ("quick", 128, 400)):  # 400: claims' least
        said, models = first_lines_and_models(f"--preset={preset}",
                                              f"--num_labeled_per_class={labels // 10}")
        assert said["model"].startswith(f"{quarter}; {labels} labeled images, batch {batch}: ")
        assert {m["train_batch_size"] for m in models} == {str(batch)}
        if preset == "demo":  # 20 epochs, then 25, 25, 30 at unlabeled ratio 1
            assert said["steps"] == ("teacher 625, student 1 782 (+ 128 unlabeled images a step), "
                                     "student 2 782 (+ 128 unlabeled images a step), student 3 938 "
                                     "(+ 128 unlabeled images a step)")
    (tmp_path / "junk" / "cat").mkdir(parents=True)
    (tmp_path / "junk" / "cat" / "a.png").write_bytes(b"not a png")
    proc = subprocess.run(["bash", "run_iterations.sh", "--plan", "--num_images_per_class=5",
                           *folders[28][1:], f"--labeled_dir={tmp_path}/junk"], cwd=ROOT,
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", (
        f"error: --labeled_dir={tmp_path}/junk holds no readable image (JPEG, PNG, GIF or BMP) "
        "in a class sub-folder\n"))


@pytest.mark.slow
def test_own_small_data_trains_a_teacher_far_above_chance(tmp_path):
    """Issue 34, by default (the quick preset, the three folders, no schedule flag): B0 at
    width/depth 0.25 for small images, a batch of the labeled set (smaller than the preset's 128),
    25 epochs of at least 24 steps (600), all stated in the run's first lines with the time its
    teacher's first steps predict; the teacher ends far above chance. (--teacher_only; 28-px gray
    images resized to 32; color images: the folder run; the size rule's 64-px edge: the --plan
    test)"""
    per_class, num_classes = 2, 4
    workdir = tmp_path / "run"
    proc = run(workdir, "--preset=quick", *own_folders(tmp_path, per_class, 28, 1, num_classes),
               "--teacher_only")
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = {line.split(": ")[1]: line.split(": ", 2)[2] for line in proc.stderr.splitlines()
            if re.match(r"\[[0-9:]+\] run_iterations \(quick\): (model|steps|time): ", line)}
    n = per_class * num_classes
    assert said["model"] == (f"--model_name=efficientnet-b0 --width_coefficient=0.25 "
                             f"--depth_coefficient=0.25; {n} labeled images, batch {n} (the "
                             f"preset's 128 cut to the labeled images): 1 steps per epoch (at "
                             f"least 24, --min_steps_per_epoch)")
    assert json.load(open(workdir / "teacher" / "flags.json"))["train_batch_size"] == n
    assert said["steps"] == "teacher 600"   # 25 epochs of 24 steps
    assert re.fullmatch(r"[0-9,]+ parameters; the teacher's steps 6-10 ran at [0-9]+ img/s: about "
                        r"[0-9]+ min of training and labeling", said["time"]), said
    teacher = json.load(open(workdir / "report.json"))["models"][0]
    assert teacher["global_step"] == 600 and teacher["top_1"] >= 0.9, teacher  # chance 1/classes
    assert not (workdir / "iter1").exists()


@pytest.mark.slow
def test_a_teacher_at_chance_stops_the_driver_before_any_label(tmp_path):
    """Labels that the images do not carry (noise in every class): the teacher ends near chance
    and the driver stops with the guard's one line before label_data.py writes a label. (200 test
    images: a model that knows nothing reaches the guard's 19% with a chance of ~1e-5.)"""
    workdir = tmp_path / "run"
    proc = run(workdir, "--preset=quick", *own_folders(tmp_path, 4, 28, 1, 10, signal=False,
                                                        test_per_class=20),
               "--train_flags=--train_steps=20")   # (batch 40: the labeled set)
    error = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and re.fullmatch(
        f"error: the teacher in {workdir}/teacher is too weak to label data: top-1 [0-9.]+% is "
        r"near chance \(10.0% for 10 classes\).*; train it longer \(more steps or epochs\), use "
        r"a smaller model \(width/depth 0.25\) or a pretrained teacher \(--init_checkpoint\), "
        r"or pass --allow_weak_teacher", error), proc.stderr[-3000:]
    assert not list((workdir / "iter1").glob("labels/*.tfrecord*"))


def write_official_checkpoint(directory, model):
    """`model`'s weights as an official EfficientNet checkpoint (TF1 names, the weights in the
    ExponentialMovingAverage shadows, zeros in the raw variables); returns its prefix."""
    variables = {"global_step": tf.Variable(5, dtype=tf.int64)}
    for layer, names in pretrained.official_names(model).items():
        for name, weight in zip(names, model.get_layer(layer).weights):
            key = f"efficientnet-b0/{name}"
            variables[key] = tf.Variable(np.zeros(weight.shape, np.float32))
            variables[f"{key}/ExponentialMovingAverage"] = tf.Variable(weight.numpy())
    return tf.compat.v1.train.Saver(var_list=variables).save(
        None, os.path.join(directory, "model.ckpt"), global_step=5)


@pytest.mark.slow
@pytest.mark.xdist_group("driver imagenet")
def test_driver_paper_shape_on_imagenet_records(tmp_path):
    """--preset=paper's shape, scaled down, on ImageNet-schema JPEG records: a B0 teacher that is
    an official checkpoint as it is (no training) -> two B1 students (--iterations=2; the paper's
    ratio 14), the first fine-tuned at a larger resolution and, so, the second's teacher, with
    the ablation student whose input is its own (no_filter: the unfiltered labels; the others
    differ from a student by main.py flags: the --plan test and main.py's tests); --train_flags
    shrinks every model to 4 steps of a tiny net at 32 px; --jobs=2 trains the ablation's
    student beside student 1. (The third iteration's ratio 28: the paper's --plan
    test.)"""
    rng = np.random.default_rng(0)
    for name, count, labeled in (("train", 12, True), ("validation", 6, True),
                                 ("unlabeled", 12, False)):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}-00000-of-00001")) as writer:
            for i in range(count):
                c = i % 3
                pixels = np.clip(rng.normal(60 + 70 * c, 20, (40, 40, 3)), 0, 255)
                encoded = tf.io.encode_jpeg(pixels.astype(np.uint8)).numpy()
                writer.write(data.image_example(encoded, c + 1 if labeled else None,
                                                f"{name}{i}").SerializeToString())
    tiny = dict(num_classes=3, image_size=32, width=0.1, depth=0.1)
    source = efficientnet_builder.build_model("efficientnet-b0", **tiny)
    prefix = write_official_checkpoint(str(tmp_path), source)
    workdir = tmp_path / "run"
    proc = run(workdir, "--preset=paper", f"--label_data_dir={tmp_path}/train-*",
               f"--eval_data_dir={tmp_path}/validation-*",
               f"--unlabel_data_dir={tmp_path}/unlabeled-*", "--teacher_model=efficientnet-b0",
               "--student_models=efficientnet-b1,efficientnet-b1,efficientnet-b1",
               "--image_sizes=32,32,32,32", "--finetune_sizes=48,0,0", "--iterations=2",
               "--num_images_per_class=4",
               f"--teacher_checkpoint={prefix}", "--jobs=2",
               "--ablation=no_filter", "--allow_weak_teacher",
               "--train_flags=--train_steps=4 --train_batch_size=4 --width_coefficient=0.1"
               " --depth_coefficient=0.1 --num_classes=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "schedule: preset paper's, made for ImageNet" in proc.stderr.splitlines()[0]
    report = json.load(open(workdir / "report.json"))
    # The teacher is the checkpoint as it is: step 0, its EMA shadows as weights, evaluated.
    teacher, _ = efficientnet_builder.load_model_dir(str(workdir / "teacher"))
    for ours, theirs in zip(teacher.weights, source.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert [(m["name"], m["architecture"]["model_name"], m["architecture"]["image_size"],
             m["global_step"], m["unlabel_ratio"]) for m in report["models"]] == [
        ("teacher", "efficientnet-b0", 32, 0, None), ("student 1", "efficientnet-b1", 32, 4, 14),
        ("student 1, fine-tuned", "efficientnet-b1", 48, 5, None),   # 1.5 epochs of 12 images
        ("student 2", "efficientnet-b1", 32, 4, 14)]
    assert all(0.0 <= m["top_1"] <= 1.0 for m in report["models"])
    for it in report["iterations"]:   # K = 4 per class the teacher predicted confidently
        assert set(it["filtered"]["per_class"]) <= {0, 4} and it["filtered"]["images"] >= 4
    flags = {d: json.load(open(workdir / d / "flags.json"))
             for d in ("teacher", "iter2/student", "ablation/no_filter", "supervised_baseline")}
    assert flags["teacher"]["init_checkpoint"] == prefix
    # Student 2's teacher is the fine-tuned student 1 (Sec. 3.1's L2 at 800 px), at its 48 px.
    assert flags["iter2/student"]["teacher_model_dir"] == f"{workdir}/iter1/student/finetune_48"
    # Grown students: the supervised baseline, the last student's architecture on the labels only
    # (test_a_supervised_baseline_is_planned_on_request_or_for_grown_students: its flag).
    assert report["supervised_baseline"]["global_step"] == 4
    assert flags["supervised_baseline"]["seed"] == 4 and flags["supervised_baseline"][
        "model_name"] == "efficientnet-b1"   # SEED*10+4
    # The paper's schedule for a model smaller than B5 (decay every 4.8 epochs), steps shrunk.
    assert (flags["iter2/student"]["lr_decay_epochs"], flags["iter2/student"]["randaug_mag"],
            flags["iter2/student"]["final_base_learning_rate"]) == (4.8, 27, 0)
    # --ablation: Table 6's students (the teacher's size) next to the paper's numbers, iteration
    # 1's epochs (the paper's 700 for a B1, --train_steps winning) and seed, two at a time.
    rows = {r["name"]: r for r in report["ablation"]}
    assert len(rows) == 3 and rows["NoisyStudent"]["paper_top_1"] == 84.9
    row = rows["NoisyStudent, no filter/balance"]
    assert row["global_step"] == 4 and 0.0 <= row["top_1"] <= 1.0
    assert row["architecture"]["model_name"] == "efficientnet-b0"
    assert (flags["ablation/no_filter"]["train_epochs"], flags["ablation/no_filter"]["seed"],
            flags["ablation/no_filter"]["unlabel_data_dir"]) == (700, 1, f"{workdir}/iter1/labels")
    span = lambda d: ((workdir / d / "flags.json").stat().st_mtime,
                      (workdir / d / "eval_results.json").stat().st_mtime)
    (s1_start, s1_end), (abl_start, abl_end) = span("iter1/student"), span("ablation/no_filter")
    assert abl_start < s1_end and s1_start < abl_end
    assert "[ablation/no_filter] " in proc.stderr and "[iter1/student] " in proc.stderr
    md = open(workdir / "report.md").read()
    assert "Schedule: preset paper's, made for ImageNet" in md
    assert "| NoisyStudent, no filter/balance |" in md
    assert (workdir / "ablation.png").stat().st_size > 0
