#!/usr/bin/env bash
# The reproducible Noisy Student run (paper Sec. 2, Algorithm 1; Sec. 3.1 "Iterative training"):
# train a teacher, then three times: the unnoised teacher labels the unlabeled images, confident
# images are filtered and balanced per class, an equal-or-larger noised student is trained on
# labeled + pseudo-labeled data and evaluated; student i is teacher i+1. Ends with a report.
#
#   bash run_iterations.sh                         # preset quick, workdir runs/quick-seed0
#   bash run_iterations.sh --preset=full --seed=1 --workdir=runs/full-s1
#   bash run_iterations.sh --preset=smoke          # the whole pipeline on a tiny budget (tests)
#   bash run_iterations.sh --student_widths=0.25,0.35,0.5 --student_depths=0.25,0.35,0.5  # growing
#   bash run_iterations.sh --unlabel_ratios=1,2,4  # unlabeled batch per labeled batch, per iteration
#   bash run_iterations.sh --preset=full --student_epochs=50  # students' epochs over the labeled data
#   bash run_iterations.sh --preset=full --student_epochs=50,50,75  # ... per iteration
#   bash run_iterations.sh --preset=full --ablation --jobs=2  # + Table 6 ablation, soft vs hard labels
#
# Your own data (any preset sets the schedule; --preset=smoke checks a new dataset in minutes):
#   bash run_iterations.sh --dataset=folder --labeled_dir=L --unlabeled_dir=U --test_dir=T
#       (L and T: one sub-folder of images per class; U: a flat or nested pile, sub-folders mean
#       nothing; converted once into the workdir's data/, with its measured settings)
#   bash run_iterations.sh --dataset=imagenet --label_data_dir='train-*' \
#       --eval_data_dir='validation-*' --unlabel_data_dir='unlabeled-*'  # ImageNet-schema records
#   --teacher_model=efficientnet-b0 --student_models=efficientnet-b1,efficientnet-b2,efficientnet-b3
#       models grown by name, each at its own resolution (default: efficientnet-b0 for every model;
#       Fashion-MNIST: B0 at width/depth 0.25)
#   --supervised_baseline      also train the last student's architecture on the labels only
#   --init_checkpoint=PATH     the teacher starts from pretrained weights (Keras or official TF)
#   --jobs=N                   label with N parallel label_data.py jobs (same bytes as one job);
#       train --ablation's students N at a time beside student 1 (same numbers as one at a time)
#   --precision=bfloat16       train, label and evaluate with bf16 in the 1x1 convolutions
#       (bench/bf16_step.md; default float32)
#   --num_images_per_class=K   K after balancing; default: the preset's on Fashion-MNIST, else
#       unlabeled images / classes (a uniform pile's share; paper: 130K for ImageNet)
#   --train_flags='--train_steps=20 ...'  appended to every main.py command (overrides)
#   Robustness (Sec. 3.3-3.4) is evaluated on Fashion-MNIST only.
#
# Produces in the workdir: data/{labeled,unlabeled,test}, teacher/, iter{1,2,3}/{labels,filtered,
# student}/, ablation/ (with --ablation), report.json, report.md and plots (top-1 per iteration,
# pseudo-label quality, class balance, ablation). Every stage writes to a temporary name and
# renames when done; rerunning the same command skips finished stages and resumes the unfinished
# one from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

