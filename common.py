"""What every stage shares and nothing else: errors, atomic outputs, JSON, file lists and shards,
progress lines, TF error lines, tf.distribute strategies and record counts.

No project imports: every stage and library may import this file, and this file imports none of
them. Import it before TensorFlow (`import common` first) so that a stage's first line is its own:
TF's start-up lines about missing CUDA drivers and CPU instructions are silenced on import.
"""

import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import sys
import time
import uuid


def _import_tensorflow_quietly():
    """TF prints CUDA/CPU-feature lines to fd 2 before its logging is set up; mute them once.
    NOTE: not in the reference. Only the import and the first device query are muted (and
    TF_CPP_MIN_LOG_LEVEL=2 unless the user sets it); later errors still reach stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # pylint: disable=import-outside-toplevel
        tensorflow.config.list_physical_devices()  # CUDA's cuInit line comes here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


tf = _import_tensorflow_quietly()
from absl import app  # noqa: E402  (after the quiet TF import: absl is TF's dependency)
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402


# --- Errors. -------------------------------------------------------------------------------------
class UserError(Exception):
    """A mistake of the user (bad flag, missing or corrupt file): reported as one line, exit 2."""


# Filesystem trouble is the user's to fix (a full disk, a read-only or missing directory, a file
# where a directory should be): reported like a UserError, naming the path.
_FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                      errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST}
_FILESYSTEM_TF_ERRORS = (tf.errors.PermissionDeniedError, tf.errors.NotFoundError,
                         tf.errors.FailedPreconditionError, tf.errors.ResourceExhaustedError,
                         tf.errors.UnknownError, tf.errors.AlreadyExistsError)
_FILESYSTEM_WORDS = ("no space left", "read-only file system", "not a directory", "is a directory",
                     "permission denied", "no such file or directory", "disk quota", "file exists")


def filesystem_error_line(error):
    """The one line for a filesystem error (OSError or TF's), None for anything else."""
    if isinstance(error, OSError) and error.errno in _FILESYSTEM_ERRNOS:
        return f"{error.strerror}: {error.filename}" if error.filename else str(error)
    if isinstance(error, _FILESYSTEM_TF_ERRORS):
        line = tf_error_line(error)
        if isinstance(error, (tf.errors.PermissionDeniedError, tf.errors.NotFoundError)) or any(
                w in (error.message or "").lower() for w in _FILESYSTEM_WORDS):
            return line
    return None


def run_main(main):
    """absl `app.run(main)`; a UserError or a filesystem error prints one line `error: ...` on
    stderr and exits 2. Either way the process then ends without the interpreter's teardown
    (finalising TensorFlow's objects costs ~1.4 s CPU per stage; every output is closed by then)."""

    def wrapped(argv):
        try:
            code = main(argv) or 0
        except (UserError, OSError, tf.errors.OpError) as e:
            message = str(e) if isinstance(e, UserError) else filesystem_error_line(e)
            if message is None:
                raise
            message = " ".join(message.split())  # one line, whatever the message holds
            print(f"error: {message}", file=sys.stderr)
            code = 2
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    app.run(wrapped)


def setting(default, help_text, choices=None):
    """A config dataclass field that is also a flag: its default, help text and (enum) choices."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           float | None: flags.DEFINE_float, bool: flags.DEFINE_bool, tuple: flags.DEFINE_list}


def define_config_flags(config_classes, flag_values=flags.FLAGS):
    """One flag per `setting` field of the config dataclasses (fields without help are skipped)."""
    for cls in config_classes:
        for field in dataclasses.fields(cls):
            help_text, choices = field.metadata.get("help"), field.metadata.get("choices")
            if choices:
                flags.DEFINE_enum(field.name, field.default, choices, help_text,
                                  flag_values=flag_values)
            elif help_text:
                default = list(field.default) if field.type is tuple else field.default
                _DEFINE[field.type](field.name, default, help_text, flag_values=flag_values)


def config_from_flags(cls, flag_values=flags.FLAGS, **extra):
    """The config dataclass `cls` built from the flags of its `setting` fields (plus `extra`)."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(cls)
              if f.metadata.get("help")}
    return cls(**values, **extra)


