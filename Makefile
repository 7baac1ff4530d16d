# DistillGym: the two quick-start commands are `make train` and `make test`; each sets itself up.
.PHONY: setup train test test-fast bench lint

setup:
	bash scripts/setup.sh

train: setup
	HF_HUB_OFFLINE=1 bash scripts/quickstart.sh

test:
	bash scripts/test.sh

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -m "not slow and not vllm" -q

bench: setup
	for b in bench/envs.py bench/store.py bench/kernels.py bench/model_load.py bench/rollout.py bench/train_step.py; do \
	  HF_HUB_OFFLINE=1 .venv/bin/python $$b || exit 1; done

lint: setup
	.venv/bin/ruff check envs agents trainers kernels data tests bench
