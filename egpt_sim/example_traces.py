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


def make_example_traces(out_dir: str | Path, n_samples: int = 40, decode_steps: int = 24,
                        gamma: int = 16, seed: int = 0) -> Path:
    """Write the example trace set to ``out_dir`` and return it."""
    rng = np.random.default_rng(seed)
    rows = []

    def noisy(ms, cv=0.04):
        return float(ms * rng.lognormal(0.0, cv))

    for s in range(n_samples):
        sid = f"example-{s:03d}"
        for role in schema.ROLES:
            p = PROMPT_TOKENS[role]
            base = dict(run_id=RUN_ID, sample_id=sid, role=role, prompt_tokens=p, frames=FRAMES[role],
                        status="ok", start_ms=np.nan)
            for placement in ("alone", "shared_gpu"):
                shared = placement == "shared_gpu"
                extra = dict(placement=placement, concurrency="streams" if shared else "none", peer_busy=shared)

                def f(stage):
                    return SHARED_FACTOR.get((role, stage), 1.0) if shared else 1.0

                for stage in ("load", "preprocess", "vision_encode", "prefill"):
                    if shared and stage in schema.CPU_STAGES:
                        continue
                    q = p if stage == "prefill" else 0
                    rows.append(base | extra | dict(stage=stage, step=0, gamma=0, kv_tokens=0, query_tokens=q,
                                                    duration_ms=noisy(STAGE_MS[role][stage] * f(stage))))
                for i in range(decode_steps):
                    rows.append(base | extra | dict(stage="decode_step", step=i, gamma=0, kv_tokens=p + i, query_tokens=1,
                                                    duration_ms=noisy(STAGE_MS[role]["decode_step"] * f("decode_step"), 0.03)))
                if role == "target" and not shared:
                    for j, (g, frac) in enumerate(VERIFY_FRACTION.items()):
                        rows.append(base | extra | dict(stage="verify", step=j, gamma=g, kv_tokens=p, query_tokens=g + 1,
                                                        duration_ms=noisy(STAGE_MS[role]["decode_step"] * frac, 0.03)))
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
