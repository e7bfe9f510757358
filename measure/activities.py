"""What each timed activity contains — one definition for stage runs and the executor.

A span named after an activity (see :mod:`measure.timing` for *how* it is timed) wraps exactly
one call of the function below, in stage runs (:mod:`measure.stages`) and in the executor
(:mod:`measure.executor`) alike, so a ``verify`` row and an executor ``verify`` activity are the
same work:

==============  ==============================================================================
span            contents
==============  ==============================================================================
prefill         LM over the prompt embeddings, last-position logits, pick of token 1, host read
decode_step     one-token forward + lm_head, pick (argmax), host read of the token
verify          forward over ``[last] + drafts`` (k + 1 tokens), argmax of every position, host
                read (``tolist``), accepted prefix, KV rollback to ``kv_before + 1 + accepted``
draft_step      the drafter's forward over the tokens it has not fed (1, or more after a
                re-sync), pick of the next draft, host read
==============  ==============================================================================

``pick(logits, position) -> int`` chooses a token from ``(1, vocab)`` logits (argmax, or an
acceptance replay's forced choice) and always ends with a host read.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Pick = Callable[[torch.Tensor, int], int]


def argmax_pick(logits: torch.Tensor, position: int) -> int:
    """Greedy choice; ``int`` is the host read."""
    return int(logits.argmax())


def leading_matches(drafts: Sequence[int], targets: Sequence[int]) -> int:
    """Accepted prefix length: drafts equal to the target's tokens up to the first mismatch."""
    n = 0
    for d, t in zip(drafts, targets):
        if d != t:
            break
        n += 1
    return n


def prefill_first_token(pipe: Any, embeds: torch.Tensor, pick: Pick = argmax_pick,
                        stash: dict | None = None) -> tuple[Any, int]:
    """``prefill`` span: -> (cache, token for position 1). ``stash["logits"]`` keeps a reference
    to the logits (no copy, no work) for a caller that inspects them after the span."""
    cache, logits = pipe.prefill(embeds)
    if stash is not None:
        stash["logits"] = logits
    return cache, pick(logits, 1)


def decode_token(pipe: Any, cache: Any, token: int, position: int, pick: Pick = argmax_pick,
                 stash: dict | None = None) -> tuple[Any, int]:
    """``decode_step`` span: feed ``token`` -> (cache, token for ``position``)."""
    cache, logits = pipe.decode_step(cache, token)
    if stash is not None:
        stash["logits"] = logits
    return cache, pick(logits, position)


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per position (device tensor, no host read): how close the
    target's greedy choice was to a tie. ``logits``: (vocab,) or (positions, vocab)."""
    top = logits.float().reshape(-1, logits.shape[-1]).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def verify_pass(pipe: Any, cache: Any, last: int, drafts: Sequence[int], kv_before: int,
                stash: dict | None = None) -> tuple[int, list[int]]:
    """``verify`` span: one forward over ``[last] + drafts`` on a cache of ``kv_before`` tokens.

    Returns (accepted prefix length n, the target's k + 1 argmax tokens); the cache keeps
    ``kv_before + 1 + n`` tokens (``last`` and the accepted drafts); the committed tokens are
    ``drafts[:n] + [tokens[n]]``.
    """
    logits = pipe.verify(cache, [int(last)] + [int(d) for d in drafts])[0]
    if stash is not None:
        stash["logits"] = logits
    tokens = logits.argmax(-1).reshape(-1).tolist()
    n = leading_matches(drafts, tokens)
    pipe.crop(cache, kv_before + 1 + n)
    return n, tokens


def draft_token(pipe: Any, cache: Any, todo: Sequence[int], position: int, pick: Pick = argmax_pick) -> tuple[Any, int]:
    """``draft_step`` span: feed the ``todo`` tokens (one forward) -> (cache, draft for ``position``)."""
    if len(todo) == 1:
        return decode_token(pipe, cache, todo[0], position, pick)
    logits = pipe.verify(cache, list(todo))[:, -1]  # catch up on committed tokens in one forward
    return cache, pick(logits, position)
