#!/usr/bin/env bash
# The paper's Table 1 at CPU scale. Adversarially train a CIFAR ResNet-20 (first-stage width 32)
# with FGSM-RS at l_inf 8/255, apply HPM with the paper's IKL adversarial fine-tuning on the frozen backbone,
# then evaluate FC and HPM under the same full protocol and record the numbers in both model cards.
#   DATA=../shared/data RUN=runs bash scripts/robust_backbone.sh
# Every step resumes: training from RUN/at-r20w32/state.pt (per epoch), fine-tuning from its
# trainer_state.pt, evaluations from their .npz files.
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
RUN="${RUN:-runs}"
FC=checkpoints/cifar10-resnet20w32-fgsmrs-fc
HPM=checkpoints/cifar10-resnet20w32-fgsmrs-hpm
OUT=results/eval/robust
N="${N:-500}"                 # full-protocol evaluation size (first N lossless test images)
SQUARE="${SQUARE:-1000}"      # Square queries per sample (AutoAttack: 5000; CPU budget)
N_TRAIN="${N_TRAIN:-10000}"   # IKL fine-tuning images (paper: one epoch of all 50,000; CPU budget)
mkdir -p "$OUT"

hpm train-backbone --data "$DATA" --run-dir "$RUN/at-r20w32" --out "$FC" \
  --depth 20 --width 32 --epochs 10 --lr 0.2 --adversarial fgsm-rs
hpm train "$FC" --head hpm --mode adversarial --n-train "$N_TRAIN" --data "$DATA" --out "$RUN/ikl-r20w32"
rm -rf "$HPM" && mkdir -p "$HPM" && cp "$RUN"/ikl-r20w32/{config.json,model.safetensors,README.md} "$HPM"/

# the backbone's bar: >= 30% under APGD-CE + APGD-DLR at 8/255 on all of test-first1000
hpm eval "$FC" --data "$DATA" --eps 8/255 --attacks apgd-ce/deployed,apgd-dlr/deployed --batch-sizes 250 \
  --out "$OUT/r20w32-fc-apgd-eps8.json" > /dev/null 2> "$OUT/r20w32-fc-apgd-eps8.log"
# FC vs HPM under the identical full protocol
for model in fc hpm; do
  ckpt=$([ "$model" = fc ] && echo "$FC" || echo "$HPM")
  hpm eval "$ckpt" --data "$DATA" --n "$N" --eps 8/255 --square-queries "$SQUARE" --batch-sizes 250 --no-targeted \
    --out "$OUT/r20w32-$model-full-eps8.json" > /dev/null 2> "$OUT/r20w32-$model-full-eps8.log"
done
hpm card "$FC" --eval "$OUT/r20w32-fc-apgd-eps8.json" "$OUT/r20w32-fc-full-eps8.json"
hpm card "$HPM" --eval "$OUT/r20w32-hpm-full-eps8.json"
python scripts/results_section.py
