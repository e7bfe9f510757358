#!/usr/bin/env bash
# Which stage-run setting makes the target's graph decode step fast (6.97 ms, validation_run's stage
# runs) or slow (7.68 ms, a target-only run with gammas 1; every executor): target alone on cuda:0,
# 2 samples, 20 decode steps, one process per run, varying roles and the verify gammas (the captured
# query lengths).   run(command="bash scripts/probe_stage_config.sh", carry=[".whl"], kind="nvidia-h200")
source "$(dirname "$0")/probe_lib.sh"
probe_start 2
cfg_probe() {  # cfg_probe ID ROLES GAMMAS
  python3 -m measure stages --target random:vicuna7b-clip336 --drafter random:vicuna7b-clip336 --dataset "$W/ds" \
    --out "$W/c$1" --n-samples 2 --placement alone --roles "$2" --decode-steps 20 --gammas "$3" --backend graphs \
    --device cuda:0 --dtype fp16 --no-progress --consolidate > "$DEST/c$1.log" 2>&1
  python3 -c "import pandas as pd; s=pd.read_parquet('$W/c$1/stage_timings.parquet'); s=s[s.status=='ok']; \
d=s[s.stage=='decode_step'].groupby('role').gpu_ms.median().round(3).to_dict(); \
v=s[s.stage=='verify'].groupby('gamma').gpu_ms.median().round(2).to_dict(); \
print({'run': '$1', 'roles': '$2', 'gammas': '$3', 'decode': d, 'verify': v})" | tee -a "$DEST/probe.jsonl"
}
cfg_probe a target 1
cfg_probe b target 1,2,4,8,16
cfg_probe c target,drafter 1
cfg_probe d target 16
cfg_probe e target 8
cfg_probe f target 1,2,4,8,16
probe_end
