"""Train and evaluate a teacher or a noised student (paper Sec. 2, Algorithm 1 steps 1 and 4; Sec. 3).

One script, TPUEstimator-style: flags pick the model, the data, the noise, the pseudo-label type and
the tf.distribute strategy; checkpoints live in --model_dir and rerunning the same command resumes.

Teacher (step 1), on the default data (Fashion-MNIST, 400 labels per class; prepare_data.py):
    python prepare_data.py --dataset=fashion_mnist --output_dir=data/fashion_mnist
    python main.py --model_dir=runs/teacher
Noised student (step 4) on filtered pseudo-labels written by filter_balance.py:
    python main.py --model_dir=runs/student --unlabel_data_dir=runs/iter1/filtered \
        --teacher_model_dir=runs/teacher --unlabel_ratio=3 --label_type=soft
or with the unnoised teacher run on the fly (no label_data/filter_balance step):
    python main.py --model_dir=runs/student --teacher_model_dir=runs/teacher --unlabel_ratio=3
A published checkpoint as the teacher, as it is (no training; evaluated like a trained one):
    python main.py --dataset=imagenet --eval_data_dir='validation-*' --model_dir=runs/b0 \
        --init_checkpoint=efficientnet-b0/model.ckpt --train_steps=0 --train_epochs=0
In a program: train_and_evaluate(TrainConfig(..., student=StudentConfig(...)), model_dir). Every
field of the two configs is the flag of the same name.

Writes into --model_dir: flags.json, model.json (what efficientnet_builder.load_model_dir needs),
ckpt-* (model, EMA model, optimizer, step), TensorBoard events (train/, loss, lr, accuracy, img/s),
eval_results.json (top_1, top_5, loss, num_examples, global_step) and, with --export_saved_model,
saved_model/ built from the EMA weights.
"""
import dataclasses
import json
import math
import os
import time

import common  # first: it silences TensorFlow's start-up lines
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import keras

import data
import efficientnet_builder
import pretrained


# --- Algorithm 1, step 1 (teacher) or step 4 (noised student), then evaluation. ------------------
def train_and_evaluate(config, model_dir):
    """Trains the model of `config` in `model_dir` (resuming from its checkpoints), fine-tunes it if
    asked, and evaluates it, as config.mode says. Returns {model dir: eval results}."""
    common.set_precision(config.precision)  # before any model is built
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # process-wide, also for later runs
    label_pattern = config.label_data_dir or os.path.join(config.data_dir, "labeled")
    eval_pattern = config.eval_data_dir or os.path.join(config.data_dir, "test")
    info = dataset_info(config, label_pattern)
    spec = model_spec(config, info)
    strategy = common.make_strategy(config.strategy, config.tpu)
    chief = common.is_chief(strategy)
    check_model_dir(model_dir, spec)
    if config.dataset == "fashion_mnist" and not (config.label_data_dir and config.eval_data_dir):
        if data.check_prepared(config.data_dir, dict(
                dataset="fashion_mnist", seed=config.data_seed,
                num_labeled_per_class=config.num_labeled_per_class)) is None:
            raise common.UserError(f"--data_dir={config.data_dir} is not prepared: run python "
                                   f"prepare_data.py --dataset=fashion_mnist "
                                   f"--output_dir={config.data_dir}")
    student = config.student
    if config.mode != "eval":
        record = flags_record(config, model_dir)
        check_resume_flags(model_dir, record)
    if config.mode != "eval" and not (config.train_steps or config.train_epochs):
        # Published weights as the teacher, as they are (Algorithm 1's step 1 done by their
        # authors): --init_checkpoint with no training, exported as this model dir.
        if chief:
            common.write_json(os.path.join(model_dir, "flags.json"), record)
            pretrained.export_model_dir(config.init_checkpoint, model_dir, spec)
    elif config.mode != "eval":
        label_files = common.list_files(label_pattern, "labeled training data (--label_data_dir)")
        num_train = config.num_train_images or common.count_records(label_files)
        train_steps, steps_per_epoch = train_length(config, num_train)
        if not train_steps:
            raise common.UserError(f"no labeled training records in {label_pattern}")
        if chief:  # written once the run's flags and data are known to be good
            common.write_json(os.path.join(model_dir, "flags.json"), record)
            common.write_json(os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE), spec)
        schedule = lr_schedule(config, steps_per_epoch, train_steps)
        trainer = Trainer(config, spec, schedule, strategy)
        logging.info("lr ends at 1/%.1f of the peak.",
                     schedule["peak_lr"] / float(learning_rate(train_steps, **schedule)))
        initialize(trainer, config.init_checkpoint, model_dir)
        batch_u = int(math.ceil(config.train_batch_size * student.unlabel_ratio)) if student else 0
        teacher_info = check_teacher(trainer.model, student, info.num_classes) if student else None
        dataset = build_train_dataset(config, info, label_files, batch_u,
                                      teacher_info.image_size if teacher_info else None,
                                      start_batch=input_start(model_dir))
        logging.info("%s: %s (%d params), %d labeled images, batch %d%s, %d steps, peak lr %.4f.",
                     "Student" if student else "Teacher", config.model_name,
                     num_params(trainer.model), num_train, config.train_batch_size,
                     f" + {batch_u} unlabeled" if student else "", train_steps, schedule["peak_lr"])
        with data.translate_data_errors(label_files + unlabeled_files(config)):
            train(trainer, dataset, config, train_steps=train_steps, model_dir=model_dir,
                  chief=chief, images_per_step=(config.train_batch_size, batch_u))
        if config.export_saved_model and chief:
            with common.atomic_output(os.path.join(model_dir, "saved_model")) as tmp:
                trainer.ema_model.export(tmp)  # the EMA weights, as every later stage uses
        if config.finetune_image_size:
            finetune(config, model_dir, strategy, spec, info, label_files, num_train, chief,
                     schedule, train_steps)

    if config.mode == "train":
        return {}
    model_dirs = [model_dir] + ([finetune_path(model_dir, config.finetune_image_size)]
                                if config.finetune_image_size else [])
    return {d: evaluate_model_dir(strategy, d, eval_pattern, config.eval_batch_size, chief)
            for d in model_dirs}


