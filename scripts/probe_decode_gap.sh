#!/usr/bin/env bash
# The two-GPU decode gap (README, validation item 1): stage runs and both executor harnesses
# interleaved on one lease, GPU clocks/power/temperature sampled every second.
#   run(command="bash scripts/probe_decode_gap.sh", carry=[".whl"], kind="nvidia-h200-x2")
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=8 PYTHONPATH=.
DEST="${OUT:-out}"; W=/tmp/probe; mkdir -p "$DEST" "$W"
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader -l 1 \
  > "$DEST/smi.csv" 2>&1 & SMI=$!
python3 -m measure synth-data --out "$W/ds" --n 4 > /dev/null
st() {  # stage run: target alone on cuda:0, 2 samples x 60 decode steps
  python3 -m measure stages --target random:vicuna7b-clip336 --dataset "$W/ds" --out "$W/st$1" --n-samples 2 \
    --placement alone --roles target --decode-steps 60 --gammas 1 --backend graphs --device cuda:0 --dtype fp16 \
    --no-progress --consolidate > "$DEST/st$1.log" 2>&1
  python3 -c "import pandas as pd,sys,time; s=pd.read_parquet('$W/st$1/stage_timings.parquet'); \
d=s[(s.stage=='decode_step')&(s.role=='target')]; print('{\"stage_run\": $1, \"decode_gpu_ms_median\": %.3f, \"steps\": %d, \"utc\": \"%s\"}' \
% (d.gpu_ms.median(), len(d), time.strftime('%H:%M:%S', time.gmtime())))" | tee -a "$DEST/probe.jsonl"
}
st 1
python3 scripts/probe_placement.py --dataset "$W/ds" --probes processes:cuda:1,threads:cuda:1,processes:cuda:0 \
  2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
st 2
python3 scripts/probe_placement.py --dataset "$W/ds" --probes processes:cuda:1 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
st 3
kill $SMI
tail -3 "$DEST/probe.err"
