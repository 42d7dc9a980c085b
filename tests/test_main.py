"""main.py: the pure pieces against hand computations, configs and flags, real (tiny) runs on
Fashion-MNIST through train_and_evaluate in-process, and the command line as a subprocess."""
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

import common
import data
import efficientnet_builder
import main
import prepare_data
import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
TINY = dict(model_name="efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25)


def tiny(data_dir, **settings):
    """A TrainConfig of the 131k-parameter B0 on the Fashion-MNIST shards in data_dir."""
    return main.TrainConfig(**dict(TINY, data_dir=str(data_dir), **settings))


@pytest.fixture
def logs(caplog):
    """The text of the INFO lines logged so far in the test (an in-process run's progress)."""
    caplog.set_level(logging.INFO)
    # absl's logger too: a SavedModel export leaves it at WARNING (TF restores the verbosity
    # from the unparsed absl flags).
    caplog.set_level(logging.INFO, logger="absl")
    return lambda: caplog.text


# ------------------------------------------------------------------------------------------
# Pure pieces.
# ------------------------------------------------------------------------------------------
def test_learning_rate_warmup_then_staircase():
    lr = lambda s: float(main.learning_rate(s, peak_lr=0.1, warmup_steps=10, decay_steps=4,
                                            decay_factor=0.5))
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.05)
    # After warm-up the staircase is on the global step (reference), not on step - warmup.
    assert lr(10) == pytest.approx(0.1 * 0.5 ** 2)
    assert lr(11) == pytest.approx(0.1 * 0.5 ** 2)
    assert lr(12) == pytest.approx(0.1 * 0.5 ** 3)


@pytest.mark.parametrize("warmup", [5.0, 2.0])
def test_final_learning_rate_schedule_is_the_references(warmup):
    """--final_base_learning_rate: the decay period omits the warm-up epochs and stays a float
    (reference main.py)."""
    config = main.TrainConfig(train_batch_size=64, base_learning_rate=0.016,
                              final_base_learning_rate=0.0008, lr_warmup_epochs=warmup)
    steps_per_epoch, train_steps = 4000 / 64, 2500
    s = main.lr_schedule(config, steps_per_epoch, train_steps)
    decay_times = math.log(0.0008 / 0.016) / math.log(0.97)
    assert s["decay_steps"] == pytest.approx(
        steps_per_epoch * (train_steps / steps_per_epoch - warmup) / decay_times)
    assert s["peak_lr"] == pytest.approx(0.016 * 64 / 256)
    assert s["warmup_steps"] == int(warmup * steps_per_epoch)
    end = float(main.learning_rate(train_steps, **s))
    assert end == pytest.approx(
        s["peak_lr"] * 0.97 ** math.floor(train_steps / s["decay_steps"]), rel=1e-5)
    # The staircase counts the warm-up steps too (global step), so it passes the final rate.
    assert end < 0.0008 * 64 / 256


def test_final_learning_rate_zero_is_the_plain_staircase():
    """--final_base_learning_rate=0 turns the final-rate variant off (a driver preset that sets it
    can be overridden): the paper's 0.97 every --lr_decay_epochs."""
    config = main.TrainConfig(train_batch_size=2048, base_learning_rate=0.016,
                              final_base_learning_rate=0, lr_decay_epochs=2.4)
    s = main.lr_schedule(config, steps_per_epoch=625.5, train_steps=218925)
    assert s["decay_steps"] == pytest.approx(625.5 * 2.4) and s["peak_lr"] == pytest.approx(0.128)
    with pytest.raises(common.UserError, match="--final_base_learning_rate=-1"):
        main.TrainConfig(final_base_learning_rate=-1)


def test_few_labels_get_the_minimum_steps_with_the_schedule_stretched():
    """The issue-34 teacher: 300 labeled images, batch 128, 25 epochs were 59 steps; with
    --min_steps_per_epoch=24 they are 600, warm-up and final rate stretched with them."""
    config = main.TrainConfig(train_batch_size=128, train_epochs=25, min_steps_per_epoch=24,
                              lr_warmup_epochs=5, base_learning_rate=0.032,
                              final_base_learning_rate=0.0016)
    assert main.train_length(dataclasses.replace(config, min_steps_per_epoch=0), 300) == (
        59, 300 / 128)
    assert main.train_length(config, 300) == (600, 24.0)
    s = main.lr_schedule(config, 24.0, 600)
    assert s["warmup_steps"] == 120   # 5 of 25 epochs
    assert main.train_length(config, 4000) == (782, 4000 / 128)   # enough labels: unchanged
    full = main.lr_schedule(config, 4000 / 128, 782)   # the same fraction of the peak at the end
    assert float(main.learning_rate(600, **s)) == pytest.approx(
        float(main.learning_rate(782, **full)), rel=0.05)
    assert main.train_length(dataclasses.replace(config, train_steps=10), 300)[0] == 10


def test_ema_decay_num_updates_warmup():
    assert float(main.ema_decay(0, 0.9999)) == pytest.approx(0.1)
    assert float(main.ema_decay(90, 0.9999)) == pytest.approx(91 / 100)
    assert float(main.ema_decay(10 ** 7, 0.9999)) == pytest.approx(0.9999)


def test_tf1_rmsprop_starts_mean_square_at_one():
    g, lr, eps = 0.5, 0.01, 1e-3
    var = tf.Variable([1.0])
    opt = main.TF1RMSprop(learning_rate=lr, rho=0.9, momentum=0.9, epsilon=eps)
    opt.apply_gradients([(tf.constant([g]), var)])
    ms = 0.9 * 1.0 + 0.1 * g * g                     # TF1: ms starts at 1.0
    expected = 1.0 - lr * g / np.sqrt(ms + eps)
    assert var.numpy()[0] == pytest.approx(expected, rel=1e-6)
    keras_var = tf.Variable([1.0])                   # Keras starts at 0: a 3x larger first step
    keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=eps).apply_gradients(
        [(tf.constant([g]), keras_var)])
    assert abs(1 - keras_var.numpy()[0]) > 2.5 * abs(1 - var.numpy()[0])


def test_tf1_rmsprop_fused_kernel_matches_the_update_rule():
    rho, mom, lr, eps = 0.9, 0.9, 0.05, 1e-3
    grads = [np.array([0.5, -2.0], np.float32), np.array([1.0, 0.1], np.float32),
             np.array([-0.3, 0.7], np.float32)]
    var = tf.Variable([1.0, -1.0])
    opt = main.TF1RMSprop(learning_rate=lr, rho=rho, momentum=mom, epsilon=eps)
    opt.build([var])                                   # eagerly, as Trainer does
    step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
    w, ms, m = np.array([1.0, -1.0]), np.ones(2), np.zeros(2)
    for g in grads:
        step(tf.constant(g))
        ms = rho * ms + (1 - rho) * g * g
        m = mom * m + lr * g / np.sqrt(ms + eps)
        w = w - m
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-5)
    np.testing.assert_allclose(opt._velocities[0].numpy(), ms, rtol=1e-5)


