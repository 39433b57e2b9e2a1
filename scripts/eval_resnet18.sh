#!/usr/bin/env bash
# Evaluations of the pyautoattack CIFAR-10 ResNet-18 with its FC head and with the clean-fine-tuned
# HPM head (checkpoints/cifar10-resnet18-hpm-clean), first N lossless test images, eps 1/255 and 8/255,
# full MSA + Square protocol at evaluation batch sizes 16 and 200. Writes results/eval/*.{json,md,npz}.
#   DATA=../shared/data N=200 SQUARE=1000 bash scripts/eval_resnet18.sh
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
N="${N:-200}"
SQUARE="${SQUARE:-1000}"   # Square queries per sample (AutoAttack's default is 5000; CPU budget here)
OUT="${OUT:-results/eval}"
mkdir -p "$OUT"
for eps in 8 1; do
  for model in pyautoattack checkpoints/cifar10-resnet18-hpm-clean; do
    name=$([ "$model" = pyautoattack ] && echo fc || echo hpm-clean)
    hpm eval "$model" --data "$DATA" --n "$N" --eps "$eps/255" --iters 40 --square-queries "$SQUARE" \
      --batch-sizes 16,200 --no-targeted --out "$OUT/resnet18-$name-eps$eps.json" > /dev/null 2> "$OUT/resnet18-$name-eps$eps.log"
    echo "done $name eps $eps/255"
  done
done
