#!/usr/bin/env bash
# H200 measurements (schema 1.1 trace sets, benchmarks, validation grids), one call of the device tool.
#
#   run(command="bash scripts/gpu_h200.sh stages frames", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=600)
#
# Jobs (each a separate Python process with its own time limit; a failing job never hides the
# others; each packs its folder into $OUT/<job>.tar.gz and appends to $OUT/log_<job>.txt; where
# nvidia-smi exists, the folder gets gpu_monitor.csv: SM/memory clocks, temperature, power,
# and utilisation once a second over the job):
#   stages      graphs + eager stage sets: alone, shared_gpu and separate_gpu (cuda:1), threads (streams)
#               and processes, interleaved per sample                    -> h200/{graphs,eager}-fp16
#   frames      graphs, target alone, 1..32 frames                       -> h200/graphs-frames
#   bench       benchmarks/bench_backends.py (+ instrumentation overhead, both roles)
#   val1 val2   validation grid, graphs backend, worker processes, 1 GPU / 2 GPUs (stage runs, then the
#               stage protocol once more inside the executor's workers: run *-alone-serving-f8)
#   val1e val2e validation grid, eager backend, threads, 1 GPU / 2 GPUs
#   quant4      4-bit (bnb nf4) stage set with QUANT_BACKEND (static: bnb kernels under CUDA graphs are
#               untested); needs bitsandbytes carried in .whl/ (see the device README's wheel recipe)
# Knobs (environment): N_STAGE (10), N_VAL (16), VAL_MIN (7.6: no new sample after it), FIRST (0: first
# validation sample; a top-up call over later samples merges with measure.validation_run.merge), STAGE_PREFIX
# (prefix of a top-up's stage run ids), PRESET_VT (validation target, default PRESET_V: vicuna7b-clip224 is
# Video-LLaVA's own 224 px, a 2072-token prompt, beside the 336 px drafter), VAL_STAGES (8 stage samples per placement and validation call: the
# target's CPU preprocess is bimodal, ~40 or ~60 ms, and 4 samples misplaced its mean by up to 10 ms), PRESET_T
# (vicuna7b-clip224 for stage sets), PRESET_V (vicuna7b-clip336 for validation), DEVICE (cuda:0),
# DEVICE2 (cuda:1), DTYPE (fp16), LIMIT_<JOB> (seconds). CPU smoke test:
#   CPU_SMOKE=1 bash scripts/gpu_h200.sh stages val1     (tiny preset, cpu devices, 2 samples)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# CPU threads per process (inherited by spawned workers): unset, every worker's torch/OpenCV pool takes all
# cores and two workers' CPU stages slow each other (drafter preprocess 5 -> 40 ms in the first H200 grid)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
DEST="${OUT:-out}"; WORK="${WORK:-/tmp/egpt_h200}"; mkdir -p "$DEST" "$WORK"
if ! python3 -c "import simpy" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
[ -f .git_commit ] && export EGPT_GIT_COMMIT="$(cat .git_commit)"
DEV="${DEVICE:-cuda:0}"; DEV2="${DEVICE2:-cuda:1}"; DT="${DTYPE:-fp16}"
PT="random:${PRESET_T:-vicuna7b-clip224}"; PV="random:${PRESET_V:-vicuna7b-clip336}"; VT="random:${PRESET_VT:-${PRESET_V:-vicuna7b-clip336}}"
NS="${N_STAGE:-10}"; NV="${N_VAL:-16}"; VMIN="${VAL_MIN:-7.6}"
if [ -n "${CPU_SMOKE:-}" ]; then
  DEV=cpu; DEV2=cpu; DT=fp32; PT=random:tiny; PV=random:tiny; VT=random:tiny; NS=2; NV=2; VMIN=5
fi
export DEV DEV2 DT PT PV VT NS NV VMIN WORK
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>&1 | head -4
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
mkdir -p "$WORK/ds"
[ -f "$WORK/ds/dataset.json" ] || python3 -m measure synth-data --out "$WORK/ds" --n 24 > /dev/null

