"""Pseudo-labels from the unnoised teacher (Noisy Student, step 2).

Paper: Xie et al., "Self-training with Noisy Student improves ImageNet classification" (CVPR 2020),
Sec. 2, Algorithm 1 step 2: "Use an unnoised teacher model to generate soft or hard pseudo labels
for clean (i.e., not distorted) unlabeled images". The teacher runs with its EMA weights in
inference mode (no dropout, no stochastic depth, BN moving statistics) on eval-preprocessed images
(no RandAugment); the stored soft label is softmax(logits / T) with T = 1.

    python label_data.py --teacher_model_dir=runs/teacher \\
        --input_pattern='runs/data/unlabeled/*.tfrecord' --output_dir=runs/iter1/labels \\
        [--num_shards=N --shard_id=I] [--batch_size=256] [--probabilities_dtype=float32|float16] \\
        [--strategy=default|mirrored|multi_worker|tpu] [--tpu=NAME] [--precision=float32|bfloat16]

Input: unlabeled TFRecord shards (image/encoded, image/id, optional diagnostic/true_label). Job I
of N labels the sorted input files i with i % N == I (N independent jobs cover every file once);
inside a job, tf.distribute runs the batches on the local devices (--strategy, --tpu).
Output, per input file, the same basename in --output_dir (`.tfrecord` added if missing): every
record with its original image bytes, image/id, diagnostic/true_label, the probability vector
`probabilities` (float32, or `probabilities/float16` bytes), `label` (argmax) and `prob` (top-1)
-- the reference's field names -- written atomically, then summaries/<basename>.json (count,
bytes, mean confidence, class counts, img/s and the provenance: the teacher's checkpoint, step and
a fingerprint of model.json and the checkpoint's index, the input's name, size and mtime, the
flags that change records). A file with the same provenance and its recorded size is skipped, so a
rerun finishes a killed job; any other is labeled again (logged why). Same teacher, inputs,
--batch_size and --strategy: byte-identical outputs.

A record whose image does not decode stops the job with one line naming the file, the record
index and its image/id; --skip_bad_images leaves such records out (counted in the summary). A
teacher near chance (eval_results.json) is refused before anything is labeled;
--allow_weak_teacher goes on.
"""

import collections
import concurrent.futures
import hashlib
import json
import os
import time

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data
import efficientnet_builder

PROBABILITY_DTYPES = ("float32", "float16")
PENDING_WRITES = 2  # batches in flight to the writer thread (bounds memory)


def summary_path(output_dir, name):
    return os.path.join(output_dir, "summaries", name + ".json")


# ----------------------------------------------------------------------------- provenance

def teacher_identity(model_dir):
    """The teacher's latest checkpoint (name, step) and a fingerprint of its model.json and the
    checkpoint's index (a CRC32C per tensor); no model is built, so a rerun stays cheap."""
    if not tf.io.gfile.isdir(model_dir):
        raise common.UserError(f"model dir {model_dir} does not exist")
    checkpoint = tf.train.latest_checkpoint(model_dir)
    if checkpoint is None:
        raise common.UserError(f"no checkpoint in model dir {model_dir}")
    config = common.read_json(os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE),
                              what="model config (written by main.py)")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with tf.io.gfile.GFile(checkpoint + ".index", "rb") as f:
        digest.update(f.read())
    step = os.path.basename(checkpoint).rsplit("-", 1)[-1]
    return {"model_dir": os.path.abspath(model_dir), "checkpoint": os.path.basename(checkpoint),
            "step": int(step) if step.isdigit() else None, "fingerprint": digest.hexdigest()[:16]}


def provenance(teacher, path, probabilities_dtype, skip_bad_images, precision="float32"):
    """What an output file is made of: the teacher, the input file, the flags changing records."""
    stat = tf.io.gfile.stat(path)
    return {"teacher": teacher,
            "input": {"name": os.path.basename(path), "size_bytes": stat.length,
                      "mtime_nsec": stat.mtime_nsec},
            "flags": {"probabilities_dtype": probabilities_dtype,
                      "skip_bad_images": skip_bad_images, "precision": precision}}


def provenance_key(prov):
    """A short hash of `prov` without the teacher's path (a moved teacher is the same one)."""
    teacher = {k: v for k, v in prov["teacher"].items() if k != "model_dir"}
    return hashlib.sha256(json.dumps(dict(prov, teacher=teacher), sort_keys=True)
                          .encode()).hexdigest()[:16]


