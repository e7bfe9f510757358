# Sourced by the decode probes (probe_decode_gap.sh, probe_parent.sh): environment, output folder
# $DEST, work folder $W, GPU clocks/power/temperature sampled every second into $DEST/smi.csv
# (stop with probe_end), a synthetic dataset, and a target-alone stage run printed as one JSON line.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=8 PYTHONPATH=.
DEST="${OUT:-out}"; W=/tmp/probe; mkdir -p "$DEST" "$W"

probe_start() {  # probe_start N_SAMPLES
  nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader -l 1 \
    > "$DEST/smi.csv" 2>&1 & SMI=$!
  python3 -m measure synth-data --out "$W/ds" --n "$1" > /dev/null
}

stage_probe() {  # stage_probe ID DECODE_STEPS: target alone on cuda:0, 2 samples, graphs
  python3 -m measure stages --target random:vicuna7b-clip336 --dataset "$W/ds" --out "$W/st$1" --n-samples 2 \
    --placement alone --roles target --decode-steps "$2" --gammas 1 --backend graphs --device cuda:0 --dtype fp16 \
    --no-progress --consolidate > "$DEST/st$1.log" 2>&1
  python3 -c "import pandas as pd,sys,time; s=pd.read_parquet('$W/st$1/stage_timings.parquet'); \
d=s[(s.stage=='decode_step')&(s.role=='target')]; print('{\"stage_run\": $1, \"decode_gpu_ms_median\": %.3f, \"steps\": %d, \"utc\": \"%s\"}' \
% (d.gpu_ms.median(), len(d), time.strftime('%H:%M:%S', time.gmtime())))" | tee -a "$DEST/probe.jsonl"
}

probe_end() {
  kill "$SMI"
  tail -3 "$DEST/probe.err" 2>/dev/null
}
