"""Acceptance traces: how many drafts the target accepts, from real forward passes.

Per sample (block ``verify_id = 0`` is the parallel-prefill window)::

    target:  stages 1-4 on its prompt (video + query)        -> logits for position 1
    drafter: stages 1-4 on its prompt (1 event frame + query) -> d1; gamma-1 decode steps -> d2..d_gamma
    target:  ONE forward over [d1..d_gamma]                  -> target logits for positions 2..gamma+1
    verification rule (``mode``, below) -> matched_i, target token t_i (i = 1..gamma+1)
    accepted_len L = leading run of matched_i;  commit d1..dL + t_{L+1}

Later blocks (``verify_id >= 1``) continue after the committed prefix: both KV caches are
cropped to the committed tokens, the drafter catches up on the tokens it has not fed (one
forward), drafts gamma tokens, and the target verifies ``[last committed] + drafts`` in one
forward (``gamma + 1`` tokens). The continuation follows the committed tokens of the rule.

Verification rules (``mode``; recorded in the run metadata as ``acceptance_rule``):

* ``greedy`` -- drafts are the drafter's argmax; ``matched_i = (d_i == argmax p_i)``,
  ``t_i = argmax p_i`` (also the committed token after the accepted prefix).
* ``sampled`` -- speculative sampling (Leviathan et al. 2023; Chen et al. 2023), see
  :func:`speculative_step`: ``d_i ~ q_i`` (drafter softmax at ``temperature``), accepted
  with probability ``min(1, p_i(d_i) / q_i(d_i))`` (``p_i``: target softmax at the same
  temperature); a rejected position gets ``t_i ~ norm(max(0, p_i - q_i))``, an accepted one
  ``t_i = d_i``; after gamma accepts the bonus ``t_{gamma+1} ~ p_{gamma+1}``. All draws come
  from one generator seeded per sample (:func:`sample_seed`), so runs are reproducible. The
  test is applied at every position (also after the first rejection, against the target's
  distribution given the drafted prefix, as greedy mode records the argmax there); only the
  leading run counts as accepted. The committed tokens are then distributed exactly as
  sampling from the target alone would give.

In both modes ``matched_i`` holds exactly when ``d_i == t_i`` (a rejected draft has
``p < q`` there, so the residual never resamples it), which is what the schema checks.

Probabilities: ``p_draft``/``p_target`` are softmax probabilities of the draft token at
temperature 1 in ``greedy`` mode and at ``temperature`` in ``sampled`` mode;
``accept_prob = min(1, p_target / p_draft)``.

``drafter_context="target"`` feeds the drafter's LM the *target's* prompt embeddings instead
of its own prompt: with a perturbed-copy drafter (:mod:`measure.perturb`) this is what makes
sigma span the acceptance range (see the module docstring there).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from egpt_sim.traces import schema

Adapter = Callable[[torch.Tensor], torch.Tensor]
MODES = ("greedy", "sampled")
CONTEXTS = ("own", "target")


class VocabMismatchError(ValueError):
    """Drafter and target tokenizers/vocabularies differ; the message is one line."""


# --------------------------------------------------------------------------- vocabulary


def vocab_fingerprint(pipeline) -> dict[str, Any]:
    """sha256 of the tokenizer's (token, id) table plus vocab sizes of tokenizer, config, lm_head."""
    vocab = pipeline.tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode()
    cfg = getattr(pipeline.model.config, "text_config", pipeline.model.config)
    return {"vocab_sha256": hashlib.sha256(blob).hexdigest(), "tokenizer_len": len(pipeline.tokenizer),
            "config_vocab_size": int(cfg.vocab_size),
            "lm_head_rows": int(pipeline.parts.lm_head.weight.shape[0])}


def check_vocab(target, drafter) -> dict[str, Any]:
    """Raise :class:`VocabMismatchError` unless both pipelines share one vocabulary."""
    t, d = vocab_fingerprint(target), vocab_fingerprint(drafter)
    diff = [k for k in t if t[k] != d[k]]
    if diff:
        k = diff[0]
        raise VocabMismatchError(f"drafter and target vocabularies differ: {k} target={t[k]} "
                                 f"drafter={d[k]} (token ids would not be comparable)")
    return t


# --------------------------------------------------------------------------- helpers


def leading_matches(drafts: Sequence[int], targets: Sequence[int]) -> int:
    """Accepted prefix length: drafts equal to the target's tokens up to the first mismatch."""
    n = 0
    for d, t in zip(drafts, targets):
        if d != t:
            break
        n += 1
    return n


