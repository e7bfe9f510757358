#!/usr/bin/env bash
# Measurement half of the simulator validation on a GPU machine (see measure/validation_run.py).
#
# Run from the repository root. The run writes to a scratch folder and packs it into
#   $OUT/validation.tar.gz  (trace set: stage_timings, acceptance, metadata.json,
#                            executor_results.parquet, executor_timeline.parquet, dataset/)
#   $OUT/validation_log.txt
# ($OUT defaults to ./out). simpy (imported by egpt_sim) travels as a wheel in .whl/:
#   run(command="bash scripts/gpu_validation.sh", carry=[".whl"], timeout_s=600)
# Budget (H100, random 7B presets, HF eager): ~45 s set-up (stage timings, models, acceptance
# traces, warm-up) + ~61 s per sample (4 lengths x {target_only, 3 sigmas x 2 strategies});
# the default 6 samples take ~7 min. For 10 requests per cell run a second call with
#   FIRST_SAMPLE=6 N_REQUESTS=4 STAGE_SAMPLES=0   (~5 min)
# and merge the two unpacked folders: python -c "from measure.validation_run import merge; merge('all', 'a', 'b')".
# Knobs (environment): MAX_MINUTES (6.5: no new sample starts after it), HARD_LIMIT_S (540:
# the Python run is killed after it, so packing always happens inside a 600 s call),
# N_REQUESTS (6), FIRST_SAMPLE (0), LENGTHS (5,20,50,100), SIGMAS (0.01,0.03,0.1), PRESET (vicuna7b-clip336),
# DEVICE (cuda:0), DRAFTER_DEVICE (empty = shared GPU; cuda:1 = separate GPUs), DTYPE (fp16),
# STAGE_SAMPLES (3). CPU smoke test: PRESET=tiny DEVICE=cpu DTYPE=fp32 N_REQUESTS=2 LENGTHS=5,12.
# A failing request/config never hides the others; summary, errors and files are always printed.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEST="${OUT:-out}"
WORK="${WORK:-/tmp/egpt_validation}"
mkdir -p "$DEST" "$WORK"
LOG="$DEST/validation_log.txt"

if ! python3 -c "import simpy" 2>/dev/null; then
  if ls .whl/simpy-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/simpy-*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "warning: simpy missing and no .whl/simpy-*.whl carried; egpt_sim imports will fail" | tee -a "$LOG"
  fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$LOG"

PRESET="${PRESET:-vicuna7b-clip336}"
ARGS=(--out "$WORK" --target "random:$PRESET" --drafter "random:$PRESET"
      --n-requests "${N_REQUESTS:-6}" --first-sample "${FIRST_SAMPLE:-0}" --lengths "${LENGTHS:-5,20,50,100}" --sigmas "${SIGMAS:-0.01,0.03,0.1}"
      --stage-samples "${STAGE_SAMPLES:-3}" --max-minutes "${MAX_MINUTES:-6.5}"
      --device "${DEVICE:-cuda:0}" --dtype "${DTYPE:-fp16}")
if [ -n "${DRAFTER_DEVICE:-}" ]; then ARGS+=(--drafter-device "$DRAFTER_DEVICE"); fi

timeout --signal=KILL "${HARD_LIMIT_S:-540}" python3 -m measure.validation_run "${ARGS[@]}" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
# Killed or not, merge the per-sample parts that exist, then pack (at most 8 files come back).
python3 -c "import sys; from measure.validation_run import consolidate, summary
print('consolidated:', [str(p) for p in consolidate(sys.argv[1])])
if sys.argv[2] != '0': print(summary(sys.argv[1]).to_string(index=False))" "$WORK" "$rc" 2>&1 | tee -a "$LOG"
(cd "$WORK" && find . -maxdepth 2 \( -name '*.parquet' -o -name '*.json' \) | sort) | tee -a "$LOG"
echo "validation_run exit code: $rc" | tee -a "$LOG"
tar czf "$DEST/validation.tar.gz" -C "$WORK" .
ls -la "$DEST"
exit "$rc"
