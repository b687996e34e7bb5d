#!/usr/bin/env bash
# CUDA check of both pipelines with throughput figures, for a machine with a GPU.
# Uses only the built-in demo data (no `datasets`, no network) and writes into temporary folders.
# Target: under 10 minutes on one H100/H200 (most of it torch.compile; its caches are shared
# between the processes, so each model compiles once).
#   bash tools/gpu_check.sh            (PYTHON=... to choose the interpreter)
# 1. bench before (the old defaults: eager, batch 32 slices / 512 beats) and after (the new CUDA
#    defaults: compiled, batch 256 / 4,096); both with bf16 autocast and fused AdamW.
# 2. Q1: 2-fold CV of unet and unet25d (2 short epochs each) + baselines + evaluation;
#    Q2: 2-fold CV of resnet and context (2 short epochs each) + baselines + ensemble + evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
export NO_PROGRESS=1 PYTHONUNBUFFERED=1 PROJECT_CACHE=${PROJECT_CACHE:-$R/cache}
PY=${PYTHON:-python3}
START=$SECONDS
$PY -c "import sys, torch; torch.cuda.is_available() or sys.exit('no CUDA device: this check is \
for a GPU machine'); print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), \
'| bf16', torch.cuda.is_bf16_supported())"
stamp() { echo "   [$((SECONDS - START)) s]"; }

echo "== Q1 bench, device-resident demo data"
echo "-- before: eager, batch 32"
$PY -m q1_mri.bench --data demo --path resident --steps 20 --compile off --batch-size 32
echo "-- after: the CUDA defaults"
$PY -m q1_mri.bench --data demo --path resident --steps 20
stamp

echo "== Q2 bench, demo data"
echo "-- before: eager, batch 512 beats"
$PY -m q2_ecg.bench --data demo --steps 20 --compile off --batch-beats 512
echo "-- after: the CUDA defaults"
$PY -m q2_ecg.bench --data demo --steps 20
stamp

echo "== Q1 pipeline on CUDA: baselines, 2-fold CV of unet and unet25d (2 epochs), evaluation"
$PY -m q1_mri.baselines --data demo --split kfold --folds 2 --results-root "$R" | tail -1
for m in unet unet25d; do
  for f in 0 1; do
    $PY -m q1_mri.train --data demo --device cuda --model $m --split kfold --folds 2 --fold $f \
      --epochs 2 --monitor-slices 64 --results-root "$R" | tail -1 | cut -c1-160
  done
done
$PY -m q1_mri.eval --data demo --device cuda --results-root "$R" | tail -9
stamp

echo "== Q2 pipeline on CUDA: baselines, 2-fold CV of resnet and context (2 epochs), evaluation"
$PY -m q2_ecg.baselines --data demo --split kfold --folds 2 --results-root "$R" | tail -1
for m in resnet context; do
  for f in 0 1; do
    $PY -m q2_ecg.train --data demo --device cuda --model $m --split kfold --folds 2 --fold $f \
      --epochs 2 --beats-per-epoch 20000 --results-root "$R" | tail -1 | cut -c1-160
  done
done
$PY -m q2_ecg.ensemble --data demo --results-root "$R" | tail -1
$PY -m q2_ecg.eval --data demo --results-root "$R" | tail -9
stamp
echo "gpu_check: done in $((SECONDS - START)) s"
