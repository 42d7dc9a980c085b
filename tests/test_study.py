"""bench/study.py on generated results, no training: the statistics and the verdict rule, a run
recorded, resumed (a finished one is not rerun) and refused when its commands change, the plan's
arm x seed list and the controls' commands derived from the driver's, bench/claims.md's rows."""
import math
import os
import subprocess
import sys

import pytest

import common

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import study  # noqa: E402


def test_summary_is_mean_sample_std_and_standard_error():
    n, mean, std, stderr = study.summary([1.0, 2.0, 6.0])
    assert (n, mean) == (3, 3.0)
    assert std == pytest.approx(math.sqrt(7.0)) and stderr == pytest.approx(math.sqrt(7.0 / 3))
    assert math.isnan(study.summary([2.0])[2]) and study.summary([])[0] == 0


def test_verdict_follows_the_numbers():
    assert study.verdict([1.0, 1.2, 0.9], +1) == "holds"  # mean 1.03, stderr 0.09
    assert study.verdict([1.0, 1.2, 0.9], -1) == "does not hold"  # resolved, the other sign
    assert study.verdict([-1.0, 1.2, 0.9], +1) == "not resolved at this scale"  # 0.37 < 2 x 0.71
    assert study.verdict([0.5, 1.5, 0.1], +1) == "not resolved at this scale"  # 0.70 < 2 x 0.42
    assert study.verdict([3.0, 3.1], +1) == "needs 1 more seed"
    assert study.verdict([], +1) == "needs 3 more seeds"
    # An effect under `small` points is marked until it has 5 seeds.
    assert study.verdict([0.3, 0.4, 0.2], +1, small=0.5) == (
        "holds (n = 3; an effect under 0.5 points needs 5)")
    assert study.verdict([0.3, 0.4, 0.2, 0.3, 0.3], +1, small=0.5) == "holds"
    assert study.verdict([1.0, 1.2, 0.9], +1, small=0.5) == "holds"


def fake_arm(tmp_path, top_1=0.5):
    """An arm whose one command writes main.py's eval_results.json and counts its runs."""
    code = ("import json, os, sys; d = os.path.join(sys.argv[1], 'model');"
            "os.makedirs(d, exist_ok=True);"
            f"json.dump({{'top_1': {top_1}}}, open(os.path.join(d, 'eval_results.json'), 'w'));"
            "open(os.path.join(sys.argv[1], 'ran'), 'a').write('x')")
    return ("a fake control", lambda seed, workdir: [[sys.executable, "-c", code, workdir]])


def test_a_run_is_recorded_published_and_not_rerun(tmp_path, monkeypatch):
    monkeypatch.setitem(study.ARMS, "fake", fake_arm(tmp_path, 0.8123))
    root, results = str(tmp_path / "root"), str(tmp_path / "results")
    study.run("fake", 2, root, results)
    study.run("fake", 2, root, results)  # finished: skipped
    workdir = os.path.join(root, "fake", "seed2")
    assert open(os.path.join(workdir, "ran")).read() == "x"
    result = common.read_json(os.path.join(results, "fake-seed2.json"))
    assert result["metrics"] == {"supervised": pytest.approx(81.23)}
    assert result["commands"] == open(os.path.join(workdir, "commands.txt")).read().splitlines()
    assert result["cpu_minutes"] >= 0 and "CPU family" in result["machine"] and not result["resumed"]
    assert study.load_results(results)[("fake", 2)]["seed"] == 2


def test_changed_commands_and_another_runs_result_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(study.ARMS, "fake", fake_arm(tmp_path, 0.5))
    root, results = str(tmp_path / "root"), str(tmp_path / "results")
    study.run("fake", 0, root, results)
    monkeypatch.setitem(study.ARMS, "fake", fake_arm(tmp_path, 0.6))  # another command
    with pytest.raises(common.UserError, match="made by other commands"):
        study.run("fake", 0, root, results)
    with pytest.raises(common.UserError, match="holds a run of other commands"):
        study.run("fake", 0, str(tmp_path / "other_root"), results)  # same arm and seed elsewhere


