#!/usr/bin/env bash
# Fig. 1 as the paper runs it, end to end. One CIFAR ResNet trained from scratch twice with the
# same recipe, seed and epochs: once with an FC classifier, once with the l2 classifier (-l2 distance to
# learnable class centres). Then the same eps sweep as fig1_frozen.sh. Training resumes per epoch.
#   DATA=../shared/data RUN=runs DEPTH=20 WIDTH=16 EPOCHS=12 N=200 bash scripts/fig1_scratch.sh
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
RUN="${RUN:-runs}"
DEPTH="${DEPTH:-20}"; WIDTH="${WIDTH:-16}"; EPOCHS="${EPOCHS:-12}"; export N="${N:-200}"
tag="resnet${DEPTH}w${WIDTH}"
for classifier in fc l2; do
  hpm train-backbone --data "$DATA" --run-dir "$RUN/scratch-$tag-$classifier" \
    --out "checkpoints/cifar10-$tag-scratch-$classifier" --depth "$DEPTH" --width "$WIDTH" --epochs "$EPOCHS" \
    --classifier "$classifier"
done
MODELS="fc=checkpoints/cifar10-$tag-scratch-fc l2=checkpoints/cifar10-$tag-scratch-l2" PREFIX="scratch$tag" \
  DATA="$DATA" bash scripts/eps_sweep.sh
python scripts/ce_saturation.py "fc=checkpoints/cifar10-$tag-scratch-fc" "l2=checkpoints/cifar10-$tag-scratch-l2" \
  --data "$DATA" --n "$N" --out "results/eval/sweep/scratch$tag-saturation.json"
python scripts/plot_sweep.py "results/eval/sweep/scratch$tag-*-eps*.json" --out "results/figures/scratch$tag-sweep" \
  --title "CIFAR ResNet-$DEPTH (width $WIDTH) trained from scratch: FC vs l2 classifier"
for classifier in fc l2; do
  worst=()
  for full in "results/eval/sweep/scratch$tag-$classifier-eps"*-full.json; do
    extra="${full%-full.json}-targeted.json"
    if [ -f "$extra" ]; then worst+=(--worst-case "$full" "$extra"); fi
  done
  hpm card "checkpoints/cifar10-$tag-scratch-$classifier" \
    --eval "results/eval/sweep/scratch$tag-$classifier-eps"*-{apgdce,full}.json "${worst[@]}"
done
