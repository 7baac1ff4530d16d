#!/usr/bin/env bash
# The README's main job: a short CPU training run with the bundled SmolLM2-135M on the default
# household env, recorded in the SQLite store (runs/distillgym.db).
#   1. SFT warm start on the household expert's demonstrations (this is also the OPD teacher).
#   2. On-policy distillation (OPD) of the base model from that teacher, LoRA on the student.
# Then it prints the runs table. Extra arguments (key=value) go to both training commands.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
STAMP=$(date +%Y%m%d-%H%M%S)
SFT="quickstart-sft-$STAMP"
OPD="quickstart-opd-$STAMP"
echo "== 1/2 SFT warm start: $SFT"
$PY -m trainers sft --config configs/quickstart.yaml "run_name=$SFT" "$@"
echo "== 2/2 OPD from the SFT teacher: $OPD"
$PY -m trainers opd --config configs/quickstart_opd.yaml "run_name=$OPD" "teacher=runs/$SFT/final" "$@"
echo "== runs in the store (python -m data runs)"
$PY -m data runs
echo "inspect an episode: $PY -m data show $OPD --episode 0 --logratio"
