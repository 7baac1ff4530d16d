#!/usr/bin/env bash
# The README's main job: a short CPU training run with the bundled SmolLM2-135M, recorded in the
# SQLite store (runs/distillgym.db).
#   1. SFT on the household expert's demonstrations, with a greedy evaluation on valid_seen.
#   2. RL that visibly learns: a short SFT start on DistillGym/Sum-v0 (two-digit addition), then
#      GRPO from it; the start and the end are evaluated greedily on the same 128 held-out tasks
#      and the summary prints success before -> after with 95% intervals (trainers eval baseline=).
# Then it prints the runs table. Extra arguments (key=value) go to every training command.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-.venv/bin/python}
STAMP=$(date +%Y%m%d-%H%M%S)
SFT="quickstart-sft-$STAMP"
SUM="quickstart-sum-sft-$STAMP"
GRPO="quickstart-grpo-$STAMP"
EVAL=(--env DistillGym/Sum-v0 --split valid_unseen --episodes 128 --greedy max_turns=1 max_new_tokens=8
      max_context_tokens=256)
echo "== 1/2 SFT on household demonstrations: $SFT"
$PY -m trainers sft --config configs/quickstart.yaml "run_name=$SFT" "$@"
echo "== 2/2 GRPO that learns, on Sum-v0: SFT start $SUM, then $GRPO"
$PY -m trainers sft --config configs/quickstart_sum.yaml "run_name=$SUM" "$@"
$PY -m trainers eval "${EVAL[@]}" --model "runs/$SUM/final" "run_name=$SUM-eval"
$PY -m trainers grpo --config configs/quickstart_grpo.yaml "run_name=$GRPO" "model=runs/$SUM/final" "$@"
echo "== before -> after (greedy, the same 128 held-out tasks)"
$PY -m trainers eval "${EVAL[@]}" --model "runs/$GRPO/final" "run_name=$GRPO-eval" "baseline=$SUM-eval"
echo "learning curve: runs/$GRPO/learning_curve.png"
echo "== runs in the store (python -m data runs)"
$PY -m data runs
echo "inspect an episode: $PY -m data show $GRPO --episode 0"