def test_momentum_optimizer_is_tf1_momentum_at_constant_lr():
    """--optimizer=momentum: accum = 0.9 accum + g; w -= lr accum (TF1 MomentumOptimizer)."""
    lr, grads = 0.1, [np.array([0.5, -2.0], np.float32), np.array([1.0, 0.1], np.float32)]
    var = tf.Variable([1.0, -1.0])
    opt = main.build_optimizer("momentum", lr)
    w, accum = np.array([1.0, -1.0]), np.zeros(2)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), var)])
        accum = 0.9 * accum + g
        w = w - lr * accum
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)
    assert isinstance(main.build_optimizer("rmsprop", lr), main.TF1RMSprop)
    with pytest.raises(ValueError, match="adam"):
        main.build_optimizer("adam", lr)


def test_evaluation_traces_its_step_once_with_a_partial_last_batch():
    """10 examples in batches of 4, 4 and 2: the step is traced once (issue 31: no retrace for the
    last batch), and top-1, top-5 and the loss count all 10."""
    images = np.arange(10, dtype=np.float32)[:, None]
    labels = np.array([0, 1, 2] * 3 + [0], np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    traces = []

    def model(x, training):  # logits favour class 0
        traces.append(x.shape)
        return tf.concat([x * 0 + 1.0, x * 0, x * 0 - 1.0], axis=1)

    results = main.evaluate(tf.distribute.get_strategy(), model, ds, 3, ds.element_spec)
    assert len(traces) == 1
    assert results["num_examples"] == 10 and results["top_1"] == pytest.approx(0.4)
    assert results["top_5"] == 1.0 and results["loss"] == pytest.approx(
        (4 * -np.log(np.exp(1) / (np.exp(1) + 1 + np.exp(-1)))
         + 3 * -np.log(1 / (np.exp(1) + 1 + np.exp(-1)))
         + 3 * -np.log(np.exp(-1) / (np.exp(1) + 1 + np.exp(-1)))) / 10, rel=1e-5)


def test_ema_update_moves_toward_the_weights():
    ema, w = tf.Variable([1.0, 3.0]), tf.Variable([2.0, -1.0])
    main.ema_update([ema], [w], 0.75)
    np.testing.assert_allclose(ema.numpy(), [0.75 * 1 + 0.25 * 2, 0.75 * 3 - 0.25], rtol=1e-6)
    main.ema_update([ema], [w], 0.0)                   # decay 0 copies the weights
    np.testing.assert_allclose(ema.numpy(), w.numpy())


def test_soft_hard_and_tempered_targets():
    p = tf.constant([[0.7, 0.2, 0.1]])
    assert np.allclose(main.pseudo_label_targets(p, "soft", 1.0, 0.1), p)
    hard = main.pseudo_label_targets(p, "hard", 1.0, 0.1).numpy()
    assert np.allclose(hard, [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]])
    tempered = main.pseudo_label_targets(p, "soft", 2.0, 0.1).numpy()
    expected = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum()
    assert np.allclose(tempered[0], expected, atol=1e-6)
    logits = tf.constant([[2.0, 0.5, -1.0]])
    ce = float(main.cross_entropy(p, logits)[0])
    logq = logits.numpy()[0] - np.log(np.exp(logits.numpy()[0]).sum())
    assert ce == pytest.approx(-(p.numpy()[0] * logq).sum(), rel=1e-6)


def test_weight_decay_skips_batch_norm():
    model = efficientnet_builder.build_model("efficientnet-b0", 10, image_size=32, num_channels=1,
                                             small_image=True, width=0.25, depth=0.25)
    total = sum(float(np.sum(w.numpy() ** 2)) / 2 for w in model.trainable_weights)
    bn_part = sum(float(np.sum(w.numpy() ** 2)) / 2 for w in model.trainable_weights
                  if "gamma" in w.path or "beta" in w.path)
    assert bn_part > 0
    assert float(main.weight_decay_loss(model, 1.0)) == pytest.approx(total - bn_part, rel=1e-5)


# ------------------------------------------------------------------------------------------
# Configs and flags: one flag per config field; main() turns the flags into the configs.
# ------------------------------------------------------------------------------------------
def parsed_flags(*args):
    flag_values = flags.FlagValues()
    main.define_flags(flag_values)
    flag_values(["main.py", *args])
    return flag_values


TINY_MODEL = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                  small_image=True, width=0.25, depth=0.25, dropout_rate=0.0,
                  stochastic_depth_rate=0.0, mean=[72.9], std=[90.0])
SCHEDULE = dict(peak_lr=0.01, warmup_steps=0, decay_steps=100, decay_factor=0.97)


