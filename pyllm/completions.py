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
from typing import Iterator, Sequence

import regex

from pyllm import chat_template as templates
from pyllm.errors import ContextOverflowError
from pyllm import model as _model_module
from pyllm.model import Completion, Model, SamplingParams

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
                stop, info: Completion, stats: GenerationStats | None = None, hooks=(None, None)) -> Iterator[str]:
    """Text pieces generated after `ids`, stopped at the model's end-of-generation tokens and at
    `stop` strings (never shown). Checks the prompt now, not at the first next()."""
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    if len(ids) > model.n_ctx:
        raise ContextOverflowError(
            f"the prompt has {len(ids)} tokens but the context holds {model.n_ctx} (n_ctx); "
            f"shorten the conversation or load the model with a larger n_ctx")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < -1):
        raise ValueError(f"max_tokens must be a non-negative integer, -1 (until the end of the turn or "
                         f"context) or None, got {max_tokens!r}")
    stats = stats if stats is not None else GenerationStats()
    stats.n_prompt = len(ids)
    constraint, speculative = hooks   # from model.generation_hooks (compiled before any compute)
    tokens = _timed(model.generate_tokens(ids, max_tokens, params, info, constraint, speculative), info, stats)
    return model._pieces(tokens, stop, info)


def _stops(stop, extra: Sequence[str] = ()) -> list[str]:
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


def _usage(info: Completion) -> dict:
    completion = len(info.token_ids or [])
    return {"prompt_tokens": info.n_prompt_tokens, "completion_tokens": completion,
            "total_tokens": info.n_prompt_tokens + completion}


def create_chat_completion(model: Model, messages, *, stream: bool = False, max_tokens: int | None = None,
                           temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                           repeat_penalty: float = 1.0, presence_penalty: float = 0.0,
                           frequency_penalty: float = 0.0, stop=None, seed: int | None = None,
                           chat_template=None, stats: GenerationStats | None = None,
                           response_format=None, grammar=None, speculative=None, draft_model=None,
                           n_draft: int | None = None):
    """OpenAI's chat.completion (or, with stream=True, an iterator of chat.completion.chunk dicts:
    the first delta carries the role, then one delta per text piece, the last one carries the
    finish_reason and the usage).

    response_format / grammar constrain the output (see Model.generate; finish_reason "length"
    means max_tokens ended it before the JSON was complete); speculative / draft_model / n_draft
    speed up decoding without changing it."""
    hooks = model.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
    msgs = normalize_messages(messages)
    template = chat_template_for(model, chat_template)
    ids = chat_prompt_ids(model, msgs, template)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, seed=seed)
    info = Completion()
    pieces = stream_text(model, ids, max_tokens, params, _stops(stop, template.stop), info, stats, hooks)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.name}
    if stream:
        return _chat_chunks(pieces, info, head)
    text = "".join(pieces)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": info.finish_reason, "logprobs": None}],
            "usage": _usage(info)}


def _chat_chunks(pieces: Iterator[str], info: Completion, head: dict) -> Iterator[dict]:
    def chunk(delta: dict, finish_reason=None) -> dict:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    try:
        yield chunk({"role": "assistant"})
        for piece in pieces:
            yield chunk({"content": piece})
        last = chunk({}, info.finish_reason)
        last["usage"] = _usage(info)
        yield last
    finally:
        pieces.close()


def create_completion(model: Model, prompt, *, stream: bool = False, max_tokens: int | None = 16,
                      temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                      repeat_penalty: float = 1.0, presence_penalty: float = 0.0,
                      frequency_penalty: float = 0.0, stop=None, seed: int | None = None,
                      stats: GenerationStats | None = None, response_format=None, grammar=None,
                      speculative=None, draft_model=None, n_draft: int | None = None):
    """OpenAI's text_completion for a raw prompt (text, whose special-token text is parsed, or
    token ids); with stream=True an iterator of text_completion chunks, the last one carrying the
    finish_reason and the usage. response_format / grammar / speculative / draft_model /
    n_draft: as in create_chat_completion."""
    hooks = model.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
    if isinstance(prompt, str):
        ids = model.tokenize(prompt, special=True)
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
        ids = list(prompt)
    else:
        raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, seed=seed)
    info = Completion()
    pieces = stream_text(model, ids, max_tokens, params, _stops(stop), info, stats, hooks)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model.name}
    if stream:
        return _text_chunks(pieces, info, head)
    text = "".join(pieces)
    return {**head, "choices": [{"index": 0, "text": text, "finish_reason": info.finish_reason, "logprobs": None}],
            "usage": _usage(info)}


def _text_chunks(pieces: Iterator[str], info: Completion, head: dict) -> Iterator[dict]:
    def chunk(text: str, finish_reason=None) -> dict:
        return {**head, "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]}

    try:
        for piece in pieces:
            yield chunk(piece)
        last = chunk("", info.finish_reason)
        last["usage"] = _usage(info)
        yield last
    finally:
        pieces.close()


def chat(model: Model, messages, *, stream: bool = False, **kwargs):
    """The assistant's reply as a string, or with stream=True an iterator of its text pieces.
    `messages` may be a single user message string; the other keywords are
    create_chat_completion's."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if stream:
        chunks = create_chat_completion(model, messages, stream=True, **kwargs)
        return (piece for chunk in chunks if (piece := chunk["choices"][0]["delta"].get("content")))
    response = create_chat_completion(model, messages, **kwargs)
    return response["choices"][0]["message"]["content"]


_model_module._show_completion_signatures()  # help(Model.create_chat_completion) shows these keywords
