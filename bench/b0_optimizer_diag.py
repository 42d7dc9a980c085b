"""Diagnostic (issue: teacher training): why the full-width B0 under-fits 4,000 labels.

Runs main.py in-process with its optimizer swapped (env DIAG_OPT): rmsprop (the reference's, as
main.py builds it), adam (Keras Adam), nesterov (Keras SGD, momentum 0.9, Nesterov). Short runs
(400 steps, crop + flip only, no dropout or stochastic depth) compare how fast each fits.
  DIAG_OPT=nesterov python3 bench/b0_optimizer_diag.py --model_dir=runs/diag-nesterov \
    --model_name=efficientnet-b0 --small_image=true --train_steps=400 --augment_name=basic \
    --stochastic_depth_rate=0 --dropout_rate=0 --lr_warmup_epochs=2 --base_learning_rate=0.2 \
    --final_base_learning_rate=0.01 --log_every_steps=50
Results: bench/b0_optimizer_diag.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402
import common  # noqa: E402
import main  # noqa: E402

OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
}

if __name__ == "__main__":
    name = os.environ.get("DIAG_OPT", "rmsprop")
    if name in OPTIMIZERS:
        main.build_optimizer = lambda _, lr: OPTIMIZERS[name](lr)
    main.define_flags()
    common.run_main(main.main)
