#!/usr/bin/env bash
# The paper's Fig. 1 question on frozen features. The pyautoattack ResNet-18 (standard training)
# with its FC head, an l2 nearest-class-mean head (class means of the 50k training features) and the
# clean-fine-tuned HPM head, attacked at eps in {0.25, 0.5, 1, 2, 4}/255 with APGD-CE alone, with the
# full protocol and with the default plan's APGD-T runs on the same images (joined per sample with the full
# protocol in README and the cards). Writes results/eval/sweep/resnet18-*.json and results/figures/resnet18-sweep.{html,png}.
# CPU budget: N defaults to 100 (the first 100 lossless test images) and Square to 500 queries here. At eps
# 0.25/255 most samples survive the gradient attacks, and Square on them (one ResNet-18 forward per query) is
# most of a full-protocol run: about 15 core-minutes per model at 500 queries. The APGD-T runs (3 target
# classes, TARGETS) attack every clean-correct image again, once per target class. On a GPU, raise them all.
#   DATA=../shared/data N=100 SQUARE=500 bash scripts/fig1_frozen.sh
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
export N="${N:-100}" SQUARE="${SQUARE:-500}"
NCM=checkpoints/cifar10-resnet18-ncm
[ -f "$NCM/config.json" ] || hpm train pyautoattack --head ncm --mode fit --data "$DATA" --out "$NCM"
MODELS="fc=pyautoattack ncm=$NCM hpm=checkpoints/cifar10-resnet18-hpm-clean" PREFIX=resnet18 DATA="$DATA" \
  bash scripts/eps_sweep.sh
python scripts/ce_saturation.py fc=pyautoattack "ncm=$NCM" hpm=checkpoints/cifar10-resnet18-hpm-clean --data "$DATA" \
  --n "$N" --out results/eval/sweep/resnet18-saturation.json
python scripts/plot_sweep.py "results/eval/sweep/resnet18-*-eps*.json" --out results/figures/resnet18-sweep \
  --title "Standard ResNet-18, frozen features: FC vs l2 (NCM) vs HPM"
for pair in "ncm=$NCM" hpm=checkpoints/cifar10-resnet18-hpm-clean; do
  name="${pair%%=*}"; worst=()
  for full in results/eval/sweep/resnet18-$name-eps*-full.json; do
    extra="${full%-full.json}-targeted.json"
    if [ -f "$extra" ]; then worst+=(--worst-case "$full" "$extra"); fi
  done
  hpm card "${pair#*=}" --eval results/eval/sweep/resnet18-$name-eps*-{apgdce,full}.json "${worst[@]}"
done
