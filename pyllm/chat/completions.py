"""OpenAI-shaped completions on a Model: `create_chat_completion`, `create_completion` and the
simple `chat`, as dicts (or iterators of chunk dicts) that code written for OpenAI's API reads.

Each chat call renders the whole conversation with the chat template and lets the model's
prefix-reusing KV cache skip what it has already evaluated, so a multi-turn conversation only
evaluates each turn's new tokens. Not here: the REPL (pyllm/chat.py), the template sandbox
(pyllm/chat_template.py).
"""
from __future__ import annotations

import secrets
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import regex

from pyllm.chat import template as templates
from pyllm.generate.engine import DEFAULT_SAMPLING as _D
from pyllm.generate.engine import Completion, SamplingParams
from pyllm.generate.stop import StopMatcher

if TYPE_CHECKING:   # model.py imports this module; this one never imports model.py
    from pyllm.model import Model

# ---------------------------------------------------------------------------------------------
# Messages and prompts
# ---------------------------------------------------------------------------------------------


def normalize_messages(messages) -> list[dict]:
    """Checks OpenAI-style messages and returns copies whose content is a plain string (text
    content parts are joined; None becomes "")."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                        f"got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] needs a 'role' string (system, user, assistant...), got {role!r}")
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{i}].content[{j}]: only text parts "
                                     f"({{'type': 'text', 'text': ...}}) are supported")
                parts.append(part["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise TypeError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        m = dict(message)
        m["content"] = content
        out.append(m)
    return out


_default_templates: "weakref.WeakKeyDictionary[Model, templates.ChatTemplate]" = weakref.WeakKeyDictionary()


def chat_template_for(model: Model, override=None) -> templates.ChatTemplate:
    """The model's chat template (compiled once per model), or `override` (a built-in name, a
    file, or template source)."""
    tok = model.tokenizer
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
    if override is not None:
        if isinstance(override, templates.ChatTemplate):
            return override
        return templates.load(model.metadata, override, bos, eos)
    template = _default_templates.get(model)
    if template is None:
        template = templates.load(model.metadata, None, bos, eos)
        _default_templates[model] = template
    return template


def _shield_control_text(messages: list[dict], control_texts: list[str]) -> tuple[list[dict], dict[str, str]]:
    """Copies of `messages` whose content has each control-token text (e.g. "<|im_end|>")
    replaced by a marker of private-use characters, and the marker -> text map. Message
    content is text: after rendering, only the template's own markup may become control
    tokens, so a user cannot close their turn and write a system turn. The markers come from a
    per-render random nonce and contain no special-token text; templates that strip, split or
    slice content still see the same characters everywhere else."""
    literals: dict[str, str] = {}
    if not control_texts:
        return messages, literals
    pattern = regex.compile("|".join(regex.escape(t) for t in sorted(control_texts, key=len, reverse=True)))
    nonce = "".join(chr(0xF0000 + secrets.randbelow(0xFFFD)) for _ in range(4))
    by_text: dict[str, str] = {}

    def marker(match) -> str:
        text = match.group(0)
        if text not in by_text:
            by_text[text] = f"\U000FFFFD{nonce}{chr(0xF0000 + len(by_text))}\U000FFFFD"
            literals[by_text[text]] = text
        return by_text[text]

    shielded = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) and pattern.search(content):
            m = dict(m, content=pattern.sub(marker, content))
        shielded.append(m)
    return shielded, literals


def chat_prompt_ids(model: Model, messages: list[dict], template: templates.ChatTemplate,
                    add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered conversation. Special-token text written by the template
    becomes token ids; the same text inside a message's content stays text. BOS is added when
    the model asks for it and the template did not write it already."""
    tok = model.tokenizer
    shielded, literals = _shield_control_text(messages, tok.control_texts())
    text = template.render(shielded, add_generation_prompt=add_generation_prompt)
    ids = tok.tokenize(text, add_special=False, parse_special=True, literals=literals)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


# ---------------------------------------------------------------------------------------------
# Generation with timings
# ---------------------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    """Counts and timings of one generation (the REPL's /stats)."""
    n_prompt: int = 0            # prompt tokens
    n_reused: int = 0            # of which already in the KV cache
    n_generated: int = 0         # tokens sampled (end-of-turn token excluded)
    prompt_seconds: float = 0.0  # from the start to the first sampled token
    generation_seconds: float = 0.0  # from the first sampled token to the last

    @property
    def n_evaluated(self) -> int:
        return self.n_prompt - self.n_reused

    @property
    def prompt_tokens_per_second(self) -> float | None:
        return self.n_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else None

    @property
    def generation_tokens_per_second(self) -> float | None:
        # Every token after the first took exactly one decode step.
        if self.n_generated < 2 or self.generation_seconds <= 0:
            return None
        return (self.n_generated - 1) / self.generation_seconds