def test_student_step_loss_is_labeled_plus_ratio_times_unlabeled_plus_weight_decay():
    """Algorithm 1 step 4's loss, computed here from the weights before the step: the mean
    smoothed-label CE of the labeled batch + unlabel_ratio x the mean soft-target CE of the
    unlabeled batch (both from one training-mode pass over their concatenation, so BN sees the
    whole batch) + weight_decay x sum ||w||^2 / 2 over the weights that are not BN's."""
    rng = np.random.RandomState(0)
    x_l, x_u = (rng.uniform(0, 255, (n, 32, 32, 1)).astype("float32") for n in (4, 8))
    y_l = rng.randint(0, 10, 4).astype("int32")
    u = tf.nn.softmax(rng.normal(0, 2, (8, 10)).astype("float32")).numpy()
    config = main.TrainConfig(weight_decay=0.01, label_smoothing=0.1, student=main.StudentConfig(
        unlabel_data_dir="records", unlabel_ratio=2.0))
    t = main.Trainer(config, TINY_MODEL, SCHEDULE)  # TINY_MODEL: no dropout, no stochastic depth
    reference = efficientnet_builder.build_from_config(TINY_MODEL)
    reference.set_weights(t.model.get_weights())
    out = t.make_train_step(4, 8)(iter([(x_l, y_l, x_u, u)]))

    logits = tf.nn.log_softmax(reference(np.concatenate([x_l, x_u]), training=True)).numpy()
    smoothed = np.eye(10)[y_l] * 0.9 + 0.01
    labeled = -np.mean(np.sum(smoothed * logits[:4], -1))
    unlabeled = -np.mean(np.sum(u * logits[4:], -1))
    decayed = [w.numpy() for w in reference.trainable_weights if w.name not in ("gamma", "beta")]
    assert len(decayed) < len(reference.trainable_weights)   # BN's gamma and beta left out
    decay = 0.01 * sum(np.sum(w.astype(np.float64) ** 2) / 2 for w in decayed)
    assert min(labeled, unlabeled, decay) > 0.05             # each term visible in the sum
    assert float(out["loss_labeled"]) == pytest.approx(labeled, rel=1e-4)
    assert float(out["loss_unlabeled"]) == pytest.approx(unlabeled, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(labeled + 2.0 * unlabeled + decay, rel=1e-4)


@pytest.mark.slow
def test_none_ablation_is_one_pass_updating_bn_once():
    """unlabeled_noise=none: BN sees concat(labeled, unlabeled) once per step, so its moving
    statistics after a step are those of ONE training pass over the whole batch."""
    rng = np.random.RandomState(0)
    x_l, x_u = (rng.uniform(0, 255, (n, 32, 32, 1)).astype("float32") for n in (4, 8))
    batch = (x_l, rng.randint(0, 10, 4).astype("int32"), x_u,
             np.full((8, 10), 0.1, np.float32))
    student = main.StudentConfig(unlabel_data_dir="unused", unlabeled_noise="none",
                                 unlabel_ratio=2.0)
    t = main.Trainer(main.TrainConfig(student=student), TINY_MODEL, SCHEDULE)
    reference = efficientnet_builder.build_from_config(TINY_MODEL)
    reference.set_weights(t.model.get_weights())
    reference(np.concatenate([x_l, x_u]), training=True)
    t.make_train_step(4, 8)(iter([batch]))
    bn = [l.name for l in reference.layers if isinstance(l, keras.layers.BatchNormalization)]
    for name in bn:
        np.testing.assert_allclose(t.model.get_layer(name).moving_variance,
                                   reference.get_layer(name).moving_variance, rtol=1e-5)
        np.testing.assert_allclose(t.model.get_layer(name).moving_mean,
                                   reference.get_layer(name).moving_mean, rtol=1e-4, atol=1e-6)



@pytest.mark.slow
def test_finetune_trainer_fixes_blocks_and_continues_the_schedule_tail():
    """Fine-tuning (reference fix_layer_num, train_last_step_num): fixed blocks run without
    stochastic depth and BN on moving statistics; step s takes lr(s + offset) of the schedule."""
    schedule = dict(peak_lr=0.01, warmup_steps=5, decay_steps=2.5, decay_factor=0.97)
    t = main.Trainer(main.TrainConfig(finetune_frozen_stages=2),
                     dict(TINY_MODEL, stochastic_depth_rate=0.5), schedule, finetune_offset=275)
    drops = [l for l in t.model.layers if isinstance(l, efficientnet_builder.StochasticDepth)]
    assert any(l.name.startswith("block2") for l in drops)
    for layer in drops:
        assert layer.trainable == (not layer.name.startswith(("block1", "block2")))
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    fixed = keras.Model(t.model.input, t.model.get_layer("block2a_add").output)
    np.testing.assert_array_equal(fixed(x, training=True), fixed(x, training=False))
    step = t.make_train_step(4, 0)
    batches = iter([(x, np.arange(4, dtype="int32"))] * 2)
    lrs = [float(step(batches)["learning_rate"]) for _ in range(2)]
    assert lrs == pytest.approx([float(main.learning_rate(s, **schedule)) for s in (275, 276)])
    assert lrs[0] < 0.01 * 0.97 ** 100



def test_resumed_run_continues_the_noise_streams(tmp_path, monkeypatch):
    """The data builders get start_batch = the restored global step (ckpt-<step>)."""
    assert main.restored_step(str(tmp_path)) == 0
    step = tf.Variable(7, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path), 1,
                               checkpoint_name="ckpt").save(checkpoint_number=7)
    assert main.restored_step(str(tmp_path)) == 7
    calls = {}
    for name in ("labeled_dataset", "pseudo_labeled_dataset"):
        monkeypatch.setattr(data, name, lambda *a, name=name, **kw: calls.setdefault(
            name, kw) and tf.data.Dataset.from_tensors((0, 0)))
    config = main.TrainConfig(student=main.StudentConfig(unlabel_data_dir=str(tmp_path)))
    monkeypatch.setattr(common, "list_files", lambda *a: [str(tmp_path / "checkpoint")])
    main.build_train_dataset(config, data.dataset_info("fashion_mnist"), [], 8,
                             start_batch=main.restored_step(str(tmp_path)))
    assert {k: (v["seed"], v["start_batch"]) for k, v in calls.items()} == {
        "labeled_dataset": (0, 7), "pseudo_labeled_dataset": (0, 7)}



@pytest.mark.slow
def test_init_checkpoint_loads_model_and_ema_only_before_the_first_checkpoint(tmp_path):
    source = efficientnet_builder.build_from_config(TINY_MODEL)
    for w in source.weights:
        w.assign(np.random.RandomState(1).normal(0, 0.1, w.shape).astype("float32") + 0.5)
    path = str(tmp_path / "source.weights.h5")
    source.save_weights(path)
    t = main.Trainer(main.TrainConfig(), TINY_MODEL, SCHEDULE)
    assert main.initialize(t, "", str(tmp_path)) is None
    summary = main.initialize(t, path, str(tmp_path / "new_run"))
    assert summary["format"] == "keras" and summary["weights"]
    for model in (t.model, t.ema_model):
        for a, b in zip(model.get_layer("top_conv").weights, source.get_layer("top_conv").weights):
            np.testing.assert_array_equal(a, b)
    t.checkpoint.write(str(tmp_path / "resumed" / "ckpt-5"))  # a run that has started: untouched
    with open(tmp_path / "resumed" / "checkpoint", "w") as f:
        f.write('model_checkpoint_path: "ckpt-5"\n')
    assert main.initialize(t, str(tmp_path / "missing.h5"), str(tmp_path / "resumed")) is None
    with pytest.raises(common.UserError, match="missing.h5"):
        main.initialize(t, str(tmp_path / "missing.h5"), str(tmp_path / "new_run"))



def test_imagenet_kind_data_takes_the_models_own_resolution():
    info = lambda **kw: main.dataset_info(main.TrainConfig(**kw), "unused")
    assert info(dataset="imagenet", model_name="efficientnet-b1").image_size == 240
    assert info(dataset="imagenet", model_name="efficientnet-b3").image_size == 300
    assert info(dataset="imagenet", model_name="efficientnet-b3", image_size=260).image_size == 260
    small = data.dataset_info("fashion_mnist").image_size
    assert info(dataset="fashion_mnist", model_name="efficientnet-b3").image_size == small


