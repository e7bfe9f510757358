#!/usr/bin/env bash
# The two-GPU executor slowdown (README validation item 3): does the parent's own CUDA use on the
# drafter's GPU (validation_run builds both models in the parent before the workers) slow the
# workers' graph decode? One lease: stage run, then the process executor with the drafter on cuda:1
# (parent clean / parent used cuda:0 + cuda:1), then drafter on cuda:0 (parent used cuda:0).
#   run(command="bash scripts/probe_parent.sh", carry=[".whl"], kind="nvidia-h200-x2")
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=8 PYTHONPATH=.
DEST="${OUT:-out}"; W=/tmp/probe; mkdir -p "$DEST" "$W"
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader -l 1 \
  > "$DEST/smi.csv" 2>&1 & SMI=$!
python3 -m measure synth-data --out "$W/ds" --n 2 > /dev/null
python3 -m measure stages --target random:vicuna7b-clip336 --dataset "$W/ds" --out "$W/st" --n-samples 2 \
  --placement alone --roles target --decode-steps 20 --gammas 1 --backend graphs --device cuda:0 --dtype fp16 \
  --no-progress --consolidate > "$DEST/st.log" 2>&1
python3 -c "import pandas as pd; s=pd.read_parquet('$W/st/stage_timings.parquet'); \
d=s[(s.stage=='decode_step')&(s.role=='target')]; print('{\"stage_run\": 1, \"decode_gpu_ms_median\": %.3f}' % d.gpu_ms.median())" \
  | tee -a "$DEST/probe.jsonl"
P="python3 scripts/probe_placement.py --dataset $W/ds --n 40 --requests 3"
for args in "--probes processes:cuda:1" "--parent-models cuda:0,cuda:1 --probes processes:cuda:1" \
            "--parent-models cuda:0 --probes processes:cuda:0"; do
  echo "{\"args\": \"$args\"}" | tee -a "$DEST/probe.jsonl"
  $P $args 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
done
kill $SMI
tail -3 "$DEST/probe.err"
