"""Speculative decoding: a cheap proposer guesses the next few tokens, the model checks them all in
one batched evaluation (the prefill path, every position's logits), keeps the longest agreeing
prefix plus one token of its own, and the KV cache is truncated past what was kept.

Proposers: prompt lookup (`speculative="ngram"`: the continuation of the latest earlier
occurrence of the last 3/2/1 tokens in the prompt and output so far; no second model) and a draft
model (`draft_model=`: a smaller or lower-precision model with the same vocabulary, checked at
load, run greedily or with the same sampler settings).

Output is unchanged: greedy verification picks, at each position, exactly the token plain
decoding would pick (same sampler, same penalties, same constraint mask), so the tokens are
identical; with sampling, each proposed token d is accepted with probability min(1, p(d)/q(d))
and on rejection one token is drawn from the residual max(0, p - q) renormalized (Leviathan et
al. 2023, Chen et al. 2023), which leaves the target distribution p exactly unchanged; for n-gram
proposals q is a point mass on d. Not here: the sampler (csrc/sampling), the plain loop
(pyllm/model.py), constraints (pyllm/generate/constrain.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pyllm import _validate
from pyllm.generate.engine import Slot, make_sampler
from pyllm.errors import DraftModelError

MODES = ("ngram", "draft")


@dataclass
class SpecStats:
    """Counts over every generation that used this speculator (pyllm bench reports them)."""
    steps: int = 0        # batched verifications
    proposed: int = 0     # tokens proposed
    accepted: int = 0     # of which accepted

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None


class NgramProposer:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the longest
    matching suffix n-gram (n_max down to n_min) of the history. Indexes the history
    incrementally, so a step costs O(n_max) dictionary lookups."""

    def __init__(self, n_max: int = 3, n_min: int = 1):
        self.n_max, self.n_min = n_max, n_min
        self._index: dict[int, dict[tuple, int]] = {n: {} for n in range(n_min, n_max + 1)}
        self._indexed = 0

    def reset(self) -> None:
        for d in self._index.values():
            d.clear()
        self._indexed = 0

    def propose(self, history: list[int], k: int) -> list[int]:
        L = len(history)
        # End positions e (the n-gram is history[e-n:e], its continuation starts at history[e]),
        # for every e < L: the suffix itself (e = L) is looked up, never indexed, before it grows.
        for e in range(self._indexed, L):
            for n, index in self._index.items():
                if e >= n:
                    index[tuple(history[e - n:e])] = e
        self._indexed = L
        for n in range(self.n_max, self.n_min - 1, -1):
            if L < n:
                continue
            e = self._index[n].get(tuple(history[L - n:]))
            if e is not None:
                return history[e:e + k]
        return []


class DraftLength:
    """How many tokens to propose next, from how the last proposal fared: all accepted doubles
    it (up to n_draft), none accepted drops it to 2, a partial run of a to a + 1.

    Why: a verification of n tokens costs more than one decode step (about 1.1x-1.3x per extra
    token on 2 cores for the F16 and Q4_1 SmolLM2, see the README), and a proposer's misses
    cluster: prompt lookup either quotes a run the model follows to its end or misses from the
    first token where the output departs from the source; a draft model loses its way on the
    uncertain stretches. Proposing long runs only while they land keeps the wasted rows few
    (replaying the summarize prompt's greedy output: fixed 8 pays 50% of the rows for nothing,
    this policy about a third; 1.45x -> 1.66x modelled speedup at 0.3 steps per extra row)."""

    def __init__(self, n_draft: int, adaptive: bool = True):
        self.n_max = n_draft
        self.adaptive = adaptive
        self.current = n_draft

    def update(self, proposed: int, accepted: int) -> None:
        if not self.adaptive or proposed <= 0:
            return
        if accepted >= proposed:
            self.current = min(self.n_max, 2 * self.current)
        elif accepted == 0:
            self.current = min(self.n_max, 2)
        else:
            self.current = min(self.n_max, accepted + 1)


class Speculator:
    """What a generation needs to speculate: the mode, the draft length (the most tokens
    proposed at once; with `adaptive`, DraftLength picks fewer after misses), the draft model."""

    def __init__(self, mode: str, n_draft: int, draft=None, n_max: int = 3, adaptive: bool = True):
        self.mode = mode
        self.n_draft = n_draft
        self.draft = draft           # a pyllm Model (draft mode)
        self.n_max = n_max
        self.adaptive = adaptive
        self.stats = SpecStats()