def speculative_step(p: torch.Tensor, q: torch.Tensor, draft: int,
                     generator: torch.Generator | None = None) -> tuple[bool, int]:
    """Speculative-sampling verification of one draft (Leviathan et al. 2023; Chen et al. 2023).

    ``p``, ``q``: the target's and the drafter's probability vectors ``(vocab,)`` at this
    position, at the same temperature (normalised here, in float64, on ``q``'s device, where
    ``generator`` must live); ``draft`` was sampled from ``q``. The draft is accepted with
    probability ``min(1, p[draft] / q[draft])`` (one uniform ``u`` from ``generator``: accept
    iff ``u * q[draft] < p[draft]``, so always when ``p >= q`` there); on rejection the
    target's token is drawn from the residual ``norm(max(0, p - q))``.

    Returns ``(accepted, token)``: ``(True, draft)`` or ``(False, resampled)``. A rejection
    implies ``p[draft] < q[draft]``, so the residual gives ``draft`` no mass and ``token ==
    draft`` exactly when accepted. Marginally over ``draft ~ q`` the returned token is
    distributed exactly as ``p`` (min(p, q) from acceptance + (1 - sum min(p, q)) * residual).
    """
    if p.dim() != 1 or p.shape != q.shape:
        raise ValueError(f"p and q must be probability vectors of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    if not 0 <= int(draft) < q.shape[0]:
        raise ValueError(f"draft token {draft} is outside the vocabulary (size {q.shape[0]})")
    q64 = q.to(torch.float64)
    p64 = p.to(device=q.device, dtype=torch.float64)
    q64, p64 = q64 / q64.sum(), p64 / p64.sum()
    qx, px = float(q64[draft]), float(p64[draft])
    if not qx > 0:
        raise ValueError(f"draft token {draft} has drafter probability {qx}: it cannot have been sampled from q")
    u = float(torch.rand((), generator=generator, device=q.device, dtype=torch.float64))
    if u * qx < px:
        return True, int(draft)
    residual = (p64 - q64).clamp_(min=0.0)
    residual[draft] = 0.0  # already 0 up to rounding, since p[draft] < q[draft]
    if not float(residual.sum()) > 0:  # p and q equal up to rounding off the draft: p without it
        residual = p64.clone()
        residual[draft] = 0.0
    return False, int(torch.multinomial(residual, 1, generator=generator))


def acceptance_rule(mode: str, temperature: float | None = None) -> dict[str, Any]:
    """Run-metadata record of the verification rule (what ``matched``/``target_token`` mean)."""
    if mode == "greedy":
        return {"mode": "greedy", "temperature": None,
                "matched": "draft_token == target argmax (drafts are the drafter's argmax)",
                "target_token": "target argmax at the position; the continuation commits it"}
    return {"mode": "sampled", "temperature": float(temperature),
            "reference": "speculative sampling (Leviathan et al. 2023; Chen et al. 2023)",
            "matched": "draft (sampled from the drafter softmax at temperature) accepted with "
                       "probability min(1, p_target / p_draft); the generator is seeded per sample",
            "target_token": "draft_token if accepted, else the resample from norm(max(0, p - q)); "
                            "after gamma accepts the bonus token is sampled from p; the continuation "
                            "commits these"}


def check_args(mode: str, temperature: Any, gamma: int, n_blocks: int, drafter_context: str) -> float:
    """Validate the recorder's knobs (one-line ValueError); return the temperature used."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if drafter_context not in CONTEXTS:
        raise ValueError(f"drafter_context must be one of {CONTEXTS}, got {drafter_context!r}")
    if gamma < 1 or n_blocks < 1:
        raise ValueError(f"gamma and n_blocks must be >= 1 (got {gamma}, {n_blocks})")
    if mode == "greedy":
        return 1.0
    try:
        temp = float(temperature)
    except (TypeError, ValueError):
        temp = float("nan")
    if isinstance(temperature, bool) or not (math.isfinite(temp) and temp > 0):
        raise ValueError(f"temperature must be a finite number > 0 in sampled mode, got {temperature!r}")
    return temp


def encode_prompt(pipeline, sample) -> torch.Tensor:
    """Stages 1-3 of ``pipeline`` for ``sample`` -> inputs_embeds (1, L, hidden)."""
    loaded = pipeline.load(sample)
    return pipeline.vision_encode(pipeline.preprocess(loaded, sample.query))


def sample_seed(seed: int, sample_id: str) -> int:
    return (zlib.crc32(str(sample_id).encode()) ^ int(seed)) & 0x7FFF_FFFF


@dataclass
class _Drafter:
    """The drafter's chain state: KV holds prompt + the first ``fed`` output tokens."""

    pipe: Any
    cache: Any
    logits: torch.Tensor  # (1, vocab): distribution for output position fed + 1
    prompt_tokens: int
    fed: int = 0

    def sync(self, committed: Sequence[int], valid: int) -> None:
        """Crop to the first ``valid`` committed tokens (<= fed) and feed the rest in one forward."""
        self.fed = min(self.fed, valid)
        self.pipe.crop(self.cache, self.prompt_tokens + self.fed)
        todo = list(committed[self.fed:])
        if todo:
            self.logits = self.pipe.verify(self.cache, todo)[:, -1]
            self.fed = len(committed)


@torch.inference_mode()
def record_sample(target, drafter, sample, gamma: int, n_blocks: int = 1, mode: str = "greedy",
                  temperature: float = 1.0, adapter: Adapter | None = None,
                  drafter_context: str = "own", seed: int = 0) -> list[dict[str, Any]]:
    """Acceptance rows (ACCEPTANCE columns minus ``run_id``) for one sample; see module docstring.

    ``adapter`` maps the drafter's logits (1, vocab) to the logits it drafts from (e.g. a
    token-alignment head); top-5 and ``p_draft`` use the adapted logits.
    """
    temp = check_args(mode, temperature, gamma, n_blocks, drafter_context)
    gen = torch.Generator(device=drafter.device).manual_seed(sample_seed(seed, sample.sample_id))

    t_emb = encode_prompt(target, sample)
    d_emb = t_emb.to(drafter.device) if drafter_context == "target" else encode_prompt(drafter, sample)
    t_cache, t_first = target.prefill(t_emb)
    t_prompt = int(t_emb.shape[1])
    dcache, dlogits = drafter.prefill(d_emb)
    dr = _Drafter(drafter, dcache, dlogits, int(d_emb.shape[1]))

    committed: list[int] = []
    rows: list[dict[str, Any]] = []
    for block in range(n_blocks):
        m = len(committed)
        drafts, p_draft, top5, q = [], [], [], []
        for i in range(gamma):
            logits = dr.logits.float() if adapter is None else adapter(dr.logits).float()
            probs = torch.softmax(logits[0] / temp, dim=-1)
            if mode == "greedy":
                tok = int(logits[0].argmax())
            else:
                tok = int(torch.multinomial(probs, 1, generator=gen))
                q.append(probs)  # the distribution the draft was sampled from
            drafts.append(tok)
            p_draft.append(float(probs[tok]))
            top5.append(set(logits[0].topk(5).indices.tolist()))
            if i < gamma - 1:  # the last draft is fed only if the chain continues
                dr.cache, dr.logits = drafter.decode_step(dr.cache, tok)
                dr.fed += 1
        if block == 0:  # position 1 comes from the prefill; verify feeds the drafts only
            t_logits = torch.cat([t_first[:, None], target.verify(t_cache, drafts)], dim=1)
        else:
            t_logits = target.verify(t_cache, [committed[-1]] + drafts)
        t_logits = t_logits[0].float()  # (gamma + 1, vocab): positions m+1 .. m+gamma+1
        p_t = torch.softmax((t_logits if mode == "sampled" else t_logits[:gamma]) / temp, dim=-1)
        p_target = p_t[:gamma].gather(1, torch.tensor(drafts, device=p_t.device)[:, None])[:, 0].tolist()
        if mode == "greedy":
            t_tok = t_logits.argmax(-1).tolist()
            matched = [d == t for d, t in zip(drafts, t_tok)]
        else:  # speculative sampling; t_tok[gamma] is the bonus token after gamma accepts
            p_s = p_t.to(q[0].device)  # the generator lives on the drafter's device
            steps = [speculative_step(p_s[i], q[i], drafts[i], gen) for i in range(gamma)]
            matched = [ok for ok, _ in steps]
            t_tok = [tok for _, tok in steps] + [int(torch.multinomial(p_s[gamma], 1, generator=gen))]
        n_acc = next((i for i, ok in enumerate(matched) if not ok), gamma)
        for i in range(gamma):
            rows.append({
                "sample_id": sample.sample_id, "verify_id": block, "position": i, "gamma": gamma,
                "draft_token": drafts[i], "target_token": t_tok[i],
                "p_draft": p_draft[i], "p_target": p_target[i], "matched": matched[i],
                "accept_prob": min(1.0, p_target[i] / p_draft[i]) if p_draft[i] > 0 else 0.0,
                "target_in_draft_top5": t_tok[i] in top5[i], "accepted_len": n_acc,
            })
        committed += drafts[:n_acc] + [t_tok[n_acc]]
        if block + 1 < n_blocks:  # keep the KV of committed tokens, drop the rejected drafts
            target.crop(t_cache, t_prompt + len(committed) - 1)
            dr.sync(committed, valid=m + n_acc)
    return rows


# --------------------------------------------------------------------------- output


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(name))


