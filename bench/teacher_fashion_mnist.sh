#!/usr/bin/env bash
# Benchmark (issue: teacher training): supervised teachers on Fashion-MNIST, evaluated on the
# official 10k test set. Writes bench/teacher_recipes/teacher_<NAME>.md (command, progress, result, machine, date).
#   bash bench/teacher_fashion_mnist.sh NAME EPOCHS [EXTRA main.py FLAGS...]
#   bash bench/teacher_fashion_mnist.sh b0_small_4k 40                       # B0, 4,000 labels
#   bash bench/teacher_fashion_mnist.sh b0_small_4k_momentum_basic120 120 --optimizer=momentum \
#     --base_learning_rate=0.2 --final_base_learning_rate=0.01 --weight_decay=5e-5 \
#     --augment_name=basic                                                 # 87.32%, the best B0
#   bash bench/teacher_fashion_mnist.sh w05_small_60k 15 --width_coefficient=0.5 \
#     --depth_coefficient=0.5 --num_labeled_per_class=6000 --data_dir=data/fashion_mnist_60k
#   bash bench/teacher_fashion_mnist.sh ceiling_60k_w025 12 --width_coefficient=0.25 \
#     --depth_coefficient=0.25 --num_labeled_per_class=6000 --data_dir=data/fashion_mnist_60k \
#     --seed=0 --deterministic             # the presets' net on all 60k labels: the ceiling
# Defaults: efficientnet-b0 small-image variant (stride 1 in stages 2-3: a 4x4 final map at 32 px),
# 400 labels per class, the presets' schedule (batch 128, peak lr 0.032 per 256 decaying to 1/20,
# 5 warm-up epochs as the reference, RandAugment N=2 M=5 + cutout, dropout 0.2, stochastic depth 0.2).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: bench/teacher_fashion_mnist.sh NAME EPOCHS [FLAGS...]}; EPOCHS=${2:?EPOCHS}
shift 2
OUT=runs/bench-teacher-$NAME
mkdir -p runs
CMD=(python3 main.py --model_dir="$OUT" --model_name=efficientnet-b0 --small_image=true
     --train_epochs="$EPOCHS" --train_batch_size=128 --randaug_mag=5 --lr_warmup_epochs=5
     --base_learning_rate=0.032 --final_base_learning_rate=0.0016 --log_every_steps=200 "$@")
START=$(date +%s)
"${CMD[@]}" 2> "$OUT.log" || { tail -5 "$OUT.log"; exit 1; }
{
  echo "# Teacher benchmark $NAME: Fashion-MNIST, 10k test images"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); date $(date -u +%F); wall time $(( $(date +%s) - START )) s"
  echo
  echo '```'
  echo "${CMD[*]}"
  grep -E "Teacher:|step [0-9]+/[0-9]+ .*ETA|Eval of" "$OUT.log" | sed 's/^I[0-9 :.]* [0-9]* main.py:[0-9]*\] //' | awk 'NR<=2 || /Eval/ || NR%5==0'
  echo '```'
  echo
  echo "eval_results.json: $(cat "$OUT/eval_results.json")"
} > "bench/teacher_recipes/teacher_$NAME.md"
cat "bench/teacher_recipes/teacher_$NAME.md"
