#!/usr/bin/env bash
# Everything this project measures on a GPU, in one run: the gpu-marked tests, the benchmarks (ensemble vs FC-oracle
# APGD step, the protocol's overhead over its backbone passes, its throughput vs AutoAttack's standard version, peak
# GPU memory per batch size, the app's attack through its API), a torchrun evaluation, and the 20-epoch FGSM-RS FC
# and HPM checkpoints under the full protocol at scale: 1000 lossless test images, APGD 100 iterations, APGD-T
# towards 3 classes, Square 5000 queries, HPM at evaluation batch 250.
#   HPM_DATA_DIR=../shared/data bash scripts/gpu_checks.sh [LOGS=results/gpu] [DEADLINE_S=900]
# Each step writes LOGS/<step>.txt and a line "step rc seconds" to LOGS/steps.txt; a step that fails or outlives
# its share of the deadline is recorded and the next one runs. The benchmarks write results/benchmarks/*-cuda.json,
# the evaluations results/eval/robust/*-cuda-*.{json,md,npz} (resumed from their .npz when rerun), as README reads
# them; then python scripts/results_section.py.
set -uo pipefail
R="${1:-results/gpu}"
DEADLINE_S="${2:-900}"
: "${HPM_DATA_DIR:?set HPM_DATA_DIR to the data root (the folder holding cifar10/test-first1000.npz)}"
PY="${PYTHON:-python}"
# a dry run without a GPU: DEVICE=cpu N=8 ITERS=2 SQUARE=10 BENCH_N=4 BENCH_DIR=SCRATCH/b EVAL_DIR=SCRATCH/e
DEVICE="${DEVICE:-cuda}"
N="${N:-1000}" ITERS="${ITERS:-100}" SQUARE="${SQUARE:-5000}" BENCH_N="${BENCH_N:-250}"
FC=checkpoints/cifar10-resnet20w32-fgsmrs-20ep-fc
HPM=checkpoints/cifar10-resnet20w32-fgsmrs-20ep-hpm-full
B="${BENCH_DIR:-results/benchmarks}"
E="${EVAL_DIR:-results/eval/robust}"
mkdir -p "$R" "$B" "$E"
: > "$R/steps.txt"

step() {  # step NAME MAX_SECONDS COMMAND...: run with the smaller of its limit and the time left
  local name=$1 limit=$2 left=$((DEADLINE_S - SECONDS)) start=$SECONDS rc
  shift 2
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "$name skipped 0" >> "$R/steps.txt"; return; fi
  timeout "$limit" "$@" > "$R/$name.txt" 2>&1
  rc=$?
  echo "$name $rc $((SECONDS - start))" >> "$R/steps.txt"
}

at_scale=("$PY" -m hpm.cli eval --data "$HPM_DATA_DIR" --num-samples "$N" --eps 8/255 --iters "$ITERS"
          --square-queries "$SQUARE" --target-classes 3 --batch-sizes 250 --device "$DEVICE")
step environment 30 bash -c "nvidia-smi; $PY -c 'import torch, json, hpm.devices as d; \
print(torch.__version__, json.dumps(d.describe(\"$DEVICE\")), torch.get_num_threads())'"
step tests 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --durations=0
step bench_eval 60 "$PY" benchmarks/bench_eval.py --device "$DEVICE" --model "$HPM" --batch 250 --iters 20 --repeats 7 \
  --json "$B/eval-$DEVICE.json"
step bench_protocol 150 "$PY" benchmarks/bench_protocol.py --device "$DEVICE" --model "$HPM" --n "$BENCH_N" \
  --iters "$ITERS" --square-queries "$SQUARE" --target-classes 3 --json "$B/protocol-$DEVICE.json"
step bench_app 90 "$PY" benchmarks/bench_app.py --model "$(basename "$HPM")" --no-browser --repeats 10 \
  --json "$B/app-$DEVICE.json"
step scale_fc 240 "${at_scale[@]}" "$FC" --out "$E/r20w32e20-fc-$DEVICE-n$N-eps8.json"
step scale_hpm 360 "${at_scale[@]}" "$HPM" --out "$E/r20w32e20-hpm-$DEVICE-n$N-eps8.json"
step torchrun 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m hpm.cli eval "$HPM" \
  --data "$HPM_DATA_DIR" --num-samples "$BENCH_N" --eps 8/255 --iters 10 --square-queries 100 --target-classes 3 \
  --batch-sizes 250 --no-checks --device "$DEVICE" --out "$R/torchrun-1proc-$DEVICE.json"
cat "$R/steps.txt"
