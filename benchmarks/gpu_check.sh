#!/usr/bin/env bash
# The whole GPU check of the CUDA kernels in one go (88 to 129 s on an H200, 2026-11-30):
#
#   1. versions: Python, NumPy, GPU, driver, CUDA runtime, CuPy, torch, nvcc
#   2. pytest tests/test_cuda.py tests/test_cuda_compile.py: every law on every kernel
#      version, and the planted-bug builds, which must fail their laws
#   3. a decode through the paged cache with attention="cuda" on a random Llama-config
#      model written to GGUF, against the same model with attention="sdpa"
#   4. python -m tinytransformer.bench attention --device cuda --json RESULTS/attention-<gpu>.json
#   5. the table of the goals and the status of every step, printed last
#
# It needs no network and installs nothing: the package is this checkout, on PYTHONPATH.
# Without a usable GPU, each GPU step says SKIPPED and why, and the rest still runs
# (the compile tests, the argument checks, a dry run of the benchmark's arguments).
#
#   benchmarks/gpu_check.sh [--quick]      --quick: the benchmark's few small shapes
#   RESULTS=DIR PYTHON=python3 benchmarks/gpu_check.sh
#
# Each step has its own time limit (seconds: TESTS_LIMIT 180, MODEL_LIMIT 60, BENCH_LIMIT
# 240), so the whole check stays inside one short lease of a GPU machine; the benchmark
# rewrites its JSON after every configuration, so a step cut short keeps what it measured.
# With pytest-xdist installed, the tests run on PYTEST_WORKERS processes (default 6).
#
# Exit status: 0 when every step that ran passed, 1 when one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}
QUICK=()
case "${1:-}" in
    --quick) QUICK=(--quick) ;;
    "") ;;
    *) echo "usage: benchmarks/gpu_check.sh [--quick]" >&2; exit 2 ;;
esac

TESTS_LIMIT=${TESTS_LIMIT:-180}
MODEL_LIMIT=${MODEL_LIMIT:-60}
BENCH_LIMIT=${BENCH_LIMIT:-240}
STATUS=()
FAILED=0
record() {  # record STEP OUTCOME: OUTCOME starts with passed, FAILED or SKIPPED
    STATUS+=("$(printf '  %-36s %s' "$1" "$2")")
    [[ "$2" == FAILED* ]] && FAILED=1
}
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
START=$SECONDS

step "1. versions"
"$PYTHON" - <<'EOF'
import importlib.util, platform, shutil, subprocess
import numpy
print(f"python {platform.python_version()}, numpy {numpy.__version__}")
for name in ("threadpoolctl", "hypothesis", "pytest"):
    print(f"{name}: {'found' if importlib.util.find_spec(name) else 'MISSING (the tests that need it skip or fail)'}")
try:
    import cupy
    rt = cupy.cuda.runtime
    print(f"cupy {cupy.__version__}, CUDA runtime {rt.runtimeGetVersion()}, driver API {rt.driverGetVersion()}")
except Exception as error:
    print(f"cupy: not usable ({type(error).__name__}: {error})")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible to torch: {torch.cuda.is_available()}")
except Exception as error:
    print(f"torch: not usable ({type(error).__name__}: {error})")
from tinytransformer import cuda
ok, why = cuda.cuda_status()
print(f"tinytransformer CUDA backend: {'usable on ' + why if ok else 'not usable: ' + why}")
for tool, args in (("nvidia-smi", ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]),
                   ("nvcc", ["--version"])):
    path = shutil.which(tool)
    text = subprocess.run([path, *args], capture_output=True, text=True).stdout.strip() if path else "not found"
    print(f"{tool}: {text.splitlines()[-1] if text else 'no output'}")
EOF
GPU_NAME=$("$PYTHON" -c "from tinytransformer import cuda; ok, why = cuda.cuda_status(); print(why if ok else '')")
SMI_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU')
if [[ -n "$GPU_NAME" ]]; then
    record "1. versions" "passed (GPU: $GPU_NAME)"
elif [[ "$SMI_GPUS" -gt 0 ]]; then
    record "1. versions" "FAILED: nvidia-smi lists $SMI_GPUS GPU(s) but CuPy cannot use them (see above)"
else
    record "1. versions" "passed (no GPU here: the GPU steps will be SKIPPED)"
fi

step "2. pytest tests/test_cuda.py tests/test_cuda_compile.py"
LOG=$(mktemp)
XDIST=()
if "$PYTHON" -c "import xdist" 2>/dev/null; then XDIST=(-n "${PYTEST_WORKERS:-6}"); fi
timeout "$TESTS_LIMIT" "$PYTHON" -m pytest -q -rs -p no:cacheprovider --durations=8 "${XDIST[@]}" \
    tests/test_cuda.py tests/test_cuda_compile.py 2>&1 | tee "$LOG"
CODE=${PIPESTATUS[0]}
LINE=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$LOG" | tail -1 | tr -d '=' | xargs)
if [[ $CODE -ne 0 ]]; then
    record "2. kernel tests" "FAILED (exit $CODE): $LINE"
elif [[ -n "$GPU_NAME" ]] && grep -q "no CUDA backend here" "$LOG"; then
    record "2. kernel tests" "FAILED: GPU cases skipped on a machine with a GPU: $LINE"
