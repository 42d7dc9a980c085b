"""run_iterations.sh: flag errors are one line before any work (fast); --preset=smoke runs the whole
pipeline (teacher, three label/filter/student iterations, report) on real Fashion-MNIST, then a
rerun that skips every finished stage and the Table 6 ablation (slow)."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(["bash", "run_iterations.sh", "--preset=smoke", f"--workdir={workdir}",
                           "--skip_setup", *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)  # (a shared 2-core machine)


# A growing unlabeled batch and a student 3 wider than the teacher (and so a supervised baseline).
SMOKE_FLAGS = ("--unlabel_ratios=1,2,1", "--student_widths=0.25,0.25,0.3", "--student_epochs=7,8,9")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("smoke"))
    proc = run(workdir, *SMOKE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc


@pytest.mark.slow
def test_smoke_report_has_every_model_and_iteration(smoke_run):
    workdir, proc = smoke_run
    report = json.load(open(os.path.join(workdir, "report.json")))
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "student 1", "student 2", "student 3"]
    for m in report["models"]:
        assert 0.3 < m["top_1"] <= m["top_5"] <= 1.0, m   # chance: 0.1
        assert m["global_step"] == 300
    assert [it["iteration"] for it in report["iterations"]] == [1, 2, 3]
    for it in report["iterations"]:
        # Two of eight unlabeled shards (14,000 images) are labeled; after filtering and
        # balancing every class the teacher predicted confidently holds exactly K = 600 images
        # (with copies). A 300-step teacher may leave a class (often 6, shirt) empty.
        assert it["labels"]["images"] == 14000
        per_class = it["filtered"]["per_class"]
        assert set(per_class) <= {0, 600} and per_class.count(600) >= 7, per_class
        assert 0.0 < it["labels"]["accuracy"] <= 1.0
    for name in ("report.md", "top1_per_iteration.png", "pseudo_label_quality.png",
                 "class_balance.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert "student 3" in proc.stdout               # the final table is printed
    # --unlabel_ratios: one per iteration, recorded in the report (the teacher has none).
    assert [m["unlabel_ratio"] for m in report["models"]] == [None, 1, 2, 1]
    table = open(os.path.join(workdir, "report.md")).read()
    assert "| student 2 | efficientnet-b0 w0.25 d0.25 @32 | 2 |" in table
    # --student_widths: student 3 is wider, and a supervised model of its size is the control.
    assert [m["architecture"]["width"] for m in report["models"]] == [0.25, 0.25, 0.25, 0.3]
    baseline = report["supervised_baseline"]
    assert baseline["architecture"]["width"] == 0.3 and baseline["unlabel_ratio"] is None
    assert 0.3 < baseline["top_1"] <= 1.0 and baseline["global_step"] == 300
    assert "| supervised, student 3's size | efficientnet-b0 w0.3 d0.25 @32 | - |" in table
    # --student_epochs reaches each student's main.py (smoke trains by --train_steps, which wins).
    epochs = {d: json.load(open(os.path.join(workdir, d, "flags.json")))["train_epochs"]
              for d in ("teacher", "iter1/student", "iter2/student", "iter3/student")}
    assert epochs["teacher"] != 7 and [epochs[f"iter{i}/student"] for i in (1, 2, 3)] == [7, 8, 9]
    # Each model its own --seed (teacher SEED, student i SEED*10+i, baseline SEED*10+4), one data split.
    flags = {d: json.load(open(os.path.join(workdir, d, "flags.json")))
             for d in ("teacher", "iter1/student", "iter2/student", "iter3/student",
                       "supervised_baseline")}
    assert [f["seed"] for f in flags.values()] == [0, 1, 2, 3, 4]
    assert {f["data_seed"] for f in flags.values()} == {0}


@pytest.mark.slow
def test_smoke_rerun_skips_finished_stages(smoke_run):
    workdir, _ = smoke_run
    proc = run(workdir, *SMOKE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # data, teacher, 3 x (label, filter, student), supervised baseline
    assert proc.stderr.count("done, skipped") == 1 + 1 + 3 * 3 + 1
    assert "running" not in proc.stderr


def test_unknown_preset_is_one_line(tmp_path):
    proc = subprocess.run(["bash", "run_iterations.sh", "--preset=huge", "--skip_setup",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --preset=huge is not one of smoke, quick, full"


EPOCHS_ERROR = "must be one number of epochs or three, one per iteration (e.g. 50 or 50,50,75)"


@pytest.mark.parametrize("flag,error", [
    ("--unlabel_ratios=1,2", "must be three numbers, one per iteration (e.g. 1,2,3)"),
    ("--student_widths=0.3,wide,0.4",
     "must be three multipliers, one per iteration (e.g. 0.3,0.35,0.4)"),
    ("--student_epochs=many", EPOCHS_ERROR), ("--student_epochs=50,75", EPOCHS_ERROR)])
def test_bad_flag_is_one_line_before_any_work(tmp_path, flag, error):
    proc = subprocess.run(["bash", "run_iterations.sh", flag, "--skip_setup",
                           f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {flag} {error}"
    assert not os.path.exists(tmp_path / "run")


def test_help_prints_the_whole_header():
    proc = subprocess.run(["bash", "run_iterations.sh", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# The reproducible Noisy Student run")
    assert lines[-1] == "# one from its last checkpoint."
    assert any("--student_epochs=50" in line for line in lines)


@pytest.mark.slow
def test_smoke_ablation_adds_table6_rows(smoke_run):
    """--ablation on a finished run trains only the five Table 6 / hard-label students (60 steps
    in smoke) and the report gains the ablation table next to the paper's numbers."""
    workdir, _ = smoke_run
    proc = run(workdir, *SMOKE_FLAGS, "--ablation")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("running") == 5, proc.stderr[-4000:]
    report = json.load(open(os.path.join(workdir, "report.json")))
    rows = {r["name"]: r for r in report["ablation"]}
    assert len(rows) == 7
    assert rows["NoisyStudent"]["paper_top_1"] == 84.9
    for name in ("student w/o Aug", "student w/o Aug, SD, Dropout",
                 "teacher w. Aug, SD, Dropout (on the fly)", "NoisyStudent, hard pseudo-labels"):
        assert rows[name]["global_step"] == 60 and 0.0 < rows[name]["top_1"] <= 1.0
    assert "| student w/o Aug |" in open(os.path.join(workdir, "report.md")).read()
    # The ablation's students are iteration 1's: its epochs (7 of --student_epochs=7,8,9).
    assert json.load(open(os.path.join(workdir, "ablation/no_aug/flags.json")))["train_epochs"] == 7
    assert os.path.getsize(os.path.join(workdir, "ablation.png")) > 0