def make_speculator(model, speculative=None, draft_model=None, n_draft: int | None = None) -> Speculator:
    """Checks the arguments and loads the draft model (vocabulary checked against the target's)."""
    if isinstance(speculative, Speculator):
        return speculative
    if draft_model is not None:
        if speculative not in (None, "draft"):
            raise DraftModelError(f"speculative={speculative!r} with a draft_model: use speculative='draft' or omit it")
        mode = "draft"
    else:
        mode = speculative
    if mode not in MODES:
        raise DraftModelError(f"unknown speculative mode {speculative!r}: use 'ngram', or give draft_model=")
    if mode == "draft" and draft_model is None:
        raise DraftModelError("speculative='draft' needs draft_model=PATH_OR_NAME")
    if n_draft is None:
        n_draft = 8   # the most; DraftLength proposes fewer while proposals miss
    if isinstance(n_draft, bool) or not isinstance(n_draft, int) or n_draft < 1:
        raise ValueError(f"n_draft must be a positive integer, got {n_draft!r}")
    draft = None
    if mode == "draft":
        from pyllm.model import Model
        draft = draft_model if isinstance(draft_model, Model) else \
            Model(draft_model, n_ctx=model.n_ctx, n_threads=model.n_threads)
        check_vocab(model, draft)
    return Speculator(mode, n_draft, draft)


def check_vocab(target, draft) -> None:
    """The draft must speak the target's vocabulary: same size, same token texts, same
    end-of-generation ids (else its guesses are other tokens)."""
    a, b = target.tokenizer, draft.tokenizer
    if a.n_vocab != b.n_vocab:
        raise DraftModelError(f"the draft model's vocabulary has {b.n_vocab} tokens, the target's {a.n_vocab}: "
                              f"a draft model must share the target's tokenizer")
    if a.tokens != b.tokens:
        i = next(i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y)
        raise DraftModelError(f"the draft model's token {i} is {b.tokens[i]!r}, the target's {a.tokens[i]!r}: "
                              f"a draft model must share the target's tokenizer")
    if a.eog_ids != b.eog_ids:
        raise DraftModelError("the draft model's end-of-generation tokens differ from the target's")


class _DraftRunner:
    """The draft model's side: keeps a KV cache of its own (a private Context on the draft's
    weights, so a draft Model shared by several generations is never raced) on the shared
    history and proposes k tokens, with their draft probabilities q (1.0 each when greedy)."""

    def __init__(self, draft, sampling, seed: int):
        self.model = draft
        self.greedy = sampling.temperature <= 0
        self.sampler = make_sampler(draft.n_vocab, sampling, (seed ^ 0x5DEECE66D) & (2**64 - 1))
        self.rng = np.random.default_rng(seed ^ 0x9E3779B9)
        self.slot = Slot(-1, draft.engine.new_context())

    def prefill(self, ids: list[int]) -> None:
        """Evaluates the prompt in the draft's cache now, with the target's prompt: it is prompt
        work, and left to the first proposal it would be counted (and felt) as decode time."""
        self.model.check_file()
        pending = ids[self.slot.reuse(ids):]
        self.slot.ctx.eval(np.asarray(pending, np.int32), False)
        self.slot.cached.extend(pending)

    def propose(self, history: list[int], k: int):
        self.model.check_file()
        slot = self.slot
        ctx = slot.ctx
        pending = history[slot.reuse(history):]
        logits = ctx.eval(np.asarray(pending, np.int32), False)
        slot.cached.extend(pending)
        if self.greedy:
            first = int(np.argmax(logits))
            if k == 1:
                return [first], None
            rest = ctx.decode_steps(first, k - 1)   # feeds first, then each argmax, in C++
            slot.cached.extend([first] + list(rest[:-1]))
            return [first] + list(rest), None
        tokens, dists = [], []
        for i in range(k):
            ids, probs = self.sampler.distribution(logits)
            p = probs.astype(np.float64)
            t = int(ids[self.rng.choice(len(ids), p=p / p.sum())])
            tokens.append(t)
            dists.append((ids, probs))
            if i + 1 < k:
                logits = ctx.eval(np.asarray([t], np.int32), False)
                slot.cached.append(t)
        return tokens, dists


def make_task(model, sampling, constraint, spec: Speculator):
    """A speculative generation as an engine task: task(slot, request) is a generator run on
    the engine's scheduler thread that yields generated ids and sets request.info's
    finish_reason (the contract of Model.generate_tokens). The settings are checked now."""
    seed = _validate.seed(sampling.seed)
    sampler = make_sampler(model.n_vocab, sampling, seed)
    eog = model.eog_ids()   # values, not the Model: the engine never keeps a Model alive

    def task(slot, request):
        return _speculate(eog, slot, request, sampling, sampler, seed, constraint, spec)

    return task


