#!/usr/bin/env bash
# The reproducible Noisy Student run (paper Sec. 2, Algorithm 1; Sec. 3.1 "Iterative training"):
# train a teacher, then three times: the unnoised teacher labels the unlabeled images, confident
# images are filtered and balanced per class, an equal-or-larger noised student is trained on
# labeled + pseudo-labeled data and evaluated; student i is teacher i+1. Ends with a report.
#
#   bash run_iterations.sh --preset=demo           # the README's first command, runs/demo-seed0
#   bash run_iterations.sh                         # preset quick (the claims study's)
#   bash run_iterations.sh --preset=full --seed=1 --workdir=runs/full-s1
#   bash run_iterations.sh --preset=smoke          # the whole pipeline on a tiny budget (~5 min)
#   bash run_iterations.sh --student_widths=0.25,0.35,0.5 --student_depths=0.25,0.35,0.5  # growing
#   bash run_iterations.sh --unlabel_ratios=1,2,4  # unlabeled batch per labeled batch, per iteration
#   bash run_iterations.sh --preset=full --student_epochs=50  # students' epochs (or 50,50,75)
#   bash run_iterations.sh --preset=full --ablation --jobs=2  # + Table 6, hard labels, no filtering
#       (--ablation=hard_labels,no_filter: only those of no_aug, no_noise, hard_labels, no_filter,
#       on_the_fly, noised_teacher)
#   bash run_iterations.sh --preset=paper --label_data_dir='train-*' --eval_data_dir='validation-*' \
#       --unlabel_data_dir='jft-*' --plan  # the paper's run (Sec. 3.1), printed as a cluster's jobs
#   bash run_iterations.sh --preset=svhn --label_data_dir=... --eval_data_dir=... \
#       --unlabel_data_dir=...               # the reference's SVHN example (B0 -> B0), its records
#   --plan   print every stage's command in order, with the stages it waits for; runs nothing
#
# Your own data (a preset's schedule, named in the run's first lines and the report; --preset=smoke
# checks a new dataset in minutes):
#   bash run_iterations.sh --dataset=folder --labeled_dir=L --unlabeled_dir=U --test_dir=T
#       (L and T: one sub-folder of images per class; U: a flat or nested pile, sub-folders mean
#       nothing; converted once into the workdir's data/, with its measured settings)
#   bash run_iterations.sh --dataset=imagenet --label_data_dir='train-*' \
#       --eval_data_dir='validation-*' --unlabel_data_dir='unlabeled-*'  # ImageNet-schema records
#   --teacher_model=efficientnet-b0 --student_models=efficientnet-b1,efficientnet-b2,efficientnet-b3
#       models grown by name, each at its own resolution (default: efficientnet-b0 for every model;
#       Fashion-MNIST: B0 at width/depth 0.25; --preset=paper: B7 -> L2, L2, L2)
#   --supervised_baseline      also train the last student's architecture on the labels only
#   --init_checkpoint=PATH     the teacher starts from pretrained weights (a Keras .h5/.keras file,
#       an official TF checkpoint prefix such as efficientnet-b0/model.ckpt, or its directory)
#   --teacher_checkpoint=PATH  the teacher is this checkpoint as it is (the data's classes): no
#       training, evaluated like a trained teacher; --teacher_finetune_epochs=N: a checkpoint of
#       another class count fine-tuned N epochs on the labels (1/10 of the peak lr, no warm-up)
#   The schedule (default: the preset's): --teacher_epochs=N, --train_batch_size=N (labeled),
#       --base_learning_rate=LR (per 256 labeled images), --lr_decay_epochs=E (staircase x0.97),
#       --final_base_learning_rate=LR (decay chosen to end there; 0: off), --randaug_mag=M,
#       --image_sizes=T,S1,S2,S3 (training resolution per model, 0: the model's own),
#       --finetune_sizes=S1,S2,S3 (fine-tune student i at this resolution after training, 0: none)
#   --strategy=default|mirrored|multi_worker|tpu --tpu=NAME  for training, labeling and evaluation
#   --jobs=N                   label with N parallel label_data.py jobs (same bytes as one job);
#       train --ablation's students N at a time beside student 1 (same numbers as one at a time);
#       with --plan: N tasks per labeling and filtering pass
#   --precision=bfloat16       train, label, evaluate with bf16 in 1x1 convs (bench/bf16_step.md)
#   --num_images_per_class=K   K after balancing; default: the preset's on the data it was made
#       for, else unlabeled images / classes (a uniform pile's share; paper: 130K for ImageNet)
#   --num_labeled_per_class=N --unlabeled_shards=S  Fashion-MNIST's split: N labels per class
#       (default 400), the first S of the 8 unlabeled shards (default: the preset's)
#   --train_flags='--train_steps=20 ...'  appended to every main.py command (overrides)
#   Relative paths in the flags are read from the directory the command is run in.
#   --teacher_only             train and evaluate the teacher, then stop (does my data train?)
#   --iterations=N             1 to 3 students (default: the preset's, 3; svhn: 1), e.g. 1 with
#       --ablation: Table 6's one iteration
#   --allow_weak_teacher       label even with a teacher near chance (by default the run stops)
# Small data: demo, quick and full count an epoch as at least 24 steps; a labeled set smaller
#   than the preset's batch trains with a batch of its size (the lr, per 256, scales with it);
#   folders of small images (<= 64 px) get B0 at width/depth 0.25, larger ones B0. The first
#   lines (and --plan) state the net, the batch and each model's steps, then (teacher's step 10)
#   the time.
#   Robustness (Sec. 3.3-3.4) is evaluated on Fashion-MNIST only.
#
# Produces in the workdir: data/, teacher/, iter{1,2,3}/{labels,filtered,student}/, ablation/,
# report.json, report.md and plots. Every stage writes to a temporary name and renames when done;
# rerunning the same command skips finished stages and resumes the unfinished
# one from its last checkpoint.
set -euo pipefail
CALLER=$PWD  # relative path flags name files from where the user ran the command (abs_path)
cd "$(dirname "$0")"

