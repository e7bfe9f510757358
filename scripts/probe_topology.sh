#!/usr/bin/env bash
# The two-GPU executor slowdown (README validation item 3), one lease, every step one process:
# validation_run's own stage configuration (both roles, alone + separate_gpu processes, gammas 1-16)
# before and after; the probe's target-only stage run; the process executor with the drafter on
# cuda:1 after a clean parent, a parent that only copied a tensor across the GPUs (peer access),
# and a parent that recorded acceptance across the GPUs (as validation_run); drafter on cuda:0.
#   run(command="bash scripts/probe_topology.sh", carry=[".whl"], kind="nvidia-h200-x2")
source "$(dirname "$0")/probe_lib.sh"
probe_start 2
val_stage_probe() {  # val_stage_probe ID: measure.stages as measure.validation_run records it (2 samples)
  python3 -m measure stages --target random:vicuna7b-clip336 --drafter random:vicuna7b-clip336 --dataset "$W/ds" \
    --out "$W/vst$1" --n-samples 2 --placement alone,separate_gpu --concurrency processes --decode-steps 20 \
    --gammas 1,2,4,8,16 --backend graphs --device cuda:0 --separate-device cuda:1 --dtype fp16 --no-progress \
    --consolidate > "$DEST/vst$1.log" 2>&1
  python3 -c "import pandas as pd; s=pd.read_parquet('$W/vst$1/stage_timings.parquet'); \
d=s[(s.stage=='decode_step')&(s.status=='ok')].groupby(['role','placement']).gpu_ms.median().round(3); \
print({'val_stage_run': $1, **{'/'.join(k): v for k, v in d.items()}})" | tee -a "$DEST/probe.jsonl"
}
val_stage_probe 1
stage_probe 1 20
P="python3 scripts/probe_placement.py --dataset $W/ds --n 40 --requests 3"
for args in "--probes processes:cuda:1,processes:cuda:0" "--parent-p2p cuda:0,cuda:1 --probes processes:cuda:1" \
            "--parent-acceptance cuda:0,cuda:1 --probes processes:cuda:1" \
            "--parent-acceptance cuda:0,cuda:0 --probes processes:cuda:0"; do
  echo "{\"args\": \"$args\"}" | tee -a "$DEST/probe.jsonl"
  $P $args 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
done
val_stage_probe 2
probe_end