main() {  # Algorithm 1: the teacher, then three iterations of label, filter and balance, student
  parse_flags "$@"
  preset
  check_flags
  [ -n "${SKIP_SETUP:-}" ] || bash setup.sh
  mkdir -p "$WORKDIR"
  START=$(date +%s)
  prepare_data
  PIDS=()
  trap kill_jobs EXIT  # also on SIGTERM: a killed driver stops its background jobs
  # Step 1: the teacher, trained on the labeled images.
  TEACHER_DIR="$WORKDIR/teacher"
  train "$WORKDIR/teacher" "$SEED" "${TEACHER[@]}" ${INIT_CHECKPOINT:+--init_checkpoint="$INIT_CHECKPOINT"}
  for i in 1 2 3; do
    IT="$WORKDIR/iter$i"
    mkdir -p "$IT"
    # Step 2: the unnoised teacher labels every unlabeled shard (skips shards already labeled).
    done_or_run "$IT/labels/.complete" "iter $i: label" label "$TEACHER_DIR" "$IT/labels" "$PRECISION"
    K=${PER_CLASS_FLAG:-$PER_CLASS}
    [ "$DATASET" = fashion_mnist ] || [ -n "${PER_CLASS_FLAG:-}" ] || K=$(per_class "$IT/labels" "$TEACHER_DIR")
    # Step 3: confidence filtering and class balancing (stats, merge, write and report in one job).
    done_or_run "$IT/filtered/summary.json" "iter $i: filter and balance" \
      $PY filter_balance.py all --input_pattern="$IT/labels/*.tfrecord" --work_dir="$IT/filter_work" \
        --output_dir="$IT/filtered" --num_images_per_class="$K" --min_threshold=0.3 --seed="$SEED"
    # Step 4: the noised student, trained from scratch on labeled + pseudo-labeled data.
    SIZE=()
    [ -z "${STUDENT_WIDTHS:-}" ] || SIZE+=(--width_coefficient="$(echo "$STUDENT_WIDTHS" | cut -d, -f$i)")
    [ -z "${STUDENT_DEPTHS:-}" ] || SIZE+=(--depth_coefficient="$(echo "$STUDENT_DEPTHS" | cut -d, -f$i)")
    [ -z "${STUDENT_MODELS:-}" ] || SIZE+=(--model_name="$(echo "$STUDENT_MODELS" | cut -d, -f$i)")
    RATIO=$(echo "$RATIOS" | cut -d, -f$i)
    EP=$(echo "$EPOCHS" | cut -d, -f$i)
    start "iter$i/student" train "$IT/student" $(( SEED * 10 + i )) "${STUDENT[@]}" --train_epochs="$EP" \
      ${SIZE[@]+"${SIZE[@]}"} --unlabel_ratio="$RATIO" --unlabel_data_dir="$IT/filtered" \
      --teacher_model_dir="$TEACHER_DIR"
    [ "$i" != 1 ] || [ -z "${ABLATION:-}" ] || ablation  # Table 6 beside student 1, --jobs at a time
    finish
    TEACHER_DIR="$IT/student"   # Step 5: the student becomes the teacher.
  done
  if [ -n "$STUDENT_WIDTHS$STUDENT_DEPTHS${STUDENT_MODELS:-}${BASELINE:-}" ]; then
    # The paper's baseline for a student is a supervised model of the same architecture (Tables 2-4):
    # trained like the teacher at student 3's size, it shows how much of the gain is only the size.
    train "$WORKDIR/supervised_baseline" $(( SEED * 10 + 4 )) "${TEACHER[@]}" ${SIZE[@]+"${SIZE[@]}"}
  fi
  [ "$EVAL_ROBUSTNESS" != 1 ] || robustness
  $PY report.py --workdir="$WORKDIR" --preset="$PRESET" --seconds=$(( $(date +%s) - START ))
}

