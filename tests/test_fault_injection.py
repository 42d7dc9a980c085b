"""bench/fault_injection.py, short: data preparation killed at a random point and rerun gives the
reference's bytes; a full disk and a read-only output are one `error:` line (where mount works)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_killed_data_preparation_reruns_byte_identical(tmp_path):
    proc = subprocess.run([sys.executable, "bench/fault_injection.py", f"--workdir={tmp_path}",
                           "--stages=data preparation", "--kills=1", "--seed=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(l for l in proc.stdout.splitlines() if l.startswith("| data preparation |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    injected, identical, noise, failed = map(int, cells[1:5])
    assert injected >= 1 and identical == injected and noise == failed == 0, row
    assert injected + cells[5].count("came after the end") == 1, row
    assert "NOT one line" not in cells[5], row