@pytest.mark.slow
def test_on_the_fly_teacher_labels_at_its_own_resolution(tmp_path):
    """A B0 teacher at 64 px teaches a B1 student at 72 px on the fly (ImageNet-schema JPEG
    records): the teacher gets its own eval view (it crashed on the student's size)."""
    rng = np.random.default_rng(0)
    records = str(tmp_path / "train-00000-of-00001")
    with tf.io.TFRecordWriter(records) as writer:
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 70 * (i % 3), 20, (80, 96, 3)), 0, 255)
            writer.write(data.image_example(tf.io.encode_jpeg(pixels.astype(np.uint8)).numpy(),
                                            i % 3 + 1, f"train/{i}").SerializeToString())
    size = dict(dataset="imagenet", num_classes=3, width_coefficient=0.1, depth_coefficient=0.1,
                label_data_dir=records, eval_data_dir=records)
    teacher = main.TrainConfig(image_size=64, **size)
    cfg = main.model_spec(teacher, main.dataset_info(teacher, records))
    efficientnet_builder.save_model_dir(str(tmp_path / "teacher"), cfg,
                                        efficientnet_builder.build_from_config(cfg))
    on_the_fly = main.StudentConfig(teacher_model_dir=str(tmp_path / "teacher"),
                                    unlabel_source_dir=records)
    student = main.TrainConfig(model_name="efficientnet-b1", image_size=72, train_steps=2,
                               train_batch_size=4, eval_batch_size=4, student=on_the_fly, **size)
    info = main.dataset_info(student, records)
    dataset = main.build_train_dataset(student, info, [records], 4, teacher_image_size=64)
    x_l, _, x_u, u = next(iter(dataset))
    assert (x_l.shape[1], x_u.shape[1], u.shape[1]) == (72, 72, 64)
    results = main.train_and_evaluate(student, str(tmp_path / "student"))
    assert results[str(tmp_path / "student")]["global_step"] == 2
    assert json.load(open(tmp_path / "student" / "model.json"))["image_size"] == 72


def test_flags_are_the_config_fields_with_their_defaults():
    flag_values = parsed_flags()
    fields = {f.name: f for cls in (main.TrainConfig, main.StudentConfig)
              for f in dataclasses.fields(cls) if f.name != "student"}
    assert set(flag_values) == set(fields) | {"model_dir"}
    for name, field in fields.items():
        assert flag_values[name].value == field.default, name
    assert flag_values["label_type"].parser.enum_values == ["soft", "hard"]
    # flags.json records exactly the flags, with the values of the run.
    record = main.flags_record(main.TrainConfig(), "runs/teacher")
    assert record == {name: flag_values[name].value for name in flag_values}


@pytest.mark.parametrize("args", [[], ["--teacher_model_dir=t", "--unlabel_ratio=3"]])
def test_main_turns_flags_into_configs(args, monkeypatch, tmp_path):
    flag_values = parsed_flags(f"--model_dir={tmp_path}", "--train_steps=7", "--small_image=true",
                               *args)
    runs = []
    monkeypatch.setattr(main, "FLAGS", flag_values)
    monkeypatch.setattr(main, "train_and_evaluate", lambda *a: runs.append(a))
    main.main(["main.py"])
    (config, model_dir), = runs
    assert model_dir == str(tmp_path)
    assert config.train_steps == 7 and config.small_image == "true" and config.seed == 0
    if not args:
        assert config.student is None
    else:
        assert config.student == main.StudentConfig(teacher_model_dir="t", unlabel_ratio=3.0)
    assert main.flags_record(config, model_dir) == {n: flag_values[n].value for n in flag_values}


def test_student_config_refuses_contradictions():
    with pytest.raises(common.UserError, match="--unlabel_data_dir or --teacher_model_dir"):
        main.StudentConfig(unlabel_ratio=2.0)
    with pytest.raises(common.UserError, match="--noised_teacher"):
        main.StudentConfig(unlabel_data_dir="filtered", noised_teacher=True)


# ------------------------------------------------------------------------------------------
# User mistakes caught before training: one UserError naming the flag or file.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_shard(tmp_path_factory):
    """One labeled shard of 64 random 32x32x1 images (for runs that stop before training)."""
    path = str(tmp_path_factory.mktemp("tiny") / "labeled-00000-of-00001.tfrecord")
    images = np.random.RandomState(0).randint(0, 256, (64, 32, 32, 1)).astype("uint8")
    with tf.io.TFRecordWriter(path) as writer:
        for i, png in enumerate(prepare_data.encode_png_batch(images)):
            writer.write(data.image_example(png, i % 10, f"img{i}").SerializeToString())
    return path


def test_unknown_model_name_is_refused(tmp_path):
    with pytest.raises(common.UserError, match="efficientnet-b9"):
        main.train_and_evaluate(tiny(tmp_path, model_name="efficientnet-b9"), str(tmp_path / "m"))