elif [[ -n "$GPU_NAME" ]]; then
    record "2. kernel tests" "passed on the GPU, planted bugs caught: $LINE"
else
    record "2. kernel tests" "passed without a GPU (GPU cases SKIPPED, see the reasons above): $LINE"
fi
rm -f "$LOG"

step "3. model decode through the paged cache, attention=\"cuda\" against \"sdpa\""
LOG=$(mktemp)
timeout "$MODEL_LIMIT" "$PYTHON" - <<'EOF' 2>&1 | tee "$LOG"
import inspect
import sys
import tempfile
from pathlib import Path

import numpy as np

SKIP = 3
missing = []
try:
    from tinytransformer.random_llama import write_random_llama
except ImportError:
    missing.append("tinytransformer.random_llama.write_random_llama")
try:
    from tinytransformer.llama import load_model
    if "attention" not in inspect.signature(load_model).parameters:
        missing.append("load_model(path, attention=...)")
except ImportError:
    missing.append("tinytransformer.llama.load_model")
if missing:
    print(f"SKIPPED: the one-decoder API is not in this checkout yet (missing: {', '.join(missing)})")
    sys.exit(SKIP)
from tinytransformer import cuda
from tinytransformer.testing import assert_close

ok, why = cuda.cuda_status()
if not ok:
    print(f"SKIPPED: no CUDA backend here: {why}")
    sys.exit(SKIP)
with tempfile.TemporaryDirectory() as folder:
    path = write_random_llama(Path(folder) / "random-llama.gguf")
    reference, on_gpu = load_model(path, attention="sdpa").model, load_model(path, attention="cuda").model
    try:
        from tinytransformer.serving.engine import generate_batch
    except ImportError:
        print("SKIPPED: no serving.engine.generate_batch (the ragged batch through the paged cache) yet")
        sys.exit(SKIP)
    rng = np.random.default_rng(0)
    vocab = reference.config.vocab_size
    prompts = [rng.integers(3, vocab, size=n).tolist() for n in (3, 17, 40, 9)]
    want = generate_batch(reference, prompts, 12, stop_at_eos=False)
    got = generate_batch(on_gpu, prompts, 12, stop_at_eos=False)
    print(f"greedy ids, sdpa: {want}")
    print(f"greedy ids, cuda: {got}")
    logits_ref, logits_gpu = reference.forward(prompts[2]), on_gpu.forward(prompts[2])
    print(f"prefill logits: max |cuda - sdpa| = {np.abs(logits_gpu - logits_ref).max():.2e}")
    # a whole forward pass, where the kernel sums each row in another order than NumPy: looser than
    # the table's float32 entry, which is for one operation
    assert_close(logits_gpu, logits_ref, rtol=1e-4, atol=1e-4, err_msg="prefill logits, cuda against sdpa")
    if got != want:
        print("FAILED: generate_batch gives different ids with attention='cuda'")
        sys.exit(1)
print("passed: the same greedy ids for 4 ragged prompts, and the same prefill logits")
EOF
CODE=${PIPESTATUS[0]}
case $CODE in
    0) record "3. model decode (cuda vs sdpa)" "passed" ;;
    3) record "3. model decode (cuda vs sdpa)" "$(grep -m1 '^SKIPPED' "$LOG")" ;;
    *) record "3. model decode (cuda vs sdpa)" "FAILED (exit $CODE): $(grep -m1 '^FAILED\|Error' "$LOG")" ;;
esac
rm -f "$LOG"

step "4. python -m tinytransformer.bench attention --device cuda"
JSON=""
mkdir -p "$RESULTS"
if [[ -n "$GPU_NAME" ]]; then
    SLUG=$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
    JSON="$RESULTS/attention-$SLUG.json"
    timeout "$BENCH_LIMIT" "$PYTHON" -m tinytransformer.bench attention --device cuda "${QUICK[@]}" --json "$JSON"
    CODE=$?
    if [[ $CODE -eq 0 ]]; then
        record "4. benchmark" "passed: $JSON"
    elif [[ -f "$JSON" ]]; then  # kernels that failed the validation, or the time limit: what was measured stays
        record "4. benchmark" "FAILED (exit $CODE; partial results in $JSON)"
    else
        record "4. benchmark" "FAILED (exit $CODE)"
        JSON=""
    fi
else
    echo "SKIPPED: no CUDA backend here; checking the benchmark's arguments with a dry run instead"
    if "$PYTHON" -m tinytransformer.bench attention --device cuda "${QUICK[@]}" --dry-run \
            --json "$RESULTS/attention-dry-run.json"; then
        record "4. benchmark" "SKIPPED (no GPU); its dry run passed"
    else
        record "4. benchmark" "FAILED: the dry run of its arguments"
    fi
fi

step "5. summary"
if [[ -n "$JSON" ]]; then
    "$PYTHON" -m tinytransformer.bench attention --summary "$JSON"
else
    echo "no benchmark results (the benchmark did not run)"
fi
echo
echo "steps ($((SECONDS - START)) s in all):"
printf '%s\n' "${STATUS[@]}"
exit $FAILED
