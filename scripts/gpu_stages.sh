#!/usr/bin/env bash
# Per-stage GPU timings of both pipelines on one GPU (H100), full-size random-weight models.
#
#   bash scripts/gpu_stages.sh            # from the repo root on the GPU machine
#
# Writes three consolidated trace sets (stage_timings.parquet + metadata.json each):
#   $TRACES/fp16    alone + shared_gpu (streams, processes), 8 frames
#   $TRACES/4bit    bitsandbytes nf4: alone + shared_gpu (streams)
#   $TRACES/frames  target alone at 1,4,8,16,32 frames (token-scaling curve)
# TRACES is $OUT/h100 when $OUT is set (device machine: 7 files come back), else data/traces/h100.
# A synthetic dataset (PyAV, or OpenCV where PyAV is missing) is generated into /tmp first.
# Each section is its own process: one failing section never loses the others; the exit
# status is non-zero if any failed. Budget: about 6-7 minutes of GPU time with the defaults.
# Knobs (environment): N_SAMPLES Q4_SAMPLES SWEEP_SAMPLES DECODE_STEPS GAMMAS TARGET DRAFTER SECTIONS
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
TRACES=${TRACES:-${OUT:+$OUT/h100}}
TRACES=${TRACES:-data/traces/h100}
LOG=${OUT:-$TRACES}/gpu_stages.log
N_SAMPLES=${N_SAMPLES:-30}
Q4_SAMPLES=${Q4_SAMPLES:-12}
SWEEP_SAMPLES=${SWEEP_SAMPLES:-4}
DECODE_STEPS=${DECODE_STEPS:-16}
GAMMAS=${GAMMAS:-1,2,4,8,16,32,64}
TARGET=${TARGET:-random:vicuna7b-clip224}    # Video-LLaVA-7B: LanguageBind/CLIP-L 224 px, 257 tokens/frame
DRAFTER=${DRAFTER:-random:vicuna7b-clip336}  # EventGPT-7B: CLIP-L 336 px, 576 tokens
SECTIONS=${SECTIONS:-"fp16 4bit frames"}
DATA=/tmp/egpt_synth
mkdir -p "$TRACES" "$(dirname "$LOG")"
exec > >(tee -a "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) gpu_stages: $TRACES"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for pkg in bitsandbytes simpy; do  # carried wheels (.whl/), installed only where missing
  if ! "$PY" -c "import $pkg" 2>/dev/null && ls .whl/$pkg-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/$pkg-*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
done
"$PY" - <<'EOF'
import importlib
for m in ("torch", "transformers", "accelerate", "bitsandbytes", "av", "cv2"):
    try:
        print(f"  {m:13s}", getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:
        print(f"  {m:13s} absent ({type(e).__name__})")
EOF

failed=0
run() {  # run NAME CMD...: time one section, never abort the script
  local name=$1; shift
  local t0=$SECONDS
  echo "== section $name: $*"
  if "$@"; then echo "== section $name OK ($((SECONDS - t0)) s)"
  else echo "== section $name FAILED ($((SECONDS - t0)) s)"; failed=$((failed + 1)); fi
}

run data "$PY" -m measure synth-data --out "$DATA" --n "$N_SAMPLES" --resolution small
COMMON=(--target "$TARGET" --drafter "$DRAFTER" --dataset "$DATA" --device cuda:0 --decode-steps "$DECODE_STEPS"
        --gammas "$GAMMAS" --no-progress --consolidate --resume)
for s in $SECTIONS; do
  case $s in
    fp16) run fp16 "$PY" -m measure stages "${COMMON[@]}" --out "$TRACES/fp16" --dtype fp16 --n-samples "$N_SAMPLES" \
            --placement alone,shared_gpu --concurrency streams,processes --frames 8 ;;
    4bit) run 4bit "$PY" -m measure stages "${COMMON[@]}" --out "$TRACES/4bit" --dtype fp16 --quant 4bit \
            --n-samples "$Q4_SAMPLES" --placement alone,shared_gpu --concurrency streams --frames 8 ;;
    frames) run frames "$PY" -m measure stages "${COMMON[@]}" --out "$TRACES/frames" --dtype fp16 \
            --n-samples "$SWEEP_SAMPLES" --frames 1,4,8,16,32 ;;
    *) echo "unknown section $s"; failed=$((failed + 1)) ;;
  esac
done
du -sh "$TRACES"/* 2>/dev/null
echo "== $(date -u +%FT%TZ) done, $failed failed section(s)"
exit $((failed > 0))
