#!/usr/bin/env bash
# The test command of the README (and of .ci/run): set up, start PostgreSQL for the store tests
# when possible, run pytest. Arguments go to pytest. "No test ran" (pytest exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -z "${DISTILLGYM_TEST_PG_URL:-}" && -f scripts/start_postgres.sh ]]; then
  if url=$(bash scripts/start_postgres.sh); then
    export DISTILLGYM_TEST_PG_URL="$url"
  elif [[ -n "${DISTILLGYM_REQUIRE_PG:-}" ]]; then
    echo "test: PostgreSQL could not be started and DISTILLGYM_REQUIRE_PG is set" >&2; exit 1
  else
    echo "test: PostgreSQL unavailable; the PostgreSQL store tests will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "test: no test ran (pytest exit 5) - failing" >&2; exit 1; fi
exit $rc