def test_fashion_mnist_unprepared_or_prepared_otherwise_is_one_line(fashion_mnist_dir, tmp_path):
    """main.py reads what prepare_data.py wrote, checked against its prepared.json."""
    with pytest.raises(common.UserError, match=f"--data_dir={tmp_path / 'none'} is not prepared: "
                       "run python prepare_data.py --dataset=fashion_mnist --output_dir="):
        main.train_and_evaluate(tiny(tmp_path / "none", train_steps=1), str(tmp_path / "m"))
    with pytest.raises(common.UserError, match=r"prepared with other arguments \(seed: 0 -> 3\)"):
        main.train_and_evaluate(tiny(fashion_mnist_dir, train_steps=1, data_seed=3),
                                str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")


def test_missing_or_corrupt_data_and_another_model_dir_are_named(tiny_shard, tmp_path):
    config = tiny(tmp_path, label_data_dir=str(tmp_path / "nope"), eval_data_dir=tiny_shard)
    with pytest.raises(common.UserError, match="nope"):
        main.train_and_evaluate(config, str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")   # nothing written for a run that cannot start
    common.write_json(str(tmp_path / "m" / "model.json"),
                      main.model_spec(config, data.DATASETS["fashion_mnist"]))
    with pytest.raises(common.UserError, match="width=0.25, not 0.5; use a new --model_dir"):
        main.train_and_evaluate(dataclasses.replace(config, width_coefficient=0.5),
                                str(tmp_path / "m"))
    raw = open(tiny_shard, "rb").read()
    bad = tmp_path / "bad" / "labeled-00000-of-00001.tfrecord"
    bad.parent.mkdir()
    bad.write_bytes(raw[:5000] + b"\x00" * 64 + raw[5000:])
    config = dataclasses.replace(config, label_data_dir=str(bad.parent))
    with pytest.raises(common.UserError, match="corrupt TFRecord file .*labeled-00000-of-00001"):
        main.train_and_evaluate(config, str(tmp_path / "m"))


def test_a_checkpoint_as_it_is_is_a_teacher_evaluated_without_training(tiny_shard, tmp_path):
    """--init_checkpoint with --train_steps=0 --train_epochs=0: an official-format checkpoint
    becomes the model dir (model and EMA model: its weights) that label_data.py and the on-the-fly
    teacher read, evaluated like a trained teacher; another checkpoint in that dir is refused."""
    from test_pretrained import randomise, write_official
    spec = main.model_spec(main.TrainConfig(**TINY), data.DATASETS["fashion_mnist"])
    source = randomise(efficientnet_builder.build_from_config(  # RGB, ImageNet-normalised
        dict(spec, num_channels=3, mean=None, std=None)))
    (tmp_path / "official").mkdir()
    prefix = write_official(str(tmp_path / "official"), source)
    config = tiny(tmp_path, label_data_dir=tiny_shard, eval_data_dir=tiny_shard, train_steps=0,
                  train_epochs=0.0, init_checkpoint=prefix)
    model_dir = str(tmp_path / "teacher")
    results = main.train_and_evaluate(config, model_dir)
    assert results[model_dir]["global_step"] == 0
    assert json.load(open(os.path.join(model_dir, "eval_results.json"))) == results[model_dir]
    assert json.load(open(os.path.join(model_dir, "flags.json")))["init_checkpoint"] == prefix
    expected = efficientnet_builder.build_from_config(spec)
    pretrained.load(expected, prefix)   # the grey model from the RGB checkpoint
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    for use_ema in (True, False):
        model, _ = efficientnet_builder.load_model_dir(model_dir, use_ema=use_ema)
        np.testing.assert_array_equal(model(x, training=False), expected(x, training=False))
    with pytest.raises(common.UserError, match=r"was trained with --init_checkpoint=.*model.ckpt"
                                               r"-1234 \(its flags.json\), not other.weights.h5"):
        main.train_and_evaluate(dataclasses.replace(config, init_checkpoint="other.weights.h5"),
                                model_dir)
    with pytest.raises(common.UserError, match="nothing to train"):
        dataclasses.replace(config, student=main.StudentConfig(teacher_model_dir=model_dir))


def test_a_failed_checkpoint_save_leaves_no_temporaries(tmp_path):
    """A full disk during a save (TF writes ckpt-N_temp/ first): the error goes on, the
    half-written directory does not stay in the model dir."""
    class FullDisk:
        directory = str(tmp_path)

        def save(self, checkpoint_number):
            os.makedirs(tmp_path / f"ckpt-{checkpoint_number}_temp")
            (tmp_path / f"ckpt-{checkpoint_number}_temp" / "part-0.tempstate1").write_bytes(b"x")
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    (tmp_path / "ckpt-4.index").write_bytes(b"an earlier checkpoint")
    with pytest.raises(tf.errors.ResourceExhaustedError):
        main.save_checkpoint(FullDisk(), 5)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-4.index"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["label_data_dir", "eval_data_dir"])
def test_an_undecodable_image_is_named_by_shard_and_record(tiny_shard, tmp_path, where):
    """A record whose image does not decode, met by training or by the evaluation: the error
    names the shard, the record index and its image/id, not a TF graph node."""
    bad = tmp_path / "bad" / "labeled-00000-of-00001.tfrecord"
    bad.parent.mkdir()
    with tf.io.TFRecordWriter(str(bad)) as writer:
        for i, record in enumerate(tf.data.TFRecordDataset(tiny_shard).as_numpy_iterator()):
            writer.write(data.image_example(b"not a png", 3, "broken").SerializeToString()
                         if i == 21 else record)
    config = tiny(tmp_path, train_steps=4, train_batch_size=16,
                  **{"label_data_dir": tiny_shard, "eval_data_dir": tiny_shard, where: str(bad)})
    with pytest.raises(common.UserError, match=r"corrupt record file .*bad/labeled-00000-of-00001"
                                               r"\.tfrecord, record 21 \(image/id broken\)"):
        main.train_and_evaluate(config, str(tmp_path / "m"))


@pytest.mark.parametrize("settings,error", [
    (dict(train_batch_size=0), "--train_batch_size=0 must be positive"),
    (dict(train_batch_size=-8), "--train_batch_size=-8 must be positive"),
    (dict(eval_batch_size=0), "--eval_batch_size=0 must be positive"),
    (dict(save_checkpoints_steps=0), "--save_checkpoints_steps=0 must be positive"),
    (dict(log_every_steps=0), "--log_every_steps=0 must be positive"),
    (dict(keep_checkpoint_max=0), "--keep_checkpoint_max=0 must be positive"),
    (dict(train_steps=-5), "--train_steps=-5 must be 0 or more"),
    (dict(train_steps=0, train_epochs=0.0), "--train_steps=0 and --train_epochs=0: nothing to "
                                            "train"),
    (dict(width_coefficient=0.0), "--width_coefficient=0.0 must be positive"),
    (dict(base_learning_rate=float("nan")), "--base_learning_rate=nan must be positive"),
    (dict(stochastic_depth_rate=1.0), "--stochastic_depth_rate=1.0 must be in [0, 1)"),
    (dict(num_classes=1), "--num_classes=1: a classifier needs at least 2 classes")])
def test_bad_training_flag_is_named(settings, error):
    with pytest.raises(common.UserError) as e:
        main.TrainConfig(**settings)
    assert str(e.value).startswith(error)


@pytest.mark.parametrize("ratio", [0.0, -1.0])
def test_bad_unlabel_ratio_is_named(ratio):
    with pytest.raises(common.UserError, match=f"--unlabel_ratio={ratio} must be positive"):
        main.StudentConfig(teacher_model_dir="t", unlabel_ratio=ratio)


def test_model_dir_under_a_file_is_one_line(tiny_shard, tmp_path):
    (tmp_path / "file").write_text("")
    config = tiny(tmp_path, label_data_dir=tiny_shard, eval_data_dir=tiny_shard, train_steps=1)
    with pytest.raises(Exception) as e:
        main.train_and_evaluate(config, str(tmp_path / "file" / "m"))
    line = common.filesystem_error_line(e.value)
    assert line and str(tmp_path / "file") in line, repr(e.value)


def test_diverged_weights_are_refused_at_evaluation(tiny_shard, tmp_path):
    cfg = main.model_spec(main.TrainConfig(**TINY), data.DATASETS["fashion_mnist"])
    model = efficientnet_builder.build_from_config(cfg)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    efficientnet_builder.save_model_dir(str(tmp_path), cfg, model, step=5)
    with pytest.raises(common.UserError, match="evaluates to loss nan: its weights diverged"):
        main.evaluate_model_dir(tf.distribute.get_strategy(), str(tmp_path), tiny_shard, 32, True)
    assert not os.path.exists(tmp_path / "eval_results.json")


def test_rerun_with_other_flags_keeps_the_runs_flags_json(tiny_shard, tmp_path):
    """flags.json describes the checkpoints: a resume with another training flag is refused, an
    evaluation or a run that fails its checks leaves it as it was."""
    model_dir = str(tmp_path / "m")
    config = tiny(tmp_path, label_data_dir=tiny_shard, eval_data_dir=tiny_shard, train_steps=2,
                  train_batch_size=16, mode="train")
    main.train_and_evaluate(config, model_dir)
    before = open(os.path.join(model_dir, "flags.json")).read()
    with pytest.raises(common.UserError, match=r"was trained with --base_learning_rate=0.016 "
                                               r"\(its flags.json\), not 0.5"):
        main.train_and_evaluate(dataclasses.replace(config, base_learning_rate=0.5), model_dir)
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(common.UserError, match="no labeled training records in .*empty"):
        main.train_and_evaluate(dataclasses.replace(
            config, label_data_dir=str(tmp_path / "empty.tfrecord"), train_steps=0), model_dir)
    main.train_and_evaluate(dataclasses.replace(config, mode="eval", eval_batch_size=8), model_dir)
    assert open(os.path.join(model_dir, "flags.json")).read() == before


@pytest.mark.slow
@pytest.mark.parametrize("student,match", [
    (dict(width_coefficient=0.1, depth_coefficient=0.1), "smaller than the teacher"),
    (dict(num_classes=5), "predicts 10 classes, the student 5")])
def test_student_must_match_its_teacher(student, match, tiny_shard, tmp_path):
    """Noisy Student: an equal-or-larger student on the teacher's classes (a few seconds)."""
    cfg = main.model_spec(main.TrainConfig(**TINY), data.DATASETS["fashion_mnist"])
    efficientnet_builder.save_model_dir(str(tmp_path / "teacher"), cfg,
                                        efficientnet_builder.build_from_config(cfg))
    config = tiny(tmp_path, label_data_dir=tiny_shard, eval_data_dir=tiny_shard, train_steps=2,
                  student=main.StudentConfig(teacher_model_dir=str(tmp_path / "teacher")))
    with pytest.raises(common.UserError, match=match):
        main.train_and_evaluate(dataclasses.replace(config, **student), str(tmp_path / "s"))


# ------------------------------------------------------------------------------------------
# Real runs in-process (tiny model, a few steps) on the prepared Fashion-MNIST shards.
# ------------------------------------------------------------------------------------------
TEACHER = dict(train_steps=300, train_batch_size=32, save_checkpoints_steps=150, randaug_mag=5,
               lr_warmup_epochs=1.0)


@pytest.fixture(scope="module")
def teacher_dir(fashion_mnist_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("teacher"))
    main.train_and_evaluate(tiny(fashion_mnist_dir, export_saved_model=True, **TEACHER), model_dir)
    return model_dir


@pytest.mark.slow
def test_teacher_trains_evaluates_and_writes_its_dir(teacher_dir):
    results = json.load(open(os.path.join(teacher_dir, "eval_results.json")))
    assert set(results) >= {"top_1", "top_5", "loss", "num_examples", "global_step"}
    assert results["num_examples"] == 10000 and results["global_step"] == 300
    assert results["top_1"] > 0.35          # chance is 0.10; 300 tiny steps reach ~60%
    assert results["top_5"] > results["top_1"]
    saved = json.load(open(os.path.join(teacher_dir, "flags.json")))
    assert saved["train_steps"] == 300 and saved["model_name"] == "efficientnet-b0"
    assert saved["model_dir"] == teacher_dir and saved["teacher_model_dir"] == ""
    model = json.load(open(os.path.join(teacher_dir, "model.json")))
    assert model["width"] == 0.25 and model["small_image"] and model["image_size"] == 32
    assert tf.train.latest_checkpoint(teacher_dir).endswith("ckpt-300")
    assert os.path.isdir(os.path.join(teacher_dir, "train"))   # TensorBoard events


@pytest.mark.slow
def test_momentum_teacher_trains(fashion_mnist_dir, tmp_path, logs):
    """--optimizer=momentum reaches the optimizer and trains: over 60 steps the training batches'
    loss falls and their accuracy leaves chance (mean of steps 1-10 against 51-60; mode=train:
    the 300-step teacher's test accuracy is test_teacher_trains_evaluates_and_writes_its_dir's)."""
    main.train_and_evaluate(
        tiny(fashion_mnist_dir, mode="train", train_steps=60, train_batch_size=64,
             optimizer="momentum", base_learning_rate=0.4, lr_warmup_epochs=0.5, randaug_mag=5,
             log_every_steps=1), str(tmp_path))
    assert json.load(open(tmp_path / "flags.json"))["optimizer"] == "momentum"
    steps = np.array([(float(loss), float(acc)) for loss, acc in re.findall(
        r"step \d+/60  loss ([0-9.]+) .*  acc ([0-9.]+)", logs())])
    (first_loss, first_acc), (last_loss, last_acc) = steps[:10].mean(0), steps[-10:].mean(0)
    assert len(steps) == 60 and last_loss < first_loss - 0.3 and last_acc > first_acc + 0.1 and (
        last_acc > 0.2), steps   # chance: 0.10
    # The setting reached the optimizer: one momentum slot per weight (RMSProp keeps two).
    names = [n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path)))]
    slots = sum(n.startswith("optimizer/_variables/") for n in names)
    assert slots == sum(n.startswith("optimizer/_trainable_variables/") for n in names) > 0


