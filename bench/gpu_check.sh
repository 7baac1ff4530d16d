#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (what ran on an H200 for README's GPU rows):
#   1. tests/test_kernels.py with the Triton kernel on CUDA tensors
#   2. bench/kernels.py at N=8192, H=4096, V=151936 (bf16) and N=1024: Triton path vs naive PyTorch
#   3. the bundled model on the GPU: quick-start SFT (fp32), OPD (bf16), OPSD through the Triton JSD
#   4. trainer/agent tests on CUDA, the learning check (bench/learn.py: SFT start -> GRPO / OPD on
#      Sum-v0, before/after with intervals), then the full comparison (configs/compare/full.yaml,
#      every method x 3 seeds on Sum-v0, sized for <= 12 min of one H200)
#
#   bash bench/gpu_check.sh                 # logs and JSON in runs/gpu-check/
#   PYTHON=python3 OUT_DIR=/tmp/gc SKIP_COMPARE=1 SKIP_LEARN=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-runs/gpu-check}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" || exit 1
status=0
step() {  # step NAME CMD...: run, log to $OUT_DIR/NAME.log, report rc and seconds
  local name=$1 start=$SECONDS; shift
  "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc in $((SECONDS - start)) s  ($OUT_DIR/$name.log)"
  [ $rc -eq 0 ] || status=1
}
RUNS="$OUT_DIR/runs"
step kernel_tests "$PY" -m pytest tests/test_kernels.py -q -p no:cacheprovider --tb=short -rf
step bench_kernels_8192 "$PY" bench/kernels.py --repeat 5
step bench_kernels_1024 "$PY" bench/kernels.py --n 1024 --repeat 5
step sft "$PY" -m trainers sft --config configs/quickstart.yaml "output_dir=$RUNS" progress=false
step opd_bf16 "$PY" -m trainers opd --config configs/quickstart_opd.yaml "output_dir=$RUNS" progress=false \
  "teacher=$RUNS/quickstart-sft/final" dtype=bfloat16
step opsd_bf16 "$PY" -m trainers opsd model=smollm2-135m-instruct env=DistillGym/Household-v0 \
  'env_kwargs={task_types: [pick_and_place_simple]}' steps=2 tasks_per_step=2 group_size=4 max_turns=5 \
  max_new_tokens=12 dtype=bfloat16 run_name=gpu-opsd checkpoint_every=0 "output_dir=$RUNS" progress=false
step runs "$PY" -m data --db "$RUNS/distillgym.db" runs
step tests_cuda "$PY" -m pytest tests/test_trainers_smoke.py tests/test_agents_backends.py \
  tests/test_agents_scoring.py tests/test_trainers_resume.py -q -p no:cacheprovider --tb=short -rf
if [ -z "${SKIP_LEARN:-}" ]; then
  step learn "$PY" bench/learn.py "output_dir=$OUT_DIR/learn" "out=$OUT_DIR/learn"
fi
if [ -z "${SKIP_COMPARE:-}" ]; then
  step compare "$PY" bench/compare.py --preset full "output_dir=$OUT_DIR/compare" progress=false
fi
exit $status
