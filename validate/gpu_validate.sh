#!/usr/bin/env bash
# validate/gpu_validate.sh [--dry-run] [OUT]: the GPU run, in one script that needs only python3, torch and numpy.
#
#   1. python3 -m validate.gpu_smoke     first checks: environment and ISA flags, grouped GEMM against the loop
#                                        (empty groups, > 1023 groups), every causal policy on the GPU store with
#                                        delays injected on each stream, copy rates, a host expert
#                                        -> OUT/smoke.json (rewritten after each check)
#   2. python3 -m validate.calibrate     micro-benchmarks -> OUT/profile.json (LLaDA2.0-mini layers, bf16), written
#                                        after every table once it is loadable (before that: profile.partial.json),
#                                        and OUT/profile.executor.json: the tide-moe executor profile with this
#                                        machine's decide() times, which compare replays with
#   3. python3 -m runtime.bench          a LLaDA2.0-mini-shaped random-weight model with 4 MoE layers
#                                        (--num-layers 5), budget 128 of 256 experts per layer, every causal policy
#                                        (tide-opt and riptide decide from the calibrated profile), both modes
#                                        -> OUT/runtime_results.json + OUT/runtime_traces.tar (after every run)
# then, back on a CPU machine with the full dependencies:   python -m validate.compare OUT
#
# OUT (default validate/results/gpu-<time>) receives at most 8 files: env.txt, log.txt (every phase's output,
# unbuffered), smoke.json, profile.json (or profile.partial.json if calibration was cut before its required
# tables), profile.executor.json, runtime_results.json, runtime_traces.tar. Time: one deadline (TIDE_DEADLINE,
# default 450 s, at most 450) for the whole script; each phase runs under `timeout` with its own limit, shortened
# to what is left of the deadline, and the phases write as they go, so a phase cut short keeps what it finished.
# A calibrate phase that fails (a non-zero exit, or a timeout before profile.json was loadable) stops the script
# there with exit status 1 and an "error: calibrate failed ..." line in log.txt and env.txt: the runtime phase
# would spend the rest of the deadline on runs that compare cannot replay with this machine's costs.
#
# --dry-run: the same script on a CPU machine with the CPU equivalents (device cpu, the llada2-tiny preset, one
# thread, quick calibration, shorter limits), for CI. Every setting can also be overridden from the environment
# (TIDE_DEVICE, TIDE_MODEL, TIDE_NUM_LAYERS, TIDE_BUDGET, TIDE_GEN_LENGTH, TIDE_PROMPT_LENGTH, TIDE_BLOCK_LENGTH,
# TIDE_STEPS, TIDE_TAUS, TIDE_THREADS, TIDE_QUICK, TIDE_SMOKE_TIMEOUT, TIDE_CAL_TIMEOUT, TIDE_RUN_TIMEOUT,
# TIDE_DEADLINE, PYTHON).
set -uo pipefail

DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${1:-${OUT:-validate/results/gpu-$(date +%Y%m%d-%H%M%S)}}"

if [ -n "$DRY" ]; then
  d_device=cpu; d_model=llada2-tiny; d_layers=4; d_budget=16; d_gen=32; d_steps=8; d_threads=1; d_quick=1
  d_smoke=60; d_cal=120; d_run=150; d_deadline=400
else
  d_device=cuda; d_model=llada2.0-mini; d_layers=5; d_budget=128; d_gen=64; d_steps=16; d_threads=""; d_quick=""
  d_smoke=80; d_cal=150; d_run=210; d_deadline=450
fi
DEVICE="${TIDE_DEVICE:-$d_device}"
MODEL="${TIDE_MODEL:-$d_model}"
NUM_LAYERS="${TIDE_NUM_LAYERS:-$d_layers}"
BUDGET="${TIDE_BUDGET:-$d_budget}"
GEN_LENGTH="${TIDE_GEN_LENGTH:-$d_gen}"
PROMPT_LENGTH="${TIDE_PROMPT_LENGTH:-32}"
BLOCK_LENGTH="${TIDE_BLOCK_LENGTH:-32}"
STEPS="${TIDE_STEPS:-$d_steps}"
TAUS="${TIDE_TAUS:-1 4}"
THREADS="${TIDE_THREADS:-$d_threads}"
QUICK="${TIDE_QUICK:-$d_quick}"
SMOKE_TIMEOUT="${TIDE_SMOKE_TIMEOUT:-$d_smoke}"
CAL_TIMEOUT="${TIDE_CAL_TIMEOUT:-$d_cal}"
RUN_TIMEOUT="${TIDE_RUN_TIMEOUT:-$d_run}"
DEADLINE="${TIDE_DEADLINE:-$d_deadline}"
[ "$DEADLINE" -gt 450 ] && DEADLINE=450
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a phase killed by its timeout still leaves its log

mkdir -p "$OUT" || exit 2
LOG="$OUT/log.txt"
: > "$LOG"
start=$(date +%s)
extra=()
[ -n "$THREADS" ] && extra+=(--threads "$THREADS")
quick=()
[ -n "$QUICK" ] && quick+=(--quick)
policies=(all-gpu cpu-route static fetch-lru)
for tau in $TAUS; do policies+=("tide(tau=$tau)"); done
policies+=(tide-opt riptide)