def tf_error_line(error):
    """The informative line of a TF error: our assertion's message, else the first real line."""
    lines = [l.strip() for l in (error.message or "").strip().splitlines() if l.strip()]
    if not lines:
        return type(error).__name__
    line = next((l for l in lines if "assertion failed" in l), None)
    if line is None:
        line = next((l for l in lines if "Graph execution error" not in l
                     and not l.startswith(("Detected at node", "<stack traces"))), lines[0])
    if line.startswith("{{function_node"):
        line = line.split("}}", 1)[-1].strip()
    # tf.data's prefix: "Error in user-defined function passed to X transformation with
    # iterator: Iterator::Root::...: " before the message itself
    line = re.sub(r"^Error in user-defined function passed to .*? with iterator: \S+: ", "", line)
    line = line.split(" [Op:")[0].split("\t")[0].strip()
    if "assertion failed: [" in line:  # keep our assertion's message, drop tf's operand dump
        line = line.split("assertion failed: [", 1)[1].split("]", 1)[0]
    return line[:300]


# --- Outputs: written under a temporary name, then renamed into place. ---------------------------
@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path next to `path` for the caller to create a file or directory at;
    renames it onto `path` (replacing it) when the block succeeds, else deletes it."""
    path = os.path.normpath(path)
    parent, base = os.path.split(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tf.io.gfile.exists(tmp):
            raise RuntimeError(f"atomic_output: nothing was written at {tmp} for {path}")
        if tf.io.gfile.isdir(tmp):
            old = None
            if tf.io.gfile.exists(path):  # move the old directory aside, swap, then delete it
                old = tmp + ".old"
                tf.io.gfile.rename(path, old)
            tf.io.gfile.rename(tmp, path)
            if old:
                remove(old)
        else:
            tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException as e:
        remove(tmp)
        if isinstance(e, OSError) and not e.filename:
            e.filename = path  # a failed write() names no file: name the output being written
        raise


def remove_stale_temporaries(path):
    """Deletes temporaries of `path` left by a killed run (call only from the job owning `path`)."""
    parent, name = os.path.split(os.path.normpath(path))
    for tmp in tf.io.gfile.glob(os.path.join(parent, f".{name}.tmp-*")):
        logging.info("removing %s (left by an interrupted run)", tmp)
        remove(tmp)


def remove(path):
    """Deletes a file or a directory tree; nothing if it does not exist."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def write_file(path, content):
    """Writes `content` (str or bytes) to `path` atomically: temp file, then rename."""
    with atomic_output(path) as tmp, tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes)
                                                       else "w") as f:
        f.write(content)


