#!/usr/bin/env bash
# The mixing defences on the PreAct ResNet-18, as their authors run them: the standard pyautoattack ResNet-18 (g)
# mixed with the project's PreAct ResNet-18 FGSM-RS FC network (h).
#   nuts      MixedNUTS (training-free): its map of h's logits and alpha selected by the authors' grid search on
#             N_SELECT training images (a fixed uniform subset, never the evaluation's test images) attacked on h
#             alone (APGD-CE, then APGD-T towards 9 classes on the images still standing, 100 iterations each; per
#             image the input of lowest margin met at any iterate; resumable per batch from RUNS/nuts-preact)
#   eval      MixedNUTS under the comparison's protocol (MSA-style plan over the mixture's own attack targets,
#             APGD-T towards 3 classes, Square 1000) on the first N lossless test images, batch size 250, its report
#             recorded in the card; then APGD-T through the raw robust branch and the mapped mixture too (the
#             transfer an adversary who knows alpha is near 1 tries), their per-sample worst case in the card;
#             resumable per batch
#   sweep     the fixed-alpha mixture at each of ALPHAS under the same protocol (not shipped: the reports only)
#   adaptive  adaptive smoothing as its authors train it (hpm mix --adaptive --recipe authors: their mixing network,
#             their randomized APGD training attack with the training constants (2, 0.4), their warm-up) on MIXER_N
#             training images for MIXER_EPOCHS epochs (theirs: 50,000 x 5 on GPUs; each image costs 10 APGD runs of
#             about 75 iterations through both networks and a 44M-parameter mixer, about 7 s a run per image on 2 CPU
#             cores at batch 8, so the default 500 images take about 10 h there), resumable from RUNS/mixer-preact,
#             its norms' statistics then recomputed on the last epoch's training images (MIXER_RECALIBRATE steps);
#             deployed and evaluated with their constants (3, 20) under the same protocol, and where its alpha goes
#             on clean and attacked images
#   avgmargin, dpnp  the PreAct ResNet-18 retrained with its FC's recipe plus Wu & Yu's average-margin regulariser,
#             or as Adv-DPNP (resumable mid-epoch from RUNS/at-preact18-e15-NAME), then evaluated the same way
#   The adaptive mixer (about 176 MB) and the two retrained backbones (45 MB each) are too large for the wheel: list
#   their weights under exclude-package-data in pyproject.toml before they are committed.
#   A report already written is kept: delete it to evaluate again.
#   DATA=../shared/data nice bash scripts/mixing_defences.sh  # STEPS="nuts eval sweep adaptive avgmargin dpnp"
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
STEPS="${STEPS:-nuts eval sweep adaptive avgmargin dpnp}"
RUNS="${RUNS:-runs}"
N="${N:-500}"
N_SELECT="${N_SELECT:-1000}"
ALPHAS="${ALPHAS:-0 0.5 0.7 0.8 0.9}"
MIXER_N="${MIXER_N:-500}"
MIXER_EPOCHS="${MIXER_EPOCHS:-1}"
MIXER_BATCH="${MIXER_BATCH:-25}"
MIXER_RECALIBRATE="${MIXER_RECALIBRATE:-$((MIXER_N / MIXER_BATCH))}"  # steps whose images recompute its norms
DEVICE=(${DEVICE:+--device "$DEVICE"})  # e.g. DEVICE=cuda; default: each command's own choice
PREFIX=checkpoints/cifar10-preactresnet18-fgsmrs-15ep
NUTS="$PREFIX-mixednuts"
OUT=results/eval/preact
PROTOCOL=(--data "$DATA" --n "$N" --eps 8/255 --target-classes 3 --square-queries 1000 --batch-sizes 250)
RECIPE=(--arch preact-resnet18 --epochs 15 --lr 0.2 --no-nesterov --adversarial fgsm-rs --channels-last)

evaluate() {  # MODEL REPORT [CHECKPOINT] [ATTACKS...]: the comparison's protocol (or hpm eval's ATTACKS), then the
              # report into CHECKPOINT's card; a finished REPORT is kept (its sanity checks alone take minutes)
  local model="$1" report="$2" checkpoint="${3:-}"
  shift $(($# < 3 ? $# : 3))
  [ -f "$report" ] || hpm eval "$model" "${PROTOCOL[@]}" "${DEVICE[@]}" "$@" --out "$report" > /dev/null
  [ -z "$checkpoint" ] || hpm card "$checkpoint" --eval "$report" > /dev/null
}

for step in $STEPS; do
  case "$step" in
    nuts) [ -f "$NUTS/config.json" ] || hpm mix --standard pyautoattack --robust "$PREFIX-fc" --nuts --data "$DATA" \
            --n-select "$N_SELECT" --batch-size 250 --run-dir "$RUNS/nuts-preact" --out "$NUTS" "${DEVICE[@]}" ;;
    eval) evaluate "$NUTS" "$OUT/pa18-mixednuts-full-eps8.json"
          evaluate "$NUTS" "$OUT/pa18-mixednuts-transfer-t-eps8.json" "" \
            --attacks apgd-t/robust,apgd-t/mapped --no-checks
          hpm card "$NUTS" --eval "$OUT"/pa18-mixednuts-{full,transfer-t}-eps8.json \
            --worst-case "$OUT"/pa18-mixednuts-{full,transfer-t}-eps8.json > /dev/null ;;
    sweep) for alpha in $ALPHAS; do
             evaluate "mixed(standard=pyautoattack,robust=$PREFIX-fc,alpha=$alpha,T=1)" \
               "$OUT/pa18-mixed-alpha$alpha-eps8.json"
           done ;;
    adaptive) [ -f "$PREFIX-mixed-adaptive/config.json" ] || hpm mix --standard pyautoattack --robust "$PREFIX-fc" \
                --adaptive --recipe authors --eval-gamma 3 20 --data "$DATA" --n-train "$MIXER_N" \
                --epochs "$MIXER_EPOCHS" --batch-size "$MIXER_BATCH" --recalibrate-steps "$MIXER_RECALIBRATE" \
                --run-dir "$RUNS/mixer-preact" \
                --out "$PREFIX-mixed-adaptive" "${DEVICE[@]}"
              evaluate "$PREFIX-mixed-adaptive" "$OUT/pa18-mixed-adaptive-full-eps8.json" "$PREFIX-mixed-adaptive"
              python scripts/adaptive_alpha.py "$PREFIX-mixed-adaptive" --data "$DATA" --n 200 \
                --out results/analysis/adaptive-alpha-preact.json > /dev/null ;;
    avgmargin|dpnp)
      options=(--margin-reg 1 --margin-tau 1)
      [ "$step" = avgmargin ] || options=(--classifier dpnp)
      [ -f "$PREFIX-$step/config.json" ] || hpm train-backbone --data "$DATA" --run-dir "$RUNS/at-preact18-e15-$step" \
        --out "$PREFIX-$step" "${RECIPE[@]}" "${options[@]}" "${DEVICE[@]}"
      evaluate "$PREFIX-$step" "$OUT/pa18-$step-full-eps8.json" "$PREFIX-$step" ;;
    *) echo "unknown step $step (nuts, eval, sweep, adaptive, avgmargin, dpnp)" >&2; exit 2 ;;
  esac
  echo "done $step"
done