def stale_reason(output_path, summary, prov):
    """Why the output file with this summary is not the one `prov` would make; None if it is."""
    if summary is None or not tf.io.gfile.exists(output_path):
        return "not labeled yet"
    old = summary.get("provenance")
    if not old:
        return "its summary has no provenance (an older label_data.py)"
    if old.get("teacher", {}).get("fingerprint") != prov["teacher"]["fingerprint"]:
        was, now = old.get("teacher", {}), prov["teacher"]
        return (f"labeled by another teacher ({was.get('model_dir')} {was.get('checkpoint')}, "
                f"fingerprint {was.get('fingerprint')}; now {now['model_dir']} "
                f"{now['checkpoint']}, fingerprint {now['fingerprint']})")
    if old.get("input") != prov["input"]:
        file = lambda i: (f"{i.get('size_bytes')} bytes, mtime " + time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(i.get("mtime_nsec", 0) / 1e9)))
        return (f"labeled from another input file (then {file(old.get('input', {}))}; now "
                f"{file(prov['input'])})")
    if old.get("flags") != prov["flags"]:
        return f"labeled with other flags ({old.get('flags')}; now {prov['flags']})"
    size = tf.io.gfile.stat(output_path).length
    if summary.get("output_bytes") != size:
        return f"the output has {size} bytes, its summary says {summary.get('output_bytes')}"
    return None


# ----------------------------------------------------------------------------- the teacher

def load_teacher(model_dir, strategy):
    """(model, config, DatasetInfo at the model's image size) of the model dir, EMA weights."""
    with strategy.scope():
        model, config = efficientnet_builder.load_model_dir(model_dir, use_ema=True)
    info = data.model_dataset_info(
        config, image_size=model.input_shape[1],
        where=os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE))
    return model, config, info


def make_predictor(model, strategy):
    """images (host batch) -> softmax probabilities, float32 numpy [n, num_classes], in order, in
    inference mode (no dropout or stochastic depth, BN moving averages) on every replica."""
    return common.on_replicas(strategy, lambda images: tf.nn.softmax(  # T = 1
        tf.cast(model(images, training=False), tf.float32), axis=-1))


# ----------------------------------------------------------------------------- one file

def serialize_batch(ids, encoded, true_labels, probabilities, float16):
    """tf.train.Example bytes of one batch of pseudo-labeled records (deterministic encoding)."""
    # NOTE: the reference's prediction step writes probabilities per worker without the images,
    # and filter_unlabel.py joins them back by position; here each output record carries its
    # image bytes and id, so later stages need no join (and shards can be processed anywhere).
    out = []
    for image_id, image, true_label, probs in zip(ids, encoded, true_labels, probabilities):
        example = data.pseudo_label_example(
            image, image_id.decode("utf-8"), probs,
            true_label=int(true_label) if true_label >= 0 else None, float16=float16)
        out.append(example.SerializeToString(deterministic=True))
    return out


def write_batch(writer, ids, encoded, true_labels, probabilities, float16):
    for record in serialize_batch(ids, encoded, true_labels, probabilities, float16):
        writer.write(record)


def label_file(path, output_path, predict, info, batch_size, float16, skip_bad_images=False):
    """Labels one input file into `output_path` (atomically; a writer thread writes batch i while
    the teacher runs on batch i + 1); returns its summary dict."""
    total = common.count_records([path]) if skip_bad_images else None  # framing intact?
    dataset = data.unlabeled_records_dataset([path], info, info.image_size, batch_size,
                                             skip_bad_images)
    confidence_sum, correct, with_truth, class_counts = 0.0, 0, 0, None
    seen = np.zeros(total or 0, bool)  # skip_bad_images: which input records were labeled
    progress = common.Progress(f"labeling {os.path.basename(path)}")
    with common.atomic_output(output_path) as tmp, tf.io.TFRecordWriter(tmp) as writer, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = collections.deque()
        batches = iter(dataset)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                raise bad_record_error(path, info, progress.done, e) from None
            probabilities = predict(batch["image"])
            ids, encoded = batch["id"].numpy(), batch["encoded"].numpy()
            true_labels = batch["true_label"].numpy()
            pending.append(pool.submit(write_batch, writer, ids, encoded, true_labels,
                                       probabilities, float16))
            while len(pending) > PENDING_WRITES:
                pending.popleft().result()

            labels = probabilities.argmax(1)
            if class_counts is None:
                class_counts = np.zeros(probabilities.shape[1], np.int64)
            class_counts += np.bincount(labels, minlength=len(class_counts))
            confidence_sum += float(probabilities.max(1).astype(np.float64).sum())
            known = true_labels >= 0
            with_truth += int(known.sum())
            correct += int((labels[known] == true_labels[known]).sum())
            if skip_bad_images:
                seen[batch["index"].numpy()] = True
            progress.add(len(labels))
        for future in pending:
            future.result()
        if total and not seen.any():
            raise common.UserError(f"{path}: none of its {total} records decodes "
                                   "(--skip_bad_images skips only some)")
    count = progress.done
    summary = {"input": path, "output": output_path, "count": count,
               "output_bytes": tf.io.gfile.stat(output_path).length,
               "mean_confidence": confidence_sum / max(count, 1),
               "class_counts": [] if class_counts is None else class_counts.tolist(),
               "seconds": time.time() - progress.start, "images_per_second": progress.rate(),
               "probabilities_dtype": "float16" if float16 else "float32",
               "batch_size": batch_size}
    if skip_bad_images:
        skipped = np.flatnonzero(~seen)
        summary.update(skipped_bad_images=len(skipped), skipped_records=skipped[:100].tolist())
        if len(skipped):
            logging.warning("%s: skipped %d of %d records whose image does not decode "
                            "(--skip_bad_images), record indices %s", path, len(skipped), total,
                            skipped[:10].tolist())
    if with_truth:  # for reports only: how often the teacher agrees with the hidden label
        summary["diagnostic_accuracy"] = correct / with_truth
    return summary


