"""Which of the paper's claims hold here (issue 32): arms x seeds, and bench/claims.md.

    nice -n 19 python3 bench/study.py --root=/work/exp/claims --arms=supervised_s1 --seeds=0,1,2
    python3 bench/study.py --root=/work/exp/claims --plan   # every arm x seed's commands; runs nothing
    python3 bench/study.py --root=/work/exp/claims --norun  # only rewrite bench/claims.md

An arm is a named list of commands: the driver (run_iterations.sh --preset=quick) with flags, or a
supervised control: the driver's data stage and its teacher's main.py command, as its --plan prints
them (architecture, RandAugment, stochastic depth, dropout, schedule), with a student's labeled
epochs, size and seed. (arm, seed) runs in ROOT/ARM/seedS: its commands are recorded there
before they run and a different command for that folder is refused (use another --root); a
finished one (its result.json) is not rerun; the driver and main.py resume an unfinished one.
--jobs=N runs N (arm, seed)s at a time. A finished run's result (top-1 per model, its commands,
CPU, wall and CPU minutes, date) is copied to bench/claims/ARM-seedS.json, and bench/claims.md is
computed from those files: one row per claim (paper section and number, our mean +- std over the
seeds, n, a verdict from the numbers), then every arm's seeds, cost and status. A result names the
commit checked out when its run started: run a study from a checkout that is not rebased meanwhile.
"""
import collections
import concurrent.futures
import glob
import math
import os
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402  (first: it silences TensorFlow's start-up lines)
from absl import flags  # noqa: E402

from benchlib import ROOT, machine  # noqa: E402  (bench/ is on sys.path)

flags.DEFINE_string("root", "/work/exp/claims",
                    "Study root: a workdir per arm and seed, ROOT/ARM/seedS.")
flags.DEFINE_list("arms", [], "Arms to run (default: every arm, in the order of ARMS).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run for each arm.")
flags.DEFINE_integer("jobs", 1, "(arm, seed)s run at a time.")
flags.DEFINE_bool("plan", False, "Print every arm x seed's commands and status; run nothing.")
flags.DEFINE_bool("run", True, "Run the selected arms (--norun: only rewrite --claims).")
flags.DEFINE_string("results_dir", os.path.join(ROOT, "bench", "claims"),
                    "Where each finished run's result is copied (ARM-seedS.json).")
flags.DEFINE_string("claims", os.path.join(ROOT, "bench", "claims.md"), "The claims table written.")
FLAGS = flags.FLAGS

QUICK = ["bash", "run_iterations.sh", "--preset=quick", "--skip_setup"]
STUDENTS = ("iter1/student", "iter2/student", "iter3/student")
NUM_CLASSES = 10  # Fashion-MNIST, the data of every arm here
MIN_SEEDS = 3
SMALL_EFFECT, SMALL_SEEDS = 0.5, 5  # a top-1 effect under 0.5 points needs 5 seeds


# ---------------------------------------------------------------------------------------------
# The arms: name -> (what it is, commands(seed, workdir)).
# ---------------------------------------------------------------------------------------------
def driver(*extra):
    """The quick preset's driver with extra flags, in the run's workdir."""
    return lambda seed, workdir: [QUICK + [f"--seed={seed}", f"--workdir={workdir}", *extra]]


def flag(argv, name):
    """The value of --name in argv (the last one wins, as in absl); None if absent."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def set_flags(argv, **values):
    """argv with each --name=value set (replacing every occurrence, or appended)."""
    out = [a for a in argv if a.split("=", 1)[0][2:] not in values]
    return out + [f"--{k}={v}" for k, v in values.items()]


def planned_models(seed, workdir, *extra):
    """The driver's data preparation and main.py commands for a run (its --plan): output or model
    dir relative to workdir ("data", "teacher", "iter1/student", ...) -> argv."""
    plan = subprocess.run(QUICK + ["--plan", f"--seed={seed}", f"--workdir={workdir}", *extra],
                          cwd=ROOT, capture_output=True, text=True)
    if plan.returncode:
        raise common.UserError(f"run_iterations.sh --plan failed: {plan.stderr.strip()}")
    models = {}
    for line in plan.stdout.splitlines():
        argv = [] if line.startswith("#") else shlex.split(line)
        if argv[1:2] in (["main.py"], ["prepare_data.py"]):
            models[os.path.relpath(flag(argv, "model_dir") or flag(argv, "output_dir"), workdir)] = argv
    return models


def control(student, epochs="student", labels_per_class=None, extra=()):
    """A supervised control of the driver's student (with driver flags extra): the driver's data
    preparation, then the teacher's command at the student's size and seed, trained on the labels only for the student's labeled
    epochs ("student") or the whole chain's up to it ("chain"). labels_per_class: the ceiling,
    trained as long and as noised as the student: its steps, its images per step (labeled +
    unlabeled, all labeled here) and its learning rate per step."""
    def commands(seed, workdir):
        models = planned_models(seed, workdir, *extra)
        prepare, teacher, s = models["data"], models["teacher"], models[student]
        chain = ["teacher", *STUDENTS[:STUDENTS.index(student) + 1]]
        n = (float(flag(models[m], "train_epochs")) for m in chain) if epochs == "chain" else [
            float(flag(s, "train_epochs"))]
        size = {k: flag(s, k) for k in ("width_coefficient", "depth_coefficient") if flag(s, k)}
        cmd = set_flags(teacher, model_dir=os.path.join(workdir, "model"), seed=flag(s, "seed"),
                        train_epochs=f"{sum(n):g}", **size)
        if labels_per_class:  # batch x (1 + ratio); per-256 rates / (1 + ratio): the same lr
            scale = 1 + float(flag(s, "unlabel_ratio"))
            batch, labeled = int(flag(s, "train_batch_size")), int(flag(s, "num_labeled_per_class"))
            lr, final = (float(flag(s, k)) / scale for k in ("base_learning_rate",
                                                             "final_base_learning_rate"))
            prepare = set_flags(prepare, num_labeled_per_class=labels_per_class)
            cmd = set_flags(cmd, num_labeled_per_class=labels_per_class,
                            train_batch_size=f"{batch * scale:g}",
                            # epochs counted on the student's labeled images x (1 + ratio): its steps
                            num_train_images=f"{labeled * NUM_CLASSES * scale:g}",
                            base_learning_rate=f"{lr:g}", final_base_learning_rate=f"{final:g}")
        return [prepare, cmd]
    return commands


def robustness_of(arm, baseline_arm):
    """The driver's robustness suites (C and P, its quick-preset sizes) on arm's supervised model,
    the baseline_arm teacher's mCE and mFR as 100: Tables 4-5 compare a student with a supervised
    model of its architecture (EfficientNet-L2), not with its teacher."""
    def commands(seed, workdir):
        model, base = (workdir_of(os.path.dirname(os.path.dirname(workdir)), a, seed)
                       for a in (arm, baseline_arm))
        return [["python3", "eval_robustness.py", f"--model_dir={model}/model",
                 f"--eval_data_dir={model}/data/test", f"--output_dir={workdir}",
                 "--suite=clean,c,p", "--num_examples=500", "--p_num_examples=100",
                 "--precision=float32", f"--baseline_results={base}/teacher/robustness.json"]]
    return commands


def out_of_domain(count):
    """Fashion-MNIST as folders with count out-of-domain images in the pile (ood*.png), then the
    quick preset's teacher and student 1 on them (K as on Fashion-MNIST, 4,000) beside the
    students of hard labels and of unfiltered, unbalanced labels."""
    def commands(seed, workdir):
        folders = os.path.join(workdir, "folders")
        return [["python3", "bench/fashion_mnist_folders.py", f"--output_dir={folders}",
                 f"--seed={seed}", f"--out_of_domain={count}"],
                *driver("--dataset=folder", f"--labeled_dir={folders}/labeled",
                        f"--unlabeled_dir={folders}/unlabeled", f"--test_dir={folders}/test",
                        "--num_images_per_class=4000", "--ablation=hard_labels,no_filter",
                        "--jobs=2", "--iterations=1")(seed, workdir)]
    return commands


OOD = 56000  # as many as the pile's Fashion-MNIST images: half of the pile out of domain
ARMS = collections.OrderedDict([
    ("supervised_s1", ("supervised control: the teacher's recipe for student 1's labeled epochs",
                       control("iter1/student"))),
    ("supervised_chain", ("supervised control: the teacher's recipe for the chain's labeled epochs "
                          "(teacher + students 1-3)", control("iter3/student", "chain"))),
    ("ceiling_60k", ("the ceiling: all 60,000 labels, student 3's steps, images per step, "
                     "learning rate and noise", control("iter3/student", labels_per_class=6000))),
    ("noisy_student", ("the quick preset: teacher, three same-size students, robustness",
                       driver())),
    ("chain_robustness", ("supervised_chain's model through the driver's C and P suites (500 / 100 "
                          "test images), noisy_student's teacher as 100 (runs after both)",
                          robustness_of("supervised_chain", "noisy_student"))),
    ("table6", ("the quick preset's teacher and student 1 (--iterations=1) + Table 6's students "
                "beside it, hard labels and no filter/balance (--ablation)",
                driver("--ablation", "--jobs=2", "--iterations=1"))),
    ("out_of_domain", (f"Fashion-MNIST's split as image folders, {OOD:,} out-of-domain patches "
                       "of real images added to the pile (bench/fashion_mnist_folders.py): "
                       "teacher, student 1 and --ablation=hard_labels,no_filter",
                       out_of_domain(OOD))),
])
# One iteration, as the paper's own size study (Sec. 3.2, Fig. 2: "we skip [iterative training] as it
# is difficult to use iterative training for many experiments"): each arm's student 1 against
# the quick preset's student 1 of the same seed (noisy_student's, or table6's NoisyStudent: the same
# bits at one commit; these arms ran after the swish change, those before it, so the pairs are
# unpaired draws). A seed costs 12-15 CPU min (measured), under a third of a chain's three
# students; bench/claims.md states what is left and what the chains would need.
LARGER = ("--student_widths=0.5,0.5,0.5", "--student_depths=0.5,0.5,0.5")
ARMS["student_05"] = ("the quick preset's teacher (0.25) and one student at width/depth 0.5",
                      driver(*LARGER, "--iterations=1"))
ARMS["supervised_s1_05"] = ("supervised control of student_05's student: its size, the teacher's "
                            "recipe, its labeled epochs", control("iter1/student", extra=LARGER))
# Fewer labels (the same unlabeled pile: the other train images), each with its control.
for n in (40, 100):
    labels = f"--num_labeled_per_class={n}"
    ARMS[f"labels_{n}"] = (f"the quick preset's teacher and student 1 with {n} labels per class",
                           driver(labels, "--iterations=1"))
    ARMS[f"supervised_s1_{n}"] = (f"supervised control of labels_{n}: student 1's labeled epochs",
                                  control("iter1/student", extra=(labels,)))
# Less unlabeled data: the first S of the 8 shards, K scaled with them (the same copies per image).
for shards in (1, 2, 4):
    ARMS[f"unlabeled_{shards}of8"] = (
        f"the quick preset's teacher and student 1 on {shards}/8 of the unlabeled images, "
        f"K = {500 * shards:,}", driver(f"--unlabeled_shards={shards}",
                                        f"--num_images_per_class={500 * shards}", "--iterations=1"))
ARMS["ratio_3"] = ("the quick preset's teacher and student 1 with 3 unlabeled batches per labeled "
                   "batch (the quick preset's student 1: 1)",
                   driver("--unlabel_ratios=3,3,3", "--iterations=1"))


# ---------------------------------------------------------------------------------------------
# The claims: effect = a - b (each (arm, model) or a number), the paper's sign (+1: a above b).
# ---------------------------------------------------------------------------------------------
Claim = collections.namedtuple("Claim", "claim section paper a b sign")
T6 = "Sec. 4.1, Table 6 (B5, 130M unlabeled)"
CLAIMS = [
    Claim("student 1 beats a supervised model of its architecture, noise and labeled epochs",
          "Sec. 3.2, Fig. 2 (same size, one iteration)", "about +0.8",
          ("noisy_student", "student 1"), ("supervised_s1", "supervised"), +1),
    Claim("student 3 beats a supervised model trained as long as the whole chain",
          "Sec. 3.2, Table 2 (L2 88.4 vs 85.5)", "+2.9",
          ("noisy_student", "student 3"), ("supervised_chain", "supervised"), +1),
    Claim("student 3 beats the teacher", "Sec. 3.2, Table 2 (B7 85.0 -> L2 88.4)", "+3.4",
          ("noisy_student", "student 3"), ("noisy_student", "teacher"), +1),
    Claim("iterating helps: student 3 beats student 1", "Sec. 3.1 'Iterative training', App. A.2",
          "> 0", ("noisy_student", "student 3"), ("noisy_student", "student 1"), +1),
    Claim("student 3's corruption error is below the teacher's (mCE relative to the teacher's 100)",
          "Sec. 3.3 (no teacher's mCE in the paper: Table 4 compares a supervised L2, below)",
          "< 100",
          ("noisy_student", "student 3 mCE vs teacher"), 100.0, -1),
    Claim("student 3 flips less under perturbations (mFR relative to the teacher's 100)",
          "Sec. 3.3 (no teacher's mFR in the paper: Table 5 compares a supervised L2, below)",
          "< 100",
          ("noisy_student", "student 3 mFR vs teacher"), 100.0, -1),
    Claim("student 3's corruption error is below a supervised model's of its architecture trained "
          "as long as the chain (mCE, the teacher's = 100)",
          "Sec. 3.3, Table 4 (supervised L2 -> NoisyStudent L2, 299 px)", "42.5 -> 28.3 (x0.67)",
          ("noisy_student", "student 3 mCE vs teacher"),
          ("chain_robustness", "supervised mCE vs teacher"), -1),
    Claim("student 3 flips less than a supervised model of its architecture trained as long as the "
          "chain (mFR, the teacher's = 100)",
          "Sec. 3.3, Table 5 (supervised L2 -> NoisyStudent L2, 299 px)", "23.7 -> 12.2 (x0.51)",
          ("noisy_student", "student 3 mFR vs teacher"),
          ("chain_robustness", "supervised mFR vs teacher"), -1),
    Claim("noise on the unlabeled images helps: NoisyStudent beats the student w/o Aug, SD, Dropout",
          T6, "+0.6", ("table6", "NoisyStudent"), ("table6", "student w/o Aug, SD, Dropout"), +1),
    Claim("augmentation of the unlabeled images helps: NoisyStudent beats the student w/o Aug",
          T6, "+0.3", ("table6", "NoisyStudent"), ("table6", "student w/o Aug"), +1),
    Claim("an unnoised teacher labels better than a noised one (both on the fly)", T6, "+0.5",
          ("table6", "NoisyStudent, on-the-fly teacher (no filter/balance)"),
          ("table6", "teacher w. Aug, SD, Dropout (on the fly)"), +1),
    Claim("filtering and balancing the pseudo-labels help a small student",
          "Sec. 2 'Other techniques', App. A.3 study 5", "> 0 (significant for small models)",
          ("table6", "NoisyStudent"), ("table6", "NoisyStudent, no filter/balance"), +1),
    Claim("in domain, soft pseudo-labels (the paper's default) do at least as well as hard ones",
          "Sec. 2 'Other techniques' (both 'work well')", "about 0",
          ("table6", "NoisyStudent"), ("table6", "NoisyStudent, hard pseudo-labels"), +1),
    Claim("with out-of-domain images in the pile, soft pseudo-labels beat hard ones",
          "Sec. 2 'Other techniques'", "> 0 (slightly)",
          ("out_of_domain", "NoisyStudent"), ("out_of_domain", "NoisyStudent, hard pseudo-labels"),
          +1),
    Claim("with out-of-domain images in the pile, filtering and balancing help",
          "Sec. 2 'Other techniques' (low confidence: 'usually out-of-domain images')", "> 0",
          ("out_of_domain", "NoisyStudent"), ("out_of_domain", "NoisyStudent, no filter/balance"),
          +1),
    Claim("a larger student helps: student 1 at width/depth 0.5 beats one of the teacher's 0.25",
          "Sec. 3.1 'a larger student', App. A.3", "> 0",
          ("student_05", "student 1"), ("noisy_student", "student 1"), +1),
    Claim("student 1 at width/depth 0.5 beats a supervised model of its size, noise and labeled "
          "epochs", "Sec. 3.2, Fig. 2 (same size, one iteration)", "about +0.8",
          ("student_05", "student 1"), ("supervised_s1_05", "supervised"), +1),
    *[Claim(f"with {n} labels per class, student 1 beats a supervised model of its architecture, "
            "noise and labeled epochs", "Sec. 1, App. A.3 (self-training helps most with few "
            "labels)", "> 0", (f"labels_{n}", "student 1"), (f"supervised_s1_{n}", "supervised"),
            +1) for n in (40, 100)],
    # (table6's NoisyStudent is the quick preset's student 1, the same bits as noisy_student's on
    # seeds 0-2: the cheaper arm to pair with for more seeds)
    *[Claim(f"more unlabeled data helps: student 1 on all of it beats student 1 on {s}/8",
            "Sec. 3.1, App. A.3", "> 0",
            ("table6", "NoisyStudent"), (f"unlabeled_{s}of8", "student 1"), +1)
      for s in (1, 2, 4)],
    Claim("a larger unlabeled batch helps: student 1 with 3 unlabeled batches per labeled one beats "
          "the quick preset's 1", "Sec. 3.2 (B0: 1, larger nets: 3), App. A.3", "> 0",
          ("ratio_3", "student 1"), ("table6", "NoisyStudent"), +1),
]


def summary(values):
    """n, mean, sample std and standard error of the mean (std and stderr nan below 2 values)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return n, mean, std, std / math.sqrt(n) if n > 1 else math.nan


def verdict(effects, sign, small=0.0):
    """holds / does not hold / not resolved at this scale (|mean| < 2 stderr) / needs N more seeds;
    an effect under `small` (top-1 points) is marked until it has SMALL_SEEDS seeds."""
    n, mean, _, stderr = summary(effects)
    if n < MIN_SEEDS:
        return f"needs {MIN_SEEDS - n} more seed{'s' * (MIN_SEEDS - n > 1)}"
    found = ("not resolved at this scale" if abs(mean) < 2 * stderr else
             "holds" if mean * sign > 0 else "does not hold")
    if abs(mean) < small and n < SMALL_SEEDS:
        return f"{found} (n = {n}; an effect under {small} points needs {SMALL_SEEDS})"
    return found


def claim_verdict(claim, effects):
    """The verdict of a claim: the small-effect rule for top-1 claims (not mCE / mFR's units)."""
    return verdict(effects, claim.sign, 0.0 if is_robustness(claim) else SMALL_EFFECT)


def is_robustness(claim):
    return "vs teacher" in str(claim.a)   # mCE / mFR, the teacher's = 100


def effects(claim, results):
    """claim's a - b per seed, over the seeds where both are measured."""
    def value(side, seed):
        if isinstance(side, float):
            return side
        r = results.get((side[0], seed))
        return r["metrics"].get(side[1]) if r else None
    seeds = sorted({seed for _, seed in results})
    pairs = [(value(claim.a, s), value(claim.b, s)) for s in seeds]
    return [a - b for a, b in pairs if a is not None and b is not None]


# ---------------------------------------------------------------------------------------------
# Running one (arm, seed): recorded commands, resume, result.
# ---------------------------------------------------------------------------------------------
def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] study: {message}", file=sys.stderr, flush=True)


