#!/usr/bin/env bash
# The paper's HPM ablations (Sec. 4.4) under attack, on the FGSM-RS ResNet-20 (width 32): HPM and its three
# ablations after the same clean fine-tuning (cached features, seconds each), each also after the paper's IKL
# recipe, and the FC head, attacked on the first 250 lossless test images at evaluation batch size 250 with the
# default plan without Square (APGD-CE, APGD-DLR and APGD-T towards the 3 top wrong classes on every target the
# head offers; the same attacks as the full-recipe head's batch-size curve in scripts/hpm_full_recipe.sh).
#   DATA=../shared/data bash scripts/hpm_ablations.sh
# Fine-tuning resumes from runs/ablation-clean-*/ and runs/ikl-ablation-*/, evaluations from their .npz.
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
FC=checkpoints/cifar10-resnet20w32-fgsmrs-fc
OUT=results/eval/robust
HPM_PLAN=apgd-ce/fc,apgd-dlr/fc,apgd-ce/soft,apgd-dlr/soft,apgd-ce/ensemble,apgd-dlr/ensemble,apgd-ce/bpda
HPM_PLAN="$HPM_PLAN,apgd-dlr/bpda,apgd-t/fc,apgd-t/bpda"
PER_SAMPLE_PLAN=apgd-ce/fc,apgd-dlr/fc,apgd-ce/deployed,apgd-dlr/deployed,apgd-t/fc,apgd-t/deployed
EVAL=(--data "$DATA" --n 250 --eps 8/255 --iters 40 --target-classes 3 --batch-sizes 250 --no-checks)

hpm eval "$FC" "${EVAL[@]}" --attacks apgd-ce/deployed,apgd-dlr/deployed,apgd-t/deployed \
  --out "$OUT/r20w32-fc-n250-eps8.json" > /dev/null 2> "$OUT/r20w32-fc-n250-eps8.log"
for spec in "hpm=" "nobatch=no-batch-prototypes" "mean=mean-mixer" "dot=dot-score"; do
  name="${spec%%=*}"; ablation="${spec#*=}"
  hpm train "$FC" --head hpm --mode clean --data "$DATA" --n-test 1000 ${ablation:+--ablation "$ablation"} \
    --out "runs/ablation-clean-$name"
  plan="$HPM_PLAN"; [ "$name" = nobatch ] && plan="$PER_SAMPLE_PLAN"   # w/o C_batch: a per-sample head
  hpm eval "runs/ablation-clean-$name" "${EVAL[@]}" --attacks "$plan" \
    --out "$OUT/r20w32-ablation-clean-$name-eps8.json" > /dev/null 2> "$OUT/r20w32-ablation-clean-$name-eps8.log"
done
# The three ablations with the paper's full IKL recipe too (as checkpoints/cifar10-resnet20w32-fgsmrs-hpm-full;
# about 50 CPU-minutes each, resumable from runs/ikl-ablation-*/trainer_state.pt).
for ablation in no-batch-prototypes dot-score mean-mixer; do
  hpm train "$FC" --head hpm --mode adversarial --data "$DATA" --save-every 50 --n-test 1000 --ablation "$ablation" \
    --out "runs/ikl-ablation-$ablation"
  plan="$HPM_PLAN"; [ "$ablation" = no-batch-prototypes ] && plan="$PER_SAMPLE_PLAN"
  hpm eval "runs/ikl-ablation-$ablation" "${EVAL[@]}" --attacks "$plan" \
    --out "$OUT/r20w32-ablation-ikl-$ablation-eps8.json" > /dev/null 2> "$OUT/r20w32-ablation-ikl-$ablation-eps8.log"
done
# More attacks on the same images for the inner-product ablation (the most robust row) and for FC: APGD-T towards
# the 9 top wrong classes on every target, whole-batch APGD (HPM), Square with 1000 queries.
STRONGER=(--data "$DATA" --n 250 --eps 8/255 --iters 40 --target-classes 9 --square-queries 1000 --batch-sizes 250
          --no-checks)
hpm eval "$FC" "${STRONGER[@]}" --attacks apgd-t/deployed,square \
  --out "$OUT/r20w32-fc-n250-stronger-eps8.json" > /dev/null 2> "$OUT/r20w32-fc-n250-stronger-eps8.log"
hpm eval runs/ikl-ablation-dot-score "${STRONGER[@]}" \
  --attacks apgd-t/fc,apgd-t/bpda,apgd-t/soft,apgd-t/ensemble,batch:apgd-ce/ensemble,batch:apgd-dlr/bpda,square \
  --out "$OUT/r20w32-ablation-ikl-dot-score-stronger-eps8.json" > /dev/null \
  2> "$OUT/r20w32-ablation-ikl-dot-score-stronger-eps8.log"
python scripts/results_section.py
