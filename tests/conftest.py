"""Shared, generic fixtures for the egpt_sim tests (torch-free).

Fixtures (only add here, never rename — other test files use them):

* ``example_traces``   the bundled seed-calibrated example trace set (session scope)
* ``constant_times``   the fixed stage times of ``constant_traces`` (dict of kwargs for
                       :func:`egpt_sim.sim.closed_form.constant_trace_set`)
* ``constant_traces``  an in-memory trace set with those CONSTANT times and fitted
                       same-GPU factors (session scope)
* ``make_acceptance``  builds a valid ACCEPTANCE frame from per-block match lists
* ``example_trace_dir`` a writable copy of the example trace-set folder (tmp_path)
* ``peer_traces``      the example set's ``alone`` rows plus schema-1.1 contended rows
                       whose factor depends on the peer's activity (``PEER_FACTORS``,
                       one GPU) and host-contention rows (``HOST_FACTORS``, two GPUs as
                       threads), with 2 % noise (session scope)
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim import closed_form
from egpt_sim.traces import resolve_trace_set

EXAMPLE_SET = "example/seed_calibrated"


@pytest.fixture(scope="session")
def example_traces() -> E.TraceSet:
    return E.load_traces(EXAMPLE_SET)


@pytest.fixture(scope="session")
def constant_times() -> dict:
    # integers / binary fractions: every sum in the simulator is exact in float64
    return {
        "target_phase_ms": (40.0, 32.0, 24.0, 512.0),   # T_t = 608 ms
        "drafter_phase_ms": (2.0, 2.0, 4.0, 52.0),      # T_d = 60 ms
        "target_decode_ms": 32.0,
        "drafter_decode_ms": 20.0,                      # (608 - 60) / 20 = 27.4: no ties
        "verify_ms_by_gamma": {1: 24.0, 2: 26.0, 4: 28.0, 8: 30.0, 16: 34.0},
        "shared_factors": {("target", "prefill"): 1.5, ("target", "vision_encode"): 1.25,
                           ("drafter", "decode_step"): 2.0, ("drafter", "prefill"): 1.5},
    }


@pytest.fixture(scope="session")
def constant_traces(constant_times) -> E.TraceSet:
    return closed_form.constant_trace_set(**constant_times, acceptance_alpha=0.5)


@pytest.fixture
def make_acceptance():
    """``make_acceptance({(sample_id, verify_id): [True, False, ...]})`` -> ACCEPTANCE frame.

    ``accepted_len`` follows the prefix rule (leading run of matches); every column of
    the schema is filled.
    """

    def build(blocks: dict, run_id: str = "run") -> pd.DataFrame:
        rows = []
        for (sample_id, verify_id), matched in blocks.items():
            gamma = len(matched)
            acc_len = next((i for i, m in enumerate(matched) if not m), gamma)
            for i, m in enumerate(matched):
                tgt = 1000 + 10 * i
                rows.append(dict(run_id=run_id, sample_id=sample_id, verify_id=int(verify_id), position=i,
                                 gamma=gamma, draft_token=tgt if m else tgt + 1, target_token=tgt,
                                 p_draft=0.5, p_target=0.5 if m else 0.01, matched=bool(m),
                                 accept_prob=1.0 if m else 0.02, target_in_draft_top5=bool(m),
                                 accepted_len=acc_len))
        return pd.DataFrame(rows)

    return build


@pytest.fixture
def example_trace_dir(tmp_path):
    """A writable copy of the bundled example trace-set folder."""
    dst = tmp_path / "example_copy"
    shutil.copytree(resolve_trace_set(EXAMPLE_SET), dst)
    return dst


# (role, stage, peer activity) -> slow-down; one below 1 (kept as measured)
PEER_FACTORS = {
    ("target", "vision_encode", "vision_encode"): 1.3, ("target", "vision_encode", "prefill"): 1.5,
    ("target", "prefill", "prefill"): 1.4, ("target", "prefill", "decode_step"): 1.8,
    ("target", "prefill", "vision_encode"): 1.2, ("target", "verify", "decode_step"): 1.6,
    ("target", "decode_step", "decode_step"): 1.5,
    ("drafter", "vision_encode", "vision_encode"): 1.3, ("drafter", "prefill", "prefill"): 1.5,
    ("drafter", "prefill", "vision_encode"): 1.25, ("drafter", "decode_step", "prefill"): 2.5,
    ("drafter", "decode_step", "verify"): 1.7, ("drafter", "decode_step", "decode_step"): 1.9,
    ("drafter", "decode_step", "vision_encode"): 0.9,
    # beside the peer's CPU stages (threads): ContentionModel.cpu_peer
    ("drafter", "vision_encode", "preprocess"): 1.8, ("drafter", "prefill", "preprocess"): 1.4,
    ("drafter", "vision_encode", "load"): 1.3, ("target", "vision_encode", "preprocess"): 1.2,
}
HOST_FACTORS = {
    ("target", "decode_step", "decode_step"): 1.6, ("target", "verify", "decode_step"): 1.3,
    ("target", "prefill", "decode_step"): 1.1, ("drafter", "decode_step", "verify"): 1.4,
    ("drafter", "decode_step", "decode_step"): 1.6, ("drafter", "decode_step", "prefill"): 1.2,
    ("drafter", "prefill", "preprocess"): 1.3,
}


def _contended_rows(alone: pd.DataFrame, factors: dict, placement: str, rng) -> pd.DataFrame:
    out = []
    for (role, stage, peer), f in factors.items():
        a = alone[(alone["role"] == role) & (alone["stage"] == stage)]
        if stage == "decode_step":
            a = a[a["step"] < 3]
        a = a.copy()
        a["duration_ms"] = a["duration_ms"] * f * rng.lognormal(0.0, 0.02, len(a))
        out.append(a.assign(placement=placement, concurrency="streams", peer_busy=True, peer_activity=peer,
                            overlap_frac=1.0, run_id=f"{placement}-run"))
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="session")
def peer_traces(example_traces) -> E.TraceSet:
    st = example_traces.stage_timings
    alone = st[st["placement"] == "alone"].copy()
    alone["peer_activity"] = "none"
    rng = np.random.default_rng(5)
    rows = pd.concat([alone, _contended_rows(alone, PEER_FACTORS, "shared_gpu", rng),
                      _contended_rows(alone, HOST_FACTORS, "separate_gpu", rng)], ignore_index=True)
    meta = dict(example_traces.metadata) | {"label": "peer-dependent synthetic (not measured)"}
    return E.TraceSet.from_frames(rows, example_traces.acceptance, meta, path="<peer traces>")