parse_flags() {
  local arg
  PRESET=quick; WORKDIR=""; SEED=0; PY=${PYTHON:-python3}; DATASET=fashion_mnist; JOBS=1; TRAIN_FLAGS=""
  PRECISION=float32
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
  for arg in "$@"; do
    case "$arg" in
      --preset=*) PRESET=${arg#*=} ;;
      --workdir=*) WORKDIR=${arg#*=} ;;
      --seed=*) SEED=${arg#*=} ;;
      --student_widths=*) WIDTHS_FLAG=${arg#*=} ;;
      --student_depths=*) DEPTHS_FLAG=${arg#*=} ;;
      --unlabel_ratios=*) RATIOS_FLAG=${arg#*=} ;;
      --student_epochs=*) STUDENT_EPOCHS=${arg#*=} ;;
      --dataset=*) DATASET=${arg#*=} ;;
      --labeled_dir=*) LABELED_DIR=${arg#*=} ;;
      --unlabeled_dir=*) UNLABELED_DIR=${arg#*=} ;;
      --test_dir=*) TEST_DIR=${arg#*=} ;;
      --label_data_dir=*) LABEL_DATA_DIR=${arg#*=} ;;
      --eval_data_dir=*) EVAL_DATA_DIR=${arg#*=} ;;
      --unlabel_data_dir=*) UNLABEL_DATA_DIR=${arg#*=} ;;
      --teacher_model=*) TEACHER_MODEL=${arg#*=} ;;
      --student_models=*) STUDENT_MODELS=${arg#*=} ;;
      --supervised_baseline) BASELINE=1 ;;
      --init_checkpoint=*) INIT_CHECKPOINT=${arg#*=} ;;
      --jobs=*) JOBS=${arg#*=} ;;
      --precision=*) PRECISION=${arg#*=} ;;
      --num_images_per_class=*) PER_CLASS_FLAG=${arg#*=} ;;
      --train_flags=*) TRAIN_FLAGS=${arg#*=} ;;
      --skip_setup) SKIP_SETUP=1 ;;
      --ablation) ABLATION=1 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
      *) echo "error: unknown argument $arg (use --preset=smoke|quick|full --workdir=DIR --seed=N" \
              "--student_widths=W1,W2,W3 --student_depths=D1,D2,D3 --unlabel_ratios=R1,R2,R3" \
              "--student_epochs=N|N1,N2,N3 --ablation; --help for the data, model and job flags)" >&2
       exit 2 ;;
    esac
  done
  WORKDIR=${WORKDIR:-runs/$PRESET-seed$SEED}
}

