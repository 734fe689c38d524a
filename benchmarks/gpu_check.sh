#!/usr/bin/env bash
# One GPU check, under ten minutes on one GPU, from the repository root of a fresh checkout:
#   1. an environment: a venv (build/gpu-check-venv, or $GPU_CHECK_VENV) with torch==2.13.0 (the
#      CUDA build from PyPI) and apt-core, apt-plugin-flash, apt-plugin-tva editable; flash-attn only
#      if a wheel installs within 3 minutes (never fatal: flash_v2 then runs on torch's flash SDPA
#      backend);
#   2. the CUDA tests of the flash plugin (pytest -k cuda), JUnit XML kept for the results;
#   3. benchmarks/gpu_check.py: bf16 training tokens/s and MFU of a GPT-2-small-shaped model with
#      sdpa, flash_v2 and tva, and generation tokens/s with and without the KV cache.
# Results: benchmarks/results/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run            # CPU, tiny sizes, JSON in a temp dir (CI)
#   bash benchmarks/gpu_check.sh --python .venv/bin/python --out /tmp/x.json
# APT_PYTHON=... works as --python: an interpreter that already has apt installed skips step 1.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
PYTHON="${APT_PYTHON:-}"
OUT=""
VENV="${GPU_CHECK_VENV:-build/gpu-check-venv}"  # build/ is git-ignored

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --python) PYTHON="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

if [[ -z "$OUT" ]]; then
    if [[ $DRY_RUN -eq 1 ]]; then
        OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")/gpu_check.json"
    else
        OUT="benchmarks/results/gpu_check.json"
    fi
fi

setup_venv() {
    local base="${BASE_PYTHON:-python3}"
    log "creating $VENV (system site packages visible, so a preinstalled CUDA torch is reused)"
    mkdir -p "$(dirname "$VENV")"
    "$base" -m venv --system-site-packages "$VENV"
    PYTHON="$VENV/bin/python"
    "$PYTHON" -m pip install --quiet --upgrade pip || true
    # Reuse a preinstalled torch 2.13.0 only if it can do what this run needs (CUDA unless a dry run).
    if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.__version__.startswith("2.13.0")
                     and (sys.argv[1] == "1" or torch.cuda.is_available()) else 1)' "$DRY_RUN" 2>/dev/null; then
        log "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') already installed"
    else
        log "installing torch==2.13.0"
        if ! "$PYTHON" -m pip install --quiet "torch==2.13.0"; then
            # Offline machine with another CUDA torch preinstalled: measure with that one (the JSON names it).
            "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
                || { log "no torch==2.13.0 from pip and no usable CUDA torch on this machine"; exit 1; }
            log "WARNING: pip could not install torch==2.13.0; using the preinstalled torch"
        fi
    fi
    # Pin whatever torch is there now, so no later install can swap it.
    local constraints="$VENV/torch-constraint.txt"
    "$PYTHON" -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"
    log "installing apt-core and the flash and tva plugins (editable)"
    local packages=(-e apt-core -e apt-plugins/apt-plugin-flash -e apt-plugins/apt-plugin-tva)
    if ! PIP_CONSTRAINT="$constraints" "$PYTHON" -m pip install --quiet pytest "${packages[@]}"; then
        log "retrying without build isolation (build backends from the environment)"
        PIP_CONSTRAINT="$constraints" "$PYTHON" -m pip install --quiet --no-build-isolation "${packages[@]}"
    fi
    log "trying a flash-attn wheel (3 minutes at most; optional)"
    if PIP_CONSTRAINT="$constraints" timeout 180 "$PYTHON" -m pip install --quiet --only-binary=:all: flash-attn \
        && "$PYTHON" -c 'import flash_attn' 2>/dev/null; then
        log "flash-attn $("$PYTHON" -c 'import flash_attn; print(flash_attn.__version__)') installed"
    else
        log "no flash-attn wheel for this torch/CUDA: flash_v2 uses torch's flash SDPA backend"
    fi
}

if [[ -z "$PYTHON" ]]; then
    setup_venv
fi
log "python: $PYTHON ($("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# 2. CUDA tests, once per flash_v2 kernel: torch's flash SDPA backend (flash-attn hidden behind a stub
# package that fails to import) and, when it imports, the flash-attn package. In a dry run they are
# collected and skip (no GPU): the commands themselves are checked.
run_cuda_tests() {  # NAME [PYTHONPATH prefix]
    local name="$1" prefix="${2:-}" rc=0
    log "CUDA tests ($name): pytest apt-plugins/apt-plugin-flash/tests -k cuda"
    PYTHONPATH="${prefix}${PYTHONPATH:+:$PYTHONPATH}" timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider \
        apt-plugins/apt-plugin-flash/tests -k cuda --junitxml "$WORK/$name.xml" || rc=$?
    log "pytest ($name) exit status $rc"
    TEST_ARGS+=(--pytest-junit "$name=$WORK/$name.xml=$rc")
    [[ $rc -eq 0 ]] || PYTEST_FAILED=1
}
TEST_ARGS=()
PYTEST_FAILED=0
mkdir -p "$WORK/no_flash_attn/flash_attn"
echo 'raise ImportError("hidden by gpu_check.sh: test the torch flash SDPA path")' \
    > "$WORK/no_flash_attn/flash_attn/__init__.py"
run_cuda_tests torch_flash_sdpa "$WORK/no_flash_attn"
if "$PYTHON" -c 'import flash_attn' 2>/dev/null; then
    run_cuda_tests flash_attn_package
else
    log "flash-attn not importable: its CUDA test pass is skipped"
fi

# 3. Throughput, MFU and generation.
ARGS=(--out "$OUT" "${TEST_ARGS[@]}")
if [[ $DRY_RUN -eq 1 ]]; then
    ARGS+=(--dry-run)
fi
BENCH_RC=0
"$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}" || BENCH_RC=$?
log "results: $OUT"

# pytest 5 means no tests were collected: the -k filter matched nothing, which is a failure here.
if [[ $PYTEST_FAILED -ne 0 || $BENCH_RC -ne 0 ]]; then
    log "FAILED (CUDA tests failed: $PYTEST_FAILED, benchmark exit status $BENCH_RC)"
    exit 1
fi
log "done"
