#!/usr/bin/env bash
# The GPU checks and figures of the README's performance section, in one go (about 5 minutes on one H100/H200):
# a short CUDA training run (bf16), then tools/benchmark.py on configs/bench/gpu_isrd.yaml (ResNet-50@224 ->
# ResNet-18@56 ISRD, batch 64) with each speed switch toggled. Usage: bash tools/gpu_benchmark.sh [OUT_DIR]
set -uo pipefail
out=${1:-ckpt/bench_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
# 1. Correctness on CUDA: a demo teacher epoch with bf16 autocast, channels_last (train + test + checkpoints).
python tools_0_base/train_teacher_1run.py --config_file configs/demo/cub_demo_teacher.yaml SOLVER.NUM_EPOCHS 2 \
  TRAIN.AMP "'bf16'" TRAIN.CHANNELS_LAST True BASIC.OUTPUT_ROOT "'$out/demo'" 2>&1 | tail -4
bench() {  # name, then overrides
  local name=$1; shift
  python tools/benchmark.py --config_file configs/bench/gpu_isrd.yaml --steps 40 --warmup 5 --repeats 3 "$@" \
    BASIC.OUTPUT_ROOT "'$out/$name'" 2>&1 | grep -v "^warm-up\|^bench epoch"
  cp "$out/$name/benchmark.json" "$out/benchmark_$name.json" 2>/dev/null
}
# 2. The published ISRD setting with the defaults chosen for GPUs: both pipelines.
bench bf16_cl
# 3. Each switch on its own (tensor pipeline).
bench fp32 --pipelines tensor TRAIN.AMP "'none'" TRAIN.CHANNELS_LAST False
bench bf16 --pipelines tensor TRAIN.CHANNELS_LAST False
bench fp16_cl --pipelines tensor TRAIN.AMP "'fp16'"
bench compile --pipelines tensor TRAIN.COMPILE True
