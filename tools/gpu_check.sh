#!/usr/bin/env bash
# CUDA check of both pipelines with throughput figures, for a machine with a GPU.
# Uses only the built-in demo data (no `datasets`, no network) and temporary folders.
# Target: under 10 minutes on one H100/H200 (most of it torch.compile).
#   bash tools/gpu_check.sh            (PYTHON=... to choose the interpreter)
# 1. no host synchronisation inside a training step (tools/sync_check.py);
# 2. bench before (eager, the CPU's batches) and after (the CUDA defaults: compiled, 8x
#    batches), bf16 autocast and fused AdamW in both: samples/s and the fraction of bf16 peak;
# 3. Q1: 2-fold CV of the U-Net and the plain reference (2 short epochs), a resume on CUDA,
#    baselines, evaluation, figures, the deployed model and its export scored;
# 4. Q2: 2-fold CV of the ResNet and the context model (2 short epochs), baselines, ensemble,
#    evaluation, figures, the deployed model and its export scored.
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
Q1="--data demo --results-root $R"
Q2="--data demo --results-root $R"

echo "== host synchronisation inside the training step"
$PY tools/sync_check.py
stamp

echo "== bench: before (eager, batch 32 slices / 512 beats) and after (the CUDA defaults)"
$PY -m q1_mri.bench --data demo --path resident --steps 20 --compile off --batch-size 32
$PY -m q1_mri.bench --data demo --path resident --steps 20
$PY -m q2_ecg.bench --data demo --steps 20 --compile off --batch-beats 512
$PY -m q2_ecg.bench --data demo --steps 20
stamp

echo "== Q1 on CUDA: 2-fold CV (2 epochs), resume, baselines, evaluation, figures, final, export"
$PY -m q1_mri.baselines $Q1 --split kfold --folds 2 | tail -1
for m in unet plain; do for f in 0 1; do
  $PY -m q1_mri.train $Q1 --device cuda --model $m --folds 2 --fold $f --epochs 1 | tail -1 | cut -c1-160
  $PY -m q1_mri.train $Q1 --device cuda --model $m --folds 2 --fold $f --epochs 2 --resume \
    | tail -1 | cut -c1-160
done; done
$PY -m q1_mri.eval $Q1 | tail -6
$PY -m q1_mri.figures $Q1
$PY -m q1_mri.final $Q1
$PY -m q1_mri.infer --data demo --trained-on demo --results-root "$R" --out "$R/q1.npz"
$PY -m q1_mri.eval $Q1 --predictions "$R/q1.npz" | tail -2
stamp

echo "== Q2 on CUDA: 2-fold CV (2 epochs), baselines, ensemble, evaluation, figures, final, export"
$PY -m q2_ecg.baselines $Q2 --split kfold --folds 2 | tail -1
for m in resnet context; do for f in 0 1; do
  $PY -m q2_ecg.train $Q2 --device cuda --model $m --folds 2 --fold $f --epochs 2 \
    --beats-per-epoch 20000 | tail -1 | cut -c1-160
done; done
$PY -m q2_ecg.ensemble $Q2 | tail -1
$PY -m q2_ecg.eval $Q2 | tail -4
$PY -m q2_ecg.figures $Q2
$PY -m q2_ecg.final $Q2
$PY -m q2_ecg.infer --data demo --trained-on demo --results-root "$R" --out "$R/q2.npz"
$PY -m q2_ecg.eval $Q2 --predictions "$R/q2.npz" | tail -2
stamp
echo "gpu_check: done in $((SECONDS - START)) s"
