#!/usr/bin/env bash
# The GPU checks and figures of the README's performance section, most important first, so that a run cut short
# still leaves the headline figures:
#   1. the published ISRD setting (configs/bench/gpu_isrd.yaml: ResNet-50@224 -> ResNet-18@56, batch 64) with
#      bf16 + channels_last on every input pipeline;
#   2. the CUDA-only tests and short bf16 CUDA trainings on the tensor and device pipelines (correctness);
#   3. fp32; fp16 + channels_last; bf16 alone; 4 loader workers instead of 12; torch.profiler tables of both steps;
#   4. torch.compile, then compile with CUDA graphs (one repeat each: compiling takes minutes, so they come last),
#      with dynamo's logs of graph breaks, rebuilds and skipped CUDA graphs.
# OUT receives four files however many steps run: gpu.txt (card and versions), log.txt (all that is printed),
# benchmarks.jsonl (a line per finished benchmark: {"step", "seconds", "benchmark": its benchmark.json}) and
# profile.txt. Each step's own folder (benchmark.json, traces, training runs) goes under WORK. A failed step is
# named at the end and the exit status is 1. About 10 minutes on one H100/H200, most of it compiling; PYTHON
# picks the interpreter (default python3).
set -uo pipefail
default_out=ckpt/bench_gpu
usage="usage: bash tools/gpu_benchmark.sh [OUT [WORK]]"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  # What the script does is the header comment: print it rather than keep a second copy.
  echo "$usage"
  echo
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"
  echo
  echo "OUT: the folder that receives gpu.txt, log.txt, benchmarks.jsonl and profile.txt (default: $default_out)"
  echo "WORK: the folder of the steps' own outputs (default: OUT/steps)"
  exit 0
fi
for arg in "$@"; do
  if [[ $arg == -* ]]; then
    echo "error: tools/gpu_benchmark.sh: unknown option $arg; $usage" >&2
    exit 2
  fi
done
if (( $# > 2 )); then
  echo "error: tools/gpu_benchmark.sh takes at most two folders, got $#: $*; $usage" >&2
  exit 2
fi
out=$(realpath -m "${1:-$default_out}")
work=$(realpath -m "${2:-$out/steps}")
py=${PYTHON:-python3}
# The repository root, wherever the script is called from; lib imports from it without an installed package.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# One interpreter start (torch takes seconds to import; timm is only looked for): exit status 3 without CUDA.
"$py" -c "import importlib.util, torch, torchvision, yacs, lib.engine; assert importlib.util.find_spec('timm')
raise SystemExit(0 if torch.cuda.is_available() else 3)" 2>/dev/null
case $? in
  0) ;;
  3) # Without a GPU every step below would run 224 px on the CPU for a long while: stop before writing anything.
     echo "error: tools/gpu_benchmark.sh needs a CUDA GPU; on the CPU use python tools/benchmark.py --config_file configs/bench/cpu_isrd.yaml" >&2
     exit 2 ;;
  *) echo "error: tools/gpu_benchmark.sh: $py cannot import torch, torchvision, timm, yacs and this project's lib;" \
          "pip install -r requirements.txt, or set PYTHON to the interpreter that has them" >&2
     exit 2 ;;
esac
mkdir -p "$out" "$work" || exit 2
: > "$out/benchmarks.jsonl"; : > "$out/profile.txt"  # there, empty, even if no step finishes
exec > >(tee "$out/log.txt") 2>&1
stamp() { echo "== $(date +%H:%M:%S) $*"; }
failed=()

bench() {  # step name, then benchmark.py options and config overrides (a step's own --repeats replaces 3)
  local name=$1 start=$SECONDS repeats=(--repeats 3); shift
  [[ " $* " == *" --repeats "* ]] && repeats=()  # (benchmark.py refuses a flag given twice)
  stamp "benchmark $name"
  rm -f "$work/$name/benchmark.json"
  "$py" tools/benchmark.py --config_file configs/bench/gpu_isrd.yaml --steps 40 --warmup 5 \
    ${repeats[@]+"${repeats[@]}"} "$@" BASIC.OUTPUT_ROOT "'$work/$name'" 2>&1 | grep --line-buffered -v "^warm-up\|^bench epoch"
  if (( PIPESTATUS[0] != 0 )) || [[ ! -f $work/$name/benchmark.json ]]; then
    failed+=("$name")
    return
  fi
  "$py" -c 'import json, sys
print(json.dumps({"step": sys.argv[1], "seconds": int(sys.argv[2]), "benchmark": json.load(open(sys.argv[3]))}))' \
    "$name" $((SECONDS - start)) "$work/$name/benchmark.json" >> "$out/benchmarks.jsonl"
}

check() {  # step name, then a command: its last lines are shown, its whole output kept under WORK
  local name=$1; shift
  stamp "$name"
  "$@" > "$work/$name.log" 2>&1
  local status=$?
  tail -n 3 "$work/$name.log"
  (( status == 0 )) || failed+=("$name")
}

train_demo() {  # pipeline: two epochs of the demo teacher on CUDA, bf16 + channels_last
  "$py" tools_0_base/train_teacher_1run.py --config_file configs/demo/cub_demo_teacher.yaml SOLVER.NUM_EPOCHS 2 \
    TRAIN.AMP "'bf16'" TRAIN.CHANNELS_LAST True DATA.PIPELINE "'$1'" BASIC.OUTPUT_ROOT "'$work/demo_$1'" \
    BASIC.FRESH_START True
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import sys, torch, torchvision, timm; print('python', sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
} | tee "$out/gpu.txt"
# 1. The headline: every pipeline, bf16 + channels_last.
bench bf16_cl
# 2. Correctness on CUDA.
check cuda_tests "$py" -m pytest -q tests/test_datasets.py -k cuda
check demo_tensor train_demo tensor
check demo_device train_demo device
# 3. fp32 (convolutions may still use TF32, cuDNN's default; matrix products are true fp32), fp16, bf16 alone.
bench fp32 --pipelines tensor,device TRAIN.AMP "'none'" TRAIN.CHANNELS_LAST False
bench fp16_cl --pipelines tensor,device TRAIN.AMP "'fp16'"
bench bf16 --pipelines tensor,device TRAIN.CHANNELS_LAST False
# Fewer loader workers: less competition with the training thread for CPU cores (a launch-bound step runs at that
# thread's speed; 4 workers still decode about 2700 img/s). Where the host time goes.
bench workers4 --pipelines tensor BASIC.NUM_WORKERS 4
bench profile --pipelines tensor,device --repeats 1 --profile
cat "$work"/profile/profile/profile_*.txt > "$out/profile.txt" 2>/dev/null
# 4. torch.compile: a cold inductor build of the whole step per pipeline, then again for CUDA graphs. Dynamo's logs
# say whether a graph broke or was built again, and whether CUDA graphs were skipped ("skipping cudagraphs due to").
logs=recompiles,graph_breaks,perf_hints
TORCH_LOGS=$logs bench compile --pipelines tensor,device --repeats 1 TRAIN.COMPILE True
TORCH_LOGS=$logs bench compile_cudagraphs --pipelines tensor,device --repeats 1 TRAIN.COMPILE True \
  TRAIN.COMPILE_MODE "'reduce-overhead'"
stamp "done"
if (( ${#failed[@]} )); then
  echo "failed steps: ${failed[*]} (their output is above; their folders and logs are under $work)"
  exit 1
fi
