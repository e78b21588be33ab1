"""Constrained decoding: JSON mode, JSON schemas, regexes and Lark grammars, on llguidance.

llguidance (the engine llama.cpp itself can use) compiles the constraint and, at each step,
computes the set of tokens that keep the output a valid prefix, as a bitmask (one bit per token
id, 32 per uint32 word). pyllm's C++ sampler applies that mask first in its chain, before the
penalties and the temperature, inside the same call that evaluates the step. Why llguidance
rather than outlines-core or xgrammar: a small self-contained wheel (no torch), JSON schema +
regex + Lark in one engine, masks in ~50-100 us per token without a precompile over the
vocabulary, and the tokenizer view is built from raw token bytes, which is exactly what a GGUF
vocabulary gives.

Here: the tokenizer view (GGUF vocabulary -> llguidance.LLTokenizer, cached per Tokenizer), the
compilation of a `response_format` / `grammar` argument into a `Constraint`, and the per-step
state. Not here: the sampler (csrc/sampling), the generation loop (pyllm/model.py calls
`Constraint.mask()` and `Constraint.advance()`).
"""
from __future__ import annotations

import json
import weakref
from collections.abc import Mapping

import numpy as np

from pyllm.errors import GrammarError
from pyllm.tokenizer import TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED, Tokenizer


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # declared as a dependency; a broken install still gets a clear error
        raise GrammarError("constrained decoding needs the 'llguidance' package: pip install llguidance") from e
    return llguidance


# ---------------------------------------------------------------------------------------------
# The tokenizer view
# ---------------------------------------------------------------------------------------------