# --- Training: one step of Algorithm 1 (teacher: labeled loss; student: labeled + unlabeled). ----
class Trainer:
    """One run of `config` (a TrainConfig; its `student` makes it step 4): the model of `spec`, its
    EMA twin, the optimizer and, for the on-the-fly student, the teacher. Fine-tuning: init_weights,
    finetune_offset the steps trained before (the stem and the first stages frozen)."""

    def __init__(self, config, spec, schedule, strategy=None, *, init_weights=None,
                 finetune_offset=None):
        strategy = strategy or tf.distribute.get_strategy()
        self.strategy, self.config, self.spec, self.schedule = strategy, config, spec, schedule
        self.student = student = config.student
        self.lr_step_offset = finetune_offset or 0
        frozen = () if finetune_offset is None else ("stem",) + tuple(
            f"block{i}" for i in range(1, config.finetune_frozen_stages + 1))
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = efficientnet_builder.build_from_config(spec)
            self.ema_model = efficientnet_builder.build_from_config(spec)
            if init_weights is not None:
                self.model.set_weights(init_weights)
            self.ema_model.set_weights(self.model.get_weights())
            for layer in self.model.layers:  # frozen layers (fine-tuning): BN in inference mode too
                if frozen and layer.name.startswith(frozen):
                    layer.trainable = False
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.optimizer = build_optimizer(config.optimizer, schedule["peak_lr"])
            # Keras 3 under tf.distribute: build the optimizer in scope before the first step.
            self.optimizer.build(self.model.trainable_variables)
            self.teacher = None
            if student and student.teacher_model_dir and not student.unlabel_data_dir:
                self.teacher, _ = efficientnet_builder.load_model_dir(student.teacher_model_dir)
                if student.noised_teacher:
                    # Dropout and stochastic depth on, BN on its moving statistics.
                    # NOTE: the noised-teacher ablation (Table 6) is offered for the on-the-fly
                    # teacher only: it labels the student's augmented view with model noise on.
                    for layer in self.teacher._flatten_layers():
                        if isinstance(layer, keras.layers.BatchNormalization):
                            layer.trainable = False
        self.model_weights = float_weights(self.model)
        self.ema_weights = float_weights(self.ema_model)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, ema_model=self.ema_model, optimizer=self.optimizer, step=self.step,
            noise=efficientnet_builder.noise_states(self.model))

    def _forward_student(self, x_l, x_u):
        """Logits of the labeled and unlabeled parts: one pass over the concatenation, so BN sees
        the whole batch once; for the 'none' ablation dropout and stochastic depth noise only the
        labeled rows. NOTE: the reference has no switch for Table 6's unlabeled-only ablations."""
        n_l = tf.shape(x_l)[0]
        if self.student.unlabeled_noise == "none":
            efficientnet_builder.set_noise(self.model, True, noised_rows=n_l)
        logits = self.model(tf.concat([x_l, x_u], 0), training=True)
        efficientnet_builder.set_noise(self.model, True)
        return logits[:n_l], logits[n_l:]

    def _step_fn(self, batch, global_batch_l, global_batch_u):
        num_classes = self.spec["num_classes"]
        replicas = self.strategy.num_replicas_in_sync
        x_l, y_l = batch[0], batch[1]
        # Here and not in the input map, which an assert would serialize under --deterministic
        # (tf.function runs it: automatic control dependencies).
        tf.debugging.assert_less(tf.cast(y_l, tf.uint32), tf.cast(num_classes, tf.uint32),
                                 message=f"label outside [0, num_classes={num_classes})")
        label_smoothing = self.config.label_smoothing
        targets_l = smooth(tf.one_hot(y_l, num_classes), label_smoothing)
        with tf.GradientTape() as tape:
            if self.student:
                x_u, u = batch[2], batch[3]
                if self.teacher is not None:  # on the fly: u are the teacher's eval-preprocessed images
                    noised = self.student.noised_teacher
                    probs = tf.nn.softmax(self.teacher(x_u if noised else u, training=noised), -1)
                    u = tf.stop_gradient(probs)
                targets_u = pseudo_label_targets(u, self.student.label_type,
                                                 self.student.teacher_softmax_temp, label_smoothing)
                logits_l, logits_u = self._forward_student(x_l, x_u)
                loss_u = tf.reduce_sum(cross_entropy(targets_u, logits_u)) / global_batch_u
            else:
                logits_l = self.model(x_l, training=True)
                loss_u = tf.constant(0.0)
            loss_l = tf.reduce_sum(cross_entropy(targets_l, logits_l)) / global_batch_l
            ratio = self.student.unlabel_ratio if self.student else 0.0
            loss = (loss_l + ratio * loss_u
                    + weight_decay_loss(self.model, self.config.weight_decay) / replicas)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits_l, -1, output_type=tf.int32),
                                                 tf.cast(y_l, tf.int32)), tf.float32))
        return {"loss": loss, "loss_labeled": loss_l, "loss_unlabeled": loss_u,
                "accuracy": correct / global_batch_l}

    def make_train_step(self, global_batch_l, global_batch_u):
        @tf.function(autograph=False)  # no tensor-dependent Python control flow: no conversion
        def train_step(iterator):
            lr = learning_rate(self.step + self.lr_step_offset, **self.schedule)
            self.optimizer.learning_rate.assign(lr)
            out = self.strategy.run(self._step_fn,
                                    args=(next(iterator), global_batch_l, global_batch_u))
            out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in out.items()}
            self.step.assign_add(1)
            rate = self.config.moving_average_decay
            decay = ema_decay(self.step, rate) if rate > 0 else 0.0
            ema_update(self.ema_weights, self.model_weights, decay)
            out["learning_rate"] = lr
            return out
        return train_step