preset() {  # TEACHER, STUDENT, EPOCHS, RATIOS and the sizes of --preset
  # Presets: one case each, with what it runs, what it should print and its time on 2 cores. Why
  # their epochs, ratios and sizes are what they are: bench/presets_history.md. NET is the teacher's
  # architecture (students too, unless --student_widths/--student_depths); EPOCHS and RATIOS (the
  # unlabeled batch per labeled batch) are those of the students of iterations 1-3.
  ABLATION_STEPS=(); WIDTHS=""; DEPTHS=""
  # The data split is SEED's; each model has its own --seed (weights, shuffling, augmentation), so no two
  # replay one augmentation stream: the teacher SEED, student i SEED*10+i (the ablation's students share
  # student 1's, so they differ from it only in their noise), the supervised baseline SEED*10+4.
  # NOTE: 2-core schedules: peak lr 0.032 per 256 (reference 0.016), final lr 1/20, M=5 (its SVHN run).
  SCHEDULE=(--train_batch_size=128 --base_learning_rate=0.032 --final_base_learning_rate=0.0016
            --lr_warmup_epochs=5 --randaug_mag=5)
  NET=(--model_name=efficientnet-b0 --width_coefficient=0.25 --depth_coefficient=0.25)  # 131k params
  [ "$DATASET" = fashion_mnist ] || NET=(--model_name=efficientnet-b0)
  [ -z "${TEACHER_MODEL:-}" ] || NET=(--model_name="$TEACHER_MODEL")
  case "$PRESET" in
    # smoke: the plumbing, not the paper (tests/test_run_iterations.py). Algorithm 1 end to end with
    #   300-step models (BN's moving statistics need that many) on 1 of 8 unlabeled shards, K = 600.
    #   Prints the report table, every model well above chance (10%); no gain expected.
    #   15-20 minutes on 2 busy cores (bench/presets_history.md).
    smoke)
      TEACHER=(--train_steps=300 --train_batch_size=32 --lr_warmup_epochs=0.5 --randaug_mag=5)
      STUDENT=(--train_steps=300 --train_batch_size=32 --lr_warmup_epochs=0.5 --randaug_mag=5)
      EPOCHS=1,1,1; RATIOS=1,1,1  # (--train_steps wins over the epochs)
      UNLABELED_SHARDS='unlabeled-00000-*'; PER_CLASS=600; EVAL_ROBUSTNESS=0; ROBUST_EXAMPLES=0
      ABLATION_STEPS=(--train_steps=60) ;;  # --ablation here only checks the plumbing
    # quick: the README's first command. Sec. 2 and 3.1 at demo scale: a 25-epoch teacher, students
    #   of 30, 30, 40 epochs at unlabeled ratios 1, 2, 3 (the full preset's shape), all 56k unlabeled
    #   images, K = 4,000; robustness (Sec. 3.3-3.4) on 500 test images. Prints each student better
    #   than the one before (seeds 0 / 1: 79.49 -> 80.78 -> 82.23 -> 83.17, 78.47 -> 80.62 -> 82.00
    #   -> 83.21, bench/noisy_student_quick.md). ~27 minutes.
    quick)
      TEACHER=(--train_epochs=25 "${SCHEDULE[@]}")
      STUDENT=("${SCHEDULE[@]}"); EPOCHS=30,30,40; RATIOS=1,2,3
      UNLABELED_SHARDS='*'; PER_CLASS=4000; EVAL_ROBUSTNESS=1; ROBUST_EXAMPLES=500 ;;
    # full: the reproduction of Sec. 3.1 and 3.3-3.4: a 50-epoch teacher, students of 75, 75, 100
    #   epochs at unlabeled ratios 1, 2, 3, K = 5,000; robustness on 1,000 test images.
    #   Prints every iteration above the previous, student 3 +3.6-3.8 over the teacher (seeds 0 / 1
    #   after issue 17's fixes: 83.79 -> 85.86 -> 86.32 -> 87.43, 83.58 -> 85.63 -> 86.12 -> 87.38;
    #   bench/noisy_student_full.md). ~44 minutes alone on a fast CPU, ~3 h on AMD Zen 3.
    full)
      TEACHER=(--train_epochs=50 "${SCHEDULE[@]}")
      # NOTE: students train 1.5x, student 3 2x the teacher's epochs (paper: 700, 2x supervised 350).
      # NOTE: the unlabeled batch grows 1, 2, 3 labeled batches (paper: 14, 14, 28).
      # NOTE: students are the teacher's size (the paper's first student is larger, B7 -> L2).
      STUDENT=("${SCHEDULE[@]}"); EPOCHS=75,75,100; RATIOS=1,2,3
      UNLABELED_SHARDS='*'; PER_CLASS=5000; EVAL_ROBUSTNESS=1; ROBUST_EXAMPLES=1000 ;;
    *) echo "error: --preset=$PRESET is not one of smoke, quick, full" >&2; exit 2 ;;
  esac
}