job() {  # job NAME LIMIT_S COMMAND... : run with a hard limit, log, pack $WORK/NAME
  local name=$1 limit=$2; shift 2
  local log="$DEST/log_$name.txt"; local t0=$SECONDS mon=""
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$log"
  if command -v nvidia-smi >/dev/null 2>&1; then  # clocks, temperature, power once a second (UTC timestamps)
    nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu \
      --format=csv -lms 1000 > "$WORK/$name.gpu_monitor.csv" 2>/dev/null & mon=$!
  fi
  timeout --signal=KILL "$limit" "$@" >> "$log" 2>&1; local rc=$?
  [ -n "$mon" ] && kill "$mon" 2>/dev/null
  echo "== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
  tail -n 25 "$log"
  [ -d "$WORK/$name" ] && [ -f "$WORK/$name.gpu_monitor.csv" ] && cp "$WORK/$name.gpu_monitor.csv" "$WORK/$name/gpu_monitor.csv"
  [ -d "$WORK/$name" ] && tar czf "$DEST/$name.tar.gz" -C "$WORK" "$name"
  return 0
}

stages() {  # one backend's stage set
  local be=$1
  python3 -m measure stages --target "$PT" --drafter "random:${PRESET_V:-vicuna7b-clip336}" --dataset "$WORK/ds" \
    --out "$WORK/stages/$be-$DT" --n-samples "$NS" --placement alone,shared_gpu,separate_gpu \
    --concurrency streams,processes --decode-steps 24 --gammas 1,2,4,8,16 --backend "$be" \
    --device "$DEV" --separate-device "$DEV2" --dtype "$DT" --no-progress --consolidate
}
[ -n "${CPU_SMOKE:-}" ] && stages() {
  python3 -m measure stages --target "$PT" --drafter "$PT" --dataset "$WORK/ds" --out "$WORK/stages/$1-$DT" \
    --n-samples "$NS" --placement alone,shared_gpu,separate_gpu --concurrency streams,processes --decode-steps 3 \
    --gammas 1,2 --backend "$1" --device "$DEV" --separate-device "$DEV2" --dtype "$DT" --no-progress --consolidate
}

val() {  # val NAME BACKEND [DRAFTER_DEVICE]
  local name=$1 be=$2 dd=${3:-}
  python3 -m measure.validation_run --out "$WORK/$name" --target "$VT" --drafter "$PV" --dataset "$WORK/ds" \
    --n-requests "$NV" --backend "$be" --device "$DEV" ${dd:+--drafter-device "$dd"} --dtype "$DT" \
    --stage-samples "${VAL_STAGES:-8}" --max-minutes "$VMIN" --first-sample "${FIRST:-0}" --stage-prefix "${STAGE_PREFIX:-}"
}

for j in "$@"; do
  case $j in
    stages) job stages "${LIMIT_STAGES:-400}" bash -c "$(declare -f stages); stages graphs; stages eager" ;;
    frames) job frames "${LIMIT_FRAMES:-150}" python3 -m measure stages --target "$PT" --drafter "$PT" \
              --dataset "$WORK/ds" --out "$WORK/frames" --n-samples 5 --frames 1,2,4,8,16,32 --backend graphs \
              --decode-steps 16 --gammas 1,8 --device "$DEV" --dtype "$DT" --no-progress --consolidate ;;
    bench) mkdir -p "$WORK/bench"; job bench "${LIMIT_BENCH:-200}" bash -c \
              "python3 benchmarks/bench_backends.py --source $PT --device $DEV --dtype $DT --out $WORK/bench/backends.json \
               --gammas 1,2,4,8,16,64 --steps 100 --verify-reps 12 \
               && for r in target drafter; do python3 benchmarks/bench_instrumentation.py --source $PT --role \$r \
                  --device $DEV --dtype $DT --backend graphs --decode-steps 64 --reps 7; done 2>&1 | tee $WORK/bench/instrumentation.txt" ;;
    quant4) job quant4 "${LIMIT_QUANT:-300}" python3 -m measure stages --target "$PT" --drafter "$PV" \
              --dataset "$WORK/ds" --out "$WORK/quant4" --n-samples "$NS" --quant 4bit --placement alone,shared_gpu \
              --concurrency streams,processes --decode-steps 24 --gammas 1,2,4,8,16 \
              --backend "${QUANT_BACKEND:-static}" --device "$DEV" --no-progress --consolidate ;;
    val1) job val1 "${LIMIT_VAL:-560}" bash -c "$(declare -f val); val val1 graphs" ;;
    val2) job val2 "${LIMIT_VAL:-560}" bash -c "$(declare -f val); val val2 graphs $DEV2" ;;
    val1e) job val1e "${LIMIT_VAL:-560}" bash -c "$(declare -f val); val val1e eager" ;;
    val2e) job val2e "${LIMIT_VAL:-560}" bash -c "$(declare -f val); val val2e eager $DEV2" ;;
    *) echo "unknown job $j" ;;
  esac
done
ls -la "$DEST"