def _timed(tokens: Iterator[int], info: Completion, stats: GenerationStats) -> Iterator[int]:
    start = time.perf_counter()
    first = None
    try:
        for token in tokens:
            now = time.perf_counter()
            if first is None:
                first = now
                stats.prompt_seconds = now - start
            stats.n_generated += 1
            stats.generation_seconds = now - first
            yield token
    finally:
        tokens.close()
        if first is None:
            stats.prompt_seconds = time.perf_counter() - start
        if info.n_prompt_tokens:   # zero if generation never started
            stats.n_prompt = info.n_prompt_tokens
            stats.n_reused = info.n_reused_tokens


def stream_text(model: Model, ids: list[int], max_tokens: int | None, params: SamplingParams,
                stop, info: Completion, stats: GenerationStats | None = None, hooks=(None, None),
                logprobs: int | None = None) -> Iterator[str]:
    """Text pieces generated after `ids`, stopped at the model's end-of-generation tokens and at
    `stop` strings (never shown). Checks the prompt now, not at the first next(): the request is
    submitted to the model's engine before this returns, and the engine refuses an empty prompt
    (ValueError) or one over the context (ContextOverflowError) there."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < -1):
        raise ValueError(f"max_tokens must be a non-negative integer, -1 (until the end of the turn or "
                         f"context) or None, got {max_tokens!r}")
    stops = stop_strings(stop)
    stats = stats if stats is not None else GenerationStats()
    stats.n_prompt = len(ids)
    constraint, speculative = hooks   # from model.generation_hooks (compiled before any compute)
    tokens = model.generate_tokens(ids, max_tokens, params, info, constraint, speculative, logprobs)
    return text_pieces(model.tokenizer, _timed(tokens, info, stats), stops, info)


class TextAssembler:
    """Token ids in, text out: never a split UTF-8 character, never any part of a stop string.
    feed(token) returns the text that may be shown now ("" while held back); after a stop
    string, `stopped` is True and info.finish_reason "stop". finish() returns what is left.
    Fills info.token_ids and info.text. Shared by the streaming API and the HTTP server."""

    def __init__(self, tokenizer, stop: Sequence[str], info: Completion):
        self._decoder = tokenizer.stream_decoder()
        self._matcher = StopMatcher(stop or [])
        self._info = info
        info.token_ids = []
        info.text = ""

    @property
    def stopped(self) -> bool:
        return self._matcher.stopped

    def feed(self, token: int) -> str:
        self._info.token_ids.append(token)
        piece = self._matcher.feed(self._decoder.feed(token))
        if self._matcher.stopped:
            self._info.finish_reason = "stop"
        return self._keep(piece)

    def finish(self) -> str:
        if self._matcher.stopped:
            return ""
        return self._keep(self._matcher.feed(self._decoder.flush()) + self._matcher.flush())

    def _keep(self, piece: str) -> str:
        self._info.text += piece
        return piece


def text_pieces(tokenizer, tokens: Iterator[int], stop: Sequence[str], info: Completion) -> Iterator[str]:
    """Text of a token stream, piece by piece (TextAssembler), stopped at a stop string
    (finish_reason "stop"). Closing this generator closes `tokens` (which cancels its request)."""
    text = TextAssembler(tokenizer, stop, info)
    try:
        for token in tokens:
            piece = text.feed(token)
            if piece:
                yield piece
            if text.stopped:
                break
        piece = text.finish()
        if piece:
            yield piece
    finally:
        tokens.close()


def stop_strings(stop, extra: Sequence[str] = ()) -> list[str]:
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    else:
        stops = list(stop)
        for s in stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
    return stops + [s for s in extra if s not in stops]


# ---------------------------------------------------------------------------------------------
# The OpenAI-shaped API
# ---------------------------------------------------------------------------------------------


def usage_dict(info: Completion) -> dict:
    completion = len(info.token_ids or [])
    return {"prompt_tokens": info.n_prompt_tokens, "completion_tokens": completion,
            "total_tokens": info.n_prompt_tokens + completion}


def _token_str(llm: Model, token: int) -> tuple[str, list[int]]:
    b = llm.tokenizer.token_bytes(token)
    return b.decode("utf-8", errors="replace"), list(b)


def chat_logprobs(llm: Model, info: Completion, start: int, end: int) -> dict:
    """OpenAI chat logprobs ({"content": [{token, logprob, bytes, top_logprobs}]}) of the
    generated tokens start..end."""
    content = []
    ids, lps = info.token_ids or [], info.logprobs or []
    for token, (lp, top) in zip(ids[start:end], lps[start:end]):
        text, raw = _token_str(llm, token)
        alts = []
        for t, l in top:
            ttext, traw = _token_str(llm, t)
            alts.append({"token": ttext, "logprob": l, "bytes": traw})
        content.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alts})
    return {"content": content, "refusal": None}


def text_logprobs(llm: Model, info: Completion, start: int, end: int, offset: int,
                   prompt: list | None = None) -> dict:
    """Legacy completion logprobs ({tokens, token_logprobs, top_logprobs, text_offset}) of the
    generated tokens start..end, after `prompt` entries ((token, logprob or None, top)) if given;
    text_offset counts characters from `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    entries = list(prompt or [])
    ids, lps = info.token_ids or [], info.logprobs or []
    entries += [(t, lp, top) for t, (lp, top) in zip(ids[start:end], lps[start:end])]
    for token, lp, top in entries:
        text, _ = _token_str(llm, token)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({_token_str(llm, t)[0]: l for t, l in top} if top is not None else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def prompt_logprobs(llm: Model, ids: list[int], k: int) -> list:
    """(token, logprob, top) of each prompt token under the model (the first has none): echo."""
    logits = llm.logits(ids)
    out = [(ids[0], None, None)]
    for i in range(1, len(ids)):
        row = logits[i - 1].astype(np.float64)
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        top = np.argsort(-row, kind="stable")[:k]
        out.append((ids[i], float(row[ids[i]] - lse), [(int(t), float(row[t] - lse)) for t in top]))
    return out


def _check_logprobs(value, name: str, lo: int = 0, hi: int = 20) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def create_chat_completion(llm: Model, messages, *, stream: bool = False, max_tokens: int | None = None,
                           temperature: float = _D.temperature, top_p: float = _D.top_p, top_k: int = _D.top_k,
                           min_p: float = _D.min_p, repeat_penalty: float = _D.repeat_penalty,
                           presence_penalty: float = _D.presence_penalty,
                           frequency_penalty: float = _D.frequency_penalty, stop=None, seed: int | None = None,
                           chat_template=None, stats: GenerationStats | None = None,
                           response_format=None, grammar=None, speculative=None, draft_model=None,
                           n_draft: int | None = None, logprobs: bool = False, top_logprobs: int | None = None,
                           model: str | None = None, **ignored):
    """OpenAI's chat.completion (or, with stream=True, an iterator of chat.completion.chunk dicts:
    the first delta carries the role, then one delta per text piece, the last one carries the
    finish_reason and the usage).

    response_format / grammar constrain the output (see Model.generate; finish_reason "length"
    means max_tokens ended it before the JSON was complete); speculative / draft_model / n_draft
    speed up decoding without changing it. logprobs=True (with top_logprobs=k alternatives,
    0..20) adds OpenAI's logprobs to each choice / chunk. `model` (every OpenAI request names
    one) is accepted and ignored, as llama-cpp-python does; so are OpenAI keywords pyllm has no
    use for (`user`, `n=1`, `stream_options`, ...) passed by name in **ignored."""
    _check_ignored(ignored)
    top_logprobs = _check_logprobs(top_logprobs, "top_logprobs")
    k = (top_logprobs or 0) if logprobs else None
    hooks = llm.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
    msgs = normalize_messages(messages)
    template = chat_template_for(llm, chat_template)
    ids = chat_prompt_ids(llm, msgs, template)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, seed=seed)
    info = Completion()
    pieces = stream_text(llm, ids, max_tokens, params, stop_strings(stop, template.stop), info, stats, hooks, k)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": llm.name}
    if stream:
        return _chat_chunks(llm, pieces, info, head, k is not None)
    text = "".join(pieces)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": info.finish_reason,
                         "logprobs": chat_logprobs(llm, info, 0, len(info.token_ids or [])) if k is not None else None}],
            "usage": usage_dict(info)}


# OpenAI request fields that need no action here (or only one value pyllm supports).
_IGNORED_KEYWORDS = {"user", "n", "stream_options", "parallel_tool_calls", "store", "metadata", "service_tier",
                     "logit_bias", "functions", "function_call", "tools", "tool_choice", "typical_p", "tfs_z",
                     "mirostat_mode", "mirostat_tau", "mirostat_eta", "suffix", "best_of"}


def _check_ignored(ignored: dict) -> None:
    unknown = sorted(set(ignored) - _IGNORED_KEYWORDS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    n = ignored.get("n")
    if n not in (None, 1):
        raise ValueError(f"n={n!r}: pyllm generates one choice per request (n=1)")
    if ignored.get("best_of") not in (None, 1):
        raise ValueError("best_of: pyllm generates one choice per request (best_of=1)")
    if ignored.get("tools") or ignored.get("functions"):
        raise ValueError("tools / functions are not supported yet (use response_format with a JSON schema)")


def _chat_chunks(llm: Model, pieces: Iterator[str], info: Completion, head: dict, with_logprobs: bool) -> Iterator[dict]:
    sent = 0   # tokens whose logprobs went out

    def chunk(delta: dict, finish_reason=None) -> dict:
        nonlocal sent
        lp = None
        if with_logprobs:
            n = len(info.token_ids or [])
            lp = chat_logprobs(llm, info, sent, n)
            sent = n
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": lp}]}

    try:
        yield {**head, "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None,
                            "logprobs": None}]}
        for piece in pieces:
            yield chunk({"content": piece})
        last = chunk({}, info.finish_reason)
        last["usage"] = usage_dict(info)
        yield last
    finally:
        pieces.close()


def create_completion(llm: Model, prompt, *, stream: bool = False, max_tokens: int | None = 16,
                      temperature: float = _D.temperature, top_p: float = _D.top_p, top_k: int = _D.top_k,
                      min_p: float = _D.min_p, repeat_penalty: float = _D.repeat_penalty,
                      presence_penalty: float = _D.presence_penalty, frequency_penalty: float = _D.frequency_penalty,
                      stop=None, seed: int | None = None, stats: GenerationStats | None = None,
                      response_format=None, grammar=None, speculative=None, draft_model=None,
                      n_draft: int | None = None, logprobs: int | None = None, echo: bool = False,
                      model: str | None = None, **ignored):
    """OpenAI's text_completion for a raw prompt (text, whose special-token text is parsed, or
    token ids); with stream=True an iterator of text_completion chunks, the last one carrying the
    finish_reason and the usage. response_format / grammar / speculative / draft_model /
    n_draft: as in create_chat_completion. logprobs=k (0..20): the legacy logprobs object
    (tokens, token_logprobs, top_logprobs with k entries, text_offset). echo=True: the text
    starts with the prompt (and, with logprobs, the prompt tokens' logprobs come first, the first
    one None). `model` is accepted and ignored."""
    _check_ignored(ignored)
    k = _check_logprobs(logprobs, "logprobs")
    hooks = llm.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
    if isinstance(prompt, str):
        ids = llm.tokenize(prompt, special=True)
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes) and \
            not (len(prompt) == 1 and isinstance(prompt[0], str)):
        ids = list(prompt)
    elif isinstance(prompt, Sequence) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]   # OpenAI's prompt=["text"] with one element
        ids = llm.tokenize(prompt, special=True)
    else:
        raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, seed=seed)
    info = Completion()
    echo_text = ""
    prompt_lps = None
    if echo:
        echo_text = prompt if isinstance(prompt, str) else llm.detokenize(ids)
        if k is not None:
            llm.check_ids(ids)
            prompt_lps = prompt_logprobs(llm, ids, k) if ids else []
    pieces = stream_text(llm, ids, max_tokens, params, stop_strings(stop), info, stats, hooks, k)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": llm.name}
    if stream:
        return _text_chunks(llm, pieces, info, head, k is not None, echo_text, prompt_lps)
    text = "".join(pieces)
    lp = None
    if k is not None:
        lp = text_logprobs(llm, info, 0, len(info.token_ids or []), 0, prompt_lps)
    return {**head, "choices": [{"index": 0, "text": echo_text + text, "finish_reason": info.finish_reason,
                                 "logprobs": lp}],
            "usage": usage_dict(info)}


def _text_chunks(llm: Model, pieces: Iterator[str], info: Completion, head: dict, with_logprobs: bool,
                 echo_text: str = "", prompt_lps=None) -> Iterator[dict]:
    sent = 0
    offset = 0

    def chunk(text: str, finish_reason=None, prompt=None) -> dict:
        nonlocal sent, offset
        lp = None
        if with_logprobs:
            n = len(info.token_ids or [])
            lp = text_logprobs(llm, info, sent, n, offset, prompt)
            sent = n
        offset += len(text)
        return {**head, "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": lp}]}

    try:
        if echo_text:
            yield chunk(echo_text, prompt=prompt_lps)
        for piece in pieces:
            yield chunk(piece)
        last = chunk("", info.finish_reason)
        last["usage"] = usage_dict(info)
        yield last
    finally:
        pieces.close()


def chat(llm: Model, messages, *, stream: bool = False, **kwargs):
    """The assistant's reply as a string, or with stream=True an iterator of its text pieces.
    `messages` may be a single user message string; the other keywords are
    create_chat_completion's."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if stream:
        chunks = create_chat_completion(llm, messages, stream=True, **kwargs)
        return (piece for chunk in chunks if (piece := chunk["choices"][0]["delta"].get("content")))
    response = create_chat_completion(llm, messages, **kwargs)
    return response["choices"][0]["message"]["content"]