def bad_record_error(path, info, done, error):
    """The UserError for a tf.data error while labeling `path`: the bad record named by a
    rescan of the file from the failed batch on (`done` records were labeled before it)."""
    view = lambda encoded: data.preprocess_for_eval(encoded, info, info.image_size)
    hint = ("" if isinstance(error, tf.errors.DataLossError)  # broken framing: not skippable
            else " (--skip_bad_images skips such records)")
    try:
        data.check_records([path], decode=view, start=done)
    except common.UserError as bad:
        return common.UserError(f"{bad}{hint}")
    return common.UserError(f"{path}: bad record or image after record {done} "
                            f"({common.tf_error_line(error)}){hint}")


# ----------------------------------------------------------------------------- the job

def output_name(path):
    """The output's basename: the input's, with `.tfrecord` added if it has none (ImageNet shard
    names such as `train-00000-of-01024` have none; later stages read `*.tfrecord*`)."""
    name = os.path.basename(path)
    return name if ".tfrecord" in name else name + ".tfrecord"


def run(teacher_model_dir, files, output_dir, batch_size=256, probabilities_dtype="float32",
        strategy_name="default", skip_bad_images=False, precision="float32",
        allow_weak_teacher=False, tpu=""):
    """Labels `files` into `output_dir`, skipping those done before with the same provenance
    (teacher, input file, flags) and relabeling any other; returns the new summaries. A teacher
    near chance is refused first (efficientnet_builder.check_teacher_strength)."""
    if batch_size < 1:
        raise common.UserError(f"--batch_size must be >= 1, got {batch_size}")
    if probabilities_dtype not in PROBABILITY_DTYPES:
        raise common.UserError(f"--probabilities_dtype must be one of {PROBABILITY_DTYPES}, "
                               f"got {probabilities_dtype!r}")
    common.check_strategy(strategy_name, tpu)
    names = [output_name(f) for f in files]
    if len(set(names)) != len(names):
        raise common.UserError("the input files must have distinct basenames (outputs keep them)")
    teacher = teacher_identity(teacher_model_dir)
    efficientnet_builder.check_teacher_strength(teacher_model_dir, allow_weak_teacher)
    todo, relabel = [], 0
    for path, name in zip(files, names):
        prov = provenance(teacher, path, probabilities_dtype, skip_bad_images, precision)
        old = common.read_json(summary_path(output_dir, name), "summary", default=None)
        reason = stale_reason(os.path.join(output_dir, name), old, prov)
        if reason is None:
            continue
        if old is not None:  # redone, not refused: e.g. the teacher was retrained
            logging.warning("relabeling %s: %s", os.path.join(output_dir, name), reason)
            common.remove(summary_path(output_dir, name))  # no stale summary beside new labels
            relabel += 1
        todo.append((path, prov))
    logging.info("%d input files for this job, %d done before, %d to label (%d relabeled); "
                 "teacher %s %s (step %s, fingerprint %s)", len(files), len(files) - len(todo),
                 len(todo), relabel, teacher["model_dir"], teacher["checkpoint"], teacher["step"],
                 teacher["fingerprint"])
    if not todo:
        return []
    strategy = common.make_strategy(strategy_name, tpu, one_host=True)
    common.set_precision(precision)  # before the teacher is built
    model, config, info = load_teacher(teacher_model_dir, strategy)
    if teacher_identity(teacher_model_dir) != teacher:
        raise common.UserError(f"{teacher_model_dir} got a new checkpoint while loading; rerun")
    predict = make_predictor(model, strategy)
    logging.info("teacher %s (%s, %d px, %d classes) on %d replica(s)", teacher_model_dir,
                 config.get("model_name"), info.image_size, info.num_classes,
                 strategy.num_replicas_in_sync)
    job = common.Progress("job", total=sum(tf.io.gfile.stat(f).length for f, _ in todo),
                          unit="bytes")
    summaries = []
    for k, (path, prov) in enumerate(todo):
        name = output_name(path)
        output_path = os.path.join(output_dir, name)
        common.remove_stale_temporaries(output_path)
        summary = label_file(path, output_path, predict, info, batch_size,
                             probabilities_dtype == "float16", skip_bad_images)
        summary.update(teacher_model_dir=teacher_model_dir, strategy=strategy_name,
                       num_replicas=strategy.num_replicas_in_sync, provenance=prov,
                       provenance_key=provenance_key(prov))
        common.write_json(summary_path(output_dir, name), summary)
        summaries.append(summary)
        logging.info("file %d/%d %s: %d images, mean confidence %.3f, %.0f img/s", k + 1,
                     len(todo), name, summary["count"], summary["mean_confidence"],
                     summary["images_per_second"])
        job.add(tf.io.gfile.stat(path).length, force=True)
    return summaries