def part_path(folder: str | Path, table: str, run_id: str, key: str) -> Path:
    """``folder/table/part-<run_id>-<key>.parquet`` (names made filesystem-safe)."""
    return Path(folder) / table / f"part-{_safe(run_id)}-{_safe(key)}.parquet"


def run_parts(folder: str | Path, table: str, run_id: str) -> list[Path]:
    """Parts already written for ``run_id`` in ``folder/table``."""
    return sorted((Path(folder) / table).glob(f"part-{_safe(run_id)}-*.parquet"))


def write_part(df, folder: str | Path, table: str, run_id: str, key: str) -> Path:
    """Atomically write one part; validated against the schema if ``table`` is a schema table."""
    path = part_path(folder, table, run_id, key)
    if table in schema.TABLES:
        return schema.write_table(df, path, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def _as_pipeline(p, role: str, **build: Any):
    if isinstance(p, str):
        from measure.models import build_pipeline

        return build_pipeline(role, p, **build)
    return p


def record_acceptance(target, drafter, dataset, gamma: int = 8, n_blocks: int = 1, mode: str = "greedy",
                      temperature: float = 1.0, sigma: float | None = None, out_dir: str | Path = "out/acceptance",
                      run_id: str = "acceptance", resume: bool = False, *, adapter: Adapter | None = None,
                      adapter_name: str = "adapter", drafter_context: str = "own", n_samples: int | None = None,
                      seed: int = 0, device: str = "cuda:0", dtype: str = "fp16", frames: int = 8,
                      progress: bool = False) -> Path:
    """Record acceptance traces of ``dataset`` into the trace set ``out_dir``; return ``out_dir``.

    ``target``/``drafter``: :class:`~measure.models.Pipeline` or a source string (built on
    ``device`` in ``dtype``). ``sigma`` not None: the drafter's LM becomes the perturbed copy
    of the target's (:func:`measure.perturb.perturb_from`, seed ``seed``). ``adapter``: the
    blocks are recorded twice, as run ``run_id`` (``adapter="none"``) and
    ``run_id+adapter_name``. One part per sample and run; ``resume`` skips written parts.
    """
    from measure import dataset as ds
    from measure import provenance
    from measure.perturb import perturb_from

    check_args(mode, temperature, gamma, n_blocks, drafter_context)  # before loading any model
    target = _as_pipeline(target, "target", device=device, dtype=dtype, frames=frames)
    drafter = _as_pipeline(drafter, "drafter", device=device, dtype=dtype)
    vocab = check_vocab(target, drafter)
    samples = list(dataset) if not isinstance(dataset, (str, Path)) else ds.load_dataset(dataset, n_samples)
    variants = [("none", None, run_id)] + ([(adapter_name, adapter, f"{run_id}+{adapter_name}")] if adapter else [])
    for _, _, rid in variants:
        if not resume and run_parts(out_dir, schema.ACCEPTANCE_FILE, rid):
            raise FileExistsError(f"{out_dir}: run {rid!r} already has acceptance parts; "
                                  "pass resume=True or choose another run_id")
    perturb = perturb_from(drafter, target, sigma, seed) if sigma is not None else {"sigma": float("nan")}
    meta = provenance.run_metadata(
        model_info={"target": target.info, "drafter": drafter.info}, devices=[target.device, drafter.device],
        dtype=target.info.get("dtype", dtype), quant=target.info.get("quantization"),
        timing={"acceptance": "not timed"}, kind="acceptance", gamma=gamma, n_blocks=n_blocks, mode=mode,
        temperature=float(temperature) if mode == "sampled" else None, drafter_context=drafter_context,
        acceptance_rule=acceptance_rule(mode, temperature),
        vocab=vocab, seed=seed, **perturb)
    schema.write_metadata(out_dir, {rid: {**meta, "adapter": name} for name, _, rid in variants})
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, desc=run_id, unit="sample")
    for s in iterator:
        for name, fn, rid in variants:
            if resume and part_path(out_dir, schema.ACCEPTANCE_FILE, rid, s.sample_id).exists():
                continue
            rows = record_sample(target, drafter, s, gamma, n_blocks, mode, temperature, fn, drafter_context, seed)
            df = pd.DataFrame(rows).assign(run_id=rid, adapter=name, sigma=perturb["sigma"])
            write_part(df, out_dir, schema.ACCEPTANCE_FILE, rid, s.sample_id)
    return Path(out_dir)
