#!/usr/bin/env bash
# Issue 5 (1a): the paper's Fig. 1 question on frozen features. The pyautoattack ResNet-18 (standard training)
# with its FC head, an l2 nearest-class-mean head (class means of the 50k training features) and the
# clean-fine-tuned HPM head, attacked at eps in {0.25, 0.5, 1, 2, 4}/255 with APGD-CE alone and with the
# full protocol. Writes results/eval/sweep/resnet18-*.json and results/figures/resnet18-sweep.{html,png}.
#   DATA=../shared/data N=200 bash scripts/fig1_frozen.sh
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
NCM=checkpoints/cifar10-resnet18-ncm
[ -f "$NCM/config.json" ] || hpm train pyautoattack --head ncm --mode fit --data "$DATA" --out "$NCM"
MODELS="fc=pyautoattack ncm=$NCM hpm=checkpoints/cifar10-resnet18-hpm-clean" PREFIX=resnet18 DATA="$DATA" \
  bash scripts/eps_sweep.sh
python scripts/plot_sweep.py "results/eval/sweep/resnet18-*.json" --out results/figures/resnet18-sweep \
  --title "Standard ResNet-18, frozen features: FC vs l2 (NCM) vs HPM"
