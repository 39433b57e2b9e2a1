#!/usr/bin/env bash
# Bai et al.'s mixed classifier under hpm's protocol: the standard pyautoattack ResNet-18 mixed with the 20-epoch
# FGSM-RS ResNet-20 (its FC head), p = (1 - alpha) softmax(g) + alpha softmax(h / T), for each alpha. Every run
# attacks the mixture end to end (APGD-CE/DLR and APGD-T through both networks) and each branch alone (transfer),
# then Square, on the same N lossless test images at 8/255; reports in OUT, resumable.
# Below alpha = 1/2 an attacker who drives the standard branch to a confident wrong class wins whatever the robust
# branch says, so the sweep is dense above it.
#   DATA=../shared/data N=500 bash scripts/mixed_classifier.sh     # ALPHAS="0 0.5 0.6 0.7 0.8 0.9 1" T=1
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
N="${N:-500}"
ALPHAS="${ALPHAS:-0 0.5 0.6 0.7 0.8 0.9 1}"
T="${T:-1}"
ITERS="${ITERS:-40}"
SQUARE="${SQUARE:-1000}"
OUT="${OUT:-results/eval/mixed}"
STANDARD=pyautoattack
ROBUST=checkpoints/cifar10-resnet20w32-fgsmrs-20ep-fc
mkdir -p "$OUT"
for alpha in $ALPHAS; do
  hpm eval "mixed(standard=$STANDARD,robust=$ROBUST,alpha=$alpha,T=$T)" --data "$DATA" --n "$N" --eps 8/255 \
    --iters "$ITERS" --target-classes 3 --square-queries "$SQUARE" --batch-sizes 250 \
    --out "$OUT/mixed-alpha$alpha-T$T-eps8.json" > /dev/null 2> "$OUT/mixed-alpha$alpha-T$T-eps8.log"
  echo "done alpha=$alpha"
done