class _GGUFTokenizerWrapper:
    """What llguidance.LLTokenizer reads from a Python tokenizer: each token's bytes (special
    tokens as 0xFF + their text, llguidance's convention, so they never match grammar text), the
    special ids, EOS/BOS, and a callable that tokenizes text."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        tokens: list[bytes] = []
        special: list[int] = []
        for i in range(tok.n_vocab):
            ttype = tok.token_types[i]
            if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN) or (
                    ttype == TOKEN_USER_DEFINED and tok.tokens[i].startswith("<") and tok.tokens[i].endswith(">")):
                tokens.append(b"\xff" + tok.tokens[i].encode("utf-8"))
                special.append(i)
            else:
                tokens.append(tok.token_bytes(i))  # byte-level BPE alphabet decoded, SPM <0xHH> -> the byte
        self.tokens = tokens
        self.special_token_ids = special
        eog = sorted(tok.eog_ids)
        self.eos_token_id = tok.eos_id if tok.eos_id is not None else (eog[0] if eog else 0)
        self.bos_token_id = tok.bos_id
        self.is_tokenizer_wrapper = True
        self._accepts_bytes = True

    def __call__(self, s) -> list[int]:
        return self._tok.tokenize(s, add_special=False, parse_special=False)


_views: "weakref.WeakKeyDictionary[Tokenizer, object]" = weakref.WeakKeyDictionary()


def ll_tokenizer(tok: Tokenizer):
    """The llguidance tokenizer for a pyllm Tokenizer (built once, ~0.1 s for 50k tokens)."""
    view = _views.get(tok)
    if view is None:
        llg = _llguidance()
        eos = sorted(tok.eog_ids) or None
        view = llg.LLTokenizer(_GGUFTokenizerWrapper(tok), n_vocab=tok.n_vocab, eos_token=eos)
        _views[tok] = view
    return view


# ---------------------------------------------------------------------------------------------
# Compiling a constraint
# ---------------------------------------------------------------------------------------------


def grammar_text(response_format=None, grammar=None) -> str | None:
    """The llguidance grammar for the API's arguments, or None when there is no constraint.

    response_format: {"type": "text"} (none), {"type": "json_object"} (any JSON object),
        {"type": "json_schema", "json_schema": {"schema": {...}, "name": ..., "strict": ...}}
        (OpenAI's shape) or {"type": "json_schema", "json_schema": {...the schema itself...}}
        (llama-cpp-python's shape; also accepted under "schema").
    grammar: a Lark grammar string (llguidance's Lark dialect, which also reads llama.cpp GBNF),
        or {"regex": "..."}, {"lark": "..."}, {"gbnf": "..."}, {"json_schema": {...}}.
    """
    llg = _llguidance()
    if response_format is not None and grammar is not None:
        raise GrammarError("give either response_format or grammar, not both")
    if grammar is not None:
        if isinstance(grammar, str):
            kind, text = "lark", grammar
        elif isinstance(grammar, Mapping) and len(grammar) == 1:
            kind, text = next(iter(grammar.items()))
        else:
            raise GrammarError("grammar must be a Lark grammar string or one of {'regex': ...}, {'lark': ...}, "
                               f"{{'gbnf': ...}}, {{'json_schema': ...}}; got {grammar!r:.80}")
        if kind not in ("regex", "lark", "gbnf", "json_schema"):
            raise GrammarError(f"unknown grammar kind {kind!r}: use 'regex', 'lark', 'gbnf' or 'json_schema'")
        if kind == "json_schema":
            return _schema_grammar(text)
        if not isinstance(text, str):
            raise GrammarError(f"a {kind} grammar must be a string, got {type(text).__name__}")
        try:
            return llg.grammar_from(kind, text)
        except ValueError as e:
            raise GrammarError(f"cannot read the {kind} grammar: {e}") from None
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise GrammarError(f"response_format must be a dict like {{'type': 'json_object'}}, got {response_format!r:.80}")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = response_format.get("schema")  # llama-cpp-python allows a schema here too
        return _schema_grammar(schema if schema is not None else {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema", response_format.get("schema"))
        if not isinstance(spec, Mapping):
            raise GrammarError("response_format {'type': 'json_schema'} needs 'json_schema': {'schema': {...}} "
                               "(or the schema itself)")
        # OpenAI nests the schema under "schema" next to "name"/"strict"; a bare schema is accepted too.
        schema = spec["schema"] if isinstance(spec.get("schema"), Mapping) and "type" not in spec else spec
        return _schema_grammar(schema)
    raise GrammarError(f"unknown response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'")


def _schema_grammar(schema) -> str:
    llg = _llguidance()
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, (Mapping, bool)):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        # Compact separators: no whitespace the model could spin in forever.
        return llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides={"whitespace_flexible": False, "item_separator": ", ",
                                           "key_separator": ": "})
    except (ValueError, TypeError) as e:
        raise GrammarError(f"cannot read the JSON schema: {e}") from None


def compile_constraint(tokenizer: Tokenizer, response_format=None, grammar=None) -> "Constraint | None":
    """A fresh Constraint for one generation, or None. Raises GrammarError for a constraint that
    does not compile (unsupported schema keyword, bad regex, broken grammar), before any compute."""
    text = grammar_text(response_format, grammar)
    if text is None:
        return None
    llg = _llguidance()
    view = ll_tokenizer(tokenizer)
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(text, view)
    if is_error:
        raise GrammarError(f"the constraint does not compile: {messages[0] if messages else 'unknown error'}")
    matcher = llg.LLMatcher(view, text, log_level=0)
    if matcher.is_error():
        raise GrammarError(f"the constraint does not compile: {matcher.get_error()}")
    return Constraint(matcher, tokenizer.n_vocab)


class Constraint:
    """The state of one constrained generation: the token mask for the next step and the tokens
    accepted so far. mask() -> uint32 words for the sampler; advance(token) after each sampled
    token; done when the grammar admits nothing but end-of-generation."""

    def __init__(self, matcher, n_vocab: int):
        self._matcher = matcher
        self._mask = np.zeros((n_vocab + 31) // 32, np.uint32)

    def mask(self) -> np.ndarray:
        """The allowed tokens for the next step (end-of-generation ids allowed once the output is
        complete). The array is reused: consume it before the next call."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if m.is_error():
            raise GrammarError(f"constraint failed: {m.get_error()}")
        return self._mask

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise GrammarError(f"constraint rejected token {token}: {self._matcher.get_error()}")

    def try_advance(self, tokens: list[int]) -> int:
        """Consumes the longest allowed prefix of tokens; returns its length."""
        return self._matcher.try_consume_tokens([int(t) for t in tokens])

    def rollback(self, n: int) -> None:
        if n > 0:
            self._matcher.rollback(n)

    def allows(self, token: int) -> bool:
        return self._matcher.validate_tokens([int(token)]) == 1

    @property
    def done(self) -> bool:
        """The grammar is complete and admits no further token (only end-of-generation)."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()
