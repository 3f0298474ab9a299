#!/usr/bin/env bash
# The GPU checks and figures of the README's performance section, most important first, so that a run cut short
# still leaves the headline figures (each step's benchmark.json is kept under OUT as it finishes):
#   1. the published ISRD setting (configs/bench/gpu_isrd.yaml: ResNet-50@224 -> ResNet-18@56, batch 64) with
#      bf16 + channels_last on every input pipeline;
#   2. the CUDA-only tests and short bf16 CUDA trainings on the tensor and device pipelines (correctness);
#   3. fp32, torch.profiler traces of both steps (where the host time goes), and 4 loader workers instead of 12;
#   4. the remaining switches: torch.compile (default and CUDA graphs), bf16 without channels_last, fp16.
# About 10 minutes on one H100/H200, most of it compiling in step 4. Run it from the repository root.
set -uo pipefail
default_out=ckpt/bench_gpu
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  # What the script does is the header comment: print it rather than keep a second copy.
  echo "usage: bash tools/gpu_benchmark.sh [OUT]"
  echo
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"
  echo
  echo "OUT: the folder that receives gpu.txt, one folder per step and a copy of its benchmark.json,"
  echo "benchmark_<step>.json (default: $default_out)"
  exit 0
fi
# Without a GPU every step below would run 224 px on the CPU for a long while: stop before writing anything.
if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "error: tools/gpu_benchmark.sh needs a CUDA GPU; on the CPU use python tools/benchmark.py --config_file configs/bench/cpu_isrd.yaml" >&2
  exit 2
fi
out=${1:-$default_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date +%H:%M:%S) $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
bench() {  # name, then options and overrides
  local name=$1; shift
  stamp "benchmark $name"
  python tools/benchmark.py --config_file configs/bench/gpu_isrd.yaml --steps 40 --warmup 5 --repeats 3 "$@" \
    BASIC.OUTPUT_ROOT "'$out/$name'" 2>&1 | grep -v "^warm-up\|^bench epoch"
  cp "$out/$name/benchmark.json" "$out/benchmark_$name.json" 2>/dev/null
}
# 1. The headline: every pipeline, bf16 + channels_last.
bench bf16_cl
# 2. Correctness on CUDA.
stamp "CUDA tests"
python -m pytest tests/test_datasets.py -k "cuda" 2>&1 | tail -2
for pipeline in tensor device; do
  stamp "demo teacher, bf16 + channels_last, $pipeline pipeline"
  python tools_0_base/train_teacher_1run.py --config_file configs/demo/cub_demo_teacher.yaml SOLVER.NUM_EPOCHS 2 \
    TRAIN.AMP "'bf16'" TRAIN.CHANNELS_LAST True DATA.PIPELINE "'$pipeline'" BASIC.OUTPUT_ROOT "'$out/demo_$pipeline'" \
    2>&1 | tail -2
done
# 3. fp32 (convolutions may still use TF32, cuDNN's default; matrix products are true fp32); then the profiles
#    (bf16 + channels_last).
bench fp32 --pipelines tensor,device TRAIN.AMP "'none'" TRAIN.CHANNELS_LAST False
bench profile --pipelines tensor,device --repeats 1 --profile
ls "$out/profile/profile" 2>/dev/null
# Fewer loader workers: less competition with the training thread for CPU cores (a launch-bound step runs at
# that thread's speed); 4 workers still decode about 2700 img/s.
bench workers4 --pipelines tensor BASIC.NUM_WORKERS 4
# 4. The remaining switches.
bench compile --pipelines tensor,device TRAIN.COMPILE True
bench compile_cudagraphs --pipelines tensor,device TRAIN.COMPILE True TRAIN.COMPILE_MODE "'reduce-overhead'"
bench bf16 --pipelines tensor,device TRAIN.CHANNELS_LAST False
bench fp16_cl --pipelines tensor,device TRAIN.AMP "'fp16'"
stamp "done"
