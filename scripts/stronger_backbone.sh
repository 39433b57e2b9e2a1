#!/usr/bin/env bash
# The strongest robust backbone this project can train on a CPU, and the paper's Table 1 on it: the FGSM-RS
# ResNet-20 (width 32) of scripts/robust_backbone.sh trained twice as long (20 epochs, same one-cycle schedule and
# catastrophic-overfitting guard), the paper's full IKL recipe on it (1 epoch, PGD-10, Adam 5e-5, batch 64,
# lambda 0.98), then FC vs HPM under the extended protocol on the same images: MSA + APGD-T (3 top wrong classes)
# + Square, whole-batch APGD for HPM, robust accuracy per evaluation batch size and order, the clean-drop diagnosis.
# Budget on 2 CPU cores: about 2 h of training, 1 h of IKL, 3 h of evaluations.
#   DATA=../shared/data RUN=runs nice bash scripts/stronger_backbone.sh
# Every step resumes: training from RUN/at-r20w32-e20/state.pt (per epoch), IKL from its trainer_state.pt (every
# 50 steps), evaluations from their .npz files.
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
RUN="${RUN:-runs}"
OLD=checkpoints/cifar10-resnet20w32-fgsmrs-fc
FC=checkpoints/cifar10-resnet20w32-fgsmrs-20ep-fc
HPM=checkpoints/cifar10-resnet20w32-fgsmrs-20ep-hpm-full
OUT=results/eval/robust
N="${N:-500}"
SQUARE="${SQUARE:-1000}"      # Square queries per sample (AutoAttack: 5000; CPU budget), as for the 10-epoch backbone
mkdir -p "$OUT"
quiet() { local out="$1"; shift; "$@" --out "$out" > /dev/null 2> "${out%.json}.log"; }

hpm train-backbone --data "$DATA" --run-dir "$RUN/at-r20w32-e20" --out "$FC" \
  --depth 20 --width 32 --epochs 20 --lr 0.2 --adversarial fgsm-rs
# the backbones' bar, both with the same attacks: APGD-CE, APGD-DLR and APGD-T on all 1000 lossless test images
for pair in "r20w32=$OLD" "r20w32e20=$FC"; do
  quiet "$OUT/${pair%%=*}-fc-apgdt-eps8.json" hpm eval "${pair#*=}" --data "$DATA" --eps 8/255 --target-classes 3 \
    --attacks apgd-ce/deployed,apgd-dlr/deployed,apgd-t/deployed --batch-sizes 250
done
hpm train "$FC" --head hpm --mode adversarial --data "$DATA" --save-every 50 --n-test 1000 --out "$RUN/ikl-full-r20w32e20"
rm -rf "$HPM" && mkdir -p "$HPM" && cp "$RUN"/ikl-full-r20w32e20/{config.json,model.safetensors,README.md} "$HPM"/

# FC vs HPM: the default plan (MSA + APGD-T + Square) on the same N images, HPM at batch size 250
quiet "$OUT/r20w32e20-fc-full-eps8.json" hpm eval "$FC" --data "$DATA" --n "$N" --eps 8/255 --target-classes 3 \
  --square-queries "$SQUARE" --batch-sizes 250
quiet "$OUT/r20w32e20-hpm-full-eps8.json" hpm eval "$HPM" --data "$DATA" --n "$N" --eps 8/255 --target-classes 3 \
  --square-queries "$SQUARE" --batch-sizes 250
# whole-batch APGD on HPM (every image of an evaluation batch perturbed jointly), combined per sample in README
quiet "$OUT/r20w32e20-hpm-wholebatch-eps8.json" hpm eval "$HPM" --data "$DATA" --n "$N" --eps 8/255 \
  --batch-sizes 250 --no-checks --attacks batch:apgd-ce/ensemble,batch:apgd-dlr/bpda --batch-kappa none
# the strengthened whole-batch attacks (per-row clamped losses, judged on the perturbed batch and row by row, margin
# losses, 2 restarts) and APGD with the margin loss on the deployed model through BPDA and on the ensemble
quiet "$OUT/r20w32e20-hpm-wholebatch-strong-eps8.json" hpm eval "$HPM" --data "$DATA" --n "$N" --eps 8/255 \
  --batch-sizes 250 --no-checks --restarts 2 --attacks batch:apgd-ce/ensemble,batch:apgd-dlr/bpda,\
batch:apgd-margin/ensemble,batch:apgd-margin/bpda,apgd-margin/bpda,apgd-margin/ensemble
# robust accuracy per evaluation batch size and order: every APGD attack of the plan on the first 250 images
CURVE=apgd-ce/fc,apgd-dlr/fc,apgd-ce/soft,apgd-dlr/soft,apgd-ce/ensemble,apgd-dlr/ensemble,apgd-ce/bpda,apgd-dlr/bpda
CURVE="$CURVE,apgd-t/fc,apgd-t/bpda"
quiet "$OUT/r20w32e20-hpm-curve-eps8.json" hpm eval "$HPM" --data "$DATA" --n 250 --eps 8/255 --target-classes 3 \
  --batch-sizes 1,16,250 --no-checks --attacks "$CURVE"
quiet "$OUT/r20w32e20-hpm-curve-order1-eps8.json" hpm eval "$HPM" --data "$DATA" --n 250 --eps 8/255 \
  --target-classes 3 --batch-sizes 16,250 --order-seed 1 --no-checks --attacks "$CURVE"
# FC on the curve's images with the same APGD attacks, for the paired tests per batch size
quiet "$OUT/r20w32e20-fc-n250-eps8.json" hpm eval "$FC" --data "$DATA" --n 250 --eps 8/255 --target-classes 3 \
  --batch-sizes 250 --no-checks --attacks apgd-ce/deployed,apgd-dlr/deployed,apgd-t/deployed
hpm card "$OLD" --eval "$OUT/r20w32-fc-apgd-eps8.json" "$OUT/r20w32-fc-full-eps8.json" "$OUT/r20w32-fc-stronger-eps8.json" \
  "$OUT/r20w32-fc-apgdt-eps8.json"
hpm card "$FC" --eval "$OUT/r20w32e20-fc-apgdt-eps8.json" "$OUT/r20w32e20-fc-full-eps8.json"
hpm card "$HPM" --eval "$OUT/r20w32e20-hpm-full-eps8.json" "$OUT/r20w32e20-hpm-wholebatch-eps8.json" \
  "$OUT/r20w32e20-hpm-wholebatch-strong-eps8.json" "$OUT/r20w32e20-hpm-curve-eps8.json" \
  "$OUT/r20w32e20-hpm-curve-order1-eps8.json" \
  --worst-case "$OUT/r20w32e20-hpm-full-eps8.json" "$OUT/r20w32e20-hpm-wholebatch-eps8.json" \
  "$OUT/r20w32e20-hpm-wholebatch-strong-eps8.json"
python scripts/diagnose_clean_drop.py "$FC" --data "$DATA" --adv-n 5000 \
  --extra "hpm, IKL 1 epoch (paper recipe)=$HPM" --out results/diagnosis/r20w32e20-fgsmrs.json
python scripts/results_section.py