FLAGS = flags.FLAGS


def define_flags():
    """The flags, defined only when run as a script (importing the file defines none)."""
    flags.DEFINE_string("teacher_model_dir", None, "Model dir of the teacher (model.json + "
                        "checkpoints, as written by main.py); its EMA weights are used.")
    flags.DEFINE_string("input_pattern", None, "Unlabeled shards: a directory (all *.tfrecord* "
                        "in it) or a glob.")
    flags.DEFINE_string("output_dir", None, "Where the pseudo-labeled shards go (same "
                        "basenames) and summaries/<basename>.json.")
    flags.DEFINE_integer("num_shards", 1, "Number of independent jobs; file i of the sorted "
                         "input goes to job i % num_shards.")
    flags.DEFINE_integer("shard_id", 0, "This job's index in [0, num_shards).")
    flags.DEFINE_integer("batch_size", 256, "Images per inference step (global: split over the "
                         "replicas).")
    flags.DEFINE_enum("probabilities_dtype", "float32", PROBABILITY_DTYPES,
                      "float32: `probabilities` float list; float16: `probabilities/float16` "
                      "little-endian bytes (half the size).")
    flags.DEFINE_enum("strategy", "default", common.STRATEGIES,
                      "tf.distribute inside this job: default (one device), mirrored (all "
                      "local GPUs) or tpu (--tpu); multi_worker = mirrored (hosts: N jobs, "
                      "--num_shards).")
    flags.DEFINE_string("tpu", "", "TPU name or grpc address for --strategy=tpu (\"\": the local "
                        "TPU VM).")
    flags.DEFINE_bool("skip_bad_images", False, "Leave out records whose image does not "
                      "decode (counted in the file's summary) instead of stopping at the first.")
    flags.DEFINE_enum("precision", "float32", list(common.PRECISIONS), "float32, or bfloat16 "
                      "in the 1x1 convolutions (Keras mixed precision; bench/bf16_step.md).")
    flags.DEFINE_bool("deterministic", True, "tf.config.experimental.enable_op_determinism(): "
                      "byte-identical outputs also on GPUs (may be slower there).")
    flags.DEFINE_bool("allow_weak_teacher", False, "Label even with a teacher whose evaluation "
                      "is near chance (refused by default: its pseudo-labels would be noise).")


def main(argv):
    if len(argv) > 1:
        raise common.UserError(f"unexpected arguments {argv[1:]}")
    for name in ("teacher_model_dir", "input_pattern", "output_dir"):
        if not FLAGS[name].value:
            raise common.UserError(f"--{name} is required")
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    files = common.list_files(FLAGS.input_pattern, "unlabeled")
    run(FLAGS.teacher_model_dir, common.shard_files(files, FLAGS.num_shards, FLAGS.shard_id),
        FLAGS.output_dir, FLAGS.batch_size, FLAGS.probabilities_dtype, FLAGS.strategy,
        FLAGS.skip_bad_images, FLAGS.precision, FLAGS.allow_weak_teacher, FLAGS.tpu)


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