def workdir_of(root, arm, seed):
    return os.path.join(root, arm, f"seed{seed}")


def commands_text(commands):
    return "".join(shlex.join(c) + "\n" for c in commands)


def check_record(workdir, text):
    """Refuses a workdir whose recorded commands differ from text; True if it has a record."""
    record = os.path.join(workdir, "commands.txt")
    if not os.path.exists(record):
        return False
    with open(record) as f:
        before = f.read()
    if before != text:
        raise common.UserError(f"{workdir} was made by other commands; remove it or use another "
                               f"--root (then: {before.strip()}; now: {text.strip()})")
    return True


def metrics(workdir, commands):
    """Top-1 (%) per model of a finished run (the driver's report.json, with each evaluated model's
    mCE and mFR against the teacher's 100; or main.py's eval_results.json, as "supervised"); of a
    robustness run, its model's mCE and mFR against its baseline's 100."""
    if commands[-1][1] == "eval_robustness.py":
        s = common.read_json(os.path.join(flag(commands[-1], "model_dir"), "robustness.json"))
        return {"supervised mCE vs teacher": s["summary"]["c_mce_baseline"],
                "supervised mFR vs teacher": s["summary"]["p_mfr_baseline"]}
    report = os.path.join(workdir, "report.json")
    if os.path.exists(report):
        r = common.read_json(report)
        models = r["models"] + r.get("ablation", []) + [r["supervised_baseline"]] * bool(
            r.get("supervised_baseline"))
        out = {m["name"]: 100 * m["top_1"] for m in models if m.get("top_1") is not None}
        if r.get("supervised_baseline"):
            out["supervised baseline"] = out.pop(r["supervised_baseline"]["name"])
        for m in (m for m in r["models"] if m.get("robustness")):
            out[f"{m['name']} mCE vs teacher"] = m["robustness"]["c_mce_baseline"]  # teacher: 100
            out[f"{m['name']} mFR vs teacher"] = m["robustness"]["p_mfr_baseline"]
        return out
    results = common.read_json(os.path.join(workdir, "model", "eval_results.json"))
    return {"supervised": 100 * results["top_1"]}


