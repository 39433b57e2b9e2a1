#!/usr/bin/env bash
# Accuracy under attack vs eps, APGD-CE alone (the paper's Fig. 1 setting: one APGD-CE on the
# deployed model), the full protocol (APGD-CE + APGD-DLR on every MSA surrogate + Square, per-sample
# worst case) and, on the same images, the default plan's APGD-T runs (towards the TARGETS top wrong classes;
# README and cards show them joined with the full protocol per sample: "full + APGD-T"), for each MODEL given
# as NAME=SOURCE (a checkpoint directory or model source).
#   MODELS="fc=pyautoattack ncm=checkpoints/cifar10-resnet18-ncm hpm=checkpoints/cifar10-resnet18-hpm-clean" \
#   PREFIX=resnet18 N=200 bash scripts/eps_sweep.sh
# Writes $OUT/$PREFIX-NAME-eps<e>-{apgdce,full,targeted}.{json,md,npz}; reruns resume from the .npz files.
# The sanity checks are skipped (--no-checks): each is an extra attack run per report, and the sweep itself shows
# monotonicity in eps; the single-eps reports in results/eval keep them.
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
MODELS="${MODELS:?set MODELS to NAME=SOURCE pairs}"
PREFIX="${PREFIX:?set PREFIX, e.g. resnet18}"
EPS="${EPS:-0.25 0.5 1 2 4}"         # in units of 1/255
N="${N:-200}"
BS="${BS:-200}"
ITERS="${ITERS:-40}"
SQUARE="${SQUARE:-1000}"             # Square queries per sample (AutoAttack: 5000; CPU budget)
TARGETS="${TARGETS:-3}"              # APGD-T target classes (AutoAttack: 9; CPU budget)
PROTOCOLS="${PROTOCOLS:-apgdce full targeted}"
OUT="${OUT:-results/eval/sweep}"
mkdir -p "$OUT"
for pair in $MODELS; do
  name="${pair%%=*}"; model="${pair#*=}"
  for eps in $EPS; do
    for protocol in $PROTOCOLS; do
      report="$OUT/$PREFIX-$name-eps$eps-$protocol.json"
      attacks=(--no-targeted)                # the paper's MSA + Square
      [ "$protocol" = apgdce ] && attacks=(--attacks apgd-ce/deployed)
      [ "$protocol" = targeted ] && attacks=(--attacks apgd-t --target-classes "$TARGETS")
      hpm eval "$model" --data "$DATA" --n "$N" --eps "$eps/255" --iters "$ITERS" --square-queries "$SQUARE" \
        --batch-sizes "$BS" --no-checks "${attacks[@]}" --out "$report" > /dev/null 2> "${report%.json}.log"
      echo "done $name eps $eps/255 $protocol"
    done
  done
done
