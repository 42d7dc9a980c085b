"""Train and evaluate a teacher or a noised student (paper Sec. 2, Algorithm 1 steps 1 and 4; Sec. 3).

One script, TPUEstimator-style: flags pick the model, the data, the noise, the pseudo-label type and
the tf.distribute strategy; checkpoints live in --model_dir and rerunning the same command resumes.

Teacher (step 1), on the embedded default data (Fashion-MNIST, 400 labels per class):
    python main.py --model_dir=runs/teacher
Noised student (step 4) on filtered pseudo-labels written by filter_balance.py:
    python main.py --model_dir=runs/student --unlabel_data_dir=runs/iter1/filtered \
        --teacher_model_dir=runs/teacher --unlabel_ratio=3 --label_type=soft
or with the unnoised teacher run on the fly (no label_data/filter_balance step):
    python main.py --model_dir=runs/student --teacher_model_dir=runs/teacher --unlabel_ratio=3

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

FLAGS = flags.FLAGS


def define_flags():
    """The flags of this script (defined only when it runs, so other code can import it)."""
    predefined = set(FLAGS)

    # Run and data.
    flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
    flags.DEFINE_string("model_dir", "runs/teacher",
        "Directory for checkpoints, flags.json, model.json, TensorBoard events and "
        "eval_results.json. Rerunning with the same dir resumes.")
    flags.DEFINE_string("dataset", "fashion_mnist",
        "Dataset preset in data.DATASETS (fashion_mnist, imagenet, ...): sets classes, image "
        "size, channels, preprocessing, mean/std.")
    flags.DEFINE_string("data_dir", "data/fashion_mnist",
        "For --dataset=fashion_mnist: where the prepared shards live; prepared from "
        "/usr/share/datasets/fashion-mnist when missing.")
    flags.DEFINE_integer("num_labeled_per_class", 400,
        "Fashion-MNIST only: labeled images per class (the rest of the train set becomes the "
        "unlabeled split).")
    flags.DEFINE_integer("data_seed", 0, "Fashion-MNIST only: seed of the labeled/unlabeled split.")
    flags.DEFINE_string("label_data_dir", "",
        "Labeled training shards: a directory or a glob. Default: <data_dir>/labeled.")
    flags.DEFINE_string("eval_data_dir", "",
        "Evaluation shards: a directory or a glob. Default: <data_dir>/test.")
    flags.DEFINE_integer("num_train_images", 0,
        "Labeled training images (epochs are counted on labeled data); 0 counts the records "
        "once.")
    flags.DEFINE_integer("num_classes", 0, "Number of classes; 0 takes the dataset preset's.")
    flags.DEFINE_integer("label_offset", -1,
        "Subtracted from stored labels (1 for ImageNet converter records); -1 takes the dataset "
        "preset's.")

    # Model and noise.
    flags.DEFINE_string("model_name", "efficientnet-b0",
        "efficientnet-b0 .. efficientnet-b7, efficientnet-l2.")
    flags.DEFINE_integer("image_size", 0, "Input resolution; 0 takes the dataset preset's.")
    flags.DEFINE_enum("small_image", "auto", ["auto", "true", "false"],
        "Small-image EfficientNet (blocks 2 and 3 with stride 1); auto: true for the small-"
        "image datasets.")
    flags.DEFINE_float("width_coefficient", None, "Override the model's width multiplier.")
    flags.DEFINE_float("depth_coefficient", None, "Override the model's depth multiplier.")
    flags.DEFINE_float("dropout_rate", None,
        "Dropout before the classifier; default: the model's (0.2 for b0 .. 0.5 for b7/l2). 0 "
        "turns it off.")
    flags.DEFINE_float("stochastic_depth_rate", 0.2,
        "Drop rate of the last block (linear rule over blocks; paper: survival 0.8). 0 turns "
        "stochastic depth off.")
    flags.DEFINE_enum("augment_name", "randaugment", ["randaugment", "basic", "none"],
        "Input noise: RandAugment (+ cutout, crop, flip), basic (crop, flip) or none.")
    flags.DEFINE_integer("randaug_layer", 2, "RandAugment: number of ops per image (N).")
    flags.DEFINE_integer("randaug_mag", 10, "RandAugment: magnitude M (paper: 27 for B7/L2).")

    # Optimisation (reference defaults).
    flags.DEFINE_integer("train_batch_size", 128, "Global labeled batch size.")
    flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch size.")
    flags.DEFINE_integer("train_steps", 0, "Training steps; 0 uses --train_epochs.")
    flags.DEFINE_float("train_epochs", 40, "Epochs over the labeled data, when --train_steps=0.")
    flags.DEFINE_float("base_learning_rate", 0.016, "Peak learning rate per 256 labeled images.")
    flags.DEFINE_float("final_base_learning_rate", None,
        "If set, the decay period is chosen so the learning rate ends here (per 256 images; "
        "reference SVHN variant).")
    flags.DEFINE_float("lr_warmup_epochs", 5, "Linear warm-up epochs.")
    flags.DEFINE_float("lr_decay_epochs", 2.4,
        "Staircase decay period in epochs (4.8 for 700 epochs).")
    flags.DEFINE_float("lr_decay_factor", 0.97, "Staircase decay factor.")
    flags.DEFINE_enum("optimizer", "rmsprop", ["rmsprop", "momentum", "sgd"],
        "rmsprop: the reference's (decay 0.9, momentum 0.9, eps 1e-3, TF1 semantics); momentum: "
        "SGD with momentum 0.9 (fits an un-noised full-width B0 on 4,000 labels faster: "
        "bench/b0_optimizer_diag.md); sgd: plain gradient descent. The reference's names.")
    flags.DEFINE_float("weight_decay", 1e-05, "L2 weight decay on non-BN weights (SVHN: 1e-4).")
    flags.DEFINE_float("label_smoothing", 0.1,
        "Label smoothing for labeled and hard pseudo-labels.")
    flags.DEFINE_float("moving_average_decay", 0.9999,
        "EMA decay over weights and BN statistics; 0 off.")
    flags.DEFINE_integer("seed", 0, "Seed for weights, shuffling and augmentation.")

    # Student (Algorithm 1 step 4).
    flags.DEFINE_string("unlabel_data_dir", "",
        "Filtered pseudo-labeled shards (filter_balance.py output; each record repeated "
        "`copies` times). Makes this run a student.")
    flags.DEFINE_string("teacher_model_dir", "",
        "Teacher model dir. Without --unlabel_data_dir the unnoised teacher labels the "
        "unlabeled images on the fly.")
    flags.DEFINE_string("unlabel_source_dir", "",
        "Unlabeled shards for the on-the-fly teacher. Default: <data_dir>/unlabeled.")
    flags.DEFINE_float("unlabel_ratio", 1.0,
        "Unlabeled batch = ceil(train_batch_size * ratio); the unlabeled loss is weighted by it "
        "(paper: 14 then 28 for L2; 1 for B0, 3 B1..B7).")
    flags.DEFINE_enum("label_type", "soft", ["soft", "hard"],
        "Soft (teacher's distribution) or hard (argmax, with label smoothing) pseudo-labels.")
    flags.DEFINE_float("teacher_softmax_temp", 1.0,
        "Temperature T applied to the teacher's probabilities: p^(1/T) / sum p^(1/T).")
    flags.DEFINE_bool("allow_smaller_student", False,
        "Allow a student with fewer parameters than its teacher (that is knowledge "
        "distillation, not Noisy Student).")
    flags.DEFINE_enum("unlabeled_noise", "full", ["full", "no_aug", "none"],
        "Table 6 ablation: noise on the unlabeled part only. no_aug: no augmentation; none: no "
        "augmentation, stochastic depth or dropout. The labeled part keeps its noise.")
    flags.DEFINE_bool("noised_teacher", False,
        "Table 6 ablation (on-the-fly teacher only): the teacher labels the student's augmented "
        "image with dropout and stochastic depth on.")

    # Fine-tuning at a larger resolution after training (paper Sec. 3.1, after Touvron et al. FixRes).
    flags.DEFINE_integer("finetune_image_size", 0,
        "If > 0, after training fine-tune the EMA model at this resolution on unaugmented "
        "labeled images into <model_dir>/finetune_<size> (its own model dir). Paper: L2 trained "
        "at 475, fine-tuned at 800.")
    flags.DEFINE_float("finetune_epochs", 1.5,
        "Fine-tuning epochs over the labeled data (paper: 1.5).")
    flags.DEFINE_integer("finetune_frozen_stages", 4,
        "Shallow layers kept fixed while fine-tuning: the stem and the first N of the 7 block "
        "stages.")
    flags.DEFINE_float("finetune_base_learning_rate", 0.0016,
        "Constant fine-tuning learning rate per 256 labeled images.")

    # Distribution, checkpoints, logging.
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy. multi_worker reads TF_CONFIG.")
    flags.DEFINE_string("tpu", "", "TPU address or name for --strategy=tpu.")
    flags.DEFINE_integer("save_checkpoints_steps", 500, "Steps between checkpoints.")
    flags.DEFINE_integer("keep_checkpoint_max", 3, "Checkpoints kept.")
    flags.DEFINE_integer("log_every_steps", 50, "Steps between progress lines and summaries.")
    flags.DEFINE_bool("export_saved_model", False,
        "After training, export the EMA model as a SavedModel into <model_dir>/saved_model.")
    return sorted(set(FLAGS) - predefined)


MODEL_FLAGS = ("model_name", "num_classes", "image_size", "num_channels", "small_image", "width",
               "depth", "dropout_rate", "stochastic_depth_rate", "mean", "std")


# ---------------------------------------------------------------------------------------------
# Small pure pieces: learning rate, EMA decay, losses, optimizer.
# ---------------------------------------------------------------------------------------------
def learning_rate(step, peak_lr, warmup_steps, decay_steps, decay_factor):
    """Reference schedule: linear warm-up, then staircase exponential decay on the global step."""
    step = tf.cast(step, tf.float32)
    decayed = peak_lr * tf.pow(decay_factor, tf.floor(step / float(max(decay_steps, 1))))
    warmup = peak_lr * step / float(max(warmup_steps, 1))
    return tf.where(step < warmup_steps, warmup, decayed)


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
    """RMSProp as in TF1 (the reference): the mean-square slot starts at 1.0, not 0.

    The update is otherwise Keras': ms = rho ms + (1 - rho) g^2; mom = m mom + lr g / sqrt(ms + eps);
    var -= mom. Starting ms at 0 makes the first steps ~1/sqrt(1 - rho) = 3x larger, a different
    optimizer. With momentum (the reference's 0.9) each variable is updated by TF1's own fused
    kernel, ResourceApplyRMSProp: one op instead of Keras' dozen small ones per variable.
    Call build() eagerly: the ms = 1 initial value is assigned there.
    """

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

    NOTE: the reference trains every model with RMSProp; 'momentum' is offered because in short
    runs on 4,000 labels it fitted the full-width B0 much faster (bench/b0_optimizer_diag.md), and
    with crop + flip it took that teacher to 87.32% (bench/teacher_b0_small_4k_momentum_basic120.md).
    """
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


# ---------------------------------------------------------------------------------------------
# Setup: strategy, configs, data.
# ---------------------------------------------------------------------------------------------
def model_config(info, *, dataset, model_name, num_classes, image_size, small_image, width, depth,
                 dropout_rate, stochastic_depth_rate):
    """model.json: build_model's kwargs plus what eval preprocessing needs."""
    efficientnet_builder.efficientnet_params(model_name)  # UserError on an unknown name
    return dict(model_name=model_name, num_classes=num_classes, image_size=image_size,
                num_channels=info.num_channels, small_image=small_image, width=width, depth=depth,
                dropout_rate=dropout_rate, stochastic_depth_rate=stochastic_depth_rate,
                mean=list(info.mean), std=list(info.std), dataset=dataset,
                input_kind=info.input_kind, label_offset=info.label_offset)


def build_kwargs(config):
    return {k: config[k] for k in MODEL_FLAGS}


def check_model_dir(model_dir, config):
    """A model dir holds one model: refuse to resume with a different architecture."""
    path = os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    diff = [k for k in config if saved.get(k) != config[k]]
    if diff:
        k = diff[0]
        raise common.UserError(f"--model_dir={model_dir} holds a model with {k}={saved.get(k)!r}, "
                             f"not {config[k]!r}; use a new --model_dir")


def num_params(model):
    return int(sum(np.prod(w.shape) for w in model.weights))


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Holds the model, its EMA twin, the optimizer and the (optional) teacher for one run."""

    def __init__(self, strategy, config, *, peak_lr, warmup_steps, decay_steps, decay_factor,
                 weight_decay, label_smoothing, ema_decay_rate, seed, student=None,
                 frozen_prefixes=(), init_weights=None, optimizer="rmsprop"):
        self.strategy, self.config, self.student = strategy, config, student or {}
        self.hparams = dict(peak_lr=peak_lr, warmup_steps=warmup_steps, decay_steps=decay_steps,
                            decay_factor=decay_factor)
        self.weight_decay, self.label_smoothing = weight_decay, label_smoothing
        self.ema_decay_rate = ema_decay_rate
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            self.model = efficientnet_builder.build_model(**build_kwargs(config))
            self.ema_model = efficientnet_builder.build_model(**build_kwargs(config))
            if init_weights is not None:
                self.model.set_weights(init_weights)
            self.ema_model.set_weights(self.model.get_weights())
            for layer in self.model.layers:  # frozen layers (fine-tuning): BN in inference mode too
                if frozen_prefixes and layer.name.startswith(tuple(frozen_prefixes)):
                    layer.trainable = False
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.optimizer = build_optimizer(optimizer, peak_lr)
            # Keras 3 under tf.distribute: build the optimizer in scope before the first step.
            self.optimizer.build(self.model.trainable_variables)
            self.teacher = None
            if self.student.get("teacher_model_dir") and not self.student.get("unlabel_data_dir"):
                self.teacher, _ = efficientnet_builder.load_model_dir(self.student["teacher_model_dir"])
                if self.student.get("noised_teacher"):
                    # Dropout and stochastic depth on, BN on its moving statistics.
                    # NOTE: the noised-teacher ablation (Table 6) is offered for the on-the-fly
                    # teacher only: it labels the student's augmented view with model noise on.
                    for layer in self.teacher._flatten_layers():
                        if isinstance(layer, keras.layers.BatchNormalization):
                            layer.trainable = False
        self.model_weights = float_weights(self.model)
        self.ema_weights = float_weights(self.ema_model)
        self.checkpoint = tf.train.Checkpoint(model=self.model, ema_model=self.ema_model,
                                              optimizer=self.optimizer, step=self.step)

    def _forward_student(self, x_l, x_u):
        """Logits of the labeled and unlabeled parts: one pass over the concatenation (BN sees both),
        or, for the 'none' ablation, a second pass over the unlabeled part with dropout/SD off."""
        n_l = tf.shape(x_l)[0]
        if self.student.get("unlabeled_noise") == "none":
            # NOTE: two forward passes, so BN batch statistics are computed per part here.
            logits_l = self.model(x_l, training=True)
            efficientnet_builder.set_noise(self.model, False)
            logits_u = self.model(x_u, training=True)
            efficientnet_builder.set_noise(self.model, True)
            return logits_l, logits_u
        logits = self.model(tf.concat([x_l, x_u], 0), training=True)
        return logits[:n_l], logits[n_l:]

    def _step_fn(self, batch, global_batch_l, global_batch_u):
        num_classes = self.config["num_classes"]
        replicas = self.strategy.num_replicas_in_sync
        x_l, y_l = batch[0], batch[1]
        targets_l = smooth(tf.one_hot(y_l, num_classes), self.label_smoothing)
        with tf.GradientTape() as tape:
            if self.student:
                x_u, u = batch[2], batch[3]
                if self.teacher is not None:  # on the fly: u are the teacher's eval-preprocessed images
                    teacher_in = x_u if self.student.get("noised_teacher") else u
                    probs = tf.nn.softmax(self.teacher(teacher_in, training=bool(
                        self.student.get("noised_teacher"))), -1)
                    u = tf.stop_gradient(probs)
                targets_u = pseudo_label_targets(u, self.student["label_type"],
                                                 self.student["teacher_softmax_temp"],
                                                 self.label_smoothing)
                logits_l, logits_u = self._forward_student(x_l, x_u)
                loss_u = tf.reduce_sum(cross_entropy(targets_u, logits_u)) / global_batch_u
            else:
                logits_l = self.model(x_l, training=True)
                loss_u = tf.constant(0.0)
            loss_l = tf.reduce_sum(cross_entropy(targets_l, logits_l)) / global_batch_l
            ratio = self.student.get("unlabel_ratio", 0.0)
            loss = (loss_l + ratio * loss_u
                    + weight_decay_loss(self.model, self.weight_decay) / replicas)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits_l, -1, output_type=tf.int32),
                                                 tf.cast(y_l, tf.int32)), tf.float32))
        return {"loss": loss, "loss_labeled": loss_l, "loss_unlabeled": loss_u,
                "accuracy": correct / global_batch_l}

    def make_train_step(self, global_batch_l, global_batch_u):
        @tf.function
        def train_step(iterator):
            lr = learning_rate(self.step, **self.hparams)
            self.optimizer.learning_rate.assign(lr)
            out = self.strategy.run(self._step_fn, args=(next(iterator), global_batch_l,
                                                          global_batch_u))
            out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in out.items()}
            self.step.assign_add(1)
            if self.ema_decay_rate > 0:
                ema_update(self.ema_weights, self.model_weights, ema_decay(self.step,
                                                                            self.ema_decay_rate))
            else:
                ema_update(self.ema_weights, self.model_weights, 0.0)
            out["learning_rate"] = lr
            return out
        return train_step


def evaluate(strategy, model, dataset, num_classes):
    """Top-1, top-5 and mean cross-entropy of `model` in inference mode over one pass of `dataset`."""
    @tf.function
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


def check_labels(dataset, num_classes):
    """Labels must lie in [0, num_classes): fail in the input pipeline, naming the flag."""
    def check(images, labels):
        tf.debugging.assert_less(tf.cast(labels, tf.int64), tf.cast(num_classes, tf.int64),
                                 message=f"label >= --num_classes={num_classes}")
        tf.debugging.assert_non_negative(labels, message="negative label (check --label_offset)")
        return images, labels
    return dataset.map(check)


def train(trainer, dataset, *, train_steps, model_dir, save_every, keep_max, log_every, chief,
          images_per_step):
    """The training loop: resumes from the latest checkpoint in model_dir, stops at train_steps."""
    ckpt_dir = model_dir if chief else os.path.join(model_dir, f".worker-{os.getpid()}")
    manager = tf.train.CheckpointManager(trainer.checkpoint, ckpt_dir, max_to_keep=keep_max,
                                         checkpoint_name="ckpt", step_counter=trainer.step)
    if manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint)
    start = int(trainer.step.numpy())  # .numpy(): also a MirroredVariable under tf.distribute
    if manager.latest_checkpoint:
        logging.info("Resumed from %s (step %d).", manager.latest_checkpoint, start)
    if start >= train_steps:
        logging.info("Already trained to step %d of %d: nothing to do.", start, train_steps)
        return
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train") if chief
                                           else os.path.join(ckpt_dir, "train"))
    # NOTE: the input position is not checkpointed (as TPUEstimator, which restarted its input_fn):
    # a resumed run continues the schedule from the restored step on a fresh shuffle of the data.
    iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    train_step = trainer.make_train_step(*images_per_step)
    t0, t_last, step_last = time.time(), time.time(), start
    logging.info("Training from step %d to %d.", start, train_steps)
    for step in range(start + 1, train_steps + 1):
        try:
            out = train_step(iterator)
        except tf.errors.InvalidArgumentError as e:
            raise common.UserError(f"bad training input at step {step}: {common.tf_error_line(e)}")
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise common.UserError(f"loss became {loss} at step {step}; checkpoints untouched "
                                 f"(latest: {manager.latest_checkpoint}). Lower "
                                 f"--base_learning_rate or check the input data.")
        if step % log_every == 0 or step == train_steps:
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
        if step % save_every == 0 or step == train_steps:
            manager.save(checkpoint_number=step)
    writer.flush()
    if not chief:
        tf.io.gfile.rmtree(ckpt_dir)


def export_saved_model(model, model_dir):
    path = os.path.join(model_dir, "saved_model")
    with common.atomic_output(path) as tmp:
        model.export(tmp)
    logging.info("Exported the EMA model to %s", path)


# ---------------------------------------------------------------------------------------------
# main: read flags, resolve data, train, evaluate.
# ---------------------------------------------------------------------------------------------
def resolve_data(dataset, data_dir, label_data_dir, eval_data_dir, num_labeled_per_class, data_seed):
    """Flags -> (labeled files, eval files, unlabeled source pattern); prepares Fashion-MNIST."""
    if dataset == "fashion_mnist" and not (label_data_dir and eval_data_dir):
        data.prepare_fashion_mnist(data_dir, num_labeled_per_class=num_labeled_per_class,
                                   seed=data_seed)
    label_data_dir = label_data_dir or os.path.join(data_dir, "labeled")
    eval_data_dir = eval_data_dir or os.path.join(data_dir, "test")
    return label_data_dir, eval_data_dir


def main(_):
    F = FLAGS
    if F.dataset not in data.DATASETS:
        raise common.UserError(f"--dataset={F.dataset} is not one of {sorted(data.DATASETS)}")
    info = data.DATASETS[F.dataset]
    num_classes = F.num_classes or info.num_classes
    label_offset = info.label_offset if F.label_offset < 0 else F.label_offset
    info = dataclasses.replace(info, num_classes=num_classes, label_offset=label_offset)
    image_size = F.image_size or info.image_size
    small_image = (info.input_kind == "small") if F.small_image == "auto" else F.small_image == "true"
    config = model_config(info, dataset=F.dataset, model_name=F.model_name, num_classes=num_classes,
                          image_size=image_size, small_image=small_image,
                          width=F.width_coefficient, depth=F.depth_coefficient,
                          dropout_rate=F.dropout_rate, stochastic_depth_rate=F.stochastic_depth_rate)
    strategy = common.make_strategy(F.strategy, F.tpu)
    chief = common.is_chief(strategy)
    check_model_dir(F.model_dir, config)
    label_pattern, eval_pattern = resolve_data(F.dataset, F.data_dir, F.label_data_dir,
                                               F.eval_data_dir, F.num_labeled_per_class, F.data_seed)
    if chief:
        tf.io.gfile.makedirs(F.model_dir)
        common.write_json(os.path.join(F.model_dir, "flags.json"),
                        {name: F[name].value for name in OWN_FLAGS})
        common.write_json(os.path.join(F.model_dir, efficientnet_builder.MODEL_CONFIG_FILE), config)

    student = None
    if F.unlabel_data_dir or F.teacher_model_dir:
        student = dict(unlabel_data_dir=F.unlabel_data_dir, teacher_model_dir=F.teacher_model_dir,
                       unlabel_ratio=F.unlabel_ratio, label_type=F.label_type,
                       teacher_softmax_temp=F.teacher_softmax_temp,
                       unlabeled_noise=F.unlabeled_noise, noised_teacher=F.noised_teacher)
        if F.noised_teacher and F.unlabel_data_dir:
            raise common.UserError("--noised_teacher needs the on-the-fly teacher: drop "
                                 "--unlabel_data_dir")

    if F.mode in ("train", "train_and_eval"):
        label_files = common.list_files(label_pattern, "labeled training data (--label_data_dir)")
        num_train = F.num_train_images or common.count_records(label_files)
        steps_per_epoch = num_train / F.train_batch_size
        train_steps = F.train_steps or int(math.ceil(F.train_epochs * steps_per_epoch))
        peak_lr = F.base_learning_rate * F.train_batch_size / 256
        decay_epochs = F.lr_decay_epochs
        if F.final_base_learning_rate:
            n_decays = math.log(F.final_base_learning_rate / F.base_learning_rate) / math.log(
                F.lr_decay_factor)
            decay_epochs = (train_steps / steps_per_epoch) / max(n_decays, 1e-9)
        trainer = Trainer(strategy, config, peak_lr=peak_lr,
                          warmup_steps=int(F.lr_warmup_epochs * steps_per_epoch),
                          decay_steps=int(max(1, decay_epochs * steps_per_epoch)),
                          decay_factor=F.lr_decay_factor, weight_decay=F.weight_decay,
                          label_smoothing=F.label_smoothing,
                          ema_decay_rate=F.moving_average_decay, seed=F.seed, student=student,
                          optimizer=F.optimizer)
        batch_u = int(math.ceil(F.train_batch_size * F.unlabel_ratio)) if student else 0
        if student:
            check_student_size(trainer, F.teacher_model_dir, F.allow_smaller_student)
        dataset = build_train_dataset(info, image_size, F, label_pattern, student, batch_u)
        logging.info("%s: %s (%d params), %d labeled images, batch %d%s, %d steps, peak lr %.4f.",
                     "Student" if student else "Teacher", F.model_name,
                     num_params(trainer.model), num_train, F.train_batch_size,
                     f" + {batch_u} unlabeled" if student else "", train_steps, peak_lr)
        train(trainer, dataset, train_steps=train_steps, model_dir=F.model_dir,
              save_every=F.save_checkpoints_steps, keep_max=F.keep_checkpoint_max,
              log_every=F.log_every_steps, chief=chief,
              images_per_step=(F.train_batch_size, batch_u))
        if F.export_saved_model and chief:
            export_saved_model(trainer.ema_model, F.model_dir)

        if F.finetune_image_size:
            finetune(F, strategy, config, info, label_pattern, num_train, chief)

    if F.mode in ("eval", "train_and_eval"):
        for model_dir in [F.model_dir] + ([finetune_path(F.model_dir, F.finetune_image_size)]
                                          if F.finetune_image_size else []):
            evaluate_model_dir(strategy, model_dir, info, eval_pattern, F.eval_batch_size, chief)


def evaluate_model_dir(strategy, model_dir, info, eval_pattern, batch_size, chief):
    """Evaluates the EMA model of model_dir; writes eval_results.json there."""
    with strategy.scope():
        model, config = efficientnet_builder.load_model_dir(model_dir)
    step = checkpoint_step(model_dir)
    common.list_files(eval_pattern, "evaluation data (--eval_data_dir)")
    eval_ds = data.labeled_dataset(eval_pattern, info, config["image_size"], batch_size,
                                   is_training=False)
    eval_ds = strategy.experimental_distribute_dataset(check_labels(eval_ds, info.num_classes))
    try:
        results = evaluate(strategy, model, eval_ds, info.num_classes)
    except tf.errors.InvalidArgumentError as e:
        raise common.UserError(f"bad evaluation input in {eval_pattern}: {common.tf_error_line(e)}")
    results["global_step"] = step
    if chief:
        common.write_json(os.path.join(model_dir, "eval_results.json"), results)
    logging.info("Eval of %s at step %d on %d images: top-1 %.4f  top-5 %.4f  loss %.4f",
                 model_dir, step, results["num_examples"], results["top_1"], results["top_5"],
                 results["loss"])
    print(json.dumps(results))
    return results


def finetune_path(model_dir, image_size):
    return os.path.join(model_dir, f"finetune_{image_size}")


def finetune(F, strategy, config, info, label_pattern, num_train, chief):
    """Paper Sec. 3.1: fine-tune the trained (EMA) model at a larger resolution for a short time on
    unaugmented labeled images with the shallow layers fixed. Writes its own model dir."""
    size = F.finetune_image_size
    model_dir = finetune_path(F.model_dir, size)
    ft_config = dict(config, image_size=size)
    check_model_dir(model_dir, ft_config)
    if chief:
        tf.io.gfile.makedirs(model_dir)
        common.write_json(os.path.join(model_dir, efficientnet_builder.MODEL_CONFIG_FILE), ft_config)
    init = None
    if not tf.train.latest_checkpoint(model_dir):
        ema, _ = efficientnet_builder.load_model_dir(F.model_dir)
        init = ema.get_weights()
    # NOTE: the paper names neither the fixed layers nor the fine-tuning learning rate; we fix the
    # stem and the first --finetune_frozen_stages stages (BN there in inference mode) and use a
    # constant --finetune_base_learning_rate.
    frozen = ("stem",) + tuple(f"block{i}" for i in range(1, F.finetune_frozen_stages + 1))
    trainer = Trainer(strategy, ft_config,
                      peak_lr=F.finetune_base_learning_rate * F.train_batch_size / 256,
                      warmup_steps=0, decay_steps=1, decay_factor=1.0,
                      weight_decay=F.weight_decay, label_smoothing=F.label_smoothing,
                      ema_decay_rate=F.moving_average_decay, seed=F.seed,
                      frozen_prefixes=frozen, init_weights=init, optimizer=F.optimizer)
    dataset = check_labels(data.labeled_dataset(label_pattern, info, size, F.train_batch_size,
                                                is_training=True, augment_name="none",
                                                seed=F.seed), info.num_classes)
    steps = int(math.ceil(F.finetune_epochs * num_train / F.train_batch_size))
    logging.info("Fine-tuning at %d px for %d steps (%d frozen layers) into %s.", size, steps,
                 sum(not l.trainable for l in trainer.model.layers), model_dir)
    train(trainer, dataset, train_steps=steps, model_dir=model_dir,
          save_every=F.save_checkpoints_steps, keep_max=F.keep_checkpoint_max,
          log_every=F.log_every_steps, chief=chief, images_per_step=(F.train_batch_size, 0))
    return model_dir


def checkpoint_step(model_dir):
    latest = tf.train.latest_checkpoint(model_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def check_student_size(trainer, teacher_model_dir, allow_smaller):
    """Noisy Student trains an equal-or-larger student; a smaller one is distillation."""
    if not teacher_model_dir:
        return
    path = os.path.join(teacher_model_dir, efficientnet_builder.MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise common.UserError(f"--teacher_model_dir={teacher_model_dir} has no "
                             f"{efficientnet_builder.MODEL_CONFIG_FILE}")
    with tf.io.gfile.GFile(path) as f:
        teacher_cfg = json.load(f)
    teacher = efficientnet_builder.build_model(**build_kwargs(teacher_cfg))
    n_teacher, n_student = num_params(teacher), num_params(trainer.model)
    if n_student < n_teacher and not allow_smaller:
        raise common.UserError(f"the student ({n_student:,} params) is smaller than the teacher in "
                             f"{teacher_model_dir} ({n_teacher:,}); Noisy Student uses an "
                             f"equal-or-larger student (pass --allow_smaller_student to distill)")


def build_train_dataset(info, image_size, F, label_pattern, student, batch_u):
    """Labeled batches, zipped with unlabeled ones for a student: (x_l, y_l[, x_u, u])."""
    labeled = data.labeled_dataset(label_pattern, info, image_size, F.train_batch_size,
                                   is_training=True, augment_name=F.augment_name,
                                   randaug_layer=F.randaug_layer, randaug_mag=F.randaug_mag,
                                   seed=F.seed)
    labeled = check_labels(labeled, info.num_classes)
    if not student:
        return labeled
    augment_u = F.augment_name if F.unlabeled_noise == "full" else "none"
    if F.unlabel_data_dir:
        files = common.list_files(F.unlabel_data_dir, "pseudo-labeled data (--unlabel_data_dir)")
        if not any(tf.io.gfile.stat(f).length for f in files):
            raise common.UserError(f"--unlabel_data_dir={F.unlabel_data_dir} holds no records (did "
                                 f"the teacher keep any image above the confidence threshold?)")
        unlabeled = data.pseudo_labeled_dataset(F.unlabel_data_dir, info, image_size, batch_u,
                                                info.num_classes, augment_u,
                                                randaug_layer=F.randaug_layer,
                                                randaug_mag=F.randaug_mag, seed=F.seed)
    else:
        source = F.unlabel_source_dir or os.path.join(F.data_dir, "unlabeled")
        common.list_files(source, "unlabeled data (--unlabel_source_dir)")
        unlabeled = data.unlabeled_pair_dataset(source, info, image_size, batch_u, augment_u,
                                                randaug_layer=F.randaug_layer,
                                                randaug_mag=F.randaug_mag, seed=F.seed)
    return tf.data.Dataset.zip((labeled, unlabeled)).map(
        lambda lab, unl: (lab[0], lab[1], unl[0], unl[1]))


OWN_FLAGS = []

if __name__ == "__main__":
    OWN_FLAGS = define_flags()
    common.run_main(main)
