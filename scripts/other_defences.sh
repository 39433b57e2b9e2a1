#!/usr/bin/env bash
# README's defences comparison: every defence on the 20-epoch FGSM-RS ResNet-20 (width 32) setting, evaluated like
# its FC baseline (the first 500 lossless test images, 8/255, APGD 40 iterations, APGD-T towards 3 classes, Square
# 1000 queries, batch size 250), each report recorded in its checkpoint's card.
#   ncm, hpm-clean   heads on the FC backbone's features (fitted / clean-fine-tuned in seconds)
#   avgmargin, dpnp  backbones trained with the FC backbone's own recipe (same architecture, epochs, schedule and
#                    FGSM-RS attack) plus Wu & Yu's average-margin regulariser, or as Adv-DPNP; resumable per
#                    epoch from RUNS/NAME (rerun the same command after a kill)
#   mixed            the mixed classifier at ALPHA saved as a checkpoint (its alpha sweep: scripts/mixed_classifier.sh)
#   adaptive         adaptive smoothing: the same two networks with a mixing network trained adversarially on
#                    MIXER_N training images (MIXER_EPOCHS epochs, resumable from RUNS/mixer-adaptive);
#                    MIXER_LR is ten times the authors' 1e-4 because a CPU affords about 150 steps where they take
#                    thousands; its report beside the alpha sweep's
#   adaptive-gamma   the same mixing network evaluated with the authors' CIFAR-10 evaluation constants,
#                    gamma = BN(raw) * 3 + 20 (a copy of the checkpoint), and where its alpha goes
#   DATA=../shared/data bash scripts/other_defences.sh  # STEPS="ncm hpm-clean avgmargin dpnp mixed adaptive adaptive-gamma"
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
STEPS="${STEPS:-ncm hpm-clean avgmargin dpnp mixed adaptive adaptive-gamma}"
RUNS="${RUNS:-runs}"
DEVICE=(${DEVICE:+--device "$DEVICE"})  # e.g. DEVICE=cuda; default: each command's own choice
ALPHA="${ALPHA:-0.8}"
MIXER_N="${MIXER_N:-10000}"
MIXER_EPOCHS="${MIXER_EPOCHS:-2}"
MIXER_LR="${MIXER_LR:-1e-3}"
PREFIX=checkpoints/cifar10-resnet20w32-fgsmrs-20ep
FC="$PREFIX-fc"
RECIPE=(--depth 20 --width 32 --epochs 20 --lr 0.2 --adversarial fgsm-rs)
PROTOCOL=(--data "$DATA" --n 500 --eps 8/255 --target-classes 3 --square-queries 1000 --batch-sizes 250)

evaluate() {  # CHECKPOINT NAME [REPORT]: the comparison's protocol, then the report into the card
  local report="${3:-results/eval/robust/r20w32e20-$2-full-eps8.json}"
  hpm eval "$1" "${PROTOCOL[@]}" "${DEVICE[@]}" --out "$report" > /dev/null
  hpm card "$1" --eval "$report" > /dev/null
}

for step in $STEPS; do
  case "$step" in
    ncm) hpm train "$FC" --head ncm --mode fit --data "$DATA" --out "$PREFIX-ncm" "${DEVICE[@]}" ;;
    hpm-clean) hpm train "$FC" --head hpm --mode clean --data "$DATA" --out "$PREFIX-hpm-clean" "${DEVICE[@]}" ;;
    avgmargin) hpm train-backbone --data "$DATA" --run-dir "$RUNS/at-r20w32-e20-avgmargin" --out "$PREFIX-avgmargin" \
                 "${RECIPE[@]}" --margin-reg 1 --margin-tau 1 "${DEVICE[@]}" ;;
    dpnp) hpm train-backbone --data "$DATA" --run-dir "$RUNS/at-r20w32-e20-dpnp" --out "$PREFIX-dpnp" \
            "${RECIPE[@]}" --classifier dpnp "${DEVICE[@]}" ;;
    mixed) hpm mix --standard pyautoattack --robust "$FC" --alpha "$ALPHA" --out "$PREFIX-mixed-alpha$ALPHA"
           hpm card "$PREFIX-mixed-alpha$ALPHA" --eval "results/eval/mixed/mixed-alpha$ALPHA-T1-eps8.json" > /dev/null
           echo "done mixed"; continue ;;
    adaptive) hpm mix --standard pyautoattack --robust "$FC" --adaptive --data "$DATA" --n-train "$MIXER_N" \
                --epochs "$MIXER_EPOCHS" --lr "$MIXER_LR" --run-dir "$RUNS/mixer-adaptive" \
                --out "$PREFIX-mixed-adaptive" "${DEVICE[@]}"
              evaluate "$PREFIX-mixed-adaptive" adaptive results/eval/mixed/mixed-adaptive-T1-eps8.json
              echo "done adaptive"; continue ;;
    adaptive-gamma) python scripts/adaptive_eval_constants.py "$PREFIX-mixed-adaptive" --eval-gamma 3 20 \
                      --out "$PREFIX-mixed-adaptive-gamma3-20"
                    evaluate "$PREFIX-mixed-adaptive-gamma3-20" adaptive-gamma \
                      results/eval/mixed/mixed-adaptive-gamma3-20-T1-eps8.json
                    python scripts/adaptive_alpha.py "$PREFIX-mixed-adaptive-gamma3-20" --data "$DATA" --n 200 \
                      --out results/analysis/adaptive-alpha-gamma3-20.json > /dev/null
                    echo "done adaptive-gamma"; continue ;;
    *) echo "unknown step $step (ncm, hpm-clean, avgmargin, dpnp, mixed, adaptive, adaptive-gamma)" >&2; exit 2 ;;
  esac
  evaluate "$PREFIX-$step" "$step"
  echo "done $step"
done
