"""The whole suite's CPU time per test and each worker's busy time (issue 31).

Runs the CI command's pytest (`-n 2`, the pytest.ini options) in a checkout with this file loaded
as a plugin: each test's CPU time (user + sys of the worker and the children it waited for) and
wall time go to --out, one JSON line per test; then prints the totals per test file, the longest
tests and each worker's busy time (an idle worker at the end is wall time lost).

    python bench/suite_cpu.py --repo=CHECKOUT --out=/tmp/suite.jsonl
    python bench/suite_cpu.py --out=/tmp/suite.jsonl --summarize_only
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

import pytest

OUT_ENV = "SUITE_CPU_OUT"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # the plugin: wraps every test, in every worker
    start, wall = os.times(), time.time()
    yield
    end = os.times()
    with open(os.environ[OUT_ENV], "a") as f:
        f.write(json.dumps({"test": item.nodeid, "cpu": round(sum(end[:4]) - sum(start[:4]), 2),
                            "wall": round(time.time() - wall, 2),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}) + "\n")



def summarize(path, longest=15):
    rows = [json.loads(line) for line in open(path)]
    files, workers = collections.Counter(), collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        files[r["test"].split("::")[0]] += r["cpu"]
        w = workers[r["worker"]]
        w[0], w[1], w[2] = w[0] + r["cpu"], w[1] + r["wall"], w[2] + 1
    lines = [f"{len(rows)} tests, {sum(r['cpu'] for r in rows):,.0f} CPU s", "",
             "| file | CPU s |", "|---|---|"]
    lines += [f"| {f} | {c:.1f} |" for f, c in files.most_common()]
    lines += ["", "| test | CPU s | wall s |", "|---|---|---|"]
    lines += [f"| {r['test']} | {r['cpu']:.1f} | {r['wall']:.1f} |"
              for r in sorted(rows, key=lambda r: -r["cpu"])[:longest]]
    lines += ["", "| worker | tests | CPU s | busy (wall) s |", "|---|---|---|---|"]
    lines += [f"| {k or '-'} | {n} | {c:.0f} | {w:.0f} |" for k, (c, w, n) in sorted(workers.items())]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--out", required=True, help="Per-test JSON lines (appended: remove first).")
    parser.add_argument("--summarize_only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        env = dict(os.environ, CI="true", PYTHONPATH=os.path.dirname(os.path.abspath(__file__)),
                   **{OUT_ENV: os.path.abspath(args.out)})
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "suite_cpu", "tests"],
                       cwd=args.repo, env=env, check=False)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