def save_checkpoint(manager, step):
    """manager.save; if it fails (a full disk), TF's half-written ckpt-N_temp is removed first."""
    try:
        manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError):
        for tmp in tf.io.gfile.glob(os.path.join(manager.directory, f"ckpt-{step}_temp*")):
            common.remove(tmp)
        raise


# Training iterators live until the process exits: tf.data (TF 2.21) destroys one only after its
# autotuning thread's current sleep, which kept a stage idle for up to ~20 s after training.
LIVE_ITERATORS = []


def train(trainer, dataset, config, *, train_steps, model_dir, chief, images_per_step):
    """The training loop: resumes from the latest checkpoint in model_dir, stops at train_steps."""
    ckpt_dir = model_dir if chief else os.path.join(model_dir, f".worker-{os.getpid()}")
    manager = tf.train.CheckpointManager(trainer.checkpoint, ckpt_dir,
                                         max_to_keep=config.keep_checkpoint_max,
                                         checkpoint_name="ckpt", step_counter=trainer.step)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    LIVE_ITERATORS.append(iterator)
    if config.deterministic:
        # The input position is checkpointed: a resumed run reads on where its checkpoint stopped.
        # NOTE: by default it is not (as TPUEstimator, which restarted its input_fn): a resumed
        # run continues the schedule and noise streams from its step on a fresh shuffle.
        trainer.checkpoint.input = iterator
    if manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint)
        logging.info("Resumed from %s (step %d).", manager.latest_checkpoint, trainer.step.numpy())
    start = int(trainer.step.numpy())  # .numpy(): also a MirroredVariable under tf.distribute
    if start >= train_steps:
        logging.info("Already trained to step %d of %d: nothing to do.", start, train_steps)
        return
    writer = tf.summary.create_file_writer(os.path.join(model_dir if chief else ckpt_dir, "train"))
    train_step = trainer.make_train_step(*images_per_step)
    t0, t_last, step_last = time.time(), time.time(), start
    logging.info("Training from step %d to %d.", start, train_steps)
    for step in range(start + 1, train_steps + 1):
        try:
            out = train_step(iterator)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
            logging.error("training input failed at step %d", step)  # the caller names the record
            raise
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise common.UserError(f"loss became {loss} at step {step}; checkpoints untouched "
                                   f"(latest: {manager.latest_checkpoint}). Lower "
                                   f"--base_learning_rate or check the input data.")
        # (also steps 5 and 10: an early speed, steps 6-10 past tf.function's tracing)
        if step % config.log_every_steps == 0 or step in (5, 10) or step == train_steps:
            now = time.time()
            ips = (step - step_last) * sum(images_per_step) / max(now - t_last, 1e-9)
            eta = (train_steps - step) * (now - t0) / max(step - start, 1)
            logging.info("step %d/%d  loss %.4f (lab %.4f unl %.4f)  acc %.3f  lr %.5f  "
                         "%.0f img/s  ETA %s", step, train_steps, loss, float(out["loss_labeled"]),
                         float(out["loss_unlabeled"]), float(out["accuracy"]),
                         float(out["learning_rate"]), ips, common.format_eta(eta))
            with writer.as_default(step=step):
                for k, v in out.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("images_per_second", ips)
            t_last, step_last = now, step
        if step % config.save_checkpoints_steps == 0 or step == train_steps:
            save_checkpoint(manager, step)
    writer.flush()
    if not chief:
        tf.io.gfile.rmtree(ckpt_dir)


def finetune(config, model_dir, strategy, spec, info, label_files, num_train, chief,
             schedule, train_steps):
    """Paper Sec. 3.1: fine-tune the trained (EMA) model into its own model dir at a larger
    resolution, shortly, on unaugmented labeled images with the shallow layers fixed (inference
    mode), at the schedule's tail (step s takes the rate of s + train_steps - finetune_steps), as
    the reference's fix_layer_num, remove_aug and train_last_step_num."""
    size = config.finetune_image_size
    ft_dir = finetune_path(model_dir, size)
    ft_spec = dict(spec, image_size=size)
    check_model_dir(ft_dir, ft_spec)
    if chief:
        common.write_json(os.path.join(ft_dir, efficientnet_builder.MODEL_CONFIG_FILE), ft_spec)
    init = None
    if not tf.train.latest_checkpoint(ft_dir):
        ema, _ = efficientnet_builder.load_model_dir(model_dir)
        init = ema.get_weights()
    steps = int(math.ceil(config.finetune_epochs * num_train / config.train_batch_size))
    trainer = Trainer(dataclasses.replace(config, student=None), ft_spec, schedule, strategy,
                      init_weights=init, finetune_offset=max(train_steps - steps, 0))
    dataset = data.labeled_dataset(label_files, info, size, config.train_batch_size,
                                   is_training=True, augment_name="none", seed=config.seed,
                                   stream="finetune", start_batch=input_start(ft_dir))
    logging.info("Fine-tuning at %d px for %d steps (%d frozen layers, lr %.2g -> %.2g) into %s.",
                 size, steps, sum(not l.trainable for l in trainer.model.layers),
                 float(learning_rate(trainer.lr_step_offset, **schedule)),
                 float(learning_rate(trainer.lr_step_offset + steps, **schedule)), ft_dir)
    with data.translate_data_errors(label_files):
        train(trainer, dataset, config, train_steps=steps, model_dir=ft_dir, chief=chief,
              images_per_step=(config.train_batch_size, 0))