def write_json(path, obj):
    """Writes `obj` as JSON (indent 2, sorted keys) atomically."""
    write_file(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_png(fig, path, **savefig_args):
    """Writes the matplotlib figure `fig` as a PNG atomically."""
    png = io.BytesIO()
    fig.savefig(png, format="png", **savefig_args)
    write_file(path, png.getvalue())


_REQUIRED = object()


def read_json(path, what="JSON file", default=_REQUIRED):
    """The parsed file; `default` if it is missing and one is given, else UserError naming it."""
    if not tf.io.gfile.exists(path):
        if default is not _REQUIRED:
            return default
        raise UserError(f"{what} not found: {path}")
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON: {path} ({e})") from None


# --- File lists and shards. ----------------------------------------------------------------------
def list_files(pattern, what="data"):
    """A directory -> all its `*.tfrecord*` files; otherwise a glob. Sorted; UserError if none."""
    if not pattern:
        raise UserError(f"no path given for the {what} files")
    hint = ""
    if tf.io.gfile.isdir(pattern):
        files = tf.io.gfile.glob(os.path.join(pattern, "*.tfrecord*"))
        hint = (f" (a directory is read as {os.path.join(pattern, '*.tfrecord*')}; pass a glob "
                f"such as {os.path.join(pattern, 'train-*')} for other shard names)")
    else:
        files = tf.io.gfile.glob(pattern)
        if not any(c in pattern for c in "*?["):
            hint = " (no such file or directory)"
    # Hidden files are atomic_output temporaries of running or killed jobs (glob matches them).
    files = sorted(f for f in files if not os.path.basename(f).startswith(".")
                   and not tf.io.gfile.isdir(f))
    if not files:
        raise UserError(f"no {what} files match {pattern}{hint}")
    return files


def shard_files(files, num_shards, shard_id):
    """The files of job `shard_id` of `num_shards`: file i goes to job i % num_shards."""
    if num_shards < 1:
        raise UserError(f"--num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise UserError(f"--shard_id must be in [0, {num_shards}), got {shard_id}")
    return files[shard_id::num_shards]


def shard_name(split, index, num_shards):
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def count_records(files):
    """Records in the TFRecord `files`; UserError naming a file whose framing is broken."""
    n = 0
    for f in files:
        try:
            n += int(tf.data.TFRecordDataset(f).reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
        except tf.errors.DataLossError as e:
            raise UserError(f"corrupt TFRecord file {f}: {tf_error_line(e)}") from None
    return n


# --- Progress. -----------------------------------------------------------------------------------
def format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


class Progress:
    """Logs `what: done/total (pct), N unit/s, ETA` at most every `every` seconds (without a total
    only the rate); `update(done)` sets the count, `add(n)` adds to it."""

    def __init__(self, what, total=None, unit="img", every=10.0):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.start = self.last = time.time()
        self.done = 0

    def rate(self):
        return self.done / max(time.time() - self.start, 1e-9)

    def add(self, n, force=False):
        self.update(self.done + n, force)

    def update(self, done, force=False):
        self.done = done
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = self.rate()
        if self.total is None:
            logging.info("%s: %d %s, %.0f %s/s", self.what, done, self.unit, rate, self.unit)
            return
        eta = (self.total - done) / rate if rate > 0 else 0.0
        logging.info("%s: %d/%d (%.0f%%), %.0f %s/s, ETA %s", self.what, done, self.total,
                     100.0 * done / max(self.total, 1), rate, self.unit, format_eta(eta))


# --- tf.distribute. ------------------------------------------------------------------------------
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def check_strategy(name, tpu=""):
    """UserError naming the flag unless --strategy is known and --tpu goes with tpu."""
    if name not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if tpu and name != "tpu":
        raise UserError(f"--tpu={tpu} needs --strategy=tpu (got --strategy={name})")


def make_strategy(name, tpu="", one_host=False):
    """Every stage's strategy: default (this device), mirrored (local GPUs), multi_worker (hosts
    of TF_CONFIG; one_host: mirrored) or tpu (`tpu`: a name, an address, "" = the local TPU VM);
    UserError if none is reachable."""
    check_strategy(name, tpu)
    if one_host and name == "multi_worker":
        logging.info("--strategy=multi_worker: this job runs on its own host's devices (mirrored)")
        name = "mirrored"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, OSError, RuntimeError, tf.errors.OpError) as e:  # OSError: URLError
        reason = tf_error_line(e) if isinstance(e, tf.errors.OpError) else str(e).splitlines()[0]
        raise UserError(f"--strategy=tpu --tpu={tpu!r}: no TPU reachable ({reason})") from None
    return tf.distribute.TPUStrategy(resolver)


def on_replicas(strategy, fn):
    """`fn` (batched tensors in and out) as a host function over a whole batch, run on every
    replica in equal contiguous slices (the last padded with the final example: TPUs need equal
    shapes); the outputs come back as numpy, in order."""
    step = tf.function(lambda *args: strategy.run(fn, args=args), reduce_retracing=True,
                       autograph=False)  # (plain TF ops: AutoGraph's conversion is start-up cost)
    replicas = strategy.num_replicas_in_sync
    traced = []  # one replica: one trace for every batch size (the last, partial batch too)

    def call(*batch):
        if replicas == 1:
            if not traced:
                traced.append(step.get_concrete_function(
                    *[tf.TensorSpec([None, *b.shape[1:]], b.dtype) for b in batch]))
            return tf.nest.map_structure(lambda t: t.numpy(), traced[0](*batch))
        n = len(batch[0])
        per = -(-n // replicas)
        padded = [np.concatenate([b, np.repeat(b[-1:], per * replicas - n, 0)])
                  for b in map(np.asarray, batch)]
        sliced = [strategy.experimental_distribute_values_from_function(
            lambda ctx, p=p: p[ctx.replica_id_in_sync_group * per:][:per]) for p in padded]
        outputs = strategy.experimental_local_results(step(*sliced))
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts)[:n], *outputs)

    return call


def is_chief(strategy):
    """True on the one worker that writes checkpoints, summaries and results."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


# --- Numerics: precision and determinism (one place, so every stage means the same by them). -----
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def set_precision(name):
    """Keras' global dtype policy for models built after this call: float32, or bfloat16 compute
    with float32 variables (Keras mixed precision). Losses, softmax and the EMA stay float32."""
    if name not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    import keras  # pylint: disable=import-outside-toplevel
    keras.mixed_precision.set_global_policy(PRECISIONS[name])