main() {  # Algorithm 1: the teacher, then three iterations of label, filter and balance, student
  parse_flags "$@"
  preset
  check_flags
  [ -z "${TEACHER_ONLY:-}" ] || { ITERATIONS=0; EVAL_ROBUSTNESS=0; }
  if [ -n "$PLAN" ]; then fit_data; plan_header; steps_plan; else  # (--plan: nothing converted)
    [ -n "${SKIP_SETUP:-}" ] || bash setup.sh
    mkdir -p "$WORKDIR"
    log "schedule: $SCHEDULE_NOTE"
  fi
  START=$(date +%s)
  prepare_data
  [ -n "$PLAN" ] || { fit_data; steps_plan; }
  PIDS=()
  trap kill_jobs EXIT  # also on SIGTERM: a killed driver stops its background jobs
  # Step 1: the teacher, trained on the labeled images (or a published checkpoint as it is).
  model_settings 0 "$TEACHER_NAME"
  TEACHER=(${STEPS[@]+"${STEPS[@]}"} ${EP:+--train_epochs="$EP"} "${SCHED[@]}")
  TEACHER_SIZE=(${IMG_FLAG[@]+"${IMG_FLAG[@]}"})
  if [ -n "${TEACHER_CHECKPOINT:-}" ]; then teacher_from_checkpoint; else
    train "$WORKDIR/teacher" "$SEED" "${TEACHER[@]}" ${TEACHER_SIZE[@]+"${TEACHER_SIZE[@]}"} \
      ${INIT_CHECKPOINT:+--init_checkpoint="$INIT_CHECKPOINT"} 2> >(speed "${IMAGES:-0}" >&2)
  fi
  TEACHER_DIR="$WORKDIR/teacher"
  for (( i = 1; i <= ITERATIONS; i++ )); do
    IT="$WORKDIR/iter$i"
    [ -n "$PLAN" ] || mkdir -p "$IT"
    # Step 2: the unnoised teacher labels every unlabeled shard (skips shards already labeled).
    done_or_run "$IT/labels/.complete" "iter $i: label" label "$TEACHER_DIR" "$IT/labels" "$PRECISION"
    K=${PER_CLASS_FLAG:-$PER_CLASS}
    [ "$DATASET" = "$MADE_FOR" ] || [ -n "${PER_CLASS_FLAG:-}" ] || K=$(per_class "$IT/labels" "$TEACHER_DIR")
    # Step 3: confidence filtering and class balancing (stats, merge, write and report in one job).
    FILTER=(--input_pattern="$IT/labels/*.tfrecord" --work_dir="$IT/filter_work")
    if [ -n "$PLAN" ]; then plan_filter; else
      done_or_run "$IT/filtered/summary.json" "iter $i: filter and balance" \
        $PY filter_balance.py all "${FILTER[@]}" --output_dir="$IT/filtered" \
          --num_images_per_class="$K" --min_threshold="$THRESHOLD" --seed="$SEED"
    fi
    # Step 4: the noised student, trained from scratch on labeled + pseudo-labeled data.
    MODEL=$(field "${STUDENT_MODELS:-$MODELS}" "$i"); MODEL=${MODEL:-$TEACHER_NAME}
    model_settings "$i" "$MODEL"
    STUDENT=(${STEPS[@]+"${STEPS[@]}"} "${SCHED[@]}")
    SIZE=()
    [ -z "${STUDENT_WIDTHS:-}" ] || SIZE+=(--width_coefficient="$(field "$STUDENT_WIDTHS" "$i")")
    [ -z "${STUDENT_DEPTHS:-}" ] || SIZE+=(--depth_coefficient="$(field "$STUDENT_DEPTHS" "$i")")
    [ -z "${STUDENT_MODELS:-$MODELS}" ] || SIZE+=(--model_name="$MODEL")
    SIZE+=(${IMG_FLAG[@]+"${IMG_FLAG[@]}"} ${FT_FLAG[@]+"${FT_FLAG[@]}"})
    start "iter$i/student" train "$IT/student" $(( SEED * 10 + i )) "${STUDENT[@]}" ${EP:+--train_epochs="$EP"} \
      ${SIZE[@]+"${SIZE[@]}"} --unlabel_ratio="$(field "$RATIOS" "$i")" --unlabel_data_dir="$IT/filtered" \
      --teacher_model_dir="$TEACHER_DIR"
    [ "$i" != 1 ] || [ -z "${ABLATION:-}" ] || ablation  # Table 6 beside student 1, --jobs at a time
    finish
    # Step 5: the student becomes the teacher (fine-tuned, if it was: the paper's best L2).
    # NOTE: the paper does not say whether the next teacher is the fine-tuned L2; this one is.
    TEACHER_DIR="$IT/student"; [ "$FT" = 0 ] || TEACHER_DIR="$IT/student/finetune_$FT"
  done
  if [ -n "$STUDENT_WIDTHS$STUDENT_DEPTHS${STUDENT_MODELS:-}${BASELINE:-}" ]; then
    # The paper's baseline for a student is a supervised model of the same architecture (Tables 2-4):
    # trained like the teacher at student 3's size, it shows how much of the gain is only the size.
    train "$WORKDIR/supervised_baseline" $(( SEED * 10 + 4 )) "${TEACHER[@]}" ${SIZE[@]+"${SIZE[@]}"}
  fi
  [ "$EVAL_ROBUSTNESS" != 1 ] || robustness
  REPORT=(report.py --workdir="$WORKDIR" --preset="$PRESET" --schedule="$SCHEDULE_NOTE")
  if [ -n "$PLAN" ]; then WAIT_ALL=1 plan_stage "report" "$WORKDIR/report.md" 1 $PY "${REPORT[@]}"
  else $PY "${REPORT[@]}" --seconds=$(( $(date +%s) - START )); fi
}

