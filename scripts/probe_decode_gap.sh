#!/usr/bin/env bash
# The two-GPU decode gap (README, validation item 3): stage runs and both executor harnesses
# interleaved on one lease, GPU clocks/power/temperature sampled every second.
#   run(command="bash scripts/probe_decode_gap.sh", carry=[".whl"], kind="nvidia-h200-x2")
source "$(dirname "$0")/probe_lib.sh"
probe_start 4
stage_probe 1 60
python3 scripts/probe_placement.py --dataset "$W/ds" --probes processes:cuda:1,threads:cuda:1,processes:cuda:0 \
  2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
stage_probe 2 60
python3 scripts/probe_placement.py --dataset "$W/ds" --probes processes:cuda:1 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
stage_probe 3 60
probe_end
