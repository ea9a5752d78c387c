#!/usr/bin/env bash
# Set up everything the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python="${VENV:-.venv}/bin/python"
echo "==> ruff (lint and format) and mypy"
"$python" -m ruff check --quiet .
"$python" -m ruff format --check --quiet .
"$python" -m mypy
# pytest exits 5 when no test ran; like any non-zero status, that fails this script.
exec "$python" -m pytest "$@"
