#!/usr/bin/env bash
# The literature's standard small robust backbone, trained by the project, and HPM on it.
#   train   PreAct ResNet-18 with FGSM-RS at 8/255, Wong, Rice & Kolter's recipe (15 epochs, cyclic learning rate
#           peaking at 0.2, SGD momentum 0.9 without Nesterov, weight decay 5e-4, batch 128, step 10/255, uniform
#           start, random crop + flip; hpm's schedule peaks at 40% of the steps with a constant momentum, their code's
#           at half way with the momentum cycled, --warmup 0.5 --momentum-at-peak 0.8) and the catastrophic-overfitting
#           guard, on the JPEG copy of the training set;
#           resumable mid-epoch from RUNS/at-preact18-e15 (a state every 50 steps). 1.2-2.6 s a step on 2 idle CPU
#           cores, by machine: 8-17 min an epoch, 2.1-4.3 h in all.
#   check   the literature check: APGD-CE + APGD-T at AutoAttack's budget (100 iterations, 9 target classes) on all
#           1000 lossless test images, beside the published numbers in results/literature/preact-resnet18-fgsmrs.json;
#           and what the JPEG training set costs: clean accuracy on the lossless images vs their JPEG copies
#   schedule  the same training with Wong et al.'s own schedule (torch's CyclicLR: peak at half way, momentum cycled
#           0.9 -> 0.8 -> 0.9 against the rate; --warmup 0.5 --momentum-at-peak 0.8) in RUNS/pa18-cyclic-fc, not
#           shipped, its clean accuracy on the lossless and the JPEG test images, and the literature check on it:
#           does the schedule explain the clean gap? (as long as train, then about an hour)
#   heads   on the frozen backbone: the l2 NCM head (class means of the training features), HPM with the paper's
#           full IKL recipe (1 epoch, PGD-10, Adam 5e-5, batch 64, lambda 0.98) and its inner-product ablation;
#           each names the FC checkpoint as its backbone instead of storing it again
#   eval    FC and every head under the default plan (MSA + APGD-T towards 3 classes + Square 1000) on the first
#           N lossless test images; batch-dependent heads at batch sizes 1, 16 and 250 and in one shuffled order,
#           plus the whole-batch attacks (per-row clamped losses, judged both ways, margin losses, 2 restarts)
#   diagnose  NCM on clean and on adversarial class means vs FC, per batch size
#   publish   model cards from the reports, the cross-backbone figure and table, docs/results.md
#   DATA=../shared/data nice bash scripts/preact_backbone.sh        # STEPS="train check heads eval diagnose publish"
# Every step resumes where it stopped (training states, IKL's trainer_state.pt, the evaluations' .npz files), and
# a head or report that exists is not made again (delete it to redo it).
# DEVICE=cuda runs every command on a GPU.
set -euo pipefail
DATA="${DATA:-${HPM_DATA_DIR:-../shared/data}}"
STEPS="${STEPS:-train check heads eval diagnose publish}"  # schedule: on request
RUNS="${RUNS:-runs}"
N="${N:-500}"
DEVICE=(${DEVICE:+--device "$DEVICE"})
PREFIX=checkpoints/cifar10-preactresnet18-fgsmrs-15ep
FC="$PREFIX-fc"
OUT=results/eval/preact
PROTOCOL=(--data "$DATA" --n "$N" --eps 8/255 --target-classes 3 --square-queries 1000)
WHOLE_BATCH=batch:apgd-ce/ensemble,batch:apgd-dlr/bpda,batch:apgd-margin/ensemble,batch:apgd-margin/bpda
WHOLE_BATCH="$WHOLE_BATCH,apgd-margin/bpda,apgd-margin/ensemble"
mkdir -p "$OUT"
quiet() {  # OUT COMMAND...: run COMMAND --out OUT unless OUT exists, its progress in OUT's .log
  local out="$1"; shift
  [ -f "$out" ] || "$@" "${DEVICE[@]}" --out "$out" > /dev/null 2> "${out%.json}.log"
}

head_on_backbone() {  # NAME HPM-TRAIN-ARGS...: fine-tune in RUNS, then ship the checkpoint
  local name="$1"; shift
  [ -f "$PREFIX-$name/model.safetensors" ] && return
  hpm train "$FC" --data "$DATA" --n-test 1000 --out "$RUNS/pa18-$name" "${DEVICE[@]}" "$@"
  rm -rf "$PREFIX-$name" && mkdir -p "$PREFIX-$name"
  cp "$RUNS/pa18-$name"/{config.json,model.safetensors,README.md} "$PREFIX-$name"/
}

