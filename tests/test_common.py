"""common.py: filesystem errors become one line naming the path (run_main prints it, exit 2)."""
import errno
import os
import subprocess
import sys
import textwrap

import common  # first: it silences TensorFlow's start-up lines
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("error,line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"),
     "No space left on device: /data/x"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/m"), "Read-only file system: /ro/m"),
    (tf.errors.ResourceExhaustedError(None, None, "/d/ckpt-5.index; No space left on device"),
     "/d/ckpt-5.index; No space left on device"),
    (tf.errors.FailedPreconditionError(None, None, "/tmp/afile is not a directory"),
     "/tmp/afile is not a directory"),
    (tf.errors.PermissionDeniedError(None, None, "/m/flags.json; Permission denied"),
     "/m/flags.json; Permission denied"),
    # Not the filesystem: left to the traceback (a bug, or a stage's own message).
    (tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"), None),
    (tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"), None),
    (OSError(errno.ECONNREFUSED, "Connection refused"), None),
    (ValueError("x"), None)])
def test_filesystem_error_line(error, line):
    assert common.filesystem_error_line(error) == line


def test_a_failed_write_names_the_output_and_leaves_nothing(tmp_path):
    """A full disk during a write() (an OSError without a file name, as matplotlib's savefig
    raises it): the error names the output that was being written; no temporary stays."""
    out = str(tmp_path / "robustness_c.png")
    with pytest.raises(OSError) as error:
        with common.atomic_output(out) as tmp:
            open(tmp, "w").close()
            raise OSError(errno.ENOSPC, "No space left on device")
    assert common.filesystem_error_line(error.value) == f"No space left on device: {out}"
    assert os.listdir(tmp_path) == []


def test_run_main_prints_a_filesystem_error_in_one_line(tmp_path):
    script = textwrap.dedent(f"""
        import common
        def main(_):
            open({str(tmp_path / "missing" / "out.json")!r}, "w")
        common.run_main(main)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: No such file or directory: {tmp_path / 'missing' / 'out.json'}")
