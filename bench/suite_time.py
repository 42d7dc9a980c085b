"""The CPU time of the end-to-end driver tests (issue 31), per test and per stage.

Runs them in one pytest process (-n 0) with the driver's PYTHON set to a wrapper that logs each
stage's wall, user and sys seconds (/usr/bin/time), then sums the log per test and per script.
CPU time (user + sys) is the measure: the machine is shared, wall time is not readable.

    python bench/suite_time.py --log=/tmp/stages.log [--repo=DIR]   # a checkout of any commit
    python bench/suite_time.py --log=/tmp/stages.log --summarize_only
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

# Test -> a part of its stage commands' paths (pytest's tmp dirs): before and after 2026-12-07's
# restructuring (the smoke run and the folder test -> one tiny folder run and the smoke teacher).
TESTS = {"smoke fixture + rerun": "smoke0", "folder driver": "test_driver_on_image_folders",
         "folder run + its 3 tests": "folders0", "smoke data + teacher": "test_smoke_preset_prep",
         "paper-shape driver": "test_driver_paper_shape"}
SELECT = ("smoke or driver_on_image or paper_shape or report_has_every or labeling_jobs "
          "or rerun_skips")


def run(repo, log):
    wrapper = os.path.join(tempfile.mkdtemp(), "python3")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/bash\nexec /usr/bin/time -a -o {log} -f "%e %U %S %C" {sys.executable} "$@"\n')
    os.chmod(wrapper, 0o755)
    cmd = ["/usr/bin/time", "-f", "pytest: %e s wall, %U s user, %S s sys (with its children)",
           sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
           "tests/test_run_iterations.py", "-k", SELECT, "--durations=5"]
    subprocess.run(cmd, cwd=repo, env=dict(os.environ, PYTHON=wrapper), check=False)


def summarize(log):
    """{test: {script: CPU seconds}} from the wrapper's log (one line per stage process)."""
    table = collections.defaultdict(collections.Counter)
    for line in open(log):
        m = re.match(r"[0-9.]+ ([0-9.]+) ([0-9.]+) \S+ (\S+)(.*)", line)
        if not m:  # e.g. "Command exited with non-zero status 1"
            continue
        test = next((t for t, key in TESTS.items() if key in m[4]), "other")
        script = "python -c" if m[3] == "-c" else m[3]
        if script == "main.py":
            script += " (student)" if "unlabel_data_dir" in m[4] or "teacher_model_dir" in m[4] else ""
        table[test][script] += float(m[1]) + float(m[2])
        table[test]["processes"] += 1
    for test, row in table.items():
        cpu = sum(v for k, v in row.items() if k != "processes")
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(row.items()) if k != "processes")
        print(f"| {test} | {cpu:.1f} | {row['processes']} | {parts} |")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="the stage log (appended to)")
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--summarize_only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        run(args.repo, os.path.abspath(args.log))
    summarize(args.log)
