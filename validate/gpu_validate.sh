#!/usr/bin/env bash
# validate/gpu_validate.sh [OUT]: the GPU half of issue #4, in one script that needs only torch + numpy.
#
#   1. python -m validate.calibrate       micro-benchmarks -> OUT/profile.json (LLaDA2.0-mini layers, bf16)
#   2. benchmarks/runtime_policies.py     a LLaDA2.0-mini-shaped random-weight model with 4 MoE layers
#                                         (--num-layers 5), budget 128 of 256 experts per layer, policies
#                                         all-gpu, cpu-route, fetch-lru, tide at two tau, both modes
#                                         -> OUT/runtime_results.json + OUT/runtime_traces.tar
# and then, on a CPU machine with the full dependencies:   python -m validate.compare OUT
#
# OUT (default validate/results/gpu-<time>) receives at most 6 files: env.txt, profile.json, calibrate.log,
# runtime_results.json, runtime_traces.tar, runtime.log. Time: each phase runs under `timeout` (170 s and
# 270 s by default), so the script ends within 8 minutes; the runtime benchmark rewrites its results after
# every run, so a phase cut short still leaves the finished runs, and calibrate skips its informational tables
# (threads, pageable, duplex) once two thirds of its time are used.
#
# Every setting can be overridden from the environment; the test suite runs the CPU equivalent with
#   TIDE_DEVICE=cpu TIDE_MODEL=llada2-tiny TIDE_NUM_LAYERS=4 TIDE_BUDGET=16 TIDE_THREADS=1 TIDE_QUICK=1 ...
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${1:-${OUT:-validate/results/gpu-$(date +%Y%m%d-%H%M%S)}}"
DEVICE="${TIDE_DEVICE:-cuda}"
MODEL="${TIDE_MODEL:-llada2.0-mini}"
NUM_LAYERS="${TIDE_NUM_LAYERS:-5}"
BUDGET="${TIDE_BUDGET:-128}"
GEN_LENGTH="${TIDE_GEN_LENGTH:-64}"
PROMPT_LENGTH="${TIDE_PROMPT_LENGTH:-32}"
BLOCK_LENGTH="${TIDE_BLOCK_LENGTH:-32}"
STEPS="${TIDE_STEPS:-16}"
TAUS="${TIDE_TAUS:-1 4}"
THREADS="${TIDE_THREADS:-}"
QUICK="${TIDE_QUICK:-}"
CAL_TIMEOUT="${TIDE_CAL_TIMEOUT:-170}"
RUN_TIMEOUT="${TIDE_RUN_TIMEOUT:-270}"
PY="${PYTHON:-python}"

mkdir -p "$OUT" || exit 2
extra=()
[ -n "$THREADS" ] && extra+=(--threads "$THREADS")
quick=()
[ -n "$QUICK" ] && quick+=(--quick)
policies=(all-gpu cpu-route fetch-lru)
for tau in $TAUS; do policies+=("tide:$tau"); done

{
  echo "date: $(date '+%Y-%m-%d %H:%M:%S %z')"
  echo "host: $(uname -a)"
  echo "settings: device=$DEVICE model=$MODEL num_layers=$NUM_LAYERS budget=$BUDGET gen_length=$GEN_LENGTH" \
       "prompt_length=$PROMPT_LENGTH block_length=$BLOCK_LENGTH steps=$STEPS taus='$TAUS' threads='$THREADS' quick='$QUICK'"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; fi
} > "$OUT/env.txt" 2>&1

start=$(date +%s)
timeout "$CAL_TIMEOUT" "$PY" -m validate.calibrate --device "$DEVICE" --model "$MODEL" --out "$OUT/profile.json" \
  --block-length "$BLOCK_LENGTH" --max-seconds $((CAL_TIMEOUT * 2 / 3)) ${extra[@]+"${extra[@]}"} ${quick[@]+"${quick[@]}"} \
  > "$OUT/calibrate.log" 2>&1
cal=$?
mid=$(date +%s)

profile=()  # cost-aware policies then decide from the calibrated costs, as in the simulator's replay
[ -f "$OUT/profile.json" ] && profile+=(--profile "$OUT/profile.json")
timeout "$RUN_TIMEOUT" "$PY" benchmarks/runtime_policies.py --device "$DEVICE" --model "$MODEL" \
  --num-layers "$NUM_LAYERS" --budget "$BUDGET" --gen-length "$GEN_LENGTH" --prompt-length "$PROMPT_LENGTH" \
  --block-length "$BLOCK_LENGTH" --steps "$STEPS" --policies "${policies[@]}" \
  --modes prefix-recompute block-cache --out-dir "$OUT" ${extra[@]+"${extra[@]}"} ${profile[@]+"${profile[@]}"} > "$OUT/runtime.log" 2>&1
run=$?
end=$(date +%s)

echo "calibrate: exit $cal in $((mid - start)) s; runtime: exit $run in $((end - mid)) s" | tee -a "$OUT/env.txt"
echo "next, on a CPU machine: python -m validate.compare $OUT"
if [ "$cal" -ne 0 ] || [ "$run" -ne 0 ]; then
  tail -n 5 "$OUT/calibrate.log" "$OUT/runtime.log" >&2
  exit 1
fi