# --- Evaluation. ---------------------------------------------------------------------------------
def evaluate(strategy, model, dataset, num_classes, element_spec=None):
    """Top-1, top-5 and mean cross-entropy of `model` in inference mode over one pass of `dataset`
    (element_spec: the batches' shapes, any batch size: one trace, the last partial batch too;
    used on one replica only, as several pass distributed values)."""
    one = strategy.num_replicas_in_sync == 1
    @tf.function(autograph=False, input_signature=element_spec if one else None)
    def eval_step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, min(5, num_classes)),
                                     tf.float32))
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tf.stack([top1, top5, loss, tf.cast(tf.shape(labels)[0], tf.float32)])

    totals = np.zeros(4)
    for images, labels in dataset:
        totals += strategy.reduce(tf.distribute.ReduceOp.SUM,
                                  strategy.run(eval_step, args=(images, labels)), axis=None).numpy()
    n = max(totals[3], 1)
    return {"top_1": totals[0] / n, "top_5": totals[1] / n, "loss": totals[2] / n,
            "num_examples": int(totals[3])}


def evaluate_model_dir(strategy, model_dir, eval_pattern, batch_size, chief):
    """Evaluates the EMA model of model_dir; writes eval_results.json there."""
    with strategy.scope():
        model, spec = efficientnet_builder.load_model_dir(model_dir)
    info = data.model_dataset_info(
        spec, where=os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE))
    step = restored_step(model_dir)
    files = common.list_files(eval_pattern, "evaluation data (--eval_data_dir)")
    eval_ds = data.labeled_dataset(files, info, info.image_size, batch_size, is_training=False)
    with data.translate_data_errors(files):  # names the file and record of a bad image
        results = evaluate(strategy, model, strategy.experimental_distribute_dataset(eval_ds),
                           info.num_classes, eval_ds.element_spec)
    results["global_step"] = step
    if not math.isfinite(results["loss"]):
        raise common.UserError(f"the model in {model_dir} evaluates to loss {results['loss']}: "
                               f"its weights diverged (lower --base_learning_rate); "
                               f"eval_results.json not written")
    if chief:
        common.write_json(os.path.join(model_dir, "eval_results.json"), results)
    logging.info("Eval of %s at step %d on %d images: top-1 %.4f  top-5 %.4f  loss %.4f",
                 model_dir, step, results["num_examples"], results["top_1"], results["top_5"],
                 results["loss"])
    print(json.dumps(results))
    return results


# --- Small pure pieces: learning rate, EMA decay, losses, optimizer. -----------------------------
def learning_rate(step, peak_lr, warmup_steps, decay_steps, decay_factor):
    """Reference schedule: linear warm-up, then staircase exponential decay on the global step
    (decay_steps a float, as the reference's steps_per_epoch * decay_epochs)."""
    step = tf.cast(step, tf.float32)
    decayed = peak_lr * tf.pow(decay_factor, tf.floor(step / max(float(decay_steps), 1e-9)))
    warmup = peak_lr * step / float(max(warmup_steps, 1))
    return tf.where(step < warmup_steps, warmup, decayed)


def train_length(config, num_train):
    """(train steps, steps per epoch) of a run on num_train labeled images: --train_steps, or
    --train_epochs of max(num_train / batch, --min_steps_per_epoch) steps."""
    steps_per_epoch = num_train / config.train_batch_size
    if num_train and steps_per_epoch < config.min_steps_per_epoch:
        # Few labels still get the steps that BN's moving statistics and the optimiser need
        # (issue 34: 300 images were 59 steps, a teacher at chance); off by default.
        logging.info("%d labeled images: an epoch counts %d steps (--min_steps_per_epoch), not "
                     "%.1f.", num_train, config.min_steps_per_epoch, steps_per_epoch)
        steps_per_epoch = float(config.min_steps_per_epoch)
    return (config.train_steps or int(math.ceil(config.train_epochs * steps_per_epoch)),
            steps_per_epoch)


def lr_schedule(config, steps_per_epoch, train_steps):
    """learning_rate()'s arguments: the reference's utils.build_learning_rate and, with
    --final_base_learning_rate, its main.py's decay period that reaches the final rate after the
    warm-up: (train_epochs - warm-up epochs) / (log(final / base) / log(decay_factor)) epochs."""
    decay_epochs = config.lr_decay_epochs
    if config.final_base_learning_rate:
        decay_times = math.log(config.final_base_learning_rate / config.base_learning_rate) / (
            math.log(config.lr_decay_factor))
        total_epochs = train_steps / steps_per_epoch - config.lr_warmup_epochs
        decay_epochs = total_epochs / max(decay_times, 1e-9)
    return dict(peak_lr=config.base_learning_rate * config.train_batch_size / 256,
                warmup_steps=int(config.lr_warmup_epochs * steps_per_epoch),
                decay_steps=max(steps_per_epoch * decay_epochs, 1e-9),
                decay_factor=config.lr_decay_factor)


def ema_decay(step, decay):
    """Reference EMA decay with num_updates: min(decay, (1 + t) / (10 + t))."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(decay, (1.0 + step) / (10.0 + step))


def smooth(one_hot, label_smoothing):
    num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def pseudo_label_targets(probabilities, label_type, temperature, label_smoothing):
    """Teacher probabilities -> student targets: tempered soft labels or smoothed one-hot argmax."""
    if label_type == "hard":
        num_classes = tf.shape(probabilities)[-1]
        return smooth(tf.one_hot(tf.argmax(probabilities, -1), num_classes), label_smoothing)
    if temperature != 1.0:
        logp = tf.math.log(tf.maximum(probabilities, 1e-30)) / temperature
        return tf.nn.softmax(logp, axis=-1)
    return probabilities


def cross_entropy(targets, logits):
    """Per-example -sum(targets * log_softmax(logits))."""
    return -tf.reduce_sum(targets * tf.nn.log_softmax(tf.cast(logits, tf.float32), -1), -1)


def weight_decay_loss(model, weight_decay):
    """weight_decay * sum(||w||^2 / 2) over trainable weights that are not BatchNorm's."""
    bn = {id(w) for layer in model._flatten_layers()
          if isinstance(layer, keras.layers.BatchNormalization) for w in layer.weights}
    return weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in model.trainable_weights
                                    if id(w) not in bn])


