"""Acceptance traces: how many drafts the target accepts, from real forward passes.

Per sample (block ``verify_id = 0`` is the parallel-prefill window)::

    target:  stages 1-4 on its prompt (video + query)        -> logits for position 1
    drafter: stages 1-4 on its prompt (1 event frame + query) -> d1; gamma-1 decode steps -> d2..d_gamma
    target:  ONE forward over [d1..d_gamma]                  -> target tokens for positions 2..gamma+1
    accepted_len L = leading run of d_i == argmax_target_i;  commit d1..dL + target token L+1

Later blocks (``verify_id >= 1``) continue after the committed prefix: both KV caches are
cropped to the committed tokens, the drafter catches up on the tokens it has not fed (one
forward), drafts gamma tokens, and the target verifies ``[last committed] + drafts`` in one
forward (``gamma + 1`` tokens). Continuation always follows the target's greedy tokens.

Probabilities: ``p_draft``/``p_target`` are softmax probabilities of the draft token at
temperature 1 in ``greedy`` mode and at ``temperature`` in ``sampled`` mode (drafts are then
sampled from the drafter, seeded per sample); ``accept_prob = min(1, p_target / p_draft)``.
``matched`` is always the greedy match (draft == target argmax), as the schema defines.

``drafter_context="target"`` feeds the drafter's LM the *target's* prompt embeddings instead
of its own prompt: with a perturbed-copy drafter (:mod:`measure.perturb`) this is what makes
sigma span the acceptance range (see the module docstring there).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from egpt_sim import schema

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
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if drafter_context not in CONTEXTS:
        raise ValueError(f"drafter_context must be one of {CONTEXTS}, got {drafter_context!r}")
    if gamma < 1 or n_blocks < 1:
        raise ValueError(f"gamma and n_blocks must be >= 1 (got {gamma}, {n_blocks})")
    temp = float(temperature) if mode == "sampled" else 1.0
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
        drafts, p_draft, top5 = [], [], []
        for i in range(gamma):
            logits = dr.logits.float() if adapter is None else adapter(dr.logits).float()
            probs = torch.softmax(logits[0] / temp, dim=-1)
            if mode == "greedy":
                tok = int(logits[0].argmax())
            else:
                tok = int(torch.multinomial(probs, 1, generator=gen))
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
        t_tok = t_logits.argmax(-1).tolist()
        p_t = torch.softmax(t_logits[:gamma] / temp, dim=-1)
        p_target = p_t.gather(1, torch.tensor(drafts, device=p_t.device)[:, None])[:, 0].tolist()
        n_acc = leading_matches(drafts, t_tok)
        for i in range(gamma):
            rows.append({
                "sample_id": sample.sample_id, "verify_id": block, "position": i, "gamma": gamma,
                "draft_token": drafts[i], "target_token": t_tok[i],
                "p_draft": p_draft[i], "p_target": p_target[i], "matched": drafts[i] == t_tok[i],
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
        temperature=temperature if mode == "sampled" else None, drafter_context=drafter_context,
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
