"""Where a student step's time goes, against a teacher step (issue 31): the quick preset's net and
recipe, one process, the contenders interleaved (A, B, A, B ...) so that the other processes of a
shared machine slow them alike.

    python bench/step_profile.py --work_dir=/tmp/step-profile > bench/step_profile.md

--work_dir needs data/ (Fashion-MNIST, 400 labels per class) and filtered/ (a teacher's filtered,
balanced pseudo-labels, K = 4,000 as the quick preset); when missing they are made first with
the project's own stages (a 10-epoch teacher is enough for timing; its labels' class balance
decides the copies the student's reader repeats, as in a real run).

Like the driver, the process runs with op determinism (main.py --deterministic). Measured:
  1. the whole step fed by its real tf.data pipeline (wall img/s and process CPU ms per image,
     all threads), teacher at batch 128 (as trained), teacher at the student's total batch
     128 (1 + r) (the same batch), and the student at 128 labeled + 128 r pseudo-labeled;
  2. the same steps on one in-memory batch (the model's share; no input pipeline);
  3. the input pipelines alone (CPU ms per batch), the unlabeled one cut after each stage;
  4. the step's parts as separate tf.functions (forward + backward with the losses, the
     optimizer, the EMA update), checkpoint saves and summaries (amortised at the driver's
     --save_checkpoints_steps=500, --log_every_steps=100);
  5. an op profile (TF profiler, framework_op_stats: self time by op type) of a few steps of each.
Every figure: the median over --rounds rounds, with the spread (min-max) of the rounds.
"""
import collections
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import main as main_lib  # noqa: E402
from benchlib import RECIPE, ROOT, interleave, machine, module_at  # noqa: E402

flags.DEFINE_string("work_dir", "/tmp/step-profile", "Holds data/ and filtered/ (made if missing).")
flags.DEFINE_string("ratios", "1,3", "Unlabeled ratios of the students profiled (quick: 1, 2, 3).")
flags.DEFINE_integer("steps", 15, "Timed steps per contender and round (after 5 untimed).")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; figures are medians over them.")
flags.DEFINE_integer("profile_steps", 10, "Steps traced by the op profile per contender.")
flags.DEFINE_string("parts", "pipeline,memory,inputs,components,ops", "What to measure.")
flags.DEFINE_string("baseline", "", "A commit: its data.py's pseudo-labeled reader is timed too "
                    "(the students' steps and the pipelines), interleaved with today's.")
FLAGS = flags.FLAGS

BATCH = 128


