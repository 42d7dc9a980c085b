#!/usr/bin/env bash
# Benchmark (issue: teacher training): a B0-sized teacher on 4,000 Fashion-MNIST labels (400 per
# class), evaluated on the 10k test set. Writes bench/teacher_fashion_mnist.md.
#   bash bench/teacher_fashion_mnist.sh [EPOCHS] [EXTRA main.py FLAGS...]
# B0 here is efficientnet-b0 at full width/depth with the standard strides (--small_image=false):
# the small-image variant of full B0 trains at ~66 img/s on 2 cores, too slow for one session.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-60}; shift || true
OUT=runs/bench-teacher-b0-e$EPOCHS
mkdir -p runs
CMD=(python3 main.py --model_dir="$OUT" --model_name=efficientnet-b0 --small_image=false
     --train_epochs="$EPOCHS" --train_batch_size=128 --randaug_mag=5 --lr_warmup_epochs=2
     --base_learning_rate=0.032 --final_base_learning_rate=0.0016 --log_every_steps=200 "$@")
START=$(date +%s)
"${CMD[@]}" 2> "$OUT.log" || { tail -5 "$OUT.log"; exit 1; }
{
  echo "# B0-sized teacher on 4,000 Fashion-MNIST labels"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); date $(date -u +%F); wall time $(( $(date +%s) - START )) s"
  echo
  echo '```'
  echo "${CMD[*]}"
  grep -E "Teacher:|step [0-9]+/[0-9]+ .*ETA|Eval of" "$OUT.log" | sed 's/^I[0-9 :.]* [0-9]* main.py:[0-9]*\] //' | awk 'NR<=2 || /Eval/ || NR%5==0'
  echo '```'
  echo
  echo "eval_results.json: $(cat "$OUT/eval_results.json")"
} > bench/teacher_fashion_mnist.md
cat bench/teacher_fashion_mnist.md
