#!/usr/bin/env bash
# The GPU checks and figures of the README's performance section, in one go (about 8 minutes on one H100/H200):
# the CUDA-only tests, short CUDA training runs (bf16; tensor and device pipelines), then tools/benchmark.py on
# configs/bench/gpu_isrd.yaml (ResNet-50@224 -> ResNet-18@56 ISRD, batch 64) with each speed switch toggled.
# Usage: bash tools/gpu_benchmark.sh [OUT_DIR]
set -uo pipefail
out=${1:-ckpt/bench_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
# 1. Correctness on CUDA: the tests that need it (pipelines on the device), then demo teacher epochs with bf16
# autocast and channels_last (train + test + checkpoints) on the tensor and the device pipeline.
python -m pytest tests/test_datasets.py -k "cuda" 2>&1 | tail -2
for pipeline in tensor device; do
  python tools_0_base/train_teacher_1run.py --config_file configs/demo/cub_demo_teacher.yaml SOLVER.NUM_EPOCHS 2 \
    TRAIN.AMP "'bf16'" TRAIN.CHANNELS_LAST True DATA.PIPELINE "'$pipeline'" BASIC.OUTPUT_ROOT "'$out/demo_$pipeline'" \
    2>&1 | tail -2
done
bench() {  # name, then overrides
  local name=$1; shift
  python tools/benchmark.py --config_file configs/bench/gpu_isrd.yaml --steps 40 --warmup 5 --repeats 3 "$@" \
    BASIC.OUTPUT_ROOT "'$out/$name'" 2>&1 | grep -v "^warm-up\|^bench epoch"
  cp "$out/$name/benchmark.json" "$out/benchmark_$name.json" 2>/dev/null
}
# 2. The published ISRD setting with bf16 and channels_last: every pipeline.
bench bf16_cl
# 3. Each switch on its own (tensor and device pipelines).
bench fp32 --pipelines tensor,device TRAIN.AMP "'none'" TRAIN.CHANNELS_LAST False
bench bf16 --pipelines tensor,device TRAIN.CHANNELS_LAST False
bench fp16_cl --pipelines tensor,device TRAIN.AMP "'fp16'"
bench compile --pipelines tensor,device TRAIN.COMPILE True
bench compile_cudagraphs --pipelines tensor,device TRAIN.COMPILE True TRAIN.COMPILE_MODE "'reduce-overhead'"
# 4. Where the host time goes: torch.profiler traces of model-only and end-to-end steps (bf16 + channels_last).
bench profile --pipelines tensor,device --repeats 1 --profile
ls "$out/profile/profile" 2>/dev/null
