"""A seed-calibrated *example* trace set, for demos before/without real GPU traces.

Every number below is taken from the seed reports (``shared/seeds``) or the H100
facts in the project brief — NOT measured by this project. The set is labelled
``source: "seed-calibrated example"`` in its metadata and in every provenance line.

Calibration (median ms): EventGPT 636-token prompt, stages 1-4 = 3 / 3 / 5.9 / 66.2;
Video-LLaVA 4643-token prompt, stages 1-4 = 45 / 38 / 29.5 / 568.1 (seed report
1-frame vs 8-frame, DSEC); decode 18.5 (EventGPT, 54 tok/s) and 28.8 ms/token
(Video-LLaVA, 34.7 tok/s); a verify pass of gamma drafts ~ 0.8-0.9 x one decode step
(H100 fact: ~23 ms for gamma 8..64 vs ~28 ms decode); same-GPU contention: target
prefill x1.6 and drafter decode x2.5 (H100 facts: 1.3-2.2x and 1.3-4x); acceptance:
i.i.d. per-token match rate 0.279 (the seeds' adapter; mean accepted prefix ~0.39).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import schema

STAGE_MS = {
    "target": {"load": 45.0, "preprocess": 38.0, "vision_encode": 29.5, "prefill": 568.1, "decode_step": 28.8},
    "drafter": {"load": 3.0, "preprocess": 3.0, "vision_encode": 5.9, "prefill": 66.2, "decode_step": 18.5},
}
PROMPT_TOKENS = {"target": 4643, "drafter": 636}
FRAMES = {"target": 8, "drafter": 1}
VERIFY_FRACTION = {1: 0.9, 2: 0.85, 4: 0.82, 8: 0.8, 16: 0.81, 32: 0.83, 64: 0.87}
SHARED_FACTOR = {
    ("target", "vision_encode"): 1.3, ("target", "prefill"): 1.6, ("target", "decode_step"): 1.25,
    ("target", "verify"): 1.25, ("drafter", "vision_encode"): 1.3, ("drafter", "prefill"): 1.5,
    ("drafter", "decode_step"): 2.5,
}
ALPHA = 0.279
RUN_ID = "seed-calibrated-example"


def stage_rows(run_id: str, sample_ids, prompt_tokens: dict, frames: dict, phase_ms: dict,
               decode_ms: dict, verify_ms: dict, decode_steps: int, keep, duration) -> list[dict]:
    """STAGE_TIMINGS rows of a synthetic trace set (every schema column filled).

    For each sample, role and placement (``alone``, then ``shared_gpu`` written as
    ``streams`` with the peer busy): the four prefill-phase stages of ``phase_ms[role]``,
    ``decode_steps`` decode steps of ``decode_ms[role]`` ms and, for the target, one
    verify pass per ``verify_ms`` entry (gamma -> ms, in gamma order). ``keep(role,
    stage, shared)`` says which rows exist; ``duration(role, stage, shared, ms)`` turns
    a base time into the recorded one (noise, contention factor), called in row order.
    """
    rows = []
    for sid in sample_ids:
        for role in schema.ROLES:
            p = prompt_tokens[role]
            base = dict(run_id=run_id, sample_id=sid, role=role, prompt_tokens=p, frames=frames[role],
                        status="ok", start_ms=np.nan)
            for shared in (False, True):
                base_p = base | dict(placement="shared_gpu" if shared else "alone",
                                     concurrency="streams" if shared else "none", peer_busy=shared)
                for stage, ms in phase_ms[role].items():
                    if keep(role, stage, shared):
                        rows.append(base_p | dict(stage=stage, step=0, gamma=0, kv_tokens=0,
                                                  query_tokens=p if stage == "prefill" else 0,
                                                  duration_ms=duration(role, stage, shared, ms)))
                if keep(role, "decode_step", shared):
                    for i in range(decode_steps):
                        rows.append(base_p | dict(stage="decode_step", step=i, gamma=0, kv_tokens=p + i, query_tokens=1,
                                                  duration_ms=duration(role, "decode_step", shared, decode_ms[role])))
                if role == "target" and keep(role, "verify", shared):
                    for j, (g, ms) in enumerate(sorted(verify_ms.items())):
                        rows.append(base_p | dict(stage="verify", step=j, gamma=int(g), kv_tokens=p, query_tokens=int(g) + 1,
                                                  duration_ms=duration(role, "verify", shared, float(ms))))
    return rows


def make_example_traces(out_dir: str | Path, n_samples: int = 40, decode_steps: int = 24,
                        gamma: int = 16, seed: int = 0) -> Path:
    """Write the example trace set to ``out_dir`` and return it."""
    rng = np.random.default_rng(seed)

    def keep(role, stage, shared):  # shared runs have no CPU stages and no verify rows
        return not shared or (stage not in schema.CPU_STAGES and stage != "verify")

    def duration(role, stage, shared, ms):  # lognormal noise: 4 % on stages 1-4, 3 % per step
        factor = SHARED_FACTOR.get((role, stage), 1.0) if shared else 1.0
        cv = 0.03 if stage in ("decode_step", "verify") else 0.04
        return float(ms * factor * rng.lognormal(0.0, cv))

    phase = {r: {s: STAGE_MS[r][s] for s in ("load", "preprocess", "vision_encode", "prefill")} for r in schema.ROLES}
    decode = {r: STAGE_MS[r]["decode_step"] for r in schema.ROLES}
    verify = {g: STAGE_MS["target"]["decode_step"] * frac for g, frac in VERIFY_FRACTION.items()}
    rows = stage_rows(RUN_ID, [f"example-{s:03d}" for s in range(n_samples)], PROMPT_TOKENS, FRAMES,
                      phase, decode, verify, decode_steps, keep, duration)
    st = pd.DataFrame(rows)
    acc = _iid_acceptance(rng, n_samples, gamma)
    out = Path(out_dir)
    schema.write_table(st, out / "stage_timings.parquet", schema.STAGE_TIMINGS_FILE)
    schema.write_table(acc, out / "acceptance.parquet", schema.ACCEPTANCE_FILE)
    meta = {
        "gpu_name": "not measured (seed reports: RTX 4090 / unnamed GPU; H100 facts)",
        "dtype": "fp16 (as reported)", "quantization": "mixed in seeds (4-bit and fp16)",
        "versions": {}, "git_commit": "n/a", "source": "seed-calibrated example",
        "calibration": __doc__.split("Calibration")[1].strip(),
        "acceptance_alpha_per_token": ALPHA,
    }
    schema.write_metadata(out, {RUN_ID: meta}, label="seed-calibrated example (not measured)")
    return out


def _iid_acceptance(rng: np.random.Generator, n_samples: int, gamma: int, blocks_per_sample: int = 4) -> pd.DataFrame:
    """Draft/target tokens whose per-position matches are i.i.d. Bernoulli(ALPHA)."""
    rows = []
    for s in range(n_samples):
        for v in range(blocks_per_sample):
            matched = rng.random(gamma) < ALPHA
            acc_len = int(np.argmin(matched)) if not matched.all() else gamma
            for i in range(gamma):
                tgt = int(rng.integers(100, 32000))
                drf = tgt if matched[i] else int((tgt + 1 + rng.integers(0, 1000)) % 32000)
                p_d = float(rng.uniform(0.2, 0.9))
                p_t = float(rng.uniform(0.2, 0.9) if matched[i] else rng.uniform(0.0, 0.1))
                rows.append(dict(run_id=RUN_ID, sample_id=f"example-{s:03d}", verify_id=v, position=i, gamma=gamma,
                                 draft_token=drf, target_token=tgt, p_draft=p_d, p_target=p_t, matched=bool(matched[i]),
                                 accept_prob=min(1.0, p_t / p_d), target_in_draft_top5=bool(matched[i] or rng.random() < 0.33),
                                 accepted_len=acc_len))
    return pd.DataFrame(rows)