check_flags() {  # every flag checked before any work: one line naming the bad one
  RATIOS=${RATIOS_FLAG:-$RATIOS}; STUDENT_WIDTHS=${WIDTHS_FLAG:-$WIDTHS}; STUDENT_DEPTHS=${DEPTHS_FLAG:-$DEPTHS}
  [[ "$RATIOS" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || {
    echo "error: --unlabel_ratios=$RATIOS must be three numbers, one per iteration (e.g. 1,2,3)" >&2; exit 2; }
  EPOCHS=${STUDENT_EPOCHS:-$EPOCHS}
  [[ "$EPOCHS" =~ ^[0-9.]+$ ]] && EPOCHS=$EPOCHS,$EPOCHS,$EPOCHS   # one number: every student
  [[ "$EPOCHS" =~ ^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?){2}$ ]] || {
    echo "error: --student_epochs=${STUDENT_EPOCHS:-$EPOCHS} must be one number of epochs or three," \
         "one per iteration (e.g. 50 or 50,50,75)" >&2; exit 2; }
  case "$DATASET" in
    fashion_mnist) ;;
    folder) need folder labeled_dir unlabeled_dir test_dir ;;
    imagenet) need imagenet label_data_dir eval_data_dir unlabel_data_dir ;;
    *) fail "--dataset=$DATASET is not one of fashion_mnist, folder, imagenet" ;;
  esac
  [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || fail "--jobs=$JOBS must be a positive number of labeling jobs"
  [[ "$PRECISION" =~ ^(float32|bfloat16)$ ]] || fail "--precision=$PRECISION is not one of float32, bfloat16"
  [ -z "${PER_CLASS_FLAG:-}" ] || [[ "$PER_CLASS_FLAG" =~ ^[1-9][0-9]*$ ]] ||
    fail "--num_images_per_class=$PER_CLASS_FLAG must be a positive number of images"
  [ -z "${STUDENT_MODELS:-}" ] || [[ "$STUDENT_MODELS" =~ ^[a-z0-9-]+,[a-z0-9-]+,[a-z0-9-]+$ ]] ||
    fail "--student_models=$STUDENT_MODELS must be three model names, one per iteration" \
         "(e.g. efficientnet-b1,efficientnet-b2,efficientnet-b3)"
  [ -z "${INIT_CHECKPOINT:-}" ] || [ -e "$INIT_CHECKPOINT" ] ||
    fail "--init_checkpoint=$INIT_CHECKPOINT does not exist"
  read -ra EXTRA <<< "$TRAIN_FLAGS"
  local size
  for size in "widths=$STUDENT_WIDTHS" "depths=$STUDENT_DEPTHS"; do
    [ "${size#*=}" = "" ] || [[ "${size#*=}" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || {
      echo "error: --student_$size must be three multipliers, one per iteration (e.g. 0.3,0.35,0.4)" >&2
      exit 2; }
  done
}

fail() { echo "error: $*" >&2; exit 2; }
need() {  # need DATASET FLAG...: each --FLAG (variable FLAG in capitals) is set
  local d=$1 f v; shift
  for f in "$@"; do v=${f^^}; [ -n "${!v:-}" ] || fail "--dataset=$d needs --$f"; done
}

log() { echo "[$(date +%H:%M:%S)] run_iterations ($PRESET): $*" >&2; }
# done_or_run DONE_FILE NAME CMD...: run CMD unless DONE_FILE exists (stages rename outputs into
# place). The command is recorded in DONE_FILE.command: a finished stage that another command made
# (other flags, preset or data) is refused, never silently reused.
done_or_run() {
  local done_file=$1 name=$2; shift 2
  local record="$done_file.command" cmd="$*"
  cmd=${cmd#"$PY "}  # the command without the interpreter (PYTHON may differ between reruns)
  if [ -e "$done_file" ]; then
    [ ! -e "$record" ] || [ "$(cat "$record")" = "$cmd" ] || fail "$name: $(dirname "$done_file")" \
      "was made by another command; remove it or use another --workdir (then: $(cat "$record");" \
      "now: $cmd)"
    log "$name: done, skipped"; return
  fi
  log "$name: running"
  "$@"
  printf '%s\n' "$cmd" > "$record.tmp" && mv "$record.tmp" "$record"
}

prepare_data() {  # DATA_FLAGS: what every main.py is told about the data; UNLABELED: its shards
  DATA="$WORKDIR/data"
  case "$DATASET" in
    fashion_mnist)
      done_or_run "$DATA/prepared.json" "prepare Fashion-MNIST" \
        $PY data.py --dataset=fashion_mnist --output_dir="$DATA" --num_labeled_per_class=400 --seed="$SEED"
      DATA_FLAGS=(--dataset=fashion_mnist --num_labeled_per_class=400 --data_seed="$SEED" --data_dir="$DATA")
      UNLABELED="$DATA/unlabeled/$UNLABELED_SHARDS" ;;
    folder)
      done_or_run "$DATA/prepared.json" "convert the image folders" \
        $PY data.py --dataset=folder --labeled_dir="$LABELED_DIR" --unlabeled_dir="$UNLABELED_DIR" \
          --test_dir="$TEST_DIR" --output_dir="$DATA" --seed="$SEED"
      DATA_FLAGS=(--dataset=folder --data_dir="$DATA"); UNLABELED="$DATA/unlabeled/*"
      EVAL_ROBUSTNESS=0 ;;
    imagenet)
      DATA_FLAGS=(--dataset=imagenet --label_data_dir="$LABEL_DATA_DIR" --eval_data_dir="$EVAL_DATA_DIR")
      UNLABELED=$UNLABEL_DATA_DIR; EVAL_ROBUSTNESS=0 ;;
  esac
}