def _speculate(eog: set, slot, request, sampling, sampler, seed: int, constraint, spec: Speculator) -> Iterator[int]:
    info = request.info
    ids = request.ids
    limit = request.limit
    greedy = sampling.temperature <= 0
    rng = np.random.default_rng(seed ^ 0x2545F491)
    proposer = NgramProposer(spec.n_max) if spec.mode == "ngram" else None
    drafter = _DraftRunner(spec.draft, sampling, seed) if spec.mode == "draft" else None
    stats = spec.stats
    length = DraftLength(spec.n_draft, spec.adaptive)
    history = list(ids)
    ctx = slot.ctx
    reused = slot.reuse(ids)
    pending = ids[reused:]
    info.n_reused_tokens = reused
    for token in ids[:reused]:
        sampler.accept(token)
    produced = 0
    # The prompt: one plain step (its logits for every position are never needed).
    if limit <= 0:
        info.finish_reason = "length"
        return
    if drafter is not None:
        drafter.prefill(ids)
    allowed = constraint.mask() if constraint is not None else None
    token = ctx.eval_sample(np.asarray(pending, np.int32), sampler, allowed)
    slot.cached.extend(pending)
    while True:
        # `token` was sampled and is not in the cache yet.
        if token in eog:
            info.finish_reason = "stop"
            return
        produced += 1
        if constraint is not None:
            constraint.advance(token)
        history.append(token)
        yield token
        if constraint is not None and constraint.done:
            info.finish_reason = "stop"
            return
        if produced >= limit or ctx.n_past + 1 > slot.ctx.n_ctx:
            info.finish_reason = "length"
            return
        # Room for k proposals plus the model's own token, in the budget and in the cache.
        k = min(length.current, limit - produced - 1, slot.ctx.n_ctx - ctx.n_past - 1)
        draft, dists = [], None
        if k > 0:
            if proposer is not None:
                draft = proposer.propose(history, k)
            else:
                draft, dists = drafter.propose(history, k)
        if not draft:
            allowed = constraint.mask() if constraint is not None else None
            nxt = ctx.eval_sample(np.asarray([token], np.int32), sampler, allowed)
            slot.cached.append(token)
            token = nxt
            continue
        batch = [token] + [int(t) for t in draft]
        logits = ctx.eval(np.asarray(batch, np.int32), True)   # one batched pass, every row
        slot.cached.extend(batch)
        sampler.accept(token)
        stats.steps += 1
        stats.proposed += len(draft)
        n_ok = 0
        nxt = None
        for i, d in enumerate(draft):
            allowed = constraint.mask() if constraint is not None else None
            if greedy:
                t = int(sampler.sample(logits[i], allowed))
                if t != d:
                    nxt = t
                    break
            else:
                pid, pp = sampler.distribution(logits[i], allowed)
                p = dict(zip(pid.tolist(), pp.astype(np.float64).tolist()))
                if dists is None:
                    q = {d: 1.0}   # prompt lookup: a point mass on d
                else:
                    qid, qp = dists[i]
                    q = dict(zip(qid.tolist(), qp.astype(np.float64).tolist()))
                pd, qd = p.get(d, 0.0), q.get(d, 0.0)
                if not (qd > 0 and rng.random() < min(1.0, pd / qd)):
                    nxt = _residual_draw(p, q, rng)
                    break
            n_ok += 1
            if d in eog:
                break   # accepted an end-of-generation token: handled below as `token`
            if constraint is not None:
                constraint.advance(d)
            sampler.accept(d)
            produced += 1
            history.append(d)
            yield d
            if constraint is not None and constraint.done:
                info.finish_reason = "stop"
                _truncate(slot, len(draft) - n_ok)
                return
        stats.accepted += n_ok
        length.update(len(draft), n_ok)
        if nxt is None and n_ok and draft[n_ok - 1] in eog:
            _truncate(slot, len(draft) - n_ok + 1)
            info.finish_reason = "stop"
            return
        if nxt is None:
            # Every proposal agreed: the last row gives one more token for free.
            allowed = constraint.mask() if constraint is not None else None
            nxt = int(sampler.sample(logits[len(draft)], allowed))
        # The cache holds token + every proposal; keep token + the accepted ones. `nxt` (the
        # model's own token after them) is not evaluated yet: it starts the next batch.
        _truncate(slot, len(draft) - n_ok)
        token = int(nxt)


def _truncate(slot, n_drop: int) -> None:
    if n_drop > 0:
        slot.truncate(slot.ctx.n_past - n_drop)


def _residual_draw(p: dict, q: dict, rng) -> int:
    """One draw from max(0, p - q) renormalized (p when that is all zero)."""
    ids = list(p)
    w = np.array([max(0.0, p[t] - q.get(t, 0.0)) for t in ids])
    total = w.sum()
    if total <= 0:
        w = np.array([p[t] for t in ids])
        total = w.sum()
    return int(ids[rng.choice(len(ids), p=w / total)])
