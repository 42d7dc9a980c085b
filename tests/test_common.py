"""common.py: filesystem errors become one line naming the path (run_main prints it, exit 2)."""
import errno
import os
import subprocess
import sys
import textwrap

import common  # first: it silences TensorFlow's start-up lines
import numpy as np
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


def test_strategy_flags_and_an_unreachable_tpu_are_one_line(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(common.UserError, match=r"^--tpu=v3-8 needs --strategy=tpu \(got --strategy=default\)$"):
        common.make_strategy("default", "v3-8")
    with pytest.raises(common.UserError, match="--strategy must be one of default, mirrored, "
                       "multi_worker, tpu, got 'gpu'"):
        common.make_strategy("gpu")
    with pytest.raises(common.UserError, match="needs the TF_CONFIG"):  # training: the hosts
        common.make_strategy("multi_worker")
    one_host = common.make_strategy("multi_worker", one_host=True)  # labeling, eval: this host
    assert isinstance(one_host, tf.distribute.MirroredStrategy)
    for tpu in ("", "no-such-tpu"):  # no TPU here: the local TPU VM, a TPU name
        with pytest.raises(common.UserError, match=rf"^--strategy=tpu --tpu='{tpu}': no TPU reachable \(.+\)$") as e:
            common.make_strategy("tpu", tpu)
        assert "\n" not in str(e.value)


REPLICAS_SCRIPT = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import common
w = tf.constant(np.random.default_rng(0).normal(size=(5, 3)), tf.float32)
fn = lambda x, y: (tf.matmul(x, w), tf.reduce_sum(x, 1) * tf.cast(y, tf.float32))
x, y = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32), np.arange(7)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
one, two = common.on_replicas(tf.distribute.get_strategy(), fn), common.on_replicas(mirrored, fn)
for n in (7, 1, 6):  # odd: the last slice padded
    a, b = one(x[:n], y[:n]), two(x[:n], y[:n])
    assert [v.shape for v in b] == [(n, 3), (n,)], [v.shape for v in b]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6), np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
print("ok")
"""


def test_on_replicas_traces_once_for_every_batch_size():
    """One replica (labeling, robustness): a batch of 4 then the last, partial one of 2 run on one
    trace (issue 31), with the results of the function itself."""
    traces = []

    def fn(x, y):
        traces.append(x.shape)
        return x * 2, y + 1

    predict = common.on_replicas(tf.distribute.get_strategy(), fn)
    x, y = np.arange(6, dtype=np.float32).reshape(6, 1), np.arange(6)
    for part in (slice(0, 4), slice(4, 6)):
        doubled, plus_one = predict(x[part], y[part])
        np.testing.assert_array_equal(doubled, x[part] * 2)
        np.testing.assert_array_equal(plus_one, y[part] + 1)
    assert len(traces) == 1


def test_on_replicas_two_replicas_give_one_device_results_in_order():
    proc = subprocess.run([sys.executable, "-c", REPLICAS_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