@pytest.mark.slow
def test_rerun_resumes_and_finished_run_only_reports(teacher_dir, fashion_mnist_dir, tmp_path,
                                                     logs):
    model_dir = str(tmp_path / "m")
    shutil.copytree(teacher_dir, model_dir)
    config = tiny(fashion_mnist_dir, mode="train", log_every_steps=10,
                  **dict(TEACHER, save_checkpoints_steps=500))
    assert main.train_and_evaluate(config, model_dir) == {}
    assert "Already trained to step 300 of 300: nothing to do" in logs()
    main.train_and_evaluate(dataclasses.replace(config, train_steps=310), model_dir)
    assert "Resumed from" in logs() and "step 310/310" in logs()
    assert "step 10/310" not in logs()
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-310")


@pytest.mark.slow
def test_finetune_at_larger_resolution_keeps_shallow_layers(teacher_dir, fashion_mnist_dir,
                                                              tmp_path):
    model_dir = str(tmp_path / "m")
    shutil.copytree(teacher_dir, model_dir)
    results = main.train_and_evaluate(
        tiny(fashion_mnist_dir, finetune_image_size=40, finetune_epochs=0.4, **TEACHER), model_dir)
    ft_dir = os.path.join(model_dir, "finetune_40")
    assert results[ft_dir]["global_step"] == 50 and results[ft_dir]["top_1"] > 0.3  # 0.4 * 4000/32
    assert results[model_dir]["global_step"] == 300
    before, _ = efficientnet_builder.load_model_dir(model_dir)
    after, cfg = efficientnet_builder.load_model_dir(ft_dir, use_ema=False)
    assert cfg["image_size"] == 40 and after.input_shape[1] == 40
    for name in ("stem_conv", "block1a_dwconv", "block4a_expand_bn"):
        for a, b in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights()):
            assert np.array_equal(a, b), name      # frozen, BN statistics included
    assert not np.allclose(before.get_layer("top_conv").get_weights()[0],
                           after.get_layer("top_conv").get_weights()[0])