evaluate_head() {  # NAME: the default plan per batch size, the whole-batch attacks, a shuffled order
  local ckpt="$PREFIX-$1" base="$OUT/pa18-$1"
  quiet "$base-full-eps8.json" hpm eval "$ckpt" "${PROTOCOL[@]}" --batch-sizes 1,16,250
  quiet "$base-wholebatch-eps8.json" hpm eval "$ckpt" --data "$DATA" --n "$N" --eps 8/255 --batch-sizes 250 \
    --no-checks --restarts 2 --attacks "$WHOLE_BATCH"
  quiet "$base-full-order1-eps8.json" hpm eval "$ckpt" "${PROTOCOL[@]}" --batch-sizes 16,250 --order-seed 1 \
    --no-checks
}

for step in $STEPS; do
  case "$step" in
    train) hpm train-backbone --data "$DATA" --run-dir "$RUNS/at-preact18-e15" --out "$FC" --arch preact-resnet18 \
             --epochs 15 --lr 0.2 --no-nesterov --adversarial fgsm-rs --channels-last "${DEVICE[@]}" ;;
    check) quiet "$OUT/pa18-fc-apgdt-n1000-eps8.json" hpm eval "$FC" --data "$DATA" --eps 8/255 --iters 100 \
             --target-classes 9 --attacks apgd-ce/deployed,apgd-t/deployed --batch-sizes 250
           [ -f results/literature/preact-jpeg-shift.json ] || python scripts/jpeg_shift.py "$FC" \
             checkpoints/cifar10-resnet20w32-fgsmrs-{20ep-,}fc pyautoattack:resnet18 --data "$DATA" \
             --out results/literature/preact-jpeg-shift.json ;;
    schedule) hpm train-backbone --data "$DATA" --run-dir "$RUNS/at-preact18-e15-cyclic" --out "$RUNS/pa18-cyclic-fc" \
                --arch preact-resnet18 --epochs 15 --lr 0.2 --warmup 0.5 --momentum-at-peak 0.8 --no-nesterov \
                --adversarial fgsm-rs --channels-last --n-test 1000 "${DEVICE[@]}"
              cp "$RUNS/at-preact18-e15-cyclic/history.json" results/training/preact18-fgsmrs-15ep-cyclic-history.json
              [ -f results/literature/preact-cyclic-jpeg-shift.json ] || python scripts/jpeg_shift.py \
                "$RUNS/pa18-cyclic-fc" --data "$DATA" --out results/literature/preact-cyclic-jpeg-shift.json
              quiet "$OUT/pa18-cyclic-fc-apgdt-n1000-eps8.json" hpm eval "$RUNS/pa18-cyclic-fc" --data "$DATA" \
                --eps 8/255 --iters 100 --target-classes 9 --attacks apgd-ce/deployed,apgd-t/deployed \
                --batch-sizes 250 ;;
    heads) head_on_backbone ncm --head ncm --mode fit
           head_on_backbone hpm-full --head hpm --mode adversarial --save-every 50
           head_on_backbone hpm-dot --head hpm --mode adversarial --save-every 50 --ablation dot-score ;;
    eval) quiet "$OUT/pa18-fc-full-eps8.json" hpm eval "$FC" "${PROTOCOL[@]}" --batch-sizes 250
          quiet "$OUT/pa18-ncm-full-eps8.json" hpm eval "$PREFIX-ncm" "${PROTOCOL[@]}" --batch-sizes 250
          evaluate_head hpm-full
          evaluate_head hpm-dot ;;
    diagnose) python scripts/diagnose_clean_drop.py "$FC" --data "$DATA" --adv-n 5000 \
                --extra "hpm, IKL 1 epoch (paper recipe)=$PREFIX-hpm-full" "hpm, inner-product scores=$PREFIX-hpm-dot" \
                --out results/diagnosis/pa18-fgsmrs.json ;;
    publish) hpm card "$FC" --eval "$OUT/pa18-fc-apgdt-n1000-eps8.json" "$OUT/pa18-fc-full-eps8.json"
             hpm card "$PREFIX-ncm" --eval "$OUT/pa18-ncm-full-eps8.json"
             for name in hpm-full hpm-dot; do  # from the reports that exist so far
               full="$OUT/pa18-$name-full-eps8.json" whole="$OUT/pa18-$name-wholebatch-eps8.json"
               reports=() worst=()
               for f in "$full" "$OUT/pa18-$name-full-order1-eps8.json" "$whole"; do
                 [ -f "$f" ] && reports+=("$f")
               done
               [ -f "$whole" ] && worst=(--worst-case "$full" "$whole")
               hpm card "$PREFIX-$name" --eval "${reports[@]}" "${worst[@]}"
             done
             python scripts/plot_backbones.py
             python scripts/results_section.py ;;
    *) echo "unknown step $step; steps: train check schedule heads eval diagnose publish" >&2; exit 2 ;;
  esac
done