def test_a_failed_command_names_its_log_and_the_run_resumes(tmp_path, monkeypatch):
    root, results = str(tmp_path / "root"), str(tmp_path / "results")
    flag_file = tmp_path / "fail"
    flag_file.write_text("")
    code = f"import os, sys; sys.exit(3 if os.path.exists({str(flag_file)!r}) else 0)"
    ok = fake_arm(tmp_path)[1]
    arm = ("fails once", lambda seed, workdir: [[sys.executable, "-c", code], *ok(seed, workdir)])
    monkeypatch.setitem(study.ARMS, "fake", arm)
    with pytest.raises(common.UserError, match=r"exit 3\); its log: .*fake/seed0/log.txt"):
        study.run("fake", 0, root, results)
    flag_file.unlink()
    study.run("fake", 0, root, results)
    assert common.read_json(os.path.join(results, "fake-seed0.json"))["resumed"]


def test_plan_lists_every_arm_and_seed_and_the_controls_match_the_students(tmp_path):
    root = str(tmp_path)
    runs = [(a, s) for a in study.ARMS for s in (0, 1)]
    text = study.plan_text(runs, root, str(tmp_path / "none"))
    headers = [l.split(" (")[0] for l in text.splitlines() if l.startswith("# ")]
    assert headers == [f"# {a} seed {s}" for a, s in runs]
    assert "(not started)" in text
    students = study.planned_models(1, os.path.join(root, "x"))
    epochs = {k: float(study.flag(v, "train_epochs")) for k, v in students.items() if k != "data"}
    control = lambda arm: study.ARMS[arm][1](1, os.path.join(root, arm, "seed1"))
    s1, chain, ceiling = (control(a) for a in ("supervised_s1", "supervised_chain", "ceiling_60k"))
    teacher = students["teacher"]
    for (prepare, cmd), labels in zip((s1, chain, ceiling), ("400", "400", "6000")):
        assert prepare[:2] == students["data"][:2]  # the driver's data stage, then main.py
        assert study.flag(prepare, "output_dir") == study.flag(cmd, "data_dir")
        assert study.flag(prepare, "num_labeled_per_class") == labels
        assert study.flag(cmd, "num_labeled_per_class") == labels
        assert cmd[:2] == teacher[:2] and "--unlabel_data_dir" not in " ".join(cmd)
        workdir = os.path.dirname(study.flag(cmd, "data_dir"))
        assert study.flag(cmd, "model_dir") == os.path.join(workdir, "model")
    s1, chain, ceiling = s1[1], chain[1], ceiling[1]
    assert float(study.flag(s1, "train_epochs")) == epochs["iter1/student"]
    assert study.flag(s1, "seed") == study.flag(students["iter1/student"], "seed") == "11"
    assert float(study.flag(chain, "train_epochs")) == sum(epochs.values())
    s3 = students["iter3/student"]
    steps = lambda cmd, images: math.ceil(float(study.flag(cmd, "train_epochs")) * images
                                       / int(study.flag(cmd, "train_batch_size")))
    assert steps(ceiling, int(study.flag(ceiling, "num_train_images"))) == steps(s3, 4000)
    peak = lambda cmd: (float(study.flag(cmd, "base_learning_rate"))
                        * int(study.flag(cmd, "train_batch_size")))
    assert peak(ceiling) == pytest.approx(peak(s3))
    larger = study.ARMS["supervised_s1_05"][1](0, root)[1]
    assert study.flag(larger, "width_coefficient") == study.flag(larger, "depth_coefficient") == "0.5"
    assert float(study.flag(larger, "train_epochs")) == epochs["iter1/student"]
    # Fewer labels: the driver's split and its control's; less unlabeled data: the first shards
    # of the pile are what student 1 learns from, K scaled with them.
    fewer = study.planned_models(0, root, "--num_labeled_per_class=40")
    few_control = study.ARMS["supervised_s1_40"][1](0, root)
    assert {study.flag(c, "num_labeled_per_class") for c in [*fewer.values(), *few_control]} == {"40"}
    assert study.flag(few_control[1], "train_epochs") == study.flag(fewer["iter1/student"],
                                                                    "train_epochs")
    [quarter] = study.ARMS["unlabeled_2of8"][1](0, str(tmp_path / "q"))
    plan = subprocess.run([*quarter, "--plan"], cwd=study.ROOT, capture_output=True, text=True,
                          check=True).stdout
    labels = [l for l in plan.splitlines() if "label_data.py" in l]
    assert len(labels) == 1 and "/data/unlabeled/unlabeled-0000[0-1]-*" in labels[0]
    assert "iter2" not in plan and plan.count("--num_images_per_class=1000") == 1
    assert "--num_images_per_class=4000" not in plan