def prepare(work):
    """data/ and filtered/ as the quick preset makes them (a shorter teacher)."""
    if os.path.exists(os.path.join(work, "filtered", "summary.json")):
        return
    py, d = sys.executable, os.path.join(work, "data")
    run = lambda *cmd: subprocess.run([py, *cmd], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
    run("prepare_data.py", "--dataset=fashion_mnist", f"--output_dir={d}", "--num_labeled_per_class=400",
        "--seed=0")
    run("main.py", f"--data_dir={d}", f"--model_dir={work}/teacher", "--deterministic",
        *[f for f in RECIPE if not f.startswith("--train_epochs")], "--train_epochs=10")
    run("label_data.py", f"--teacher_model_dir={work}/teacher", f"--input_pattern={d}/unlabeled/*",
        f"--output_dir={work}/labels")
    run("filter_balance.py", "all", f"--input_pattern={work}/labels/*.tfrecord",
        f"--work_dir={work}/filter_work", f"--output_dir={work}/filtered",
        "--num_images_per_class=4000", "--min_threshold=0.3", "--seed=0")


def recipe_config(work, batch, ratio=None):
    """main.TrainConfig of the quick preset's teacher (ratio None) or student (soft labels)."""
    kw = {f.split("=")[0][2:]: f.split("=")[1] for f in RECIPE}
    student = main_lib.StudentConfig(unlabel_data_dir=os.path.join(work, "filtered"),
                                     unlabel_ratio=float(ratio)) if ratio else None
    return main_lib.TrainConfig(
        data_dir=os.path.join(work, "data"), train_batch_size=batch, model_name=kw["model_name"],
        width_coefficient=float(kw["width_coefficient"]),
        depth_coefficient=float(kw["depth_coefficient"]), randaug_mag=int(kw["randaug_mag"]),
        base_learning_rate=float(kw["base_learning_rate"]),
        final_base_learning_rate=float(kw["final_base_learning_rate"]),
        lr_warmup_epochs=float(kw["lr_warmup_epochs"]), seed=1, deterministic=True,
        student=student)


class Contender:
    """A Trainer, its step function and its dataset (real pipeline or one in-memory batch)."""

    def __init__(self, name, config, in_memory=False, data_module=None):
        self.name, self.config = name, config
        info = main_lib.dataset_info(config, os.path.join(config.data_dir, "labeled"))
        model_cfg = main_lib.model_spec(config, info)
        schedule = main_lib.lr_schedule(config, 4000 / config.train_batch_size, 1000)
        self.trainer = main_lib.Trainer(config, model_cfg, schedule)
        self.batch_u = (int(np.ceil(config.train_batch_size * config.student.unlabel_ratio))
                        if config.student else 0)
        self.images = config.train_batch_size + self.batch_u
        label_files = common.list_files(os.path.join(config.data_dir, "labeled"), "labeled")
        self.dataset = main_lib.build_train_dataset(config, info, label_files, self.batch_u)
        if data_module is not None:  # the same, with another version's pseudo-labeled reader
            labeled = main_lib.build_train_dataset(dataclasses.replace(config, student=None),
                                                   info, label_files, 0)
            unlabeled = data_module.pseudo_labeled_dataset(
                common.list_files(config.student.unlabel_data_dir), info, info.image_size,
                self.batch_u, info.num_classes, config.augment_name,
                randaug_layer=config.randaug_layer, randaug_mag=config.randaug_mag,
                seed=config.seed, start_batch=0)
            self.dataset = tf.data.Dataset.zip((labeled, unlabeled)).map(
                lambda lab, unl: (lab[0], lab[1], unl[0], unl[1]))
        if in_memory:
            batch = next(iter(self.dataset))
            self.dataset = tf.data.Dataset.from_tensors(batch).repeat()
        self.iterator = iter(self.dataset)
        self.step = self.trainer.make_train_step(config.train_batch_size, self.batch_u)

    def run(self, steps):
        for _ in range(steps):
            out = self.step(self.iterator)
            float(out["loss"])  # as main.train: one sync per step
        return out

    def timed(self, steps):
        """(img/s, process CPU ms per image) over `steps` steps after 5 untimed."""
        self.run(5)
        t, c = time.perf_counter(), time.process_time()
        self.run(steps)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return steps * self.images / wall, 1e3 * cpu / (steps * self.images)


def med(values):
    return float(np.median(values))


def spread(values, fmt="{:.0f}"):
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio_spread(a, b):
    """Median and range of the per-round ratios a[i] / b[i] (the same round: the same load)."""
    r = [x / y for x, y in zip(a, b)]
    return f"{med(r):.3f} ({min(r):.3f}-{max(r):.3f})"


def contenders(work, ratios, in_memory, baseline=None):
    """baseline: (commit, its data module) or None."""
    out = {f"teacher b{BATCH}": Contender("t", recipe_config(work, BATCH), in_memory)}
    for r in ratios:
        total = BATCH + int(np.ceil(BATCH * r))
        out[f"teacher b{total}"] = Contender("t", recipe_config(work, total), in_memory)
        out[f"student r{r:g} b{BATCH}+{total - BATCH}"] = Contender(
            "s", recipe_config(work, BATCH, r), in_memory)
        if baseline:
            out[f"student r{r:g} b{BATCH}+{total - BATCH}, {baseline[0]}'s reader"] = Contender(
                "s", recipe_config(work, BATCH, r), in_memory, baseline[1])
    return out


def step_table(title, cs, ratios, steps, rounds):
    runs = interleave({n: (lambda c=c: c.timed(steps)) for n, c in cs.items()}, rounds)
    ips = {n: [r[0] for r in v] for n, v in runs.items()}
    cpu = {n: [r[1] for r in v] for n, v in runs.items()}
    print(f"\n### {title}\n")
    print("| contender | img/s, median (min-max) | CPU ms per image | img/s / teacher's at the "
          "same batch (per round) | CPU per image / teacher's |\n|---|---|---|---|---|")
    for n in cs:
        same = [m for m in cs if m.startswith("teacher") and
                cs[m].images == cs[n].images][0]
        rel = ("-" if same == n else ratio_spread(ips[n], ips[same]))
        rel_cpu = ("-" if same == n else ratio_spread(cpu[n], cpu[same]))
        print(f"| {n} | {spread(ips[n])} | {spread(cpu[n], '{:.2f}')} | {rel} | {rel_cpu} |")
    for n in cs:
        if ", " in n:  # a baseline's reader: today's student against it, per round
            today = n.split(", ")[0]
            print(f"\n{today}, today's reader / {n.split(', ')[1]}: img/s "
                  f"{ratio_spread(ips[today], ips[n])}, CPU per image "
                  f"{ratio_spread(cpu[today], cpu[n])}")
    for r in ratios:
        total = BATCH + int(np.ceil(BATCH * r))
        print(f"\nteacher b{total} / teacher b{BATCH} img/s: "
              f"{ratio_spread(ips[f'teacher b{total}'], ips[f'teacher b{BATCH}'])}")
    sys.stdout.flush()
    return ips


def cpu_ms_per_batch(it, calls):
    for _ in range(5):
        next(it)
    c = time.process_time()
    for _ in range(calls):
        out = next(it)
    tf.nest.map_structure(np.asarray, out)
    return 1e3 * (time.process_time() - c) / calls


def input_table(work, ratios, rounds, baseline=None):
    """The pipelines alone: CPU ms per batch, labeled and unlabeled, and the unlabeled one cut
    after each of its stages (records, per-record parse, copies, shuffle, batch + views)."""
    cfg = recipe_config(work, BATCH)
    info = main_lib.dataset_info(cfg, os.path.join(cfg.data_dir, "labeled"))
    files = common.list_files(os.path.join(work, "filtered"), "filtered")
    label_files = common.list_files(os.path.join(cfg.data_dir, "labeled"), "labeled")
    fns = {}
    for r in ratios:
        b = int(np.ceil(BATCH * r))
        lab = data.labeled_dataset(label_files, info, 32, BATCH + b, True, "randaugment", 2, 5, seed=0)
        unl = data.pseudo_labeled_dataset(files, info, 32, b, 10, "randaugment", 2, 5, seed=0)
        stages = pseudo_labeled_stages(files, info, b)
        fns[f"labeled, batch {BATCH + b} (teacher at the same batch)"] = (iter(lab), b + BATCH)
        fns[f"unlabeled, batch {b} (whole pipeline)"] = (iter(unl), b)
        if baseline:
            old = baseline[1].pseudo_labeled_dataset(files, info, 32, b, 10, "randaugment", 2, 5,
                                                     seed=0)
            fns[f"unlabeled, batch {b} (whole pipeline, {baseline[0]}'s reader)"] = (iter(old), b)
        for name, ds in stages.items():
            fns[f"unlabeled, batch {b}: {name}"] = (iter(ds), b)
    runs = interleave({n: (lambda it=it: cpu_ms_per_batch(it, 20)) for n, (it, _) in fns.items()},
                      rounds)
    print("\n### The input pipelines alone (CPU ms per batch, all threads)\n")
    print("| pipeline | CPU ms per batch | CPU ms per image |\n|---|---|---|")
    for n, (_, b) in fns.items():
        print(f"| {n} | {spread(runs[n], '{:.1f}')} | {med(runs[n]) / b:.3f} |")
    sys.stdout.flush()


def pseudo_labeled_stages(files, info, b):
    """data.pseudo_labeled_dataset cut after each stage, batched (b records) without the views."""
    key = data.stream_key(0, "unlabeled", 0)
    records = data._records(files, True, data.stream_key(key, "shuffle", 0), shuffle_buffer=16384)
    parsed = records.batch(data.PARSE_BATCH).map(
        lambda r: {k: v for k, v in data.parse_pseudo_labeled(r, 10).items()
                   if k in ("image", "probabilities", "copies")}).unbatch()
    copies = parsed.interleave(lambda rec: tf.data.Dataset.from_tensors(rec).repeat(
        tf.cast(rec["copies"], tf.int64)), cycle_length=1024, block_length=1)
    shuffled = copies.shuffle(16384, seed=1)
    return {"records only (read, shuffle)": records.batch(b),
            "+ parse": parsed.batch(b),
            "+ copies (interleave)": copies.batch(b),
            "+ shuffle": shuffled.batch(b)}


def components_table(work, ratios, rounds):
    """The step's parts as separate tf.functions on one in-memory batch, teacher at the
    student's total batch and student, interleaved."""
    fns, names = {}, []
    for r in ratios:
        total = BATCH + int(np.ceil(BATCH * r))
        for who, cfg in (("teacher", recipe_config(work, total)),
                         ("student", recipe_config(work, BATCH, r))):
            c = Contender(who, cfg, in_memory=True)
            batch = next(c.iterator)
            name = f"{who} b{total}" + (f" (r{r:g})" if who == "student" else "")
            names.append(name)
            for part, fn in parts(c, batch).items():
                fns[(name, part)] = timed_fn(fn, c.images)
    runs = interleave(fns, rounds)
    part_names = list(dict.fromkeys(p for _, p in fns))
    print("\n### The step's parts (in-memory batch; ms per step, median (min-max))\n")
    print("| model | " + " | ".join(part_names) + " |\n|---|" + "---|" * len(part_names))
    for n in names:
        print(f"| {n} | " + " | ".join(spread(runs[(n, p)], "{:.1f}") for p in part_names) + " |")
    sys.stdout.flush()


def timed_fn(fn, images, calls=10):
    def timed():
        fn()
        t = time.perf_counter()
        for _ in range(calls):
            out = fn()
        tf.nest.map_structure(lambda x: np.asarray(x), out)
        return 1e3 * (time.perf_counter() - t) / calls
    return timed


def parts(c, batch):
    """tf.functions: the whole step; forward + losses; forward + backward; the optimizer's update
    (on the last gradients); the EMA update; a checkpoint save; the summaries of one log line;
    the per-step Python of main.train (a float() of a ready loss)."""
    t = c.trainer

    def loss_and_grads(batch):
        with tf.GradientTape() as tape:
            out = step_fn_loss(t, batch, c.config.train_batch_size, c.batch_u)
        return out, tape.gradient(out, t.model.trainable_variables)

    fwd = tf.function(lambda: step_fn_loss(t, batch, c.config.train_batch_size, c.batch_u))
    fwd_bwd = tf.function(lambda: loss_and_grads(batch))
    grads = fwd_bwd()[1]
    opt = tf.function(lambda: t.optimizer.apply_gradients(
        zip([g * 0 for g in grads], t.model.trainable_variables)))
    ema = tf.function(lambda: main_lib.ema_update(t.ema_weights, t.model_weights, 0.9999))
    it = iter(tf.data.Dataset.from_tensors(batch).repeat())
    whole = lambda: c.step(it)["loss"]
    work = tempfile.mkdtemp()
    manager = tf.train.CheckpointManager(t.checkpoint, work, max_to_keep=1)
    ckpt = lambda: manager.save() and 0.0
    writer = tf.summary.create_file_writer(work)
    out = whole()

    def summaries():
        with writer.as_default(step=1):
            for k in ("loss", "loss_labeled", "loss_unlabeled", "accuracy", "learning_rate",
                      "images_per_second"):
                tf.summary.scalar(k, 1.0)
        return 0.0
    return {"whole step": whole, "forward + losses": fwd, "forward + backward": fwd_bwd,
            "optimizer": opt, "EMA": ema, "checkpoint save": ckpt, "summaries (a log line)":
            summaries, "per-step Python (float(loss))": lambda: float(out)}


def step_fn_loss(t, batch, global_batch_l, global_batch_u):
    """The loss main.Trainer._step_fn differentiates (same code path: teacher or student)."""
    num_classes = t.spec["num_classes"]
    x_l, y_l = batch[0], batch[1]
    targets_l = main_lib.smooth(tf.one_hot(y_l, num_classes), t.config.label_smoothing)
    if t.student:
        x_u, u = batch[2], batch[3]
        targets_u = main_lib.pseudo_label_targets(u, t.student.label_type,
                                                  t.student.teacher_softmax_temp,
                                                  t.config.label_smoothing)
        logits_l, logits_u = t._forward_student(x_l, x_u)
        loss_u = tf.reduce_sum(main_lib.cross_entropy(targets_u, logits_u)) / global_batch_u
    else:
        logits_l = t.model(x_l, training=True)
        loss_u = 0.0
    loss_l = tf.reduce_sum(main_lib.cross_entropy(targets_l, logits_l)) / global_batch_l
    ratio = t.student.unlabel_ratio if t.student else 0.0
    return loss_l + ratio * loss_u + main_lib.weight_decay_loss(t.model, t.config.weight_decay)


def op_table(cs, steps):
    """Self time by op type over `steps` steps of each contender (TF profiler)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    stats = {}
    for name, c in cs.items():
        c.run(3)
        logdir = tempfile.mkdtemp()
        tf.profiler.experimental.start(logdir)
        c.run(steps)
        tf.profiler.experimental.stop()
        path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        table = json.loads(plugin.xspace_to_tools_data(path, "framework_op_stats", {})[0])[0]
        cols = [col["id"] for col in table["cols"]]
        by_type = collections.Counter()
        for row in table["rows"]:
            r = dict(zip(cols, [cell["v"] for cell in row["c"]]))
            if r["type"] != "IDLE":
                by_type[r["type"]] += r["total_self_time"] / 1e3 / steps / c.images
        stats[name] = by_type
        shutil.rmtree(logdir)
    names = list(cs)
    top = collections.Counter()
    for s in stats.values():
        top.update(s)
    print("\n### Op profile: self time per image (µs), by op type, summed over all threads\n")
    print("| op type | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for op, _ in top.most_common(25):
        print(f"| {op} | " + " | ".join(f"{1e3 * stats[n][op]:.1f}" for n in names) + " |")
    print("| **all ops** | " + " | ".join(f"{1e3 * sum(stats[n].values()):.1f}" for n in names)
          + " |")
    sys.stdout.flush()


def main(_):
    tf.config.experimental.enable_op_determinism()  # as the driver's --deterministic
    work = FLAGS.work_dir
    prepare(work)
    ratios = [float(r) for r in FLAGS.ratios.split(",")]
    parts_ = FLAGS.parts.split(",")
    print("# A student step against a teacher step (issue 31)\n")
    print(f"Machine: {machine()}\n")
    print(f"Command: `python bench/step_profile.py {' '.join(sys.argv[1:])}`; the quick preset's "
          f"net and recipe (RandAugment N=2 M=5, soft labels), op determinism on; "
          f"{FLAGS.rounds} interleaved rounds of {FLAGS.steps} timed steps per contender; load "
          f"average at the start: {os.getloadavg()[0]:.2f}.\n")
    baseline = (FLAGS.baseline, module_at(FLAGS.baseline, "data")) if FLAGS.baseline else None
    if "pipeline" in parts_:
        step_table("Whole step, real input pipelines",
                   contenders(work, ratios, False, baseline), ratios, FLAGS.steps, FLAGS.rounds)
    if "memory" in parts_:
        step_table("Whole step, one in-memory batch (the model's share)",
                   contenders(work, ratios, True), ratios, FLAGS.steps, FLAGS.rounds)
    if "inputs" in parts_:
        input_table(work, ratios, FLAGS.rounds, baseline)
    if "components" in parts_:
        components_table(work, ratios, FLAGS.rounds)
    if "ops" in parts_:
        op_table(contenders(work, ratios[-1:], False), FLAGS.profile_steps)
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    app.run(main)