# --deterministic: a killed and resumed model ends bit-identical to an uninterrupted one, at no
# measurable cost (bench/determinism.md); --train_flags=--nodeterministic turns it off.
train() {  # train MODEL_DIR SEED extra-flags...: train and evaluate one model (resumes by itself)
  local model_dir=$1 seed=$2; shift 2
  done_or_run "$model_dir/eval_results.json" "train+eval $model_dir" \
    $PY main.py "${DATA_FLAGS[@]}" "${NET[@]}" --model_dir="$model_dir" \
    --seed="$seed" --log_every_steps=100 --deterministic --precision="$PRECISION" "$@" \
    ${EXTRA[@]+"${EXTRA[@]}"}
}
# --jobs=N: independent jobs run N at a time, each on all cores (two of the presets' nets at once:
# 1.03-1.22x one's speed on a 2-core Zen 3, bench/parallel_jobs.md). Each model's numbers are the
# same as alone (op determinism: the threads' schedule does not change them).
kill_jobs() { local p; for p in ${PIDS[@]+"${PIDS[@]}"}; do pkill -P "$p"; kill "$p"; done 2>/dev/null; }
start() {  # start NAME CMD...: CMD as one of at most $JOBS jobs, its lines prefixed [NAME]
  local name=$1; shift
  if (( JOBS == 1 )); then "$@"; return; fi
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
  local j
  for (( j = 0; j < JOBS; j++ )); do
    start "label $((j + 1))/$JOBS" $PY label_data.py --teacher_model_dir="$1" \
      --input_pattern="$UNLABELED" --output_dir="$2" --precision="$3" --num_shards="$JOBS" --shard_id=$j
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
  # Paper Table 6 and soft vs hard (Sec. 2): one iteration, a student the size of the teacher,
  # the iteration-0 teacher; NoisyStudent itself is iter1/student. Noise is removed for the
  # unlabeled images only. The noised teacher labels on the fly (the student's augmented view,
  # dropout and SD on); on_the_fly is its unnoised control (also unfiltered, unbalanced).
  local s1=$(( SEED * 10 + 1 )) f1="$WORKDIR/iter1/filtered"
  local abl=("${STUDENT[@]}" --train_epochs="$(echo "$EPOCHS" | cut -d, -f1)" "${ABLATION_STEPS[@]}"
             --unlabel_ratio="$(echo "$RATIOS" | cut -d, -f1)" --teacher_model_dir="$WORKDIR/teacher")
  one() { start "ablation/$1" train "$WORKDIR/ablation/$1" "$s1" "${abl[@]}" "${@:2}"; }
  one no_aug --unlabel_data_dir="$f1" --unlabeled_noise=no_aug
  one no_noise --unlabel_data_dir="$f1" --unlabeled_noise=none
  one hard_labels --unlabel_data_dir="$f1" --label_type=hard
  one on_the_fly
  one noised_teacher --noised_teacher
}

robustness() {  # Sec. 3.3-3.4 on generated C/P sets, FGSM and PGD: the teacher vs the students
  done_or_run "$WORKDIR/robustness.md" "robustness (teacher vs students)" \
    $PY eval_robustness.py --model_dir="$WORKDIR/teacher,$WORKDIR/iter1/student,$WORKDIR/iter3/student" \
      --eval_data_dir="$DATA/test" --output_dir="$WORKDIR" --suite=clean,c,p,fgsm,pgd \
      --num_examples=$ROBUST_EXAMPLES --p_num_examples=$(( ROBUST_EXAMPLES / 5 )) \
      --attack_num_examples=$(( ROBUST_EXAMPLES / 2 )) --precision="$PRECISION"
}

main "$@"