# seconds this phase may run: its own limit, cut to what is left of the deadline (a 5 s margin for the rest)
limit() {
  local own=$1 left=$((DEADLINE - ($(date +%s) - start) - 5))
  [ "$left" -lt "$own" ] && own=$left
  [ "$own" -lt 1 ] && own=1
  echo "$own"
}

phase() {  # phase NAME OWN_LIMIT CMD...: run CMD under its limit, log to log.txt, record the outcome
  local name=$1 own=$2; shift 2
  local lim t0 rc
  lim=$(limit "$own")
  t0=$(date +%s)
  echo "=== $name (limit $lim s) ===" >> "$LOG"
  timeout "$lim" "$@" >> "$LOG" 2>&1
  rc=$?
  echo "$name: exit $rc in $(($(date +%s) - t0)) s (limit $lim s)$([ $rc -eq 124 ] && echo ', timed out')" | tee -a "$OUT/env.txt" "$LOG"
  return $rc
}

{
  echo "date: $(date '+%Y-%m-%d %H:%M:%S %z')"
  echo "host: $(uname -a)"
  echo "settings: device=$DEVICE model=$MODEL num_layers=$NUM_LAYERS budget=$BUDGET gen_length=$GEN_LENGTH" \
       "prompt_length=$PROMPT_LENGTH block_length=$BLOCK_LENGTH steps=$STEPS taus='$TAUS' threads='$THREADS'" \
       "quick='$QUICK' deadline=$DEADLINE dry_run='$DRY'"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; fi
} > "$OUT/env.txt" 2>&1

phase smoke "$SMOKE_TIMEOUT" "$PY" -m validate.gpu_smoke --device "$DEVICE" --out "$OUT/smoke.json" \
  --max-seconds $((SMOKE_TIMEOUT * 3 / 4)) ${quick[@]+"${quick[@]}"}
smoke=$?

cal_limit=$(limit "$CAL_TIMEOUT")
phase calibrate "$CAL_TIMEOUT" "$PY" -m validate.calibrate --device "$DEVICE" --model "$MODEL" --out "$OUT/profile.json" \
  --block-length "$BLOCK_LENGTH" --max-seconds $((cal_limit * 2 / 3)) --deadline-seconds $((cal_limit - 10 > 1 ? cal_limit - 10 : 1)) \
  ${extra[@]+"${extra[@]}"} ${quick[@]+"${quick[@]}"}
cal=$?

# a failed calibration ends the run here: the runtime phase would spend the rest of the GPU time on runs that
# compare cannot replay with this machine's costs. A timeout (124) that left a loadable profile.json is not a
# failure: calibrate writes the profile once its required tables are measured, so the runs still compare.
have_profile=""
if [ "$cal" -eq 0 ] || [ "$cal" -eq 124 ]; then
  [ -f "$OUT/profile.json" ] && "$PY" -c "import sys; from offload.hardware import HardwareProfile; HardwareProfile.load(sys.argv[1])" "$OUT/profile.json" >> "$LOG" 2>&1 && have_profile=1
fi
if [ "$cal" -ne 0 ] && [ -z "$have_profile" ]; then
  echo "error: calibrate failed (exit $cal$([ "$cal" -eq 124 ] && echo ', timed out before a loadable profile.json')): stopping before the runtime phase; see $LOG" | tee -a "$OUT/env.txt" "$LOG"
  echo "total: $(($(date +%s) - start)) s of a $DEADLINE s deadline" | tee -a "$OUT/env.txt"
  tail -n 15 "$LOG" >&2
  exit 1
fi

# cost-aware policies decide from the calibrated costs, as the simulator's replay will; without a loadable
# profile they decide from the H100 preset, and compare cannot replay them exactly (it says so)
profile=(--hardware h100-pcie5)
if [ -n "$have_profile" ]; then
  profile=(--hardware "$OUT/profile.json")
else
  echo "no loadable calibrated profile: tide-opt and riptide decide from the h100-pcie5 preset" | tee -a "$OUT/env.txt" "$LOG"
fi
phase runtime "$RUN_TIMEOUT" "$PY" -m runtime.bench --device "$DEVICE" --model "$MODEL" \
  --num-layers "$NUM_LAYERS" --gpu-experts-per-layer "$BUDGET" --gen-length "$GEN_LENGTH" --prompt-length "$PROMPT_LENGTH" \
  --block-length "$BLOCK_LENGTH" --steps "$STEPS" --policies "${policies[@]}" \
  --modes prefix-recompute block-cache --out "$OUT" ${extra[@]+"${extra[@]}"} "${profile[@]}"
run=$?

echo "total: $(($(date +%s) - start)) s of a $DEADLINE s deadline" | tee -a "$OUT/env.txt"
echo "next, on a CPU machine: python -m validate.compare $OUT"
if [ "$smoke" -ne 0 ] || [ "$cal" -ne 0 ] || [ "$run" -ne 0 ]; then
  tail -n 15 "$LOG" >&2
  exit 1
fi