class TF1RMSprop(keras.optimizers.RMSprop):
    """RMSProp as in TF1 (the reference): the mean-square slot starts at 1.0, not 0 (at 0 the first
    steps are ~1/sqrt(1 - rho) = 3x larger). With momentum each variable is updated by TF1's fused
    ResourceApplyRMSProp, one op instead of Keras' dozen. Call build() eagerly (it sets ms = 1)."""

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for v in self._velocities:
            v.assign(tf.ones_like(v))

    def update_step(self, gradient, variable, learning_rate):
        if self.centered or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        i = self._get_variable_index(variable)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyRMSProp(
            var=_handle(variable), ms=_handle(self._velocities[i]), mom=_handle(self._momentums[i]),
            lr=tf.cast(learning_rate, dtype), rho=tf.cast(self.rho, dtype),
            momentum=tf.cast(self.momentum, dtype), epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def build_optimizer(name, learning_rate):
    """The reference's utils.build_optimizer: 'rmsprop' (what it trains with), 'momentum', 'sgd'.
    NOTE: the reference trains with RMSProp only; 'momentum' fitted the full-width B0 on 4,000
    labels much faster (bench/b0_optimizer_diag.md; 87.32% with crop + flip: teacher_recipes/)."""
    if name == "rmsprop":
        return TF1RMSprop(learning_rate=learning_rate, rho=0.9, momentum=0.9, epsilon=1e-3)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (rmsprop, momentum or sgd)")


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (inside strategy.update: this replica's)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def ema_update(ema_weights, weights, decay):
    """ema -= (1 - decay) (ema - w) for each pair: the reference's ExponentialMovingAverage."""
    for e, w in zip(ema_weights, weights):
        e.assign_sub((1.0 - decay) * (e - w))


def float_weights(model):
    """Weights the EMA covers: every float weight (trainable and BN moving statistics)."""
    return [w for w in model.weights if w.dtype in ("float32", "float16", "bfloat16")]


# --- Setup: data settings, model.json, model dirs. -----------------------------------------------
def dataset_info(config, label_pattern):
    """The preset of config.dataset (a folder's: its dataset.json) with the config's class count,
    label offset and resolution; without --image_size imagenet-kind data takes the model's own
    resolution (b0 224, b1 240, ...), small-image data keeps the dataset's."""
    overrides = dict(num_classes=config.num_classes or None, image_size=config.image_size or None,
                     label_offset=None if config.label_offset < 0 else config.label_offset)
    info = data.dataset_info(config.dataset, data_dir=label_pattern,
                             **{k: v for k, v in overrides.items() if v is not None})
    if not config.image_size and info.input_kind == "imagenet":
        info = dataclasses.replace(
            info, image_size=efficientnet_builder.efficientnet_params(config.model_name)[2])
    return info


def model_spec(config, info):
    """model.json: build_model's kwargs plus what eval preprocessing needs."""
    efficientnet_builder.efficientnet_params(config.model_name)  # UserError on an unknown name
    small_image = (info.input_kind == "small" if config.small_image == "auto"
                   else config.small_image == "true")
    return dict(model_name=config.model_name, num_classes=info.num_classes,
                image_size=info.image_size, num_channels=info.num_channels,
                small_image=small_image, width=config.width_coefficient,
                depth=config.depth_coefficient, dropout_rate=config.dropout_rate,
                stochastic_depth_rate=config.stochastic_depth_rate, mean=list(info.mean),
                std=list(info.std), dataset=config.dataset, input_kind=info.input_kind,
                label_offset=info.label_offset)


def check_model_dir(model_dir, spec):
    """A model dir holds one model: refuse to resume with a different architecture."""
    saved = common.read_json(os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE),
                             default={})
    for k in spec:
        if saved and saved.get(k) != spec[k]:
            raise common.UserError(f"--model_dir={model_dir} holds a model with "
                                   f"{k}={saved.get(k)!r}, not {spec[k]!r}; use a new --model_dir")


def check_teacher(student_model, student, num_classes):
    """The teacher's DatasetInfo (None without --teacher_model_dir). Noisy Student trains an
    equal-or-larger student on the teacher's classes; a smaller one is distillation."""
    if not student.teacher_model_dir:
        return None
    path = os.path.join(student.teacher_model_dir, efficientnet_builder.MODEL_CONFIG_FILE)
    teacher_spec = common.read_json(path, what="--teacher_model_dir's model config")
    teacher_info = data.model_dataset_info(teacher_spec, where=path)
    if not student.unlabel_data_dir:  # it labels here, on the fly
        efficientnet_builder.check_teacher_strength(student.teacher_model_dir,
                                                    student.allow_weak_teacher)
    if teacher_info.num_classes != num_classes:
        raise common.UserError(f"the teacher in {student.teacher_model_dir} predicts "
                               f"{teacher_info.num_classes} classes, the student {num_classes}")
    teacher = efficientnet_builder.build_from_config(teacher_spec)
    n_teacher, n_student = num_params(teacher), num_params(student_model)
    if n_student < n_teacher and not student.allow_smaller_student:
        raise common.UserError(f"the student ({n_student:,} params) is smaller than the teacher in "
                               f"{student.teacher_model_dir} ({n_teacher:,}); Noisy Student uses "
                               f"an equal-or-larger student (pass --allow_smaller_student to "
                               f"distill)")
    return teacher_info


def num_params(model):
    return int(sum(np.prod(w.shape) for w in model.weights))


def finetune_path(model_dir, image_size):
    return os.path.join(model_dir, f"finetune_{image_size}")


def restored_step(model_dir):
    """The global step of model_dir's latest checkpoint (ckpt-<step>), 0 without one."""
    latest = tf.train.latest_checkpoint(model_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def input_start(model_dir):
    """start_batch of a run's training datasets: the restored step, or 0 when the checkpoint holds
    the input position (--deterministic: the restored iterator goes on by itself)."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest and any(n.startswith("input/") for n, _ in tf.train.list_variables(latest)):
        return 0
    return restored_step(model_dir)


def initialize(trainer, init_checkpoint, model_dir):
    """Loads --init_checkpoint into the model and EMA model of a run that has not started yet;
    returns pretrained.load's summary (None when there is nothing to load)."""
    if not init_checkpoint or restored_step(model_dir):
        return None
    summary = pretrained.load(trainer.model, init_checkpoint, ema_model=trainer.ema_model)
    logging.info("Initialised from %s (%s): %s weights%s.", init_checkpoint, summary["format"],
                 summary["weights"], "; " + "; ".join(summary["notes"]) if summary["notes"] else "")
    return summary


def unlabeled_files(config):
    """A student's unlabeled files: pseudo-labeled (--unlabel_data_dir) or, for the on-the-fly
    teacher, raw (--unlabel_source_dir, default data_dir/unlabeled); none for a teacher."""
    student = config.student
    if not student:
        return []
    if student.unlabel_data_dir:
        return common.list_files(student.unlabel_data_dir,
                                 "pseudo-labeled data (--unlabel_data_dir)")
    return common.list_files(student.unlabel_source_dir or os.path.join(config.data_dir,
                             "unlabeled"), "unlabeled data (--unlabel_source_dir)")


def build_train_dataset(config, info, label_files, batch_u, teacher_image_size=None,
                        start_batch=0):
    """Labeled batches, zipped with unlabeled ones for a student: (x_l, y_l[, x_u, u]); the
    noise streams start at batch start_batch (a resumed run continues them)."""
    noise = dict(randaug_layer=config.randaug_layer, randaug_mag=config.randaug_mag,
                 seed=config.seed, start_batch=start_batch)
    labeled = data.labeled_dataset(label_files, info, info.image_size, config.train_batch_size,
                                   is_training=True, augment_name=config.augment_name, **noise)
    student = config.student
    if not student:
        return labeled
    augment_u = config.augment_name if student.unlabeled_noise == "full" else "none"
    files = unlabeled_files(config)
    if student.unlabel_data_dir:
        if not any(tf.io.gfile.stat(f).length for f in files):
            raise common.UserError(f"--unlabel_data_dir={student.unlabel_data_dir} holds no "
                                   f"records (did the teacher keep any image above the "
                                   f"confidence threshold?)")
        unlabeled = data.pseudo_labeled_dataset(files, info, info.image_size, batch_u,
                                                info.num_classes, augment_u, **noise)
    else:
        unlabeled = data.unlabeled_pair_dataset(files, info, info.image_size, batch_u, augment_u,
                                                teacher_image_size=teacher_image_size, **noise)
    return tf.data.Dataset.zip((labeled, unlabeled)).map(
        lambda lab, unl: (lab[0], lab[1], unl[0], unl[1]))


# --- Configs: every field is also the command-line flag of the same name (defined below). --------
@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Algorithm 1 step 4: what makes a run a noised student."""
    unlabel_data_dir: str = common.setting("", "Filtered pseudo-labeled shards (filter_balance.py output; "
        "each record repeated `copies` times). Makes this run a student.")
    teacher_model_dir: str = common.setting("", "Teacher model dir. Without --unlabel_data_dir the "
        "unnoised teacher labels the unlabeled images on the fly.")
    unlabel_source_dir: str = common.setting("", "Unlabeled shards for the on-the-fly teacher. Default: "
        "<data_dir>/unlabeled.")
    unlabel_ratio: float = common.setting(1.0, "Unlabeled batch = ceil(train_batch_size * ratio); the "
        "unlabeled loss is weighted by it (paper: 14 then 28 for L2; 1 for B0, 3 B1..B7).")
    label_type: str = common.setting("soft", "Soft (teacher's distribution) or hard (argmax, with label "
        "smoothing) pseudo-labels.", ["soft", "hard"])
    teacher_softmax_temp: float = common.setting(1.0, "Temperature T applied to the teacher's "
        "probabilities: p^(1/T) / sum p^(1/T).")
    allow_smaller_student: bool = common.setting(False, "Allow a student with fewer parameters than its "
        "teacher (that is knowledge distillation, not Noisy Student).")
    unlabeled_noise: str = common.setting("full", "Table 6 ablation: noise on the unlabeled part only. "
        "no_aug: no augmentation; none: no augmentation, stochastic depth or dropout. The labeled "
        "part keeps its noise.", ["full", "no_aug", "none"])
    noised_teacher: bool = common.setting(False, "Table 6 ablation (on-the-fly teacher only): the teacher "
        "labels the student's augmented image with dropout and stochastic depth on.")
    allow_weak_teacher: bool = common.setting(False, "Let an on-the-fly teacher near chance label "
        "anyway (refused by default: efficientnet_builder.check_teacher_strength).")

    def __post_init__(self):
        if not (self.unlabel_data_dir or self.teacher_model_dir):
            raise common.UserError("a student needs --unlabel_data_dir or --teacher_model_dir")
        if self.noised_teacher and self.unlabel_data_dir:
            raise common.UserError("--noised_teacher needs the on-the-fly teacher: drop "
                                   "--unlabel_data_dir")
        check_ranges(self, unlabel_ratio="> 0", teacher_softmax_temp="> 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run: data, model and noise, optimisation, fine-tuning, distribution; `student` makes
    it Algorithm 1 step 4 (None: the teacher, step 1)."""
    # Run and data.
    mode: str = common.setting("train_and_eval", "What to run.", ["train", "eval", "train_and_eval"])
    dataset: str = common.setting("fashion_mnist", "Dataset preset in data.DATASETS (fashion_mnist, "
        "imagenet, ...): sets classes, image size, channels, preprocessing, mean/std.")
    data_dir: str = common.setting("data/fashion_mnist", "Data prepared by prepare_data.py "
        "(its --output_dir).")
    num_labeled_per_class: int = common.setting(400, "Fashion-MNIST only: labeled images per class of "
        "the preparation in --data_dir (checked against its prepared.json).")
    data_seed: int = common.setting(0, "Fashion-MNIST only: seed of the preparation's labeled/unlabeled "
        "split (checked against its prepared.json).")
    label_data_dir: str = common.setting("", "Labeled training shards: a directory or a glob. Default: "
        "<data_dir>/labeled.")
    eval_data_dir: str = common.setting("", "Evaluation shards: a directory or a glob. Default: "
        "<data_dir>/test.")
    num_train_images: int = common.setting(0, "Labeled training images (epochs are counted on labeled "
        "data); 0 counts the records once.")
    num_classes: int = common.setting(0, "Number of classes; 0 takes the dataset preset's.")
    label_offset: int = common.setting(-1, "Subtracted from stored labels (1 for ImageNet converter "
        "records); -1 takes the dataset preset's.")

    # Model and noise.
    model_name: str = common.setting("efficientnet-b0", "efficientnet-b0 .. efficientnet-b7, "
        "efficientnet-l2.")
    image_size: int = common.setting(0, "Input resolution; 0 takes the dataset preset's.")
    small_image: str = common.setting("auto", "Small-image EfficientNet (blocks 2 and 3 with stride 1); "
        "auto: true for the small-image datasets.", ["auto", "true", "false"])
    width_coefficient: float | None = common.setting(None, "Override the model's width multiplier.")
    depth_coefficient: float | None = common.setting(None, "Override the model's depth multiplier.")
    dropout_rate: float | None = common.setting(None, "Dropout before the classifier; default: the "
        "model's (0.2 for b0 .. 0.5 for b7/l2). 0 turns it off.")
    stochastic_depth_rate: float = common.setting(0.2, "Drop rate of the last block (linear rule over "
        "blocks; paper: survival 0.8). 0 turns stochastic depth off.")
    augment_name: str = common.setting("randaugment", "Input noise: RandAugment (+ cutout, crop, flip), "
        "basic (crop, flip) or none.", ["randaugment", "basic", "none"])
    randaug_layer: int = common.setting(2, "RandAugment: number of ops per image (N).")
    randaug_mag: int = common.setting(10, "RandAugment: magnitude M (paper: 27 for B7/L2).")

    # Optimisation. Batch 128, 40 epochs and M=10 are this project's CPU defaults; the reference's
    # main.py: batch 4096, 109,474 steps (350 ImageNet epochs), M=27; the rest are its defaults.
    train_batch_size: int = common.setting(128, "Global labeled batch size.")
    eval_batch_size: int = common.setting(256, "Global evaluation batch size.")
    train_steps: int = common.setting(0, "Training steps; 0 uses --train_epochs.")
    train_epochs: float = common.setting(40.0, "Epochs over the labeled data, when --train_steps=0.")
    min_steps_per_epoch: int = common.setting(0, "An epoch is at least this many steps: a small "
        "labeled set still trains (its warm-up and decay stretch with it). 0: one pass.")
    base_learning_rate: float = common.setting(0.016, "Peak learning rate per 256 labeled images.")
    final_base_learning_rate: float | None = common.setting(None, "If set, the decay period is chosen so "
        "the learning rate ends here (per 256 images; reference SVHN variant). 0 or unset: the plain "
        "staircase of --lr_decay_epochs (the paper's ImageNet schedule).")
    lr_warmup_epochs: float = common.setting(5.0, "Linear warm-up epochs.")
    lr_decay_epochs: float = common.setting(2.4, "Staircase decay period in epochs (4.8 for 700 epochs).")
    lr_decay_factor: float = common.setting(0.97, "Staircase decay factor.")
    optimizer: str = common.setting("rmsprop", "rmsprop: the reference's (decay 0.9, momentum 0.9, eps "
        "1e-3, TF1 semantics); momentum: SGD with momentum 0.9 (bench/b0_optimizer_diag.md); sgd: "
        "plain gradient descent.", ["rmsprop", "momentum", "sgd"])
    weight_decay: float = common.setting(1e-05, "L2 weight decay on non-BN weights (SVHN: 1e-4).")
    label_smoothing: float = common.setting(0.1, "Label smoothing for labeled and hard pseudo-labels.")
    moving_average_decay: float = common.setting(0.9999, "EMA decay over weights and BN statistics; 0 "
        "off.")
    seed: int = common.setting(0, "Seed for weights, shuffling and augmentation.")
    init_checkpoint: str = common.setting("", "Start the model (and its EMA twin) from these "
        "weights (a Keras .h5/.keras file or an official checkpoint: pretrained.py) unless "
        "--model_dir has a checkpoint; --train_steps=0 --train_epochs=0: the teacher as it is.")

    # Fine-tuning at a larger resolution after training (paper Sec. 3.1, after Touvron et al. FixRes).
    finetune_image_size: int = common.setting(0, "If > 0, after training fine-tune the EMA model at this "
        "resolution on unaugmented labeled images into <model_dir>/finetune_<size> (its own model "
        "dir). Paper: L2 trained at 475, fine-tuned at 800.")
    finetune_epochs: float = common.setting(1.5, "Fine-tuning epochs over the labeled data (paper: 1.5).")
    finetune_frozen_stages: int = common.setting(4, "Shallow layers kept fixed while fine-tuning: the "
        "stem and the first N of the 7 block stages. NOTE: 4 is this project's choice; the "
        "reference's fix_layer_num counts blocks (stem and blocks 0..N-1) and no value is published.")

    # Distribution, checkpoints, logging.
    strategy: str = common.setting("default", "tf.distribute strategy. multi_worker reads "
        "TF_CONFIG.", list(common.STRATEGIES))
    tpu: str = common.setting("", "TPU address or name for --strategy=tpu.")
    save_checkpoints_steps: int = common.setting(500, "Steps between checkpoints.")
    keep_checkpoint_max: int = common.setting(3, "Checkpoints kept.")
    log_every_steps: int = common.setting(50, "Steps between progress lines and summaries.")
    export_saved_model: bool = common.setting(False, "After training, export the EMA model as a "
        "SavedModel into <model_dir>/saved_model.")

    # Numerics.
    precision: str = common.setting("float32", "float32, or bfloat16: Keras mixed precision "
        "(float32 variables, losses, EMA, logits and efficientnet_builder.FLOAT32_KINDS; "
        "bench/bf16_step.md).", list(common.PRECISIONS))
    deterministic: bool = common.setting(False, "Same command, same weights (on one CPU type): op "
        "determinism and the input position in the checkpoints, so that a resumed run ends with "
        "the uninterrupted run's weights (bench/determinism.md).")

    student: StudentConfig | None = None

    def __post_init__(self):
        check_ranges(self, train_batch_size="> 0", eval_batch_size="> 0", train_steps=">= 0",
                     train_epochs=">= 0", num_train_images=">= 0", num_classes=">= 0",
                     image_size=">= 0", min_steps_per_epoch=">= 0", width_coefficient="> 0",
                     depth_coefficient="> 0", dropout_rate="[0, 1)", stochastic_depth_rate="[0, 1)",
                     randaug_layer=">= 0", randaug_mag=">= 0", base_learning_rate="> 0",
                     final_base_learning_rate=">= 0", lr_warmup_epochs=">= 0",
                     lr_decay_epochs="> 0", lr_decay_factor="(0, 1]", weight_decay=">= 0",
                     label_smoothing="[0, 1)", moving_average_decay="[0, 1)", finetune_epochs="> 0",
                     finetune_image_size=">= 0", finetune_frozen_stages="[0, 7]",
                     save_checkpoints_steps="> 0", keep_checkpoint_max="> 0", log_every_steps="> 0")
        if self.num_classes == 1:
            raise common.UserError("--num_classes=1: a classifier needs at least 2 classes")
        if not (self.train_steps or self.train_epochs) and self.mode != "eval" and (
                not self.init_checkpoint or self.student or self.finetune_image_size):
            raise common.UserError("--train_steps=0 and --train_epochs=0: nothing to train "
                                   "(use --mode=eval to evaluate a trained --model_dir; with "
                                   "--init_checkpoint and no student or fine-tuning flags the "
                                   "checkpoint becomes the teacher as it is)")


_RANGES = {"> 0": (lambda v: v > 0, "positive"), ">= 0": (lambda v: v >= 0, "0 or more"),
           "[0, 1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
           "(0, 1]": (lambda v: 0 < v <= 1, "in (0, 1]"), "[0, 7]": (lambda v: 0 <= v <= 7, "0 to 7")}


def check_ranges(config, **ranges):
    """UserError naming the first field (= flag) outside its range; None means unset."""
    for name, allowed in ranges.items():
        value = getattr(config, name)
        ok, words = _RANGES[allowed]
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise common.UserError(f"--{name}={value} must be {words}")


# Flags a resumed run may change (paths can move; these do not change what is trained).
RESUMABLE_CHANGES = {"mode", "model_dir", "data_dir", "label_data_dir", "eval_data_dir",
                     "unlabel_data_dir", "teacher_model_dir", "unlabel_source_dir", "train_steps",
                     "train_epochs", "eval_batch_size", "save_checkpoints_steps",
                     "keep_checkpoint_max", "log_every_steps", "strategy", "tpu",
                     "export_saved_model", "finetune_image_size", "finetune_epochs",
                     "finetune_frozen_stages"}


def check_resume_flags(model_dir, record):
    """A model dir holds one run: resuming it with other training flags is refused (its flags.json
    describes its checkpoints), except for the flags in RESUMABLE_CHANGES."""
    if not tf.train.latest_checkpoint(model_dir):   # ckpt-0: a checkpoint taken as it is
        return
    saved = common.read_json(os.path.join(model_dir, "flags.json"), default=None) or {}
    for name, value in record.items():
        value = json.loads(json.dumps(value))  # as flags.json holds it
        if name in saved and name not in RESUMABLE_CHANGES and saved[name] != value:
            raise common.UserError(f"--model_dir={model_dir} was trained with --{name}="
                                   f"{saved[name]} (its flags.json), not {value}: resume with the "
                                   f"same flags or use a new --model_dir")


def flags_record(config, model_dir):
    """flags.json: the value of every flag of this run (a teacher's student flags: the defaults)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name != "student"}
    student = dataclasses.asdict(config.student) if config.student else {
        f.name: f.default for f in dataclasses.fields(StudentConfig)}
    return dict(settings, **student, model_dir=model_dir)


def main(_):
    student = (common.config_from_flags(StudentConfig, FLAGS)
               if FLAGS.unlabel_data_dir or FLAGS.teacher_model_dir else None)
    train_and_evaluate(common.config_from_flags(TrainConfig, FLAGS, student=student),
                       FLAGS.model_dir)


# --- Command line: --model_dir and one flag per config field, with the field's default. ----------
FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the flags (only when main.py runs, so that importing it defines none)."""
    flags.DEFINE_string("model_dir", "runs/teacher",
        "Directory for checkpoints, flags.json, model.json, TensorBoard events and "
        "eval_results.json. Rerunning with the same dir resumes.", flag_values=flag_values)
    common.define_config_flags([TrainConfig, StudentConfig], flag_values)


if __name__ == "__main__":
    define_flags()
    common.run_main(main)
