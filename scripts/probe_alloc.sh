#!/usr/bin/env bash
# Graph decode step of the target alone vs what the GPU holds before its weights (scripts/probe_alloc.py),
# each line a fresh process; "idle peer": another process holds a built target on the same GPU, idle.
#   run(command="bash scripts/probe_alloc.sh", carry=[".whl"], kind="nvidia-h200")
source "$(dirname "$0")/probe_lib.sh"
probe_start 1
A="python3 scripts/probe_alloc.py --dataset $W/ds"
for pad in 0 16 0 16 40 0; do $A --pad-gb $pad --label pad 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"; done
$A --pad-after-gb 16 --label after 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
python3 -c "
import time, torch
from measure.models import build_pipeline
p = build_pipeline('target', source='random:vicuna7b-clip336', dtype='fp16', backend='graphs', device='cuda:0', seed=0)
open('$W/peer_ready', 'w').close(); time.sleep(120)" 2>>"$DEST/probe.err" & PEER=$!
while [ ! -f "$W/peer_ready" ]; do sleep 1; done
for i in 1 2; do $A --label idle_peer 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"; done
kill $PEER
probe_end