@pytest.mark.slow
def test_eval_uses_ema_weights_from_model_dir(teacher_dir, fashion_mnist_dir, tmp_path):
    """A model dir whose raw weights are the trained teacher's and whose EMA twin is untrained:
    evaluation reports the EMA model's accuracy (chance), not the raw weights'."""
    ema, spec = efficientnet_builder.load_model_dir(teacher_dir)
    raw, _ = efficientnet_builder.load_model_dir(teacher_dir, use_ema=False)
    assert any(not np.allclose(a, b) for a, b in zip(ema.get_weights(), raw.get_weights()))
    t = main.Trainer(main.TrainConfig(), spec, SCHEDULE)
    t.model.set_weights(ema.get_weights())  # trained; t.ema_model keeps its initial weights
    model_dir = str(tmp_path / "m")
    common.write_json(os.path.join(model_dir, "model.json"), spec)
    main.save_checkpoint(tf.train.CheckpointManager(t.checkpoint, model_dir, 1), 300)
    test_file = common.list_files(os.path.join(fashion_mnist_dir, "test"))[0]  # 5,000 images
    strategy = tf.distribute.get_strategy()
    accuracy = {}
    for name, model in (("trained", t.model), ("untrained", t.ema_model)):
        ds = data.labeled_dataset(test_file, data.DATASETS["fashion_mnist"], 32, 256, False)
        accuracy[name] = main.evaluate(strategy, model, ds, 10)["top_1"]
    assert accuracy["trained"] > 0.35 and accuracy["untrained"] < 0.25, accuracy
    results = main.evaluate_model_dir(strategy, model_dir, test_file, 256, chief=True)
    assert results["top_1"] == pytest.approx(accuracy["untrained"]) and results["global_step"] == 300


@pytest.mark.slow
def test_exported_saved_model_serves_the_ema_model(teacher_dir):
    ema, _ = efficientnet_builder.load_model_dir(teacher_dir)
    served = tf.saved_model.load(os.path.join(teacher_dir, "saved_model"))
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    assert np.allclose(served.serve(x).numpy(), ema(x, training=False).numpy(), atol=1e-4)


@pytest.mark.slow
def test_student_from_pseudo_labeled_records(teacher_dir, fashion_mnist_dir, tmp_path, logs):
    # Pseudo-labeled records as filter_balance.py writes them: 40 unlabeled images, labels from
    # the teacher, copies 1..3.
    teacher, _ = efficientnet_builder.load_model_dir(teacher_dir)
    info = data.DATASETS["fashion_mnist"]
    files = common.list_files(os.path.join(fashion_mnist_dir, "unlabeled"))
    records = list(tf.data.TFRecordDataset(files[:1]).take(40))
    out = tmp_path / "filtered"
    out.mkdir()
    with tf.io.TFRecordWriter(str(out / "unlabeled-00000-of-00001.tfrecord")) as w:
        for i, raw in enumerate(records):
            ex = data.parse_unlabeled(raw)
            image = data.preprocess_for_eval(ex["image"], info, 32)[None]
            probs = tf.nn.softmax(teacher(image, training=False))[0].numpy()
            w.write(data.pseudo_label_example(ex["image"].numpy(), ex["id"].numpy().decode(),
                                              probs, copies=1 + i % 3).SerializeToString())
    model_dir = str(tmp_path / "student")
    student = main.StudentConfig(unlabel_data_dir=str(out), teacher_model_dir=teacher_dir,
                                 unlabel_ratio=2.0, label_type="hard")
    results = main.train_and_evaluate(
        tiny(fashion_mnist_dir, train_steps=6, train_batch_size=16, log_every_steps=3,
             student=student), model_dir)
    assert "+ 32 unlabeled" in logs() and "step 6/6" in logs()
    assert results[model_dir]["global_step"] == 6
    assert json.load(open(os.path.join(model_dir, "flags.json")))["unlabel_ratio"] == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("ablation", [dict(unlabeled_noise="none"), dict(noised_teacher=True)])
def test_student_with_on_the_fly_teacher(ablation, teacher_dir, fashion_mnist_dir, tmp_path, logs):
    student = main.StudentConfig(teacher_model_dir=teacher_dir, unlabel_ratio=1.5, **ablation)
    main.train_and_evaluate(tiny(fashion_mnist_dir, train_steps=6, train_batch_size=16,
                                 log_every_steps=3, mode="train", student=student),
                            str(tmp_path / "student"))
    assert "+ 24 unlabeled" in logs() and "step 6/6" in logs()
    unl = [l for l in logs().splitlines() if "step 6/6" in l][0]
    assert float(unl.split("unl ")[1].split(")")[0]) > 0   # the teacher's targets reach the loss


@pytest.mark.slow
def test_labels_beyond_num_classes_are_named(fashion_mnist_dir, tmp_path):
    config = tiny(fashion_mnist_dir, train_steps=20, train_batch_size=32, mode="train",
                  num_classes=5)
    with pytest.raises(common.UserError,
                       match=r"bad input record in .*labeled.*: label outside \[0, num_classes=5\)"):
        main.train_and_evaluate(config, str(tmp_path / "m"))


@pytest.mark.slow
def test_diverging_loss_stops_with_finite_checkpoints(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    config = tiny(fashion_mnist_dir, train_steps=20, train_batch_size=32, mode="train",
                  base_learning_rate=1e30, save_checkpoints_steps=1)
    with pytest.raises(common.UserError, match="loss became"):
        main.train_and_evaluate(config, model_dir)
    latest = tf.train.latest_checkpoint(model_dir)
    for name, _ in tf.train.list_variables(latest) if latest else []:
        value = tf.train.load_variable(latest, name)
        if np.asarray(value).dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


# ------------------------------------------------------------------------------------------
# The command line itself: a user mistake is one line `error: ...` and exit code 2.
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_reports_a_mistake_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--model_name=efficientnet-b9",
                           f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'm'}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "efficientnet-b9" in last, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------
# --precision=bfloat16: bf16 compute, float32 variables, optimizer slots, EMA and losses.
# ------------------------------------------------------------------------------------------
@pytest.fixture
def float32_after():
    """Tests that set a precision: the float32 policy again afterwards (it is process-global)."""
    yield
    common.set_precision("float32")


def test_precision_is_set_before_any_model_is_built(tmp_path, monkeypatch, float32_after):
    class Built(Exception):
        pass

    def trainer(*args, **kwargs):
        raise Built(keras.config.dtype_policy().name)
    monkeypatch.setattr(main, "Trainer", trainer)
    monkeypatch.setattr(common, "count_records", lambda files: 64)
    monkeypatch.setattr(common, "list_files", lambda *a: ["labeled-00000-of-00001"])
    with pytest.raises(Built, match="^mixed_bfloat16$"):
        main.train_and_evaluate(tiny(tmp_path, precision="bfloat16", label_data_dir="l",
                                     eval_data_dir="e"), str(tmp_path / "m"))
    with pytest.raises(common.UserError, match="--precision must be one of float32, bfloat16"):
        main.train_and_evaluate(tiny(tmp_path, precision="float16"), str(tmp_path / "m"))


