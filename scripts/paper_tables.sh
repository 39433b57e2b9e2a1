#!/usr/bin/env bash
# The paper's Tables 1 and 2 at full scale on RobustBench models, for a machine with a GPU and the zoo weights.
# For each model: IKL adversarial fine-tuning of an HPM head on the frozen backbone (paper recipe), then FC and
# HPM under the same MSA + Square protocol, and the HPM checkpoint's model card filled from the reports.
#   DEVICE=cuda MODEL_DIR=./models DATA=~/data bash scripts/paper_tables.sh cifar10     # or cifar100, imagenet, all
# Weights are read from MODEL_DIR/<dataset>/Linf/<name>.pt (RobustBench's layout; downloaded there when missing
# and online). Results: $OUT/<dataset>-<name>-{fc,hpm}.{json,md,npz}; checkpoints: $RUN/<dataset>-<name>-hpm.
# Then: python scripts/results_section.py (after listing the reports in results/manifest.json).
set -euo pipefail
TABLE="${1:-all}"
DATA="${DATA:-${HPM_DATA_DIR:-}}"
DEVICE="${DEVICE:-cuda}"
MODEL_DIR="${MODEL_DIR:-./models}"
RUN="${RUN:-runs/paper}"
OUT="${OUT:-results/eval/paper}"
ITERS="${ITERS:-100}"          # APGD iterations (AutoAttack's standard)
SQUARE="${SQUARE:-5000}"       # Square queries (AutoAttack's standard)
BS="${BS:-256}"                # evaluation batch size (HPM depends on the batch; stated in every report)
MAX_STEPS="${MAX_STEPS:-}"     # stop fine-tuning early (for smoke tests)
BATCH="${BATCH:-64}"           # fine-tuning batch size (paper: 64)
MODELS_cifar10="${MODELS_cifar10:-Cui2023Decoupled_WRN-28-10 Wang2023Better_WRN-70-16 Jia2022LAS-AT_70_16 Bartoldson2024Adversarial_WRN-94-16}"
MODELS_cifar100="${MODELS_cifar100:-Cui2023Decoupled_WRN-28-10 Wang2023Better_WRN-70-16 Jia2022LAS-AT_34_20}"
MODELS_imagenet="${MODELS_imagenet:-Xu2024MIMIR_Swin-L Amini2024MeanSparse_ConvNeXt-L Singh2023Revisiting_ConvNeXt-T-ConvStem Mo2022When_ViT-B}"
case "$TABLE" in
  all) datasets="cifar10 cifar100 imagenet" ;;
  cifar10|cifar100|imagenet) datasets="$TABLE" ;;
  *) echo "usage: $0 [cifar10|cifar100|imagenet|all]" >&2; exit 2 ;;
esac
data_args=(); [ -n "$DATA" ] && data_args=(--data "$DATA")
mkdir -p "$OUT"
for ds in $datasets; do
  # paper recipe (Sec. 4.2, supp. 6.2): CIFAR-10 8/255 1 epoch; CIFAR-100 8/255 2 epochs + wMSE in the attack;
  # ImageNet 4/255 2 epochs on 10 images per class (10,000), evaluated on 5 per class (5,000)
  case "$ds" in
    cifar10)  eps=8/255; train=(--epochs 1);                         n="${N:-10000}"; subset=first ;;
    cifar100) eps=8/255; train=(--epochs 2 --attack-wmse);           n="${N:-10000}"; subset=first ;;
    imagenet) eps=4/255; train=(--epochs 2 --n-train "${N_TRAIN:-10000}"); n="${N:-5000}"; subset=uniform ;;
  esac
  [ -n "${N_TRAIN:-}" ] && [ "$ds" != imagenet ] && train+=(--n-train "$N_TRAIN")
  [ -n "$MAX_STEPS" ] && train+=(--max-steps "$MAX_STEPS")
  models_var="MODELS_$ds"
  for name in ${!models_var}; do
    tag="$ds-$name"
    hpm train "robustbench:$name" --dataset "$ds" --model-dir "$MODEL_DIR" --head hpm --mode adversarial \
      --eps "$eps" --batch-size "$BATCH" "${train[@]}" --n-test "$n" "${data_args[@]}" --device "$DEVICE" --out "$RUN/$tag-hpm"
    for head in fc hpm; do
      model=$([ "$head" = fc ] && echo "robustbench:$name" || echo "$RUN/$tag-hpm")
      hpm eval "$model" --dataset "$ds" --model-dir "$MODEL_DIR" --eps "$eps" --n "$n" --subset "$subset" \
        --iters "$ITERS" --square-queries "$SQUARE" --batch-sizes "$BS" --no-targeted "${data_args[@]}" --device "$DEVICE" \
        --out "$OUT/$tag-$head.json" > /dev/null
    done
    hpm card "$RUN/$tag-hpm" --eval "$OUT/$tag-hpm.json"
    echo "done $tag"
  done
done
