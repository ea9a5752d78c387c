#!/usr/bin/env bash
# The GPU checks, as one run on a lent CUDA machine (see docs/benchmarks.md): the csm-1b bench with CUDA graphs,
# the CUDA tests, then the bench with the fused frame. Each step has its own time limit; results go to $OUT.
# Wheels for what the machine lacks travel in .whl (moshi, transformers 4.x, ...), the test tokenizer in .cache.
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/cuda-check}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, moshi; print(torch.__version__, transformers.__version__)" | tee -a "$out/gpu.txt"
timeout "${BENCH_S:-170}" python3 bench/csm.py --device cuda --config csm-1b --repeats 2 2>"$out/bench.err" | tee "$out/bench.json"
timeout "${TESTS_S:-150}" python3 -m pytest -q -p no:cacheprovider -x tests/component/test_csm_graphs.py 2>&1 | tail -25 | tee "$out/tests.log"
timeout "${FUSED_S:-200}" python3 bench/csm.py --device cuda --config csm-1b --repeats 1 --fused 2>"$out/fused.err" | tee "$out/fused.json"
tail -5 "$out/bench.err" "$out/fused.err"
