#!/usr/bin/env bash
# svlm's GPU check, in one go, for a session lent a CUDA machine (about 7 minutes on an H200).
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash tests/gpu_check.sh
#
# Run from the repository root. Writes under $OUT (default ./gpu-check-out), as it goes:
#   env.txt                 versions and the device
#   pytest-gpu.xml / .log   the `gpu` test tier (pytest -m gpu): every strategy on every family on CUDA,
#                           fp32 and bf16; masked-key oracle and batch-equals-alone in fp32; the Triton kernels;
#                           the fast execution mode's CUDA graphs against eager; models built on the GPU
#                           (without pytest: device_check.json from python -m svlm.testing.device_check)
#   selection_cost.json/.log selection time as a share of dense prefill (7B-shaped LLaVA, bf16, batch 1 and 8,
#                           budgets 192/128/64) and the rows-attention kernel against its reference
#   recipe.log              the zoo recipe with --device cuda: a smoke run, then 200 stage-2 steps of the
#                           22-layer svlm-scenes model (seconds per step, to size a full run on the GPU)
# Each step has its own time limit, so a slow step still leaves the others' results.
set -u
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TEST_LIMIT="${TEST_LIMIT:-180}"
COST_LIMIT="${COST_LIMIT:-150}"
COST_ARGS="${COST_ARGS:-}"  # e.g. "--tiny --batches 1" to try the script on a CPU

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  "$PY" -c "import pytest; print('pytest', pytest.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. the gpu test tier. SIGINT first so that pytest still writes its JUnit XML when it runs out of time.
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout -s INT -k 15 "$TEST_LIMIT" "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider \
    --junitxml="$OUT/pytest-gpu.xml" \
    tests/test_engine/test_sparsify.py tests/test_strategies/test_registered.py tests/test_kernels \
    tests/test_engine/test_execution.py tests/test_testing.py \
    > "$OUT/pytest-gpu.log" 2>&1
  echo "pytest -m gpu exit code: $?" | tee -a "$OUT/pytest-gpu.log"
  tail -n 25 "$OUT/pytest-gpu.log"
else  # the same acceptance checks without pytest (its wheels: pytest, pluggy, iniconfig, pygments in .whl/)
  echo "pytest is not installed: running python -m svlm.testing.device_check instead" | tee "$OUT/pytest-gpu.log"
  timeout -s INT -k 15 "$TEST_LIMIT" "$PY" -m svlm.testing.device_check --out "$OUT" > "$OUT/device_check.log" 2>&1
  echo "device_check exit code: $?" | tee -a "$OUT/device_check.log"
  tail -n 5 "$OUT/device_check.log"
fi

# 2. selection cost and the kernel comparison (JSON rewritten after every row).
timeout -s INT -k 15 "$COST_LIMIT" "$PY" -m svlm.selection_cost --out "$OUT" $COST_ARGS > "$OUT/selection_cost.log" 2>&1
echo "selection_cost exit code: $?" | tee -a "$OUT/selection_cost.log"
tail -n 60 "$OUT/selection_cost.log"

# 3. the zoo recipe on the GPU (svlm-scenes): a smoke run end to end, then stage-2 speed of the full-size
# 22-layer, 576-token model (log lines carry elapsed_s), to size a full training run on a lent GPU.
RECIPE_LIMIT="${RECIPE_LIMIT:-120}"
timeout -s INT -k 15 "$RECIPE_LIMIT" "$PY" -m svlm.zoo.train_default --benchmark scenes --smoke --device cuda \
  --output-dir "$OUT/recipe-smoke" > "$OUT/recipe.log" 2>&1
echo "recipe smoke (cuda) exit code: $?" | tee -a "$OUT/recipe.log"
timeout -s INT -k 15 "$RECIPE_LIMIT" "$PY" -m svlm.zoo.train_default --benchmark scenes --device cuda \
  --vision-steps 20 --align-steps 10 --steps 200 --eval-every 0 --eval-samples 8 --test-samples 0 \
  --num-layers 22 --hidden-size 64 --num-heads 2 --intermediate-size 172 --attention-layers 5,8 \
  --keyword-layers 1,3 --lead-steps 0 >> "$OUT/recipe.log" 2>&1
echo "recipe speed probe (cuda) exit code: $?" | tee -a "$OUT/recipe.log"
grep -E '"step": (100|200),' "$OUT/recipe.log" | cut -c1-200