abs_path() {  # abs_path P: a relative P (a glob too) made absolute against the caller's directory;
  # as typed when the caller ran from here (a run's recorded stage commands stay the same)
  case "$1" in
    /*|*://*|"") echo "$1" ;;
    *) if [ "$CALLER" = "$PWD" ]; then echo "$1"; else echo "$CALLER/$1"; fi ;;
  esac
}
check_checkpoint() {  # check_checkpoint FLAG PATH: a file, a directory or a TF checkpoint prefix
  [ -z "$2" ] || [[ "$2" == *://* ]] || [ -e "$2" ] || [ -e "$2.index" ] ||   # remote: main.py's
    fail "--$1=$2 does not exist (expected a Keras .h5/.keras file, a TF checkpoint prefix with" \
         "its .index, or a directory)"
}

parse_flags() {
  local arg
  PRESET=quick; WORKDIR=""; SEED=0; PY=${PYTHON:-python3}; DATASET=""; JOBS=1; TRAIN_FLAGS=""
  PRECISION=float32; PLAN=""; STRATEGY=()
  ABLATION_STUDENTS=no_aug,no_noise,hard_labels,no_filter,on_the_fly,noised_teacher
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
  for arg in "$@"; do
    case "$arg" in
      --preset=*) PRESET=${arg#*=} ;;
      --workdir=*) WORKDIR=$(abs_path "${arg#*=}") ;;
      --seed=*) SEED=${arg#*=} ;;
      --student_widths=*) WIDTHS_FLAG=${arg#*=} ;;
      --student_depths=*) DEPTHS_FLAG=${arg#*=} ;;
      --unlabel_ratios=*) RATIOS_FLAG=${arg#*=} ;;
      --student_epochs=*) STUDENT_EPOCHS=${arg#*=} ;;
      --dataset=*) DATASET=${arg#*=} ;;
      --labeled_dir=*) LABELED_DIR=$(abs_path "${arg#*=}") ;;
      --unlabeled_dir=*) UNLABELED_DIR=$(abs_path "${arg#*=}") ;;
      --test_dir=*) TEST_DIR=$(abs_path "${arg#*=}") ;;
      --label_data_dir=*) LABEL_DATA_DIR=$(abs_path "${arg#*=}") ;;
      --eval_data_dir=*) EVAL_DATA_DIR=$(abs_path "${arg#*=}") ;;
      --unlabel_data_dir=*) UNLABEL_DATA_DIR=$(abs_path "${arg#*=}") ;;
      --teacher_model=*) TEACHER_MODEL=${arg#*=} ;;
      --student_models=*) STUDENT_MODELS=${arg#*=} ;;
      --supervised_baseline) BASELINE=1 ;;
      --init_checkpoint=*) INIT_CHECKPOINT=$(abs_path "${arg#*=}") ;;
      --jobs=*) JOBS=${arg#*=} ;;
      --precision=*) PRECISION=${arg#*=} ;;
      --num_images_per_class=*) PER_CLASS_FLAG=${arg#*=} ;;
      --num_labeled_per_class=*) LABELED_PER_CLASS=${arg#*=} ;;
      --unlabeled_shards=*) UNLABELED_SHARDS_FLAG=${arg#*=} ;;
      --train_flags=*) TRAIN_FLAGS=${arg#*=} ;;
      --skip_setup) SKIP_SETUP=1 ;;
      --ablation) ABLATION=$ABLATION_STUDENTS ;;
      --ablation=*) ABLATION=${arg#*=} ;;
      --allow_weak_teacher) WEAK=1 ;;
      --teacher_only) TEACHER_ONLY=1 ;;
      --iterations=*) ITERATIONS_FLAG=${arg#*=} ;;
      --plan) PLAN=1 ;;
      --teacher_checkpoint=*) TEACHER_CHECKPOINT=$(abs_path "${arg#*=}") ;;
      --teacher_finetune_epochs=*) TEACHER_FINETUNE_EPOCHS=${arg#*=} ;;
      --teacher_epochs=*) TEACHER_EPOCHS_FLAG=${arg#*=} ;;
      --train_batch_size=*) BATCH_FLAG=${arg#*=} ;;
      --base_learning_rate=*) LR_FLAG=${arg#*=} ;;
      --final_base_learning_rate=*) FINAL_LR_FLAG=${arg#*=} ;;
      --lr_decay_epochs=*) DECAY_FLAG=${arg#*=} ;;
      --randaug_mag=*) MAG_FLAG=${arg#*=} ;;
      --image_sizes=*) IMAGE_SIZES_FLAG=${arg#*=} ;;
      --finetune_sizes=*) FINETUNE_SIZES_FLAG=${arg#*=} ;;
      --strategy=*|--tpu=*) STRATEGY+=("$arg") ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
      *) fail "unknown argument $arg (use --preset=smoke|demo|quick|full|paper|svhn --workdir=DIR --seed=N" \
              "--student_widths=W1,W2,W3 --student_depths=D1,D2,D3 --unlabel_ratios=R1,R2,R3" \
              "--student_epochs=N|N1,N2,N3 --ablation; --help for the data, model and job flags)" ;;
    esac
  done
  WORKDIR=${WORKDIR:-runs/$PRESET-seed$SEED}; DATA="$WORKDIR/data"
}

preset() {  # the schedule, sizes and data of --preset (every knob a variable; flags override)
  # One case per preset: what it runs, prints and takes (why: bench/presets_history.md). MADE_FOR:
  # the data its schedule was made for (its K applies there only); NET: the teacher's (and
  # students') architecture; STEPS: fixed steps; TEACHER_EPOCHS, EPOCHS, RATIOS (unlabeled batch
  # per labeled batch): per model; BATCH .. NOISE: main.py's flags (empty: main.py's default).
  ABLATION_STEPS=(); WIDTHS=""; DEPTHS=""; STEPS=(); NOISE=(); FINETUNE=(); MODELS=""; RULE=""; EPOCHS=""
  TEACHER_EPOCHS=""; BATCH=""; LR=""; FINAL_LR=""; WARMUP=""; DECAY=""; MAG=""
  IMAGE_SIZES=""; FINETUNE_SIZES=""; ITERATIONS=3; THRESHOLD=0.3; EVAL_ROBUSTNESS=0
  # NOTE: demo, quick and full count an epoch as at least MIN_EPOCH_STEPS = 24 steps (main.py
  # --min_steps_per_epoch): 25 epochs on 300 labeled images train 600 steps, not the 59 whose
  # teacher ended at chance (BN's statistics never settled, issue 34); 4,000 labels: unchanged.
  # Every preset: fewer labeled images than BATCH train with a batch of that many (fit_data).
  MIN_EPOCH_STEPS=""
  # The data split is SEED's; each model has its own --seed: the teacher SEED, student i SEED*10+i
  # (the ablation's students share student 1's), the supervised baseline SEED*10+4.
  case "$PRESET" in
    smoke|demo|quick|full) MADE_FOR=fashion_mnist ;; paper) MADE_FOR=imagenet ;; svhn) MADE_FOR=svhn ;;
    *) fail "--preset=$PRESET is not one of smoke, demo, quick, full, paper, svhn" ;;
  esac
  DATASET=${DATASET:-$MADE_FOR}
  TEACHER_NAME=efficientnet-b0
  NET=(--model_name=efficientnet-b0 --width_coefficient=0.25 --depth_coefficient=0.25)  # 131k params
  [ "$DATASET" = fashion_mnist ] || NET=(--model_name=efficientnet-b0)
  case "$PRESET" in
    # smoke: the plumbing, not the paper. Algorithm 1 end to end with 300-step models (BN's moving
    #   statistics need that many) on 1 of 8 unlabeled shards, K = 600. Prints the report table,
    #   every model well above chance (10%); no gain expected. ~5 min (bench/smoke_preset.md).
    smoke)
      FOR="checking the plumbing in minutes (300 steps per model), not accuracy"
      STEPS=(--train_steps=300); BATCH=32; WARMUP=0.5; MAG=5
      EPOCHS=1,1,1; RATIOS=1,1,1  # (--train_steps wins over the epochs)
      UNLABELED_SHARDS=1; PER_CLASS=600; ROBUST_EXAMPLES=0
      ABLATION_STEPS=(--train_steps=60) ;;  # --ablation here only checks the plumbing
    # quick: the claims study's schedule (bench/claims.md). Sec. 2 and 3.1 at demo scale: a
    #   25-epoch teacher, students of 30, 30, 40 epochs at unlabeled ratios 1, 2, 3, all 56k
    #   unlabeled images, K = 4,000; robustness on 500 test images. Student 3 3.7-4.8 points above
    #   the teacher, each student above the one before on 6 of 7 runs (seed 0: 78.94 -> 83.71,
    #   bench/noisy_student_quick.md). 28 min on a Sapphire Rapids or Zen 5, 40 on an Ice Lake.
    # demo: the README's first command, quick cut for the slowest CPU here (issue 31): a 20-epoch
    #   teacher, students of 25, 25, 30 epochs, each at unlabeled ratio 1. Prints every student
    #   above the one before, student 3 +4.5 / +4.8 over the teacher on seeds 0 / 1 (77.04 -> 81.49,
    #   76.51 -> 81.26; bench/noisy_student_demo.md). 23.3 min on an Ice Lake (~30-33 on a Zen 3).
    # NOTE: 2-core schedules: peak lr 0.032 per 256 (reference 0.016), final lr 1/20, M=5 (its SVHN run).
    # NOTE: students train 1.2x, 1.2x, 1.6x the teacher's epochs (demo 1.25x, 1.25x, 1.5x;
    #   full 1.5x, 1.5x, 2x; paper: 700, 2x the supervised 350).
    # NOTE: the unlabeled batch grows 1, 2, 3 labeled batches (demo: 1, 1, 1; paper: 14, 14, 28).
    demo|quick)
      FOR="Fashion-MNIST with 4,000 labels on 2 CPU cores (~28-40 min, the claims study's)"
      TEACHER_EPOCHS=25; BATCH=128; LR=0.032; FINAL_LR=0.0016; WARMUP=5; MAG=5
      EPOCHS=30,30,40; RATIOS=1,2,3; MIN_EPOCH_STEPS=24
      UNLABELED_SHARDS=8; PER_CLASS=4000; EVAL_ROBUSTNESS=1; ROBUST_EXAMPLES=500
      [ "$PRESET" = quick ] || { TEACHER_EPOCHS=20; EPOCHS=25,25,30; RATIOS=1,1,1
        FOR="Fashion-MNIST with 4,000 labels on 2 CPU cores (~23 min on an Ice Lake, ~30-33 on a Zen 3)"; } ;;
    # full: the reproduction of Sec. 3.1 and 3.3-3.4: a 50-epoch teacher, students of 75, 75, 100
    #   epochs at unlabeled ratios 1, 2, 3, K = 5,000; robustness on 1,000 test images.
    #   Prints every iteration above the previous, student 3 +3.6-3.8 over the teacher (seed 0:
    #   83.79 -> 87.43, bench/noisy_student_full.md). ~44 minutes on a fast CPU, ~3 h on Zen 3.
    full)
      FOR="Fashion-MNIST with 4,000 labels on 2 CPU cores (~3 h on AMD Zen 3)"
      TEACHER_EPOCHS=50; BATCH=128; LR=0.032; FINAL_LR=0.0016; WARMUP=5; MAG=5
      # NOTE: students are the teacher's size (the paper's first student is larger, B7 -> L2).
      EPOCHS=75,75,100; RATIOS=1,2,3; MIN_EPOCH_STEPS=24
      UNLABELED_SHARDS=8; PER_CLASS=5000; EVAL_ROBUSTNESS=1; ROBUST_EXAMPLES=1000 ;;
    # paper: Sec. 3.1's run: a B7 teacher, then L2, L2, L2 students at unlabeled batch 14x, 14x,
    #   28x, on ImageNet + 300M unlabeled images (6 days on a 2048-core TPU v3 pod per L2); prints
    #   top-1 85.0 (B7) -> 88.4 (Table 2). --plan prints its jobs. Sources (Sec. 3.1; reference =
    #   google-research/noisystudent main.py defaults, local_scripts/imagenet/train.sh):
    #   - batch 2048, peak lr 0.016 per 256 (main.py:174), staircase x0.97 every 2.4 epochs for 350
    #     epochs (models above B4, L2 too), 4.8 for 700 (B0-B4, train.sh), warm-up 5 (main.py:583)
    #   - L2 at 475 px (App. A.1 Table 7, tensorflow/tpu's l2_475 checkpoint), then fine-tuned 1.5
    #     epochs at 800 px (efficientnet_builder.py:44) with shallow layers fixed
    #   - noise ("Noise"): stochastic depth 0.2 (linear rule), dropout 0.5, RandAugment N=2, M=27;
    #     threshold 0.3, K = 130K ("Unlabeled dataset"); EMA 0.9999, weight decay 1e-5, label
    #     smoothing 0.1 (main.py:179, 183, 187)
    # NOTE: the paper filters and balances with an ImageNet B0's confidences ("Unlabeled dataset");
    #   here with the teacher's own (the reference's filter_unlabel.py takes whichever it is given).
    paper)
      FOR="ImageNet + 300M unlabeled images on a TPU v3 pod (Sec. 3.1)"
      TEACHER_NAME=efficientnet-b7; NET=(--model_name=efficientnet-b7)
      MODELS=efficientnet-l2,efficientnet-l2,efficientnet-l2; RATIOS=14,14,28; RULE=paper
      BATCH=2048; LR=0.016; FINAL_LR=0; WARMUP=5; MAG=27
      NOISE=(--randaug_layer=2 --lr_decay_factor=0.97 --stochastic_depth_rate=0.2 --dropout_rate=0.5
             --moving_average_decay=0.9999 --weight_decay=1e-5 --label_smoothing=0.1)
      FINETUNE=(--finetune_epochs=1.5)
      PER_CLASS=130000; THRESHOLD=0.3 ;;
    # svhn: the reference's SVHN example (local_scripts/svhn/, README: teacher 97.9% -> student
    #   98.6 +- 0.1%): B0 -> B0, one iteration, on proc_svhn.py's records (extra: unlabeled).
    #   Sources (svhn_offline.sh lines; main.py = the reference's): 32 px small-image B0 (:22;
    #   main.py:680-682), batch 128 (:27), ratio 5 (:30), soft labels (:31), RandAugment M=5 (:33),
    #   N=2 (main.py:259), lr 0.016 (main.py:174) decayed to 0.0002 per 256 after 5 warm-up epochs
    #   (:34; main.py:569-583), weight decay 1e-4 (:35), 109,474 steps on 69,257 images (main.py:76,
    #   task_info.py:39), EMA 0.9999, smoothing 0.1, dropout and SD 0.2; threshold 0.3, K = 53,113
    #   (svhn/filter_unlabel.sh:36, 39)
    # NOTE: the reference ships its teacher (prepro.sh:24; use --teacher_checkpoint); without it
    #   the teacher is trained with the student's schedule (the reference's is not published).
    svhn)
      FOR="SVHN (73K labels + 531K extra images) on one accelerator (the reference's example)"
      STEPS=(--train_steps=109474 --num_train_images=69257); BATCH=128; LR=0.016; FINAL_LR=0.0002
      WARMUP=5; MAG=5; RATIOS=5,5,5; ITERATIONS=1
      NOISE=(--randaug_layer=2 --weight_decay=1e-4 --label_smoothing=0.1 --moving_average_decay=0.9999
             --dropout_rate=0.2 --stochastic_depth_rate=0.2)
      PER_CLASS=53113; THRESHOLD=0.3 ;;
  esac
  [ -z "${TEACHER_MODEL:-}" ] || { TEACHER_NAME=$TEACHER_MODEL; NET=(--model_name="$TEACHER_MODEL"); }
  SCHEDULE_NOTE="preset $PRESET's, made for $FOR"
  [ "$DATASET" = "$MADE_FOR" ] || SCHEDULE_NOTE+="; not tuned for --dataset=$DATASET"
}

# model_settings I MODEL: EP, SCHED, IMG_FLAG, FT_FLAG and FT of model I (0: the teacher) by the
# preset, then the flags. RULE=paper (Sec. 3.1): epochs and decay by size, L2 at 475 px, then 800.
model_settings() {
  local m=$1 model=$2 img=0 decay=$DECAY
  FT=0
  if (( m == 0 )); then EP=$TEACHER_EPOCHS; else EP=$(field "$EPOCHS" "$m"); fi
  if [ "$RULE" = paper ]; then
    case "$model" in
      efficientnet-b[5-9]|efficientnet-l2) EP=350; decay=2.4 ;;
      *) EP=700; decay=4.8 ;;
    esac
    [ "$model" != efficientnet-l2 ] || { img=475; (( m == 0 )) || FT=800; }
  fi
  if (( m == 0 )); then EP=${TEACHER_EPOCHS_FLAG:-$EP}
  elif [ -n "${STUDENT_EPOCHS:-}" ]; then EP=$(field "$EPOCHS" "$m"); fi
  [ -z "$IMAGE_SIZES" ] || img=$(field "$IMAGE_SIZES" $(( m + 1 )))
  (( m == 0 )) || [ -z "$FINETUNE_SIZES" ] || FT=$(field "$FINETUNE_SIZES" "$m")
  IMG_FLAG=(); [ "$img" = 0 ] || IMG_FLAG=(--image_size="$img")
  FT_FLAG=(); [ "$FT" = 0 ] || FT_FLAG=(--finetune_image_size="$FT" ${FINETUNE[@]+"${FINETUNE[@]}"})
  schedule "${DECAY_FLAG:-$decay}"
}

schedule() {  # schedule DECAY_EPOCHS: SCHED, main.py's flags for the schedule and noise
  SCHED=()
  [ -z "$BATCH" ] || SCHED+=(--train_batch_size="$BATCH")
  [ -z "$LR" ] || SCHED+=(--base_learning_rate="$LR")
  [ -z "$FINAL_LR" ] || SCHED+=(--final_base_learning_rate="$FINAL_LR")
  [ -z "$WARMUP" ] || SCHED+=(--lr_warmup_epochs="$WARMUP")
  [ -z "$1" ] || SCHED+=(--lr_decay_epochs="$1")
  [ -z "$MAG" ] || SCHED+=(--randaug_mag="$MAG")
  SCHED+=(${NOISE[@]+"${NOISE[@]}"})
}

field() { echo "$1" | cut -d, -f"$2"; }  # field LIST I: the I-th of a comma-separated list

check_flags() {  # every flag checked before any work: one line naming the bad one
  ITERATIONS=${ITERATIONS_FLAG:-$ITERATIONS}
  local a
  for a in $(echo "${ABLATION:-}" | tr , " "); do
    [[ ",$ABLATION_STUDENTS," == *",$a,"* ]] ||
      fail "--ablation=$ABLATION names $a, not one of $ABLATION_STUDENTS"
  done
  [[ "$ITERATIONS" =~ ^[1-3]$ ]] || fail "--iterations=$ITERATIONS must be 1, 2 or 3 (students)"
  RATIOS=${RATIOS_FLAG:-$RATIOS}; STUDENT_WIDTHS=${WIDTHS_FLAG:-$WIDTHS}; STUDENT_DEPTHS=${DEPTHS_FLAG:-$DEPTHS}
  [[ "$RATIOS" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] ||
    fail "--unlabel_ratios=$RATIOS must be three numbers, one per iteration (e.g. 1,2,3)"
  EPOCHS=${STUDENT_EPOCHS:-$EPOCHS}
  [[ "$EPOCHS" =~ ^[0-9.]+$ ]] && EPOCHS=$EPOCHS,$EPOCHS,$EPOCHS   # one number: every student
  # (the paper's rule and fixed --train_steps need no epochs)
  { [ -z "$EPOCHS${STUDENT_EPOCHS:-}" ] && [ -n "$RULE${STEPS[*]}" ]; } ||
    [[ "$EPOCHS" =~ ^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?){2}$ ]] ||
    fail "--student_epochs=${STUDENT_EPOCHS:-$EPOCHS} must be one number of epochs or three, one" \
         "per iteration (e.g. 50 or 50,50,75)"
  BATCH=${BATCH_FLAG:-$BATCH}; LR=${LR_FLAG:-$LR}; FINAL_LR=${FINAL_LR_FLAG:-$FINAL_LR}
  MAG=${MAG_FLAG:-$MAG}; IMAGE_SIZES=${IMAGE_SIZES_FLAG:-$IMAGE_SIZES}
  FINETUNE_SIZES=${FINETUNE_SIZES_FLAG:-$FINETUNE_SIZES}
  UNLABELED_SHARDS=${UNLABELED_SHARDS_FLAG:-${UNLABELED_SHARDS:-8}}
  local v x
  for v in teacher_epochs=TEACHER_EPOCHS_FLAG base_learning_rate=LR_FLAG lr_decay_epochs=DECAY_FLAG \
           final_base_learning_rate=FINAL_LR_FLAG teacher_finetune_epochs=TEACHER_FINETUNE_EPOCHS \
           train_batch_size=BATCH_FLAG randaug_mag=MAG_FLAG; do
    x=${v#*=}; x=${!x:-}
    [ -z "$x" ] || [[ "$x" =~ ^[0-9]+(\.[0-9]+)?(e-?[0-9]+)?$ ]] || fail "--${v%=*}=$x must be a number"
  done
  [ -z "$IMAGE_SIZES" ] || [[ "$IMAGE_SIZES" =~ ^[0-9]+(,[0-9]+){3}$ ]] ||
    fail "--image_sizes=$IMAGE_SIZES must be four resolutions (teacher, students 1-3; 0: the model's own)"
  [ -z "$FINETUNE_SIZES" ] || [[ "$FINETUNE_SIZES" =~ ^[0-9]+(,[0-9]+){2}$ ]] ||
    fail "--finetune_sizes=$FINETUNE_SIZES must be three resolutions, one per student (0: none)"
  case "$DATASET" in
    fashion_mnist) ;;
    folder) need folder labeled_dir unlabeled_dir test_dir ;;
    imagenet|svhn) need "$DATASET" label_data_dir eval_data_dir unlabel_data_dir ;;
    *) fail "--dataset=$DATASET is not one of fashion_mnist, folder, imagenet, svhn" ;;
  esac
  [ -z "${TEACHER_CHECKPOINT:-}" ] || [ -z "${INIT_CHECKPOINT:-}" ] ||
    fail "--teacher_checkpoint and --init_checkpoint: give one (the teacher as it is, or trained from it)"
  [ -n "$PLAN" ] || check_checkpoint teacher_checkpoint "${TEACHER_CHECKPOINT:-}"
  [ -z "$PLAN" ] || [ "$DATASET" = "$MADE_FOR" ] || [ -n "${PER_CLASS_FLAG:-}" ] ||
    fail "--plan on --dataset=$DATASET needs --num_images_per_class (the default, unlabeled images /" \
         "classes, is counted after labeling)"
  [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || fail "--jobs=$JOBS must be a positive number of labeling jobs"
  [[ "$PRECISION" =~ ^(float32|bfloat16)$ ]] || fail "--precision=$PRECISION is not one of float32, bfloat16"
  [ -z "${PER_CLASS_FLAG:-}" ] || [[ "$PER_CLASS_FLAG" =~ ^[1-9][0-9]*$ ]] ||
    fail "--num_images_per_class=$PER_CLASS_FLAG must be a positive number of images"
  [ -z "${LABELED_PER_CLASS:-}${UNLABELED_SHARDS_FLAG:-}" ] || [ "$DATASET" = fashion_mnist ] ||
    fail "--num_labeled_per_class and --unlabeled_shards are for --dataset=fashion_mnist" \
         "(own data: the folders are the split)"
  [ -z "${LABELED_PER_CLASS:-}" ] || [[ "$LABELED_PER_CLASS" =~ ^[1-9][0-9]*$ ]] &&
    (( ${LABELED_PER_CLASS:-1} <= 5000 )) ||
    fail "--num_labeled_per_class=$LABELED_PER_CLASS must be 1 to 5000 (Fashion-MNIST has 6,000" \
         "train images per class; the rest are the unlabeled pile)"
  [ -z "${UNLABELED_SHARDS_FLAG:-}" ] || [[ "$UNLABELED_SHARDS_FLAG" =~ ^[1-8]$ ]] ||
    fail "--unlabeled_shards=$UNLABELED_SHARDS_FLAG must be 1 to 8 (of the 8 unlabeled shards)"
  [ -z "${STUDENT_MODELS:-}" ] || [[ "$STUDENT_MODELS" =~ ^[a-z0-9-]+,[a-z0-9-]+,[a-z0-9-]+$ ]] ||
    fail "--student_models=$STUDENT_MODELS must be three model names, one per iteration" \
         "(e.g. efficientnet-b1,efficientnet-b2,efficientnet-b3)"
  check_checkpoint init_checkpoint "${INIT_CHECKPOINT:-}"
  read -ra EXTRA <<< "$TRAIN_FLAGS"
  local size
  for size in "widths=$STUDENT_WIDTHS" "depths=$STUDENT_DEPTHS"; do
    [ "${size#*=}" = "" ] || [[ "${size#*=}" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] ||
      fail "--student_$size must be three multipliers, one per iteration (e.g. 0.3,0.35,0.4)"
  done
}

fail() { echo "error: $*" >&2; exit 2; }
need() {  # need DATASET FLAG...: each --FLAG (variable FLAG in capitals) is set
  local d=$1 f v; shift
  for f in "$@"; do v=${f^^}; [ -n "${!v:-}" ] || fail "--dataset=$d needs --$f"; done
}

log() { echo "[$(date +%H:%M:%S)] run_iterations ($PRESET): $*" >&2; }
say() { if [ -n "$PLAN" ]; then echo "# $*"; else log "$*"; fi; }  # a first line (--plan: a comment)
# done_or_run DONE_FILE NAME CMD...: run CMD unless DONE_FILE exists (stages rename outputs into
# place). The command is recorded in DONE_FILE.command: a finished stage that another command made
# (other flags, preset or data) is refused, never silently reused.
done_or_run() {
  local done_file=$1 name=$2; shift 2
  if [ -n "$PLAN" ]; then  # a driver function (label) prints its own stages
    if declare -F "$1" > /dev/null; then "$@"; else plan_stage "$name" "$(dirname "$done_file")" 1 "$@"; fi
    return
  fi
  local record="$done_file.command" cmd="$*"
  cmd=${cmd#"$PY "}  # the command without the interpreter (PYTHON may differ between reruns)
  if [ -e "$done_file" ]; then
    # (a record of data.py, which prepared the data before prepare_data.py, is the same command)
    [ ! -e "$record" ] || [ "$(sed 's/^data\.py /prepare_data.py /' "$record")" = "$cmd" ] ||
      fail "$name: $(dirname "$done_file")" \
      "was made by another command; remove it or use another --workdir (then: $(cat "$record");" \
      "now: $cmd)"
    log "$name: done, skipped"; return
  fi
  log "$name: running"
  "$@"
  printf '%s\n' "$cmd" > "$record.tmp" && mv "$record.tmp" "$record"
}

# --plan: every stage is printed (as a runnable serial script) instead of run. A stage waits for
# the latest earlier stage writing each path its command names; N-task stages are array jobs.
plan_header() {
  echo "# run_iterations.sh --preset=$PRESET --plan: $ITERATIONS iteration(s) on --dataset=$DATASET;"
  echo "# schedule: $SCHEDULE_NOTE."
  echo "# Nothing was run. Submit each stage as a job once the stages it waits for are done: a"
  echo "# training stage is one (multi-host) job; a stage of N tasks is N independent jobs, TASK=0..N-1."
  PLAN_OUTS=()
}
plan_stage() {  # plan_stage NAME OUTPUT TASKS CMD...: print one stage (WAIT_ALL=1: after every other)
  local name=$1 out=$2 tasks=$3 k waits=() seen=" " cmd
  shift 3
  cmd=" $* "
  for (( k = ${#PLAN_OUTS[@]} - 1; k >= 0; k-- )); do
    [[ "$seen" != *" ${PLAN_OUTS[k]} "* ]] || continue
    if [ -n "${WAIT_ALL:-}" ] || [[ "$cmd" == *"${PLAN_OUTS[k]}"[/\ ,]* ]]; then
      waits=($(( k + 1 )) ${waits[@]+"${waits[@]}"}); seen+="${PLAN_OUTS[k]} "
    fi
  done
  PLAN_OUTS+=("$out")
  echo
  local after="stage ${waits[*]:-}"
  [ ${#waits[@]} != 0 ] || after=nothing; [ -z "${WAIT_ALL:-}" ] || after="all stages above"
  echo "# stage ${#PLAN_OUTS[@]}: $name; $( (( tasks == 1 )) && echo "1 job" || echo "$tasks tasks");" \
       "waits for: $after"
  cmd=$(quote "$@"); cmd=${cmd//@TASK@/\$TASK}
  if (( tasks == 1 )); then echo "${cmd//\$TASK/0}"; else echo "for TASK in \$(seq 0 $(( tasks - 1 ))); do $cmd; done"; fi
}
plan_filter() {  # filter_balance.py all's four passes as a cluster runs them (its docstring)
  local f=($PY filter_balance.py) out="$IT/filtered" n="--num_shards=$JOBS"
  plan_stage "iter $i: filter, per-class confidence histograms" "$IT/filter_work" "$JOBS" \
    "${f[@]}" stats "${FILTER[@]}" --min_threshold="$THRESHOLD" "$n" --shard_id=@TASK@
  plan_stage "iter $i: filter, thresholds and picks per shard" "$IT/filter_work" 1 \
    "${f[@]}" merge "${FILTER[@]}" --num_images_per_class="$K" --min_threshold="$THRESHOLD" --seed="$SEED"
  plan_stage "iter $i: filter, write the kept records" "$out" "$JOBS" \
    "${f[@]}" write "${FILTER[@]}" --output_dir="$out" --seed="$SEED" "$n" --shard_id=@TASK@
  plan_stage "iter $i: filter, check and publish" "$out" 1 \
    "${f[@]}" report --work_dir="$IT/filter_work" --output_dir="$out"
}
quote() {  # quote ARG...: the args as one shell-safe line (plain words unquoted)
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[][A-Za-z0-9_./=,:@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

prepare_data() {  # DATA_FLAGS: what every main.py is told about the data; UNLABELED: its shards
  case "$DATASET" in
    fashion_mnist)
      done_or_run "$DATA/prepared.json" "prepare Fashion-MNIST" \
        $PY prepare_data.py --dataset=fashion_mnist --output_dir="$DATA" \
          --num_labeled_per_class="${LABELED_PER_CLASS:-400}" --seed="$SEED"
      DATA_FLAGS=(--dataset=fashion_mnist --num_labeled_per_class="${LABELED_PER_CLASS:-400}"
                  --data_seed="$SEED" --data_dir="$DATA")
      UNLABELED="$DATA/unlabeled/$(shards_glob)" ;;
    folder)
      done_or_run "$DATA/prepared.json" "convert the image folders" \
        $PY prepare_data.py --dataset=folder --labeled_dir="$LABELED_DIR" --unlabeled_dir="$UNLABELED_DIR" \
          --test_dir="$TEST_DIR" --output_dir="$DATA" --seed="$SEED"
      DATA_FLAGS=(--dataset=folder --data_dir="$DATA"); UNLABELED="$DATA/unlabeled/*"
      EVAL_ROBUSTNESS=0 ;;
    imagenet|svhn)  # records read where they are; the on-the-fly teachers read --unlabel_data_dir
      DATA_FLAGS=(--dataset="$DATASET" --label_data_dir="$LABEL_DATA_DIR" --eval_data_dir="$EVAL_DATA_DIR")
      UNLABELED=$UNLABEL_DATA_DIR; EVAL_ROBUSTNESS=0 ;;
  esac
}

# fit_data: the rules for own data (NUM_LABELED: the labeled images), from the converted data or
# (--plan) the labeled folder.
# - Model size: small-image folders (up to 64 px) get B0 at width/depth 0.25 (131k parameters;
#   1,717 img/s at 32 px on 2 cores against 188 for the 4.0M full width, bench/train_throughput.md),
#   larger images B0 itself (not with --teacher_model or another preset net).
# - Batch: fewer labeled images than the preset's batch train with a batch of that many (the peak lr
#   scales with it); --train_batch_size wins. Records: main.py counts them.
fit_data() {
  local kind="" facts
  NUM_LABELED=""
  if [ -e "$DATA/prepared.json" ]; then
    NUM_LABELED=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["counts"]["labeled"])' \
                  "$DATA/prepared.json")
    [ "$DATASET" != folder ] ||
      kind=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["input_kind"])' "$DATA/dataset.json")
  elif [ "$DATASET" = folder ]; then
    facts=$(folder_facts "$LABELED_DIR") || exit 2
    NUM_LABELED=${facts% *}; kind=imagenet; (( ${facts#* } > 64 )) || kind=small
  elif [ "$DATASET" = fashion_mnist ]; then NUM_LABELED=$(( ${LABELED_PER_CLASS:-400} * 10 ))
  fi
  [ "$DATASET" != folder ] || [ -n "${TEACHER_MODEL:-}" ] || [ "$TEACHER_NAME" != efficientnet-b0 ] ||
    [ "$kind" != small ] || NET+=(--width_coefficient=0.25 --depth_coefficient=0.25)
  CUT=""
  if [ -n "$NUM_LABELED" ] && [ -z "${BATCH_FLAG:-}$(last_flag train_batch_size ${EXTRA[@]+"${EXTRA[@]}"})" ] &&
     (( NUM_LABELED < BATCH )); then
    CUT=" (the preset's $BATCH cut to the labeled images)"; BATCH=$NUM_LABELED
  fi
}
folder_facts() {  # folder_facts DIR: "IMAGES SHORT_SIDE": DIR's images (data.list_image_folder's:
  # in its class sub-folders), the short side of the first that opens (its header only: PIL, fast)
  # (data.list_image_folder's rule again, without TensorFlow: importing data.py costs ~4 CPU-s)
  $PY - "$1" <<'EOF'
import os, sys
from PIL import Image
top, paths = sys.argv[1], []
if not os.path.isdir(top):
    sys.exit(f"error: --labeled_dir={top} is not a directory")
for name in sorted(os.listdir(top)):
    for root, dirs, files in os.walk(os.path.join(top, name)) if name[0] != "." else ():
        dirs[:] = [d for d in dirs if d[0] != "."]
        paths += [os.path.join(root, f) for f in files if f[0] != "." and
                  f.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".bmp"))]
for path in sorted(paths):
    try:
        print(len(paths), min(Image.open(path).size))
        break
    except OSError:
        pass
else:
    sys.exit(f"error: --labeled_dir={top} holds no readable image (JPEG, PNG, GIF or BMP) in a "
             "class sub-folder")
EOF
}

last_flag() {  # last_flag NAME ARGS...: the value of the last --NAME=VALUE in ARGS (absl's rule)
  local name=$1 a v=""; shift
  for a in "$@"; do [[ "$a" != --$name=* ]] || v=${a#*=}; done
  echo "$v"
}
steps_of() {  # steps_of MAIN_PY_FLAGS...: the steps main.py trains (its train_length)
  local steps
  steps=$(last_flag train_steps "$@")
  [ "${steps:-0}" = 0 ] || { echo "$steps"; return; }
  awk -v n="$NUM_LABELED" -v e="$(last_flag train_epochs "$@")" -v b="$(last_flag train_batch_size "$@")" \
      -v m="$(last_flag min_steps_per_epoch "$@")" \
      'BEGIN { s = n / b; if (s < m + 0) s = m; x = e * s; print (x == int(x)) ? x : int(x) + 1 }'
}
steps_plan() {  # the run's first lines: the net, each model's steps; IMAGES: the images they train
  local i batch ratio steps line="" extra=(${MIN_EPOCH_STEPS:+--min_steps_per_epoch=$MIN_EPOCH_STEPS}
                                           ${EXTRA[@]+"${EXTRA[@]}"})
  IMAGES=0
  [ -n "$NUM_LABELED" ] || { say "steps: counted by main.py (records: not counted here)"; return 0; }
  model_settings 0 "$TEACHER_NAME"
  steps=$(steps_of ${STEPS[@]+"${STEPS[@]}"} --train_epochs="${EP:-0}" "${SCHED[@]}" "${extra[@]}")
  batch=$(last_flag train_batch_size "${SCHED[@]}" "${extra[@]}")
  say "model: ${NET[*]}; $NUM_LABELED labeled images, batch $batch$CUT: $(( (NUM_LABELED + batch - 1) / batch ))" \
      "steps per epoch${MIN_EPOCH_STEPS:+ (at least $MIN_EPOCH_STEPS, --min_steps_per_epoch)}"
  line="teacher $steps"; IMAGES=$(( steps * batch ))
  for (( i = 1; i <= ITERATIONS; i++ )); do
    model_settings "$i" "$(field "${STUDENT_MODELS:-$MODELS}" "$i")"
    ratio=$(field "$RATIOS" "$i")
    steps=$(steps_of ${STEPS[@]+"${STEPS[@]}"} --train_epochs="${EP:-0}" "${SCHED[@]}" "${extra[@]}")
    line+=", student $i $steps (+ $(awk -v b="$batch" -v r="$ratio" 'BEGIN { x = b * r;
      print (x == int(x)) ? x : int(x) + 1 }') unlabeled images a step)"
    IMAGES=$(awk -v t="$IMAGES" -v s="$steps" -v b="$batch" -v r="$ratio" 'BEGIN { print t + s * b * (1 + r) }')
  done
  say "steps: $line"
}
speed() {  # speed IMAGES: passes the teacher's log through; at its step 10, the run's time from
  # its steps 6-10: students at its speed per image, labeling at ~3x (+-30%, more when busy).
  local line ips said="" params=0
  [ "$1" != 0 ] || said=1   # nothing counted (no prepared.json): nothing to estimate
  while IFS= read -r line; do
    printf '%s\n' "$line"
    [[ ! "$line" =~ \(([0-9]+)\ params\) ]] || params=${BASH_REMATCH[1]}
    if [[ -z "$said" && "$line" =~ step\ 10/[0-9]+.*\ ([0-9.]+)\ img/s ]]; then
      said=1; ips=${BASH_REMATCH[1]}
      log "time: $(echo "$params" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta') parameters; the" \
          "teacher's steps 6-10 ran at $ips img/s: about $(awk -v i="$1" -v r="$ips" \
          -v u="$(( $(unlabeled_count) * ITERATIONS / 3 ))" 'BEGIN { printf "%.0f", (i + u) / r / 60 }') min of training and labeling"
    fi
  done
}
unlabeled_count() {  # the unlabeled images labeled in each iteration
  $PY -c 'import json, sys
c = json.load(open(sys.argv[1]))["counts"]["unlabeled"]
print(c * int(sys.argv[2]) // 8)' "$DATA/prepared.json" "$UNLABELED_SHARDS" 2>/dev/null || echo 0
}
shards_glob() {  # the first N of Fashion-MNIST's 8 unlabeled shards (presets, --unlabeled_shards)
  case "$UNLABELED_SHARDS" in
    8) echo '*' ;; 1) echo 'unlabeled-00000-*' ;; *) echo "unlabeled-0000[0-$((UNLABELED_SHARDS - 1))]-*" ;;
  esac
}

# --deterministic: a killed and resumed model ends bit-identical to an uninterrupted one (on one CPU
# type), at no measurable cost (bench/determinism.md); --train_flags=--nodeterministic: off.
train() {  # train MODEL_DIR SEED extra-flags...: train and evaluate one model (resumes by itself)
  local model_dir=$1 seed=$2 net=() a; shift 2
  for a in "${NET[@]}"; do  # a student grown by name: its --model_name only
    [[ "$a" == --model_name=* && " $* " == *" --model_name="* ]] || net+=("$a")
  done
  done_or_run "$model_dir/eval_results.json" "train+eval $model_dir" \
    $PY main.py "${DATA_FLAGS[@]}" "${net[@]}" --model_dir="$model_dir" \
    --seed="$seed" --log_every_steps=100 --deterministic --precision="$PRECISION" \
    ${MIN_EPOCH_STEPS:+--min_steps_per_epoch=$MIN_EPOCH_STEPS} "$@" \
    ${STRATEGY[@]+"${STRATEGY[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
}
teacher_from_checkpoint() {  # --teacher_checkpoint: the teacher's model dir, evaluated
  if [ -z "${TEACHER_FINETUNE_EPOCHS:-}" ]; then  # as it is: no training (after --train_flags)
    done_or_run "$WORKDIR/teacher/eval_results.json" "teacher: $TEACHER_CHECKPOINT as it is" \
      $PY main.py "${DATA_FLAGS[@]}" "${NET[@]}" ${TEACHER_SIZE[@]+"${TEACHER_SIZE[@]}"} \
      --model_dir="$WORKDIR/teacher" --seed="$SEED" --precision="$PRECISION" \
      --init_checkpoint="$TEACHER_CHECKPOINT" ${STRATEGY[@]+"${STRATEGY[@]}"} \
      ${EXTRA[@]+"${EXTRA[@]}"} --train_steps=0 --train_epochs=0
    return
  fi
  # NOTE: another class count: fine-tuned on the labels (the paper fine-tunes no checkpoint):
  # 1/10 of the preset's peak lr, no warm-up from 0, the plain staircase, the preset's noise.
  local lr
  lr=$(awk -v lr="${LR:-0.016}" 'BEGIN { print lr / 10 }')
  train "$WORKDIR/teacher" "$SEED" "${SCHED[@]}" --train_epochs="$TEACHER_FINETUNE_EPOCHS" \
    --base_learning_rate="$lr" --lr_warmup_epochs=0 --final_base_learning_rate=0 \
    ${TEACHER_SIZE[@]+"${TEACHER_SIZE[@]}"} --init_checkpoint="$TEACHER_CHECKPOINT"
}
# --jobs=N: independent jobs N at a time, each on all cores (1.03-1.22x one's speed on a 2-core Zen
# 3, bench/parallel_jobs.md), each model's numbers the same as alone (op determinism).
kill_jobs() { local p; for p in ${PIDS[@]+"${PIDS[@]}"}; do pkill -P "$p"; kill "$p"; done 2>/dev/null; }
start() {  # start NAME CMD...: CMD as one of at most $JOBS jobs, its lines prefixed [NAME]
  local name=$1; shift
  if (( JOBS == 1 )) || [ -n "$PLAN" ]; then "$@"; return; fi
  (( ${#PIDS[@]} < JOBS )) || { wait "${PIDS[0]}" || FAILED=1; PIDS=("${PIDS[@]:1}"); }
  [ -n "${FAILED:-}" ] || { ( "$@" ) > >(sed -u "s|^|[$name] |" >&2) 2>&1 & PIDS+=($!); }
}
finish() {  # finish: wait for every started job; fail if one failed
  local p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do wait "$p" || FAILED=1; done
  PIDS=()
  [ -z "${FAILED:-}" ] || fail "a job failed (its log is above, its lines prefixed with its name)"
}
label() {  # label TEACHER_DIR OUTPUT_DIR PRECISION: $JOBS label_data.py jobs, job j every JOBS-th shard
  local j cmd=($PY label_data.py --teacher_model_dir="$1" --input_pattern="$UNLABELED" --output_dir="$2"
               --precision="$3" ${STRATEGY[@]+"${STRATEGY[@]}"} ${WEAK:+--allow_weak_teacher}
               --num_shards="$JOBS")
  if [ -n "$PLAN" ]; then plan_stage "iter $i: label" "$2" "$JOBS" "${cmd[@]}" --shard_id=@TASK@; return; fi
  for (( j = 0; j < JOBS; j++ )); do
    start "label $((j + 1))/$JOBS" "${cmd[@]}" --shard_id=$j
  done
  finish
  touch "$2/.complete"
}
per_class() {  # per_class LABELS_DIR TEACHER_DIR: unlabeled images / classes (the default K)
  $PY -c 'import glob, json, sys
n = sum(json.load(open(f))["count"] for f in glob.glob(sys.argv[1] + "/summaries/*.json"))
print(max(1, n // json.load(open(sys.argv[2] + "/model.json"))["num_classes"]))' "$1" "$2"
}

ablation() {  # --ablation, beside student 1 (they share its teacher and pseudo-labels)
  # Paper Table 6 and soft vs hard (Sec. 2) beside iter1/student, noise removed for the unlabeled
  # images only; the noised teacher labels the student's augmented view on the fly (dropout and SD
  # on), on_the_fly is its unnoised control (also unfiltered, unbalanced); no_filter: the teacher's
  # labels of every unlabeled image, not filtered or balanced (Sec. 2's "other techniques" off).
  # (hard_labels and no_filter: not rows of Table 6, but Sec. 2 and App. A.3 study 5.)
  local s1=$(( SEED * 10 + 1 )) f1="$WORKDIR/iter1/filtered"
  local abl=("${STUDENT[@]}" ${EP:+--train_epochs="$EP"} ${ABLATION_STEPS[@]+"${ABLATION_STEPS[@]}"}
             ${TEACHER_SIZE[@]+"${TEACHER_SIZE[@]}"} --unlabel_ratio="$(field "$RATIOS" 1)"
             --teacher_model_dir="$WORKDIR/teacher")
  # The on-the-fly teachers read the unlabeled images (records: --unlabel_data_dir).
  local source=(); case "$DATASET" in imagenet|svhn) source=(--unlabel_source_dir="$UNLABELED") ;; esac
  one() {  # (--ablation=a,b: only those)
    [[ ",$ABLATION," != *",$1,"* ]] || start "ablation/$1" train "$WORKDIR/ablation/$1" "$s1" "${abl[@]}" "${@:2}"
  }
  one no_aug --unlabel_data_dir="$f1" --unlabeled_noise=no_aug
  one no_noise --unlabel_data_dir="$f1" --unlabeled_noise=none
  one hard_labels --unlabel_data_dir="$f1" --label_type=hard
  one no_filter --unlabel_data_dir="$WORKDIR/iter1/labels"
  one on_the_fly ${source[@]+"${source[@]}"} ${WEAK:+--allow_weak_teacher}
  one noised_teacher --noised_teacher ${source[@]+"${source[@]}"} ${WEAK:+--allow_weak_teacher}
}

robustness() {  # Sec. 3.3-3.4 on generated C/P sets, FGSM and PGD: the teacher vs the students
  local LAST=",$WORKDIR/iter$ITERATIONS/student"; (( ITERATIONS > 1 )) || LAST=""
  done_or_run "$WORKDIR/robustness.md" "robustness (teacher vs students)" \
    $PY eval_robustness.py --model_dir="$WORKDIR/teacher,$WORKDIR/iter1/student$LAST" \
      --eval_data_dir="$DATA/test" --output_dir="$WORKDIR" --suite=clean,c,p,fgsm,pgd \
      --num_examples=$ROBUST_EXAMPLES --p_num_examples=$(( ROBUST_EXAMPLES / 5 )) \
      --attack_num_examples=$(( ROBUST_EXAMPLES / 2 )) --precision="$PRECISION" \
      ${STRATEGY[@]+"${STRATEGY[@]}"}
}

main "$@"
