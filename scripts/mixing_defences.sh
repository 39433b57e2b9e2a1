#!/usr/bin/env bash
# The mixing defences on the PreAct ResNet-18, as their authors run them: the standard pyautoattack ResNet-18 (g)
# mixed with the project's PreAct ResNet-18 FGSM-RS FC network (h).
#   nuts      MixedNUTS (training-free): its map of h's logits and alpha selected by the authors' grid search on
#             N_SELECT training images (a fixed uniform subset, never the evaluation's test images) attacked on h
#             alone (APGD-CE and APGD-T towards 3 classes, 40 iterations; resumable per batch from RUNS/nuts-preact)
#   eval      each mixture under the comparison's protocol (MSA-style plan over the mixture's own attack targets,
#             APGD-T towards 3 classes, Square 1000) on the first N lossless test images, batch size 250, its report
#             recorded in the card; resumable per batch
#   DATA=../shared/data nice bash scripts/mixing_defences.sh        # STEPS="nuts eval"
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
STEPS="${STEPS:-nuts eval}"
RUNS="${RUNS:-runs}"
N="${N:-500}"
N_SELECT="${N_SELECT:-1000}"
DEVICE=(${DEVICE:+--device "$DEVICE"})  # e.g. DEVICE=cuda; default: each command's own choice
PREFIX=checkpoints/cifar10-preactresnet18-fgsmrs-15ep
NUTS="$PREFIX-mixednuts"
PROTOCOL=(--data "$DATA" --n "$N" --eps 8/255 --target-classes 3 --square-queries 1000 --batch-sizes 250)

for step in $STEPS; do
  case "$step" in
    nuts) [ -f "$NUTS/config.json" ] || hpm mix --standard pyautoattack --robust "$PREFIX-fc" --nuts --data "$DATA" \
            --n-select "$N_SELECT" --batch-size 250 --run-dir "$RUNS/nuts-preact" --out "$NUTS" "${DEVICE[@]}" ;;
    eval) hpm eval "$NUTS" "${PROTOCOL[@]}" "${DEVICE[@]}" --out results/eval/preact/pa18-mixednuts-full-eps8.json \
            > /dev/null
          hpm card "$NUTS" --eval results/eval/preact/pa18-mixednuts-full-eps8.json > /dev/null ;;
    *) echo "unknown step $step (nuts, eval)" >&2; exit 2 ;;
  esac
  echo "done $step"
done
