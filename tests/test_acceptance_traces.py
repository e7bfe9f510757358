"""Acceptance traces and the perturbed-copy drafter on tiny random models (CPU)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from egpt_sim.traces import schema  # noqa: E402
from measure import dataset as ds  # noqa: E402
from measure import synthetic  # noqa: E402
from measure.acceptance import (  # noqa: E402
    VocabMismatchError,
    check_vocab,
    leading_matches,
    record_acceptance,
    record_sample,
    speculative_step,
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
    assert meta["acceptance_rule"]["mode"] == "greedy" and meta["acceptance_rule"]["temperature"] is None
    with pytest.raises(FileExistsError):
        record_acceptance(t, d, samples, gamma=6, sigma=0.1, out_dir=tmp_path, run_id="r", device="cpu")
    record_acceptance(t, d, samples, gamma=6, n_blocks=2, sigma=0.1, out_dir=tmp_path, run_id="r",
                      resume=True, device="cpu")  # all parts present: nothing recomputed


def test_sampled_mode_and_adapter_runs(pipes, samples, tmp_path):
    t, d = pipes
    perturb_from(d, t, 0.0)
    # Flipping the logits ruins every draft only where the distributions are peaked: the tiny
    # random model's softmax is nearly flat (p ~ 1/vocab) at temperature 0.7, where speculative
    # sampling rightly accepts most flipped drafts. At 0.05 min(1, p/q) of a flipped draft is < 1e-5.
    flip = lambda logits: -logits  # noqa: E731 - an adapter that ruins every draft
    record_acceptance(t, d, samples[:2], gamma=4, mode="sampled", temperature=0.05, out_dir=tmp_path,
                      run_id="s", adapter=flip, adapter_name="flip", drafter_context="target", device="cpu")
    df = schema.read_table(tmp_path, schema.ACCEPTANCE_FILE)
    assert set(df["run_id"]) == {"s", "s+flip"}
    assert set(df["adapter"]) == {"none", "flip"}
    assert df.loc[df["adapter"] == "flip", "accepted_len"].max() == 0
    assert (df.loc[df["adapter"] == "none", "accepted_len"] == 4).all()  # exact copy: p == q
    runs = schema.read_metadata(tmp_path)["runs"]
    assert runs["s"]["temperature"] == 0.05 and runs["s+flip"]["adapter"] == "flip"
    rule = runs["s"]["acceptance_rule"]
    assert rule["mode"] == "sampled" and rule["temperature"] == 0.05 and "Leviathan" in rule["reference"]


# --------------------------------------------------------------------------- speculative sampling

# A hand-made pair covering every case of the rule: p > q (token 0, topped up by the
# residual), p < q (1, sometimes rejected), p == q (2, 4), q == 0 < p (3, reachable only by
# the residual), p == 0 < q (5, always rejected, never committed).
P_HAND = [0.35, 0.25, 0.20, 0.15, 0.05, 0.00]
Q_HAND = [0.10, 0.40, 0.20, 0.00, 0.05, 0.25]


def test_speculative_step_commits_tokens_distributed_as_p():
    """The defining property of speculative sampling: draft x ~ q, then accept/resample,
    gives a committed token distributed exactly as p (and accepts with prob sum min(p, q)).

    Tolerance: Pearson chi-square over the 5 tokens with p > 0 (df 4) below its 1 - 1e-4
    quantile (23.5); a correct rule fails this for one seed in 10^4 (the seed is fixed, so
    the test is deterministic). Power: the usual bug, resampling from p instead of from the
    residual, commits min(p, q) + (1 - beta) p, whose expected chi-square at n = 40000 is
    ~6700 (noncentrality computed below); it passes the bound with probability < 1e-12.
    Drafting from q without verification is further off still.
    """
    n = 40_000
    p, q = torch.tensor(P_HAND, dtype=torch.float64), torch.tensor(Q_HAND, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1234)
    drafts = torch.multinomial(q, n, replacement=True, generator=gen).tolist()
    steps = [speculative_step(p, q, x, gen) for x in drafts]
    committed = np.bincount([tok for _, tok in steps], minlength=len(P_HAND))
    accepted = np.array([ok for ok, _ in steps])
    # accepted <=> the committed token is the draft (a rejected draft is never resampled)
    assert all(ok == (tok == x) for (ok, tok), x in zip(steps, drafts))
    assert committed[5] == 0  # p = 0: never committed
    pos = np.array(P_HAND) > 0
    expected = n * np.array(P_HAND)[pos]
    chi2 = float(((committed[pos] - expected) ** 2 / expected).sum())
    df = int(pos.sum()) - 1
    bound = stats.chi2.ppf(1 - 1e-4, df)
    assert chi2 < bound, f"committed {committed.tolist()} vs n*p {expected.round().tolist()}: chi2 {chi2:.1f}"
    tv = 0.5 * np.abs(committed / n - np.array(P_HAND)).sum()
    assert tv < 0.02  # E[TV] ~ 0.5 * sum sqrt(p (1 - p) / n) = 0.005 here
    # acceptance rate beta = sum min(p, q) = 0.6, within 5 binomial standard errors
    beta = float(np.minimum(P_HAND, Q_HAND).sum())
    assert abs(accepted.mean() - beta) < 5 * np.sqrt(beta * (1 - beta) / n)
    # power of the bound against the resample-from-p bug
    wrong = np.minimum(P_HAND, Q_HAND) + (1 - beta) * np.array(P_HAND)
    lam = n * float((((wrong - np.array(P_HAND))[pos]) ** 2 / np.array(P_HAND)[pos]).sum())
    assert stats.ncx2.cdf(bound, df, lam) < 1e-12


def test_speculative_step_accepts_everything_when_p_equals_q():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, generator=gen), dim=0)
    for x in torch.multinomial(p, 2000, replacement=True, generator=gen).tolist():
        assert speculative_step(p, p.clone(), x, gen) == (True, x)  # min(1, p/q) == 1


def test_speculative_step_is_seeded_and_checks_input():
    p, q = torch.tensor(P_HAND), torch.tensor(Q_HAND)
    run = lambda s: [speculative_step(p, q, 1, torch.Generator().manual_seed(s)) for _ in range(50)]  # noqa: E731
    assert run(7) == run(7)
    for args, word in [((p, q, 3), "drafter probability"), ((p, q, 6), "outside"), ((p, q[:3], 0), "shape")]:
        with pytest.raises(ValueError, match=word) as err:
            speculative_step(*args)
        assert "\n" not in str(err.value)


def test_sampled_exact_copy_accepts_every_draft(pipes, samples):
    """Drafter == target on the same context: p == q up to the rounding of one-token decode vs
    batched verify (accept_prob >= 1 - 1e-5 here), so every draft is accepted."""
    t, d = pipes
    perturb_from(d, t, 0.0)
    rows = record_sample(t, d, samples[1], gamma=5, n_blocks=3, mode="sampled", temperature=1.0,
                         drafter_context="target", seed=3)
    df = pd.DataFrame(rows)
    assert len(df) == 15 and df["matched"].all() and (df["accepted_len"] == 5).all()
    assert (df["target_token"] == df["draft_token"]).all()
    assert (df["accept_prob"] > 1 - 1e-5).all()
    assert np.allclose(df["p_draft"], df["p_target"], rtol=1e-4)


def test_sampled_rows_are_prefix_consistent_and_continue_from_committed_tokens(pipes, samples, monkeypatch):
    t, d = pipes
    perturb_from(d, t, 1.0, seed=5)  # far enough from the target to reject some drafts
    seen = []
    verify = t.verify

    def spy(cache, tokens):
        seen.append(list(tokens))
        return verify(cache, tokens)

    monkeypatch.setattr(t, "verify", spy)
    gamma, n_blocks = 5, 6
    rows = record_sample(t, d, samples[0], gamma=gamma, n_blocks=n_blocks, mode="sampled", temperature=1.0,
                         drafter_context="target", seed=11)
    monkeypatch.undo()
    df = pd.DataFrame(rows).assign(run_id="r")
    schema.validate(df, schema.ACCEPTANCE_FILE)  # accepted_len == leading run of matched
    assert 0 < df["matched"].mean() < 1 and df["accepted_len"].nunique() > 1  # accepts and rejections
    assert (df["matched"] == (df["draft_token"] == df["target_token"])).all()
    assert df.loc[df["matched"], "accept_prob"].gt(0).all()
    # block b + 1 verifies [last committed token] + its drafts: the committed token is the
    # draft accepted last (+ bonus) or the target's resample at the first rejection
    blocks = [g.sort_values("position") for _, g in df.groupby("verify_id")]
    assert len(seen) == n_blocks
    for b, g in enumerate(blocks):
        assert seen[b][-gamma:] == g["draft_token"].tolist()
        n_acc = int(g["accepted_len"].iloc[0])
        if b + 1 < n_blocks and n_acc < gamma:
            assert seen[b + 1][0] == g["target_token"].iloc[n_acc]
    assert any(int(g["accepted_len"].iloc[0]) < gamma for g in blocks[:-1])  # the check above ran
    again = record_sample(t, d, samples[0], gamma=gamma, n_blocks=n_blocks, mode="sampled", temperature=1.0,
                          drafter_context="target", seed=11)
    assert again == rows  # seeded per sample: reproducible


@pytest.mark.parametrize("temperature", [0, -0.5, float("nan"), float("inf"), None, "hot"])
def test_sampled_mode_rejects_bad_temperature(pipes, samples, temperature, tmp_path):
    t, d = pipes
    with pytest.raises(ValueError, match="temperature") as err:
        record_sample(t, d, samples[0], gamma=2, mode="sampled", temperature=temperature)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="temperature"):  # checked before any model is built
        record_acceptance("no-such-model", "no-such-model", samples, mode="sampled", temperature=temperature,
                          out_dir=tmp_path, device="cpu")
    assert not any(tmp_path.iterdir())


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