def publish(result, results_dir):
    """Copies a finished run's result to results_dir/ARM-seedS.json (another run's is refused)."""
    path = os.path.join(results_dir, f"{result['arm']}-seed{result['seed']}.json")
    old = common.read_json(path, default=None)
    if old and old["commands"] != result["commands"]:
        raise common.UserError(f"{path} holds a run of other commands ({old['commands'][0]}); "
                               f"remove it to replace it")
    common.write_json(path, result)


def run(arm, seed, root, results_dir):
    """Runs (arm, seed) in its workdir unless finished; publishes its result."""
    workdir = workdir_of(root, arm, seed)
    commands = ARMS[arm][1](seed, workdir)
    text = commands_text(commands)
    resumed = check_record(workdir, text)
    done = os.path.join(workdir, "result.json")
    if os.path.exists(done):
        log(f"{arm} seed {seed}: done, skipped")
        return publish(common.read_json(done), results_dir)
    os.makedirs(workdir, exist_ok=True)
    with common.atomic_output(os.path.join(workdir, "commands.txt")) as tmp, open(tmp, "w") as f:
        f.write(text)
    log_path = os.path.join(workdir, "log.txt")
    log(f"{arm} seed {seed}: running{' (resumed)' * resumed}, log {log_path}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    start, cpu = time.time(), 0.0
    with open(log_path, "a") as out:
        for cmd in commands:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # its CPU time, with its children's
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode:
                raise common.UserError(f"{arm} seed {seed}: {cmd[1]} failed (exit "
                                       f"{proc.returncode}); its log: {log_path}")
    result = dict(arm=arm, seed=seed, commands=text.splitlines(), metrics=metrics(workdir, commands),
                  machine=machine(), commit=commit, resumed=resumed,
                  wall_minutes=round((time.time() - start) / 60, 1), cpu_minutes=round(cpu / 60, 1))
    common.write_json(done, result)
    log(f"{arm} seed {seed}: done in {result['wall_minutes']} min ({result['cpu_minutes']} CPU min)")
    publish(result, results_dir)


# ---------------------------------------------------------------------------------------------
# bench/claims.md from the published results.
# ---------------------------------------------------------------------------------------------
def load_results(results_dir):
    """(arm, seed) -> result, from results_dir/*.json."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        r = common.read_json(path)
        out[(r["arm"], int(r["seed"]))] = r
    return out


def status(arm, seed, results, root):
    """done / unfinished (with its log's last training step) / not started."""
    workdir = workdir_of(root, arm, seed)
    if (arm, seed) in results:
        return "done"
    if not os.path.exists(os.path.join(workdir, "commands.txt")):
        return "not started"
    log_path = os.path.join(workdir, "log.txt")
    with open(log_path) if os.path.exists(log_path) else open(os.devnull) as f:
        steps = re.findall(r"\] step (\d+/\d+) ", f.read())
    return "unfinished" + (f" (last logged: step {steps[-1]})" if steps else "")


def fmt(n, mean, std):
    if not n:
        return "-"
    return f"{mean:+.2f}" + (f" +- {std:.2f}" if n > 1 else "")


def side(x):
    return f"{x:g}" if isinstance(x, float) else f"{x[0]}: {x[1]}"


def claims_table(results, seeds, root):
    """bench/claims.md's text: the claims, the ceiling, every arm's seeds, cost and status."""
    lines = ["# Which of the paper's claims hold here (issue 32)", "",
             "Written by `python3 bench/study.py` from the results in [claims/](claims/) (one per "
             "arm and seed: top-1 per model, commands, CPU, minutes, date). Effect = a - b in "
             "top-1 points (mCE, mFR: against the teacher's 100), per seed, then mean +- std "
             "over the seeds where both are done. Verdict: *holds* / *does not hold* when |mean| >= 2 "
             "standard errors (the paper's sign or not), *not resolved at this scale* below that, "
             f"*needs N more seeds* below {MIN_SEEDS} seeds; a top-1 effect under "
             f"{SMALL_EFFECT} points is marked until it has {SMALL_SEEDS} seeds (its verdict so far, "
             "then the seeds it needs). Arms run at different commits "
             "(each seed's is in its cost) are draws of the same recipe: only a run of the same "
             "commit and CPU type is a bit-identical twin.", "",
             "![The claims' effects per seed, mean +- 2 standard errors](claims.png)", "",
             "| claim | paper | paper's number | a - b | ours: mean +- std | n | verdict |",
             "|---|---|---|---|---|---|---|"]
    for c in CLAIMS:
        e = effects(c, results)
        n, mean, std, _ = summary(e)
        lines.append(f"| {c.claim} | {c.section} | {c.paper} | {side(c.a)} - {side(c.b)} | "
                     f"{fmt(n, mean, std)} | {n} | {claim_verdict(c, e)} |")
    gaps = []  # the fraction of the gap to the ceiling that self-training closes, per seed
    for seed in sorted({s for _, s in results}):
        ns, ceiling = results.get(("noisy_student", seed)), results.get(("ceiling_60k", seed))
        if ns and ceiling:
            m = ns["metrics"]
            gaps.append(100 * (m["student 3"] - m["teacher"]) /
                        (ceiling["metrics"]["supervised"] - m["teacher"]))
    n, mean, std, _ = summary(gaps)
    # Is the ceiling one? The same net on 4,000 labels for the whole chain's steps, against it.
    above = effects(Claim("", "", "", ("ceiling_60k", "supervised"),
                          ("supervised_chain", "supervised"), +1), results)
    lines += ["", f"Gap closed, (student 3 - teacher) / (ceiling - teacher) per seed: "
              f"{fmt(n, mean, std).lstrip('+')}{'%' * bool(n)} (n = {n}; public tables, CIFAR-10 "
              "with 4,000 labels: Pseudo-Label 6%, MixMatch 74%, UDA / FixMatch over 100%). "
              "The ceiling (60,000 labels, student 3's steps) - supervised_chain (4,000 labels, "
              f"the chain's steps): {fmt(*summary(above)[:3])} (n = {len(above)}).", "",
              "Robustness: why gaussian noise hurts the students more than the teacher: longer "
              "training does it, not the pseudo-labels (supervised_chain's 3 seeds lose as much "
              "without an unlabeled image): [gaussian_noise.md](gaussian_noise.md).", "",
              "Out of domain: how many of the out_of_domain arm's patches the filter keeps, and "
              "in which classes: [out_of_domain.md](out_of_domain.md).", "",
              "## The arms", "",
              "Cost per finished seed: wall and CPU minutes of its commands (the CPU time counts "
              "the work even when the cores are shared), the CPU, the date, the commit.",
              "", "| arm | what | top-1 per seed (the compared models) | cost per seed | status |",
              "|---|---|---|---|---|"]
    for arm, (what, _) in ARMS.items():
        done = {s: r for (a, s), r in results.items() if a == arm}
        names = sorted({side[1] for c in CLAIMS for side in (c.a, c.b)
                        if not isinstance(side, float) and side[0] == arm})
        names = names or sorted({k for r in done.values() for k in r["metrics"]})  # the ceiling
        tops = "; ".join(f"[seed {s}](claims/{arm}-seed{s}.json): " + ", ".join(f"{k} {r['metrics'][k]:.2f}" for k in names
                                                    if k in r["metrics"])
                         for s, r in sorted(done.items()))
        means = [(k, summary([r["metrics"][k] for r in done.values() if k in r["metrics"]]))
                 for k in names]
        tops += "".join(f"; mean {k} {m:.2f} +- {sd:.2f} (n = {n})" for k, (n, m, sd, _) in means
                        if n > 1)
        cost = "; ".join(f"seed {s}: {r['wall_minutes']} min wall, {r['cpu_minutes']} CPU min"
                         f"{' (resumed: the last attempt only)' * bool(r.get('resumed'))}, "
                         f"{r['machine'].split(' cores')[0]} cores, "
                         f"{r['machine'].rsplit('; ', 1)[1]}, "
                         f"commit {r['commit']}" for s, r in sorted(done.items()))
        states = ", ".join(f"seed {s} {status(arm, s, results, root)}"
                           for s in sorted(set(seeds) | set(done)))
        lines.append(f"| `{arm}` | {what} | {tops or '-'} | {cost or '-'} | {states} |")
    small = small_effect_runs(results)
    lines += ["", remaining_cost(results, seeds), *([small] if small else []), "",
              "## The commands", "", "Seed 0's, in ROOT (`python3 bench/study.py --plan` prints "
              "every seed's); the driver and main.py run from the repository's root.", ""]
    for arm in ARMS:
        seed0 = ARMS[arm][1](0, workdir_of("ROOT", arm, 0))
        lines += [f"`{arm}`:", "```", commands_text(seed0) + "```"]
    lines.append("")
    return "\n".join(lines)


def remaining_cost(results, seeds):
    """What the unfinished (arm, seed)s need, each at the mean CPU minutes of its arm's done seeds,
    else of its kind's: a driver run of as many students and no --ablation, a supervised main.py
    of as many epochs, or a robustness evaluation."""
    def kind(arm):
        cmd = ARMS[arm][1](0, "ROOT")[-1]
        if cmd[1] == "run_iterations.sh":
            ablation = any(a.startswith("--ablation") for a in cmd)
            n = int(flag(cmd, "iterations") or 3)
            return f"driver ({n} student{'s' * (n > 1)}{', --ablation' * ablation})"
        if cmd[1] == "main.py":
            return f"supervised ({flag(cmd, 'train_epochs')} epochs)"
        return "robustness"
    done = collections.defaultdict(list)
    for (arm, _), r in results.items():
        done[arm].append(r["cpu_minutes"])
        done[kind(arm)].append(r["cpu_minutes"])
    left = collections.Counter((a, kind(a)) for a in ARMS for s in seeds if (a, s) not in results)
    unmeasured, total = collections.Counter(), 0.0
    for (arm, k), n in left.items():
        minutes = done[arm] or done[k]
        if minutes:
            total += n * sum(minutes) / len(minutes)
        else:
            unmeasured[k] += n
    one, chain = [a for a in ARMS if kind(a) == "driver (1 student)"], ""
    if one and done["noisy_student"]:  # what the one-student arms would cost as whole chains
        each = sum(done["noisy_student"]) / len(done["noisy_student"])
        chain = (f" The {len(one)} one-student arms' chain versions (three students, as "
                 f"noisy_student: {each:.0f} CPU min a seed) would need "
                 f"{len(one) * len(seeds) * each / 60:.0f} CPU hours.")
    if not left:
        return "Every arm has its seeds." + chain
    return (f"Left for seeds {', '.join(map(str, seeds))}: {sum(left.values())} runs, about "
            f"{total / 60:.1f} CPU hours ({total / 120:.1f} h on 2 cores) by the done runs' means"
            + "".join(f"; {n} {k} not measured yet" for k, n in sorted(unmeasured.items())) + "." + chain)


def small_effect_runs(results):
    """What the marked small effects still need: seeds MIN_SEEDS..SMALL_SEEDS-1 of the arms on
    both sides of each, at each arm's mean CPU minutes; "" if nothing."""
    marked = [c for c in CLAIMS for e in [effects(c, results)]
              if claim_verdict(c, e) != verdict(e, c.sign)]   # the small-effect rule applied
    arms = [a for a in ARMS if any(a in (c.a[0], c.b[0]) for c in marked)]
    seeds = range(MIN_SEEDS, SMALL_SEEDS)
    runs = [(a, s) for a in arms for s in seeds if (a, s) not in results]
    if not runs:
        return ""
    cpu = {a: [r["cpu_minutes"] for (arm, _), r in results.items() if arm == a] for a in arms}
    hours = sum(sum(cpu[a]) / len(cpu[a]) for a, _ in runs) / 60
    return (f"The small effects' seeds {MIN_SEEDS}-{SMALL_SEEDS - 1}: {len(runs)} runs, about "
            f"{hours:.1f} CPU hours: `python3 bench/study.py --arms={','.join(arms)} "
            f"--seeds={','.join(map(str, seeds))}`.")


def write_claims(path, text):
    with common.atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def claims_plot(results):
    """The claims with a done seed: each seed's effect (dots), mean +- 2 standard errors (the
    verdict's interval; green holds, red does not hold, grey not resolved or too few seeds) and
    the paper's number (star) where it is one; top-1 claims above, mCE / mFR below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(c, e) for c in CLAIMS for e in [effects(c, results)] if e]
    panels = [[(c, e) for c, e in rows if is_robustness(c) == robust] for robust in (0, 1)]
    fig, axes = plt.subplots(2, 1, figsize=(9, 1.5 + 0.4 * len(rows)),
                             gridspec_kw={"height_ratios": [max(len(p), 1) for p in panels]})
    colors = {"holds": "tab:green", "does not hold": "tab:red"}
    for ax, panel, unit in zip(axes, panels, ("top-1 points: seeds (dots), mean +- 2 SE, the paper "
                                              "(star)", "mCE / mFR points, the teacher's = 100")):
        for y, (c, e) in enumerate(reversed(panel)):
            n, mean, _, stderr = summary(e)
            ax.plot(e, [y] * n, "o", color="0.65", ms=4)
            if n > 1:
                ax.errorbar(mean, y, xerr=2 * stderr, fmt="D", capsize=3,
                            color=colors.get(claim_verdict(c, e), "0.3"))
            paper = re.fullmatch(r"(?:about )?([+-][\d.]+)", c.paper)
            if paper:
                ax.plot(float(paper.group(1)), y, "*", color="tab:blue", ms=10)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(panel)), [c.claim[:75] + "..." * (len(c.claim) > 75)
                                          for c, _ in reversed(panel)], fontsize=7)
        ax.set_xlabel(f"a - b, {unit}", fontsize=8)
    fig.tight_layout()
    return fig


def publish_claims(path, results, seeds, root):
    """claims.md and its picture, claims.png, beside it."""
    write_claims(path, claims_table(results, seeds, root))
    import matplotlib.pyplot as plt
    fig = claims_plot(results)
    common.write_png(fig, os.path.splitext(path)[0] + ".png", dpi=100)
    plt.close(fig)  # the study redraws it after every run


def plan_text(runs, root, results_dir):
    """Every (arm, seed)'s status and commands, as --plan prints them."""
    results, out = load_results(results_dir), ""
    for arm, seed in runs:
        out += f"# {arm} seed {seed} ({status(arm, seed, results, root)}): {ARMS[arm][0]}\n"
        out += commands_text(ARMS[arm][1](seed, workdir_of(root, arm, seed))) + "\n"
    return out


def main(_):
    arms = FLAGS.arms or list(ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise common.UserError(f"--arms: {', '.join(unknown)} not one of {', '.join(ARMS)}")
    seeds = [int(s) for s in FLAGS.seeds]
    runs = [(a, s) for a in arms for s in seeds]  # arms first: every seed of the cheapest first
    if FLAGS.plan:
        print(plan_text(runs, FLAGS.root, FLAGS.results_dir), end="")
        return
    failed = []
    if FLAGS.run:
        with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
            futures = {pool.submit(run, a, s, FLAGS.root, FLAGS.results_dir): (a, s) for a, s in runs}
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except common.UserError as e:
                    failed.append(str(e))
                    log(f"error: {e}")
                publish_claims(FLAGS.claims, load_results(FLAGS.results_dir), seeds, FLAGS.root)
    publish_claims(FLAGS.claims, load_results(FLAGS.results_dir), seeds, FLAGS.root)
    if failed:
        raise common.UserError(f"{len(failed)} run(s) failed: " + " | ".join(failed))


if __name__ == "__main__":
    common.run_main(main)
