"""Acceptance traces and the perturbed-copy drafter on tiny random models (CPU)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import pandas as pd  # noqa: E402

from egpt_sim import schema  # noqa: E402
from measure import dataset as ds  # noqa: E402
from measure import synthetic  # noqa: E402
from measure.acceptance import (  # noqa: E402
    VocabMismatchError,
    check_vocab,
    leading_matches,
    record_acceptance,
    record_sample,
)
from measure.models import build_pipeline  # noqa: E402
from measure.perturb import lm_parameters, perturb_from  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = synthetic.generate(tmp_path_factory.mktemp("ds"), synthetic.SynthConfig(n_samples=3, duration_s=0.3))
    return ds.load_dataset(path)


@pytest.fixture(scope="module")
def pipes():
    t = build_pipeline("target", "random:tiny", dtype="fp32", device="cpu")
    d = build_pipeline("drafter", "random:tiny", dtype="fp32", device="cpu")
    return t, d


def test_leading_matches_is_the_prefix_rule():
    assert leading_matches([1, 2, 3], [1, 2, 3]) == 3
    assert leading_matches([1, 9, 3], [1, 2, 3]) == 1  # a later match does not count
    assert leading_matches([9, 2, 3], [1, 2, 3]) == 0
    assert leading_matches([], [1]) == 0


def test_sigma0_copies_exactly_and_noise_is_seeded(pipes):
    t, d = pipes
    perturb_from(d, t, 0.0)
    src = dict(lm_parameters(t))
    assert all(torch.equal(p, src[n]) for n, p in lm_parameters(d))
    perturb_from(d, t, 0.05, seed=3)
    first = {n: p.detach().clone() for n, p in lm_parameters(d)}
    perturb_from(d, t, 0.05, seed=3)
    assert all(torch.equal(p, first[n]) for n, p in lm_parameters(d))
    w, w0 = first["lm_head.weight"], src["lm_head.weight"]
    rel = ((w - w0).std() / w0.std()).item()
    assert 0.04 < rel < 0.06  # relative noise scale is sigma
    perturb_from(d, t, 0.05, seed=4)
    assert not torch.equal(dict(lm_parameters(d))["lm_head.weight"], w)
    assert torch.equal(src["lm_head.weight"], w0)  # the target is never modified


def test_sigma0_with_target_context_matches_everything(pipes, samples):
    t, d = pipes
    perturb_from(d, t, 0.0)
    rows = record_sample(t, d, samples[0], gamma=5, n_blocks=3, drafter_context="target")
    df = pd.DataFrame(rows)
    assert df["matched"].all() and (df["accepted_len"] == 5).all()
    assert len(df) == 15 and sorted(df["verify_id"].unique()) == [0, 1, 2]
    assert (df["accept_prob"] > 0.999).all() and df["target_in_draft_top5"].all()


def test_recorded_table_is_valid_and_prefix_consistent(pipes, samples, tmp_path):
    t, d = pipes
    record_acceptance(t, d, samples, gamma=6, n_blocks=2, sigma=0.1, out_dir=tmp_path, run_id="r",
                      drafter_context="target", device="cpu")
    df = schema.read_table(tmp_path, schema.ACCEPTANCE_FILE)  # validates the prefix rule too
    assert len(df) == 3 * 2 * 6
    for _, g in df.groupby(["sample_id", "verify_id"]):
        g = g.sort_values("position")
        assert g["accepted_len"].iloc[0] == leading_matches(g["draft_token"].tolist(), g["target_token"].tolist())
    assert ((df["p_draft"] > 0) & (df["p_draft"] <= 1) & (df["p_target"] <= 1)).all()
    assert (df["accept_prob"] <= 1).all()
    meta = schema.read_metadata(tmp_path)["runs"]["r"]
    assert meta["sigma"] == 0.1 and meta["mode"] == "greedy" and meta["drafter_context"] == "target"
    with pytest.raises(FileExistsError):
        record_acceptance(t, d, samples, gamma=6, sigma=0.1, out_dir=tmp_path, run_id="r", device="cpu")
    record_acceptance(t, d, samples, gamma=6, n_blocks=2, sigma=0.1, out_dir=tmp_path, run_id="r",
                      resume=True, device="cpu")  # all parts present: nothing recomputed


def test_sampled_mode_and_adapter_runs(pipes, samples, tmp_path):
    t, d = pipes
    perturb_from(d, t, 0.0)
    flip = lambda logits: -logits  # noqa: E731 - an adapter that ruins every draft
    record_acceptance(t, d, samples[:2], gamma=4, mode="sampled", temperature=0.7, out_dir=tmp_path,
                      run_id="s", adapter=flip, adapter_name="flip", drafter_context="target", device="cpu")
    df = schema.read_table(tmp_path, schema.ACCEPTANCE_FILE)
    assert set(df["run_id"]) == {"s", "s+flip"}
    assert set(df["adapter"]) == {"none", "flip"}
    assert df.loc[df["adapter"] == "flip", "accepted_len"].max() == 0
    runs = schema.read_metadata(tmp_path)["runs"]
    assert runs["s"]["temperature"] == 0.7 and runs["s+flip"]["adapter"] == "flip"


def test_vocab_mismatch_raises_one_line_error(pipes):
    t, d = pipes
    check_vocab(t, d)
    d.tokenizer.add_tokens(["<zzz_extra_token>"])
    try:
        with pytest.raises(VocabMismatchError) as err:
            check_vocab(t, d)
        assert "\n" not in str(err.value) and "vocab" in str(err.value)
    finally:
        d.tokenizer = build_pipeline("drafter", "random:tiny", dtype="fp32", device="cpu").tokenizer
