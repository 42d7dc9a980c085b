"""Fault injection: kill every stage at random points, fill its disk, make its output read-only,
then rerun the same command; the table says what survived.

    python bench/fault_injection.py --workdir=/tmp/faults --kills=3 --output=bench/fault_injection.md

Stages (tiny settings, real Fashion-MNIST): data preparation, teacher training, labeling,
filtering (filter_balance.py all), student training, robustness evaluation, and the whole
three-iteration run (run_iterations.sh --preset=smoke). For each stage: one uninterrupted
reference run; then, per fault, a fresh copy of the stage's inputs, the fault, and the same
command rerun until it exits 0. Outcomes:
  byte-identical  every output file equals the reference's (record stages), or the top-1 does
                  (training: --deterministic, as the driver trains, resumes bit for bit);
  within noise    outputs differ but the result does (top-1 within --noise points of the
                  reference: without --deterministic a resumed training reads a fresh shuffle);
  failed          the rerun did not succeed, or its result is outside the noise.
Faults: SIGKILL (of the whole process group) at a uniformly random time in (10%, 95%) of the
reference's duration, --kills times per stage; a full disk (the output on a tmpfs of half the
reference output's size, at most 1 MB: the stage must exit non-zero with one `error:` line and
leave no temporary file anywhere under the mount); a read-only output dir (a read-only tmpfs: one
`error:` line). The disk faults need root (mount); without it they are reported as not run.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TINY = ["--model_name=efficientnet-b0", "--width_coefficient=0.25", "--depth_coefficient=0.25",
        "--train_batch_size=32", "--randaug_mag=5", "--lr_warmup_epochs=0.5",
        "--save_checkpoints_steps=50", "--log_every_steps=50", "--deterministic"]  # as the driver
TEMPORARY = (".tmp-", "_temp", "tempstate")  # common.atomic_output's and TF checkpoints' names


def stages(w):
    """(name, output path, command, kind) in pipeline order; w: the reference run's workdir
    (inputs of a stage are the previous stages' reference outputs)."""
    data = f"{w}/data"
    data_flags = ["--dataset=fashion_mnist", "--num_labeled_per_class=400", f"--data_dir={data}"]
    return [
        ("data preparation", data, [PY, "prepare_data.py", "--dataset=fashion_mnist",
                                    "--output_dir={out}", "--num_labeled_per_class=400"], "bytes"),
        ("teacher training", f"{w}/teacher", [PY, "main.py", *data_flags, *TINY,
                                              "--train_steps=300", "--model_dir={out}"], "top_1"),
        ("labeling", f"{w}/labels", [PY, "label_data.py", f"--teacher_model_dir={w}/teacher",
                                     f"--input_pattern={data}/unlabeled/unlabeled-0000[0-3]-*",
                                     "--output_dir={out}"], "bytes"),
        ("filtering", f"{w}/filtered", [PY, "filter_balance.py", "all",
                                        f"--input_pattern={w}/labels/*.tfrecord",
                                        "--work_dir={out}.work", "--output_dir={out}",
                                        "--num_images_per_class=1000"], "bytes"),
        ("student training", f"{w}/student", [PY, "main.py", *data_flags, *TINY,
                                              "--train_steps=300",
                                              f"--unlabel_data_dir={w}/filtered",
                                              f"--teacher_model_dir={w}/teacher",
                                              "--model_dir={out}"], "top_1"),
        ("robustness evaluation", f"{w}/robustness", [PY, "eval_robustness.py",
                                                      f"--model_dir={w}/teacher",
                                                      f"--eval_data_dir={data}/test",
                                                      "--output_dir={out}", "--suite=clean,c,fgsm",
                                                      "--num_examples=200"], "bytes"),
        ("whole run (smoke)", f"{w}/run", ["bash", "run_iterations.sh", "--preset=smoke",
                                           "--skip_setup", "--workdir={out}"], "report"),
    ]


def run(command, out, timeout=None):
    """Runs the stage with its output at `out`; returns (exit code or None if killed, seconds,
    stderr)."""
    cmd = [c.replace("{out}", out) for c in command]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, time.time() - start, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, time.time() - start, ""


def digest(path):
    """{relative file name: sha256} of every file under path (temporaries and logs left out)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            if f.startswith(".") or d.endswith(("/train", "/summaries")):
                continue  # TensorBoard events and labeling summaries carry timings
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def result(kind, path):
    if kind == "top_1":
        return json.load(open(f"{path}/eval_results.json"))["top_1"] * 100
    if kind == "report":
        return [m["top_1"] * 100 for m in json.load(open(f"{path}/report.json"))["models"]]
    return digest(path)


def outcome(kind, got, want, noise):
    if kind == "bytes":
        return "byte-identical" if got == want else "failed"
    pairs = zip(got, want) if kind == "report" else [(got, want)]
    if got == want:
        return "byte-identical"
    return "within noise" if all(abs(a - b) <= noise for a, b in pairs) else "failed"


def size_of(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def temporaries(path):
    """Files and directories under path whose names are temporaries (relative paths)."""
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path)
                  for n in dirs + files if any(t in n for t in TEMPORARY))


def mount_tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                          capture_output=True).returncode == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/faults")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--noise", type=float, default=5.0, help="top-1 points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--output", default="", help="write the table (markdown) here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ref = f"{args.workdir}/ref"
    shutil.rmtree(args.workdir, ignore_errors=True)
    rows, wanted = [], [n for n in args.stages.split(",") if n]
    all_stages = stages(ref)
    if wanted:  # run the references only up to the last stage asked for
        names = [s[0] for s in all_stages]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            sys.exit(f"unknown --stages {unknown}; known: {names}")
        all_stages = all_stages[:max(names.index(n) for n in wanted) + 1]
    for name, out, command, kind in all_stages:
        code, seconds, err = run(command, out)
        if code != 0:
            sys.exit(f"reference run of {name} failed:\n{err[-3000:]}")
        want = result(kind, out)
        print(f"{name}: reference {seconds:.0f} s", flush=True)
        if wanted and name not in wanted:
            continue
        counts = {"byte-identical": 0, "within noise": 0, "failed": 0}
        notes, injected = [], 0
        for k in range(args.kills):
            trial = f"{args.workdir}/kill{k}-{os.path.basename(out)}"
            at = rng.uniform(0.1, 0.95) * seconds
            code, _, _ = run(command, trial, timeout=at)
            if code is not None:   # finished before the kill: nothing injected
                notes.append(f"kill {k} at {at:.0f} s came after the end")
                continue
            injected += 1
            code, _, err = run(command, trial)
            got = result(kind, trial) if code == 0 else None
            verdict = outcome(kind, got, want, args.noise) if code == 0 else "failed"
            counts[verdict] += 1
            if verdict == "failed":
                notes.append(f"kill {k} at {at:.0f} s: rerun exit {code}: {err.strip()[-300:]}")
            shutil.rmtree(trial, ignore_errors=True)
        disk = []
        if kind != "report":
            # The full disk holds half of what the stage writes (at most 1 MB), so every stage fills it.
            full = f"size={min(1 << 20, max(16 << 10, size_of(out) // 2)) >> 10}k"
            for fault, options in (("full disk", full), ("read-only", "ro,size=1m")):
                mnt = f"{args.workdir}/mnt-{fault.replace(' ', '-')}"
                if not mount_tmpfs(mnt, options):
                    disk.append(f"{fault}: not run (mount needs root)")
                    continue
                try:
                    code, _, err = run(command, f"{mnt}/{os.path.basename(out)}")
                    last = err.strip().splitlines()[-1] if err.strip() else ""
                    ok = code not in (0, None) and last.startswith("error:") and (
                        "Traceback" not in err)
                    left = [f for f in os.listdir(mnt)] if os.path.isdir(mnt) else []
                    temps = temporaries(mnt)
                    disk.append(f"{fault} ({options}): {'one line' if ok else 'NOT one line'} "
                                f"(exit {code}: `{last[:160]}`)"
                                + (f"; left {left}" if left else "")
                                + (f"; TEMPORARIES LEFT {temps[:5]}" if temps else
                                   "; no temporaries left"))
                finally:
                    subprocess.run(["umount", mnt], capture_output=True)
        rows.append((name, injected, counts, notes + disk))
        print(rows[-1], flush=True)
    lines = ["| stage | kills injected | survived byte-identical | survived within noise | failed |"
             " disk faults and notes |", "|---|---|---|---|---|---|"]
    for name, injected, c, notes in rows:
        lines.append(f"| {name} | {injected} | {c['byte-identical']} | {c['within noise']} | "
                     f"{c['failed']} | {'; '.join(notes) or '-'} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        open(args.output, "w").write(table + "\n")


if __name__ == "__main__":
    main()
