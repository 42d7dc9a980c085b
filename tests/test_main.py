"""main.py: the pure pieces against hand computations, and real (tiny) runs on Fashion-MNIST."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import common  # noqa: E402
import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model_name=efficientnet-b0", "--width_coefficient=0.25", "--depth_coefficient=0.25"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def run(args, check=True, env=None, timeout=600):
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


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
    import keras
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
    import efficientnet_builder
    model = efficientnet_builder.build_model("efficientnet-b0", 10, image_size=32, num_channels=1,
                                             small_image=True, width=0.25, depth=0.25)
    total = sum(float(np.sum(w.numpy() ** 2)) / 2 for w in model.trainable_weights)
    bn_part = sum(float(np.sum(w.numpy() ** 2)) / 2 for w in model.trainable_weights
                  if "gamma" in w.path or "beta" in w.path)
    assert bn_part > 0
    assert float(main.weight_decay_loss(model, 1.0)) == pytest.approx(total - bn_part, rel=1e-5)


# ------------------------------------------------------------------------------------------
# Real runs (tiny model, a few steps) on the prepared Fashion-MNIST shards.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_dir(fashion_mnist_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("teacher"))
    proc = run(TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                       "--train_steps=300", "--train_batch_size=64", "--save_checkpoints_steps=150",
                       "--log_every_steps=50", "--randaug_mag=5", "--lr_warmup_epochs=1",
                       "--export_saved_model"])
    assert "step 300/300" in proc.stderr
    return model_dir


def test_teacher_trains_evaluates_and_writes_its_dir(teacher_dir):
    results = json.load(open(os.path.join(teacher_dir, "eval_results.json")))
    assert set(results) >= {"top_1", "top_5", "loss", "num_examples", "global_step"}
    assert results["num_examples"] == 10000 and results["global_step"] == 300
    assert results["top_1"] > 0.35          # chance is 0.10; 300 tiny steps reach ~65%
    assert results["top_5"] > results["top_1"]
    saved = json.load(open(os.path.join(teacher_dir, "flags.json")))
    assert saved["train_steps"] == 300 and saved["model_name"] == "efficientnet-b0"
    assert tf.train.latest_checkpoint(teacher_dir).endswith("ckpt-300")
    assert os.path.isdir(os.path.join(teacher_dir, "train"))   # TensorBoard events


def test_momentum_teacher_trains(fashion_mnist_dir, tmp_path):
    run(TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={tmp_path}", "--train_steps=200",
                "--train_batch_size=64", "--optimizer=momentum", "--base_learning_rate=0.4",
                "--lr_warmup_epochs=1", "--randaug_mag=5", "--log_every_steps=100"])
    assert json.load(open(tmp_path / "flags.json"))["optimizer"] == "momentum"
    assert json.load(open(tmp_path / "eval_results.json"))["top_1"] > 0.35  # chance: 0.10
    # The flag reached the optimizer: one momentum slot per weight (RMSProp keeps two: ms, mom).
    names = [n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path)))]
    slots = sum(n.startswith("optimizer/_variables/") for n in names)
    assert slots == sum(n.startswith("optimizer/_trainable_variables/") for n in names) > 0


def test_rerun_resumes_and_finished_run_only_reports(teacher_dir, fashion_mnist_dir, tmp_path):
    import shutil
    model_dir = str(tmp_path / "m")
    shutil.copytree(teacher_dir, model_dir)
    os.remove(os.path.join(model_dir, "eval_results.json"))
    common = TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                     "--train_batch_size=64", "--log_every_steps=10", "--randaug_mag=5",
                     "--lr_warmup_epochs=1"]
    proc = run(common + ["--train_steps=300", "--mode=train"])
    assert "nothing to do" in proc.stderr
    proc = run(common + ["--train_steps=310", "--mode=train"])
    assert "Resumed from" in proc.stderr and "step 310/310" in proc.stderr
    assert "step 10/310" not in proc.stderr
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-310")


def test_finetune_at_larger_resolution_keeps_shallow_layers(teacher_dir, fashion_mnist_dir,
                                                              tmp_path):
    import shutil
    import efficientnet_builder
    model_dir = str(tmp_path / "m")
    shutil.copytree(teacher_dir, model_dir)
    proc = run(TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                       "--train_steps=300", "--train_batch_size=64", "--randaug_mag=5",
                       "--lr_warmup_epochs=1", "--finetune_image_size=40",
                       "--finetune_epochs=0.4", "--log_every_steps=5"])
    assert "Fine-tuning at 40 px for 25 steps" in proc.stderr
    ft_dir = os.path.join(model_dir, "finetune_40")
    results = json.load(open(os.path.join(ft_dir, "eval_results.json")))
    assert results["global_step"] == 25 and results["top_1"] > 0.3
    before, _ = efficientnet_builder.load_model_dir(model_dir)
    after, cfg = efficientnet_builder.load_model_dir(ft_dir, use_ema=False)
    assert cfg["image_size"] == 40 and after.input_shape[1] == 40
    for name in ("stem_conv", "block1a_dwconv", "block4a_expand_bn"):
        for a, b in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights()):
            assert np.array_equal(a, b), name      # frozen, BN statistics included
    assert not np.allclose(before.get_layer("top_conv").get_weights()[0],
                           after.get_layer("top_conv").get_weights()[0])


def test_eval_uses_ema_weights_from_model_dir(teacher_dir):
    import efficientnet_builder
    ema, _ = efficientnet_builder.load_model_dir(teacher_dir)
    raw, _ = efficientnet_builder.load_model_dir(teacher_dir, use_ema=False)
    assert any(not np.allclose(a, b) for a, b in zip(ema.get_weights(), raw.get_weights()))


def test_exported_saved_model_serves_the_ema_model(teacher_dir):
    import efficientnet_builder
    ema, _ = efficientnet_builder.load_model_dir(teacher_dir)
    served = tf.saved_model.load(os.path.join(teacher_dir, "saved_model"))
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    assert np.allclose(served.serve(x).numpy(), ema(x, training=False).numpy(), atol=1e-4)


def test_student_from_pseudo_labeled_records(teacher_dir, fashion_mnist_dir, tmp_path):
    import data
    import efficientnet_builder
    # Pseudo-labeled records as filter_balance.py writes them: 40 unlabeled images, labels from
    # the teacher, copies 1..3.
    teacher, cfg = efficientnet_builder.load_model_dir(teacher_dir)
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
    proc = run(TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                       f"--unlabel_data_dir={out}", f"--teacher_model_dir={teacher_dir}",
                       "--train_steps=6", "--train_batch_size=16", "--unlabel_ratio=2",
                       "--log_every_steps=3", "--label_type=hard"])
    assert "+ 32 unlabeled" in proc.stderr and "step 6/6" in proc.stderr
    assert json.load(open(os.path.join(model_dir, "eval_results.json")))["global_step"] == 6


@pytest.mark.parametrize("ablation", ["--unlabeled_noise=none", "--noised_teacher"])
def test_student_with_on_the_fly_teacher(ablation, teacher_dir, fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "student")
    proc = run(TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                       f"--teacher_model_dir={teacher_dir}", "--train_steps=6",
                       "--train_batch_size=16", "--unlabel_ratio=1.5", "--log_every_steps=3",
                       ablation, "--mode=train"])
    assert "+ 24 unlabeled" in proc.stderr and "step 6/6" in proc.stderr
    unl = [l for l in proc.stderr.splitlines() if "step 6/6" in l][0]
    assert float(unl.split("unl ")[1].split(")")[0]) > 0   # the teacher's targets reach the loss


def test_smaller_student_is_refused(teacher_dir, fashion_mnist_dir, tmp_path):
    proc = run(["--model_name=efficientnet-b0", "--width_coefficient=0.1",
                "--depth_coefficient=0.1", f"--data_dir={fashion_mnist_dir}",
                f"--model_dir={tmp_path / 's'}", f"--teacher_model_dir={teacher_dir}",
                "--train_steps=2"], check=False)
    assert proc.returncode != 0
    assert "smaller than the teacher" in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------
# User mistakes: one clear line, non-zero exit, checkpoints untouched.
# ------------------------------------------------------------------------------------------
def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in last, last


@pytest.mark.parametrize("case", ["model_name", "missing_data", "num_classes", "corrupt", "nan"])
def test_bad_input_gives_one_line(case, fashion_mnist_dir, tmp_path):
    model_dir = tmp_path / "m"
    base = TINY + [f"--data_dir={fashion_mnist_dir}", f"--model_dir={model_dir}",
                   "--train_steps=20", "--train_batch_size=32", "--mode=train"]
    if case == "model_name":
        proc = run(base + ["--model_name=efficientnet-b9"], check=False)
        assert_one_line_error(proc, "efficientnet-b9")
    elif case == "missing_data":
        proc = run(base + [f"--label_data_dir={tmp_path / 'nope'}"], check=False)
        assert_one_line_error(proc, "nope")
    elif case == "num_classes":
        proc = run(base + ["--num_classes=5"], check=False)
        assert_one_line_error(proc, "num_classes")
    elif case == "corrupt":
        bad = tmp_path / "bad"
        bad.mkdir()
        good = data_files(fashion_mnist_dir, "labeled")[0]
        raw = open(good, "rb").read()
        (bad / "labeled-00000-of-00001.tfrecord").write_bytes(raw[:5000] + b"\x00" * 64 + raw[5000:9000])
        proc = run(base + [f"--label_data_dir={bad}"], check=False)
        assert_one_line_error(proc, "labeled-00000-of-00001.tfrecord")
    else:
        proc = run(base + ["--base_learning_rate=1e30", "--save_checkpoints_steps=1"], check=False)
        assert_one_line_error(proc, "loss became")
        latest = tf.train.latest_checkpoint(str(model_dir))
        for name, _ in tf.train.list_variables(latest) if latest else []:
            value = tf.train.load_variable(latest, name)
            if np.asarray(value).dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def data_files(root, split):
    return sorted(os.path.join(root, split, f) for f in os.listdir(os.path.join(root, split))
                  if ".tfrecord" in f)


# ------------------------------------------------------------------------------------------
# tf.distribute: two logical CPU devices, and two workers on loopback.
# ------------------------------------------------------------------------------------------
LOSSES_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import main
    info_cfg = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
                    small_image=True, width=0.25, depth=0.25, dropout_rate=0.0,
                    stochastic_depth_rate=0.0, mean=[72.9], std=[90.0])
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (8, 16, 32, 32, 1)).astype("float32")
    y = rng.randint(0, 10, (8, 16)).astype("int32")
    out = {}
    for name in ("default", "mirrored"):
        strategy = common.make_strategy(name)
        t = main.Trainer(strategy, info_cfg, peak_lr=0.01, warmup_steps=0, decay_steps=100,
                         decay_factor=0.97, weight_decay=1e-5, label_smoothing=0.1,
                         ema_decay_rate=0.9999, seed=0)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        it = iter(strategy.experimental_distribute_dataset(ds))
        step = t.make_train_step(16, 0)
        out[name] = dict(replicas=strategy.num_replicas_in_sync,
                         losses=[float(step(it)["loss"]) for _ in range(6)])
    print(json.dumps(out))
""")


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
    import main
    cfg = dict(model_name="efficientnet-b0", num_classes=10, image_size=32, num_channels=1,
               small_image=True, width=0.25, depth=0.25, dropout_rate=0.2,
               stochastic_depth_rate=0.2, mean=[72.9], std=[90.0])
    strategy = common.make_strategy("multi_worker")
    t = main.Trainer(strategy, cfg, peak_lr=0.01, warmup_steps=0, decay_steps=100,
                     decay_factor=0.97, weight_decay=1e-5, label_smoothing=0.1,
                     ema_decay_rate=0.9999, seed=0)
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