QUICK_DRIVER = study.QUICK + ["--seed=0"]


def test_the_robustness_arm_reads_its_models_suites_against_the_teacher(tmp_path):
    """chain_robustness: supervised_chain's model of the same seed through the driver's C and P
    suites, normalised by noisy_student's teacher; its metrics are that model's mCE and mFR."""
    root = str(tmp_path)
    [cmd] = study.ARMS["chain_robustness"][1](1, os.path.join(root, "chain_robustness", "seed1"))
    model = os.path.join(root, "supervised_chain", "seed1", "model")
    assert cmd[1] == "eval_robustness.py" and study.flag(cmd, "model_dir") == model
    assert study.flag(cmd, "baseline_results") == os.path.join(
        root, "noisy_student", "seed1", "teacher", "robustness.json")
    assert (study.flag(cmd, "suite"), study.flag(cmd, "num_examples")) == ("clean,c,p", "500")
    common.write_json(os.path.join(model, "robustness.json"), {"summary": {
        "c_mce_baseline": 80.6, "p_mfr_baseline": 205.2, "c_mce_unnormalized": 19.2}})
    assert study.metrics(os.path.join(root, "chain_robustness", "seed1"), [cmd]) == {
        "supervised mCE vs teacher": 80.6, "supervised mFR vs teacher": 205.2}


def test_metrics_of_a_driver_report(tmp_path):
    robust = lambda mce, mfr: {"c_mce_baseline": mce, "p_mfr_baseline": mfr,
                               "c_mce_unnormalized": 20.0}
    common.write_json(str(tmp_path / "report.json"), {
        "models": [{"name": "teacher", "top_1": 0.8, "robustness": robust(100.0, 100.0)},
                   {"name": "student 2", "top_1": None},  # not trained yet
                   {"name": "student 3", "top_1": 0.8312, "robustness": robust(88.6, 94.7)}],
        "ablation": [{"name": "student w/o Aug", "top_1": 0.81}],
        "supervised_baseline": {"name": "supervised, student 3's size", "top_1": 0.79}})
    assert study.metrics(str(tmp_path), [QUICK_DRIVER]) == pytest.approx({
        "teacher": 80.0, "student 3": 83.12, "student w/o Aug": 81.0, "supervised baseline": 79.0,
        "teacher mCE vs teacher": 100.0, "teacher mFR vs teacher": 100.0,
        "student 3 mCE vs teacher": 88.6, "student 3 mFR vs teacher": 94.7})


def result(arm, seed, **metrics):
    return {"arm": arm, "seed": seed, "metrics": metrics, "wall_minutes": 3.0, "cpu_minutes": 5.0,
            "machine": "Xeon, CPU family 6 model 167; x86_64; TF 2.21.0; 2026-12-06 22:00 UTC",
            "commit": "abc1234", "commands": ["c"]}


