#!/usr/bin/env bash
# The two-GPU executor slowdown (README validation item 3): does the parent's own CUDA use on the
# drafter's GPU (validation_run builds both models in the parent before the workers) slow the
# workers' graph decode? One lease: stage run, then the process executor with the drafter on cuda:1
# (parent clean / parent used cuda:0 + cuda:1), then drafter on cuda:0 (parent used cuda:0).
#   run(command="bash scripts/probe_parent.sh", carry=[".whl"], kind="nvidia-h200-x2")
source "$(dirname "$0")/probe_lib.sh"
probe_start 2
stage_probe 1 20
P="python3 scripts/probe_placement.py --dataset $W/ds --n 40 --requests 3"
for args in "--probes processes:cuda:1" "--parent-models cuda:0,cuda:1 --probes processes:cuda:1" \
            "--parent-models cuda:0 --probes processes:cuda:0"; do
  echo "{\"args\": \"$args\"}" | tee -a "$DEST/probe.jsonl"
  $P $args 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
done
probe_end
