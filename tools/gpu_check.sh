#!/usr/bin/env bash
# CUDA smoke test of both pipelines and throughput figures, for a machine with a GPU.
# Uses only the built-in demo data (no `datasets`, no network). About 5 minutes on one H100 (most of it torch.compile).
#   bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_PROGRESS=1 PYTHONUNBUFFERED=1 PROJECT_CACHE=${PROJECT_CACHE:-/tmp/gpu-check-cache}
PY=${PYTHON:-python3}
R=$(mktemp -d)
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), \
'| bf16', torch.cuda.is_bf16_supported())"

echo "== Q1 training throughput, U-Net, device-resident demo data, bf16 autocast"
for bs in 256; do
  for cl in on off; do
    for comp in "" "--compile"; do
      $PY -m q1_mri.bench --data demo --path resident --batch-size $bs --steps 60 \
        --channels-last $cl $comp | tail -1
    done
  done
done

echo "== Q1 smoke: both models, 3 epochs each, then evaluation"
$PY -m q1_mri.train --data demo --model unet --epochs 3 --batch-size 64 --results-root "$R" | tail -1
$PY -m q1_mri.train --data demo --model transunet --epochs 3 --batch-size 64 --adv-weight 0.01 \
  --results-root "$R" | tail -1
$PY -m q1_mri.eval --data demo --results-root "$R" | tail -9

echo "== Q2 smoke: three models, 2 epochs each, then evaluation"
for m in resnet context autoencoder; do
  $PY -m q2_ecg.train --data demo --model $m --epochs 2 --beats-per-epoch 20000 \
    --results-root "$R" | tail -1 | cut -c1-160
done
$PY -m q2_ecg.eval --data demo --results-root "$R" | tail -7

echo "== Q2 training throughput, demo data"
for bb in 512 4096; do
  $PY -m q2_ecg.bench --data demo --steps 40 --batch-beats $bb | tail -n +2
done