def test_claims_table_rows_follow_the_results(tmp_path):
    results = {}
    for seed, (t, s1, s3, sup, ceil) in enumerate([(79, 81, 83, 80.0, 91), (78, 81.5, 83.5, 80.2, 91),
                                                   (80, 82, 84, 80.9, 91)]):
        results[("noisy_student", seed)] = result("noisy_student", seed, teacher=t, **{
            "student 1": s1, "student 3": s3})
        results[("supervised_s1", seed)] = result("supervised_s1", seed, supervised=sup)
    results[("ceiling_60k", 0)] = result("ceiling_60k", 0, supervised=91.0)
    (tmp_path / "ceiling_60k" / "seed1").mkdir(parents=True)
    (tmp_path / "ceiling_60k" / "seed1" / "commands.txt").write_text("c\n")
    (tmp_path / "ceiling_60k" / "seed1" / "log.txt").write_text(
        "I1206 main.py:270] step 100/1250  loss 2.1\nI1206 main.py:270] step 200/1250  loss 1.9\n")
    text = study.claims_table(results, [0, 1, 2], str(tmp_path))
    rows = {l.split(" | ")[0][2:]: l.split(" | ") for l in text.splitlines() if l.startswith("| ")}
    row = rows[study.CLAIMS[0].claim]  # student 1 - supervised_s1: +1.0, +1.3, +1.1
    assert row[4:7] == ["+1.13 +- 0.15", "3", "holds |"]
    assert rows[study.CLAIMS[1].claim][4:7] == ["-", "0", "needs 3 more seeds |"]
    assert "Gap closed" in text and "33.33% (n = 1" in text  # (83 - 79) / (91 - 79)
    assert rows["`supervised_s1`"][2].endswith("; mean supervised 80.37 +- 0.47 (n = 3)")
    arm_row = rows["`ceiling_60k`"]
    assert arm_row[2] == "[seed 0](claims/ceiling_60k-seed0.json): supervised 91.00"  # in no claim
    assert arm_row[-1] == ("seed 0 done, seed 1 unfinished (last logged: step 200/1250), "
                           "seed 2 not started |")
    assert "3.0 min wall, 5.0 CPU min" in arm_row[3]
    # What is left, at the CPU minutes of the arm's done seeds (ceiling_60k's 2) or of its kind's
    # (9 controls of student 1's 30 epochs, as supervised_s1's): 11 x 5.0 min; the other kinds
    # have no done run. The 7 one-student arms as whole chains: 7 x 3 seeds x noisy_student's 5.0.
    assert ("Left for seeds 0, 1, 2: 44 runs, about 0.9 CPU hours (0.5 h on 2 cores) by the done "
            "runs' means; 21 driver (1 student) not measured yet; 6 driver (1 student, --ablation) "
            "not measured yet; 3 robustness not measured yet; 3 supervised (125 epochs) not "
            "measured yet. The 7 one-student arms' chain versions (three students, as "
            "noisy_student: 5 CPU min a seed) would need 2 CPU hours.") in text
    # No effect under 0.5 points here; student 1 0.3, 0.4, 0.2 above its control is one: the
    # seeds 3-4 of both arms, at their 5.0 CPU min, and the command that runs them.
    assert "The small effects' seeds" not in text
    small = {}
    for seed, gain in enumerate([0.3, 0.4, 0.2]):
        small[("noisy_student", seed)] = result("noisy_student", seed, **{"student 1": 80 + gain})
        small[("supervised_s1", seed)] = result("supervised_s1", seed, supervised=80.0)
    small_text = study.claims_table(small, [0, 1, 2], str(tmp_path))
    assert "| holds (n = 3; an effect under 0.5 points needs 5) |" in small_text
    assert ("The small effects' seeds 3-4: 4 runs, about 0.3 CPU hours: `python3 bench/study.py "
            "--arms=supervised_s1,noisy_student --seeds=3,4`.") in small_text
    study.publish_claims(str(tmp_path / "claims.md"), results, [0, 1, 2], str(tmp_path))
    assert (tmp_path / "claims.md").read_text() == text and "](claims.png)" in text
    assert (tmp_path / "claims.png").read_bytes()[:4] == b"\x89PNG"
    # The picture: the three top-1 claims with seeds (top first), no mCE / mFR claim yet.
    top, robust = study.claims_plot(results).axes
    assert [t.get_text()[:20] for t in top.get_yticklabels()][::-1] == [
        "student 1 beats a su", "student 3 beats the ", "iterating helps: stu"]
    assert not robust.get_yticklabels()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_out_of_domain_patches_are_real_images_from_outside_fashion_mnist():
    """The out_of_domain arm's pile: 28 px gray patches of matplotlib's sample images (the four
    sources in turn), the same for a seed, others for another; stretched to the full range, and
    unlike Fashion-MNIST's black background most fill the frame."""
    import fashion_mnist_folders
    a, b = (fashion_mnist_folders.out_of_domain_patches(40, s) for s in (0, 1))
    assert a.shape == (40, 28, 28) and a.dtype == "uint8"
    assert (a == fashion_mnist_folders.out_of_domain_patches(40, 0)).all() and (a != b).any()
    assert sorted({int(p.max()) for p in a if p.any()}) == [255]
    assert sum((p > 20).mean() > 0.5 for p in a) > 20
    assert len(fashion_mnist_folders.sample_images()) == 4
