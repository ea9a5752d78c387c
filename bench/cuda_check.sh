#!/usr/bin/env bash
# The GPU checks, as one run on a lent CUDA machine (see docs/benchmarks.md): the norm kernels, the csm-1b bench
# with CUDA graphs, the CUDA tests, the speech server under 1-32 streams (csm-1b's shapes), then (FUSED_S > 0) the
# bench with the fused frame. Each step has its own time
# limit; results go to $OUT. Wheels for what the machine lacks travel in .whl, the test tokenizer in .cache:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     moshi==0.2.13 transformers==4.57.6 tokenizers==0.22.1 huggingface-hub==0.36.0 soxr sphn pydantic \
#     pydantic-core annotated-types typing-inspection pytest-asyncio soundfile onnxruntime aiohttp aiohappyeyeballs \
#     aiosignal attrs frozenlist multidict propcache yarl idna
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
# aten's fused RMSNorm against the three-op form, 256 of each in one CUDA graph (csm-1b's decoder row)
timeout 60 python3 - <<'PY' | tee "$out/norm.txt"
import time, torch
x, w, e = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16), None, torch.tensor(0.1, device="cuda")
w = torch.full((1024,), 1024**-0.5, device="cuda", dtype=torch.bfloat16)
def three():
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.div(x, torch.hypot(n, e))
fused = lambda: torch.nn.functional.rms_norm(x, (1024,), w, 1e-5)
for name, fn in (("three_ops", three), ("fused_rms_norm", fused)):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(256): fn()
    g.replay(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20): g.replay()
    torch.cuda.synchronize(); print(name, round((time.perf_counter() - t) / 20 / 256 * 1e6, 2), "us per norm")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
    fused(); torch.cuda.synchronize()
print("fused_rms_norm kernels:", [e.name[:60] for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA])
PY
timeout "${BENCH_S:-170}" python3 bench/csm.py --device cuda --config csm-1b --repeats "${REPEATS:-2}" 2>"$out/bench.err" | tee "$out/bench.json"
timeout "${TESTS_S:-150}" python3 -m pytest -q -p no:cacheprovider -x tests/component/test_csm_graphs.py \
    tests/component/test_csm_batched_engine.py 2>&1 | tail -25 | tee "$out/tests.log"
timeout "${SERVE_S:-200}" python3 bench/csm_serve.py --device cuda --config csm-1b --streams 1,8,16,24,32 --slots 32 \
    --repeats 1 2>"$out/serve.err" | tee "$out/serve.json"
if [[ "${FUSED_S:-0}" -gt 0 ]]; then
    timeout "$FUSED_S" python3 bench/csm.py --device cuda --config csm-1b --repeats 1 --fused 2>"$out/fused.err" | tee "$out/fused.json"
fi
tail -n 5 "$out"/*.err