def test_bfloat16_student_step_keeps_float32_state(float32_after):
    """A student step under --precision=bfloat16 (the chosen split computes the 1x1 convs in
    bf16): finite float32 losses; weights, EMA and optimizer slots float32; the EMA moves."""
    common.set_precision("bfloat16")
    spec = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                small_image=True, width=0.25, depth=0.25, mean=[72.9], std=[90.0])
    config = main.TrainConfig(moving_average_decay=0.99, student=main.StudentConfig(
        unlabel_data_dir="records", unlabel_ratio=1.0))
    t = main.Trainer(config, spec, SCHEDULE)
    assert t.model.get_layer("top_conv").compute_dtype == "bfloat16"
    rng = np.random.RandomState(0)
    batch = (rng.uniform(0, 255, (16, 32, 32, 1)).astype("float32"), rng.randint(0, 10, 16),
             rng.uniform(0, 255, (16, 32, 32, 1)).astype("float32"),
             np.full((16, 10), 0.1, np.float32))
    step = t.make_train_step(16, 16)
    before = [np.asarray(w) for w in t.ema_weights]
    it = iter(tf.data.Dataset.from_tensors(batch).repeat())
    losses = [step(it) for _ in range(3)]
    assert all(out["loss"].dtype == tf.float32 and np.isfinite(out["loss"]) for out in losses)
    state = t.model_weights + t.ema_weights + list(t.optimizer.variables)
    assert {v.dtype for v in state if "iteration" not in v.path} == {"float32"}
    assert any(not np.array_equal(b, w) for b, w in zip(before, t.ema_weights))


# ------------------------------------------------------------------------------------------
# --deterministic: the same command gives the same weights, also across a resume.
# ------------------------------------------------------------------------------------------
DETERMINISM_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import main
    data_dir, work, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
    for run in runs:  # name:steps:deterministic, e.g. c:3:1 then c:6:1 (a resume)
        name, steps, deterministic = run.split(":")
        main.train_and_evaluate(main.TrainConfig(
            model_name="efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25,
            data_dir=data_dir, train_steps=int(steps), train_batch_size=32, mode="train",
            save_checkpoints_steps=3, deterministic=deterministic == "1"), f"{work}/{name}")
""")


def checkpoint_tensors(model_dir):
    """Every tensor of the latest checkpoint (model, EMA model, optimizer slots, step, the model
    noise's seed states) but the saved input position."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("input/", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def same_bits(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.slow
def test_deterministic_runs_give_the_same_weights_bit_for_bit(fashion_mnist_dir, tmp_path):
    """--deterministic: two processes running the same 6 steps save identical tensors, and a run
    stopped after its checkpoint at step 3 and resumed to 6 saves them too (the input position is
    in the checkpoint). Without the flag a resumed run reads a fresh shuffle: other weights."""
    # (--deterministic enables op determinism for the rest of its process: default runs first)
    jobs = {"p1": ("a:6:1", "c:3:1", "c:6:1"), "p2": ("d:6:0", "e:3:0", "e:6:0", "b:6:1")}
    procs = {name: subprocess.Popen(
        [sys.executable, "-c", DETERMINISM_SCRIPT, fashion_mnist_dir, str(tmp_path), *args],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in jobs.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    t = lambda run: checkpoint_tensors(str(tmp_path / run))
    reference = t("a")
    assert any("ema_model" in k for k in reference) and any("optimizer" in k for k in reference)
    assert same_bits(reference, t("b"))      # another process, the same bits
    assert same_bits(reference, t("c"))      # stopped at step 3, resumed: the same
    assert not same_bits(t("d"), t("e"))     # without the flag: a fresh shuffle on resume


# ------------------------------------------------------------------------------------------
# tf.distribute: two logical CPU devices, and two workers on loopback.
# ------------------------------------------------------------------------------------------
LOSSES_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import common
    import main
    spec = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                small_image=True, width=0.25, depth=0.25, dropout_rate=0.0,
                stochastic_depth_rate=0.0, mean=[72.9], std=[90.0])
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (8, 16, 32, 32, 1)).astype("float32")
    y = rng.randint(0, 10, (8, 16)).astype("int32")
    out = {}
    for name in ("default", "mirrored"):
        strategy = common.make_strategy(name)
        t = main.Trainer(main.TrainConfig(), spec, dict(peak_lr=0.01, warmup_steps=0,
                         decay_steps=100, decay_factor=0.97), strategy)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        it = iter(strategy.experimental_distribute_dataset(ds))
        step = t.make_train_step(16, 0)
        out[name] = dict(replicas=strategy.num_replicas_in_sync,
                         losses=[float(step(it)["loss"]) for _ in range(6)])
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_two_devices_follow_one_device():
    proc = subprocess.run([sys.executable, "-c", LOSSES_SCRIPT], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mirrored"]["replicas"] == 2 and out["default"]["replicas"] == 1
    one, two = np.array(out["default"]["losses"]), np.array(out["mirrored"]["losses"])
    assert np.all(np.isfinite(one)) and not np.allclose(one, one[0])  # the weights move
    # NOTE: BN statistics are per replica (8 images each instead of 16), so the losses agree only
    # approximately; the first step's loss differs by BN alone.
    assert np.allclose(one, two, rtol=0.05), (one.tolist(), two.tolist())


WORKER_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import numpy as np
    import tensorflow as tf
    import common
    import main
    spec = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                small_image=True, width=0.25, depth=0.25, dropout_rate=0.2,
                stochastic_depth_rate=0.2, mean=[72.9], std=[90.0])
    strategy = common.make_strategy("multi_worker")
    t = main.Trainer(main.TrainConfig(), spec, dict(peak_lr=0.01, warmup_steps=0, decay_steps=100,
                                                    decay_factor=0.97), strategy)
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (64, 32, 32, 1)).astype("float32")
    y = rng.randint(0, 10, (64,)).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    it = iter(strategy.experimental_distribute_dataset(ds.with_options(opts)))
    step = t.make_train_step(16, 0)
    losses = [float(step(it)["loss"]) for _ in range(3)]
    digest = lambda ws: hashlib.sha256(b"".join(w.numpy().tobytes() for w in ws)).hexdigest()
    digests = dict(trainable=digest(t.model.trainable_weights),
                   optimizer=digest([v for v in t.optimizer.variables if v.dtype == "float32"]),
                   bn_statistics=digest(t.model.non_trainable_weights))
    print(json.dumps(dict(losses=losses, digests=digests, step=int(t.step.numpy()))))
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_two_processes_agree_on_weights():
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0]["step"] == outs[1]["step"] == 3
    # The all-reduced gradients keep weights and optimizer slots identical on both workers.
    assert outs[0]["digests"]["trainable"] == outs[1]["digests"]["trainable"]
    assert outs[0]["digests"]["optimizer"] == outs[1]["digests"]["optimizer"]
    assert outs[0]["losses"] == outs[1]["losses"]
