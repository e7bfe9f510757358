#!/usr/bin/env bash
# Host wake-up: the target's graph decode step (scripts/probe_alloc.py, gpu_ms incl. the host read)
# with idle CPUs vs with N busy-looping processes beside it (no deep C-states), and with
# OMP_WAIT_POLICY=ACTIVE.   run(command="bash scripts/probe_cpu_idle.sh", carry=[".whl"], kind="nvidia-h200")
source "$(dirname "$0")/probe_lib.sh"
probe_start 1
A="python3 scripts/probe_alloc.py --dataset $W/ds"
$A --label idle 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
for n in 2 8; do
  pids=(); for i in $(seq $n); do python3 -c "while True: pass" & pids+=($!); done
  $A --label "spin$n" 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
  kill "${pids[@]}"
done
$A --label idle 2>>"$DEST/probe.err" | tee -a "$DEST/probe.jsonl"
cat /sys/devices/system/cpu/cpuidle/current_driver /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>&1 | tee -a "$DEST/probe.jsonl"
grep MHz /proc/cpuinfo | head -4 | tee -a "$DEST/probe.jsonl"
probe_end
