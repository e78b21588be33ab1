"""Tokenizer and streaming detokenizer built from GGUF tokenizer metadata, matching llama.cpp's
token ids: byte-level BPE (`gpt2`, pre-tokenizer chosen by `tokenizer.ggml.pre`) and
SentencePiece-style BPE with byte fallback (`llama`). Pure Python: it runs once per prompt, not
per token. Not here: WordPiece/Unigram/RWKV vocabularies, chat templates, sampling."""
from __future__ import annotations

import codecs
import heapq
import itertools
import math
import numbers
import operator
import warnings
from typing import Iterable, Sequence

import numpy as np
import regex

from pyllm.errors import InvalidTokenError, TokenizerError, UnsupportedModelError

# Token types stored in `tokenizer.ggml.token_type` (llama.h LLAMA_TOKEN_TYPE_*).
TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPM_SPACE = "\u2581"  # SentencePiece writes spaces as U+2581 LOWER ONE EIGHTH BLOCK

# Tokens llama.cpp treats as end-of-generation by their text (and forces to CONTROL type), in the
# order we prefer them when `eot_token_id` is absent.
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
              "<\uff5cend\u2581of\u2581sentence\uff5c>")
_EOG_ONLY_TEXTS = ("<|eom_id|>",)

# ---------------------------------------------------------------------------------------------
# GPT-2 byte <-> unicode mapping
# ---------------------------------------------------------------------------------------------


def _gpt2_byte_to_char() -> list[str]:
    """GPT-2's reversible map from the 256 byte values to printable characters: printable Latin-1
    bytes map to themselves, the others (controls, space, 0x7F-0xA0, 0xAD) to U+0100 onwards in
    byte order. BPE vocabularies store their tokens in this alphabet."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = _gpt2_byte_to_char()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}
# str.translate table for latin-1-decoded bytes -> GPT-2 alphabet
_LATIN1_TO_GPT2 = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}

# ---------------------------------------------------------------------------------------------
# Pre-tokenizers: the regex lists of llama.cpp's llm_tokenizer_bpe, applied one after another,
# each splitting every piece left by the previous one (unmatched gaps stay pieces too).
# ---------------------------------------------------------------------------------------------

_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RE_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
              r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
_RE_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
             r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+")
_RE_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
              r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
              r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_BLOOM = r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

_PRE_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_PRE_GPT2 = (_RE_GPT2,)
_PRE_SMOLLM = (r"\p{N}", _RE_GPT2)  # digits one by one, then GPT-2's split
_PRE_LLAMA3 = (_RE_LLAMA3,)
_PRE_QWEN2 = (_RE_QWEN2,)
_PRE_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, r"[0-9][0-9][0-9]")
_PRE_BLOOM = (_RE_BLOOM,)
_PRE_VIKING = (_RE_BLOOM, r"\p{N}")
_PRE_TEKKEN = (_RE_TEKKEN,)

# tokenizer.ggml.pre -> (regex list, ignore_merges, default add_bos), as llama.cpp's vocab loader
_PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
for _names, _entry in [
    (("", "default"), (_PRE_DEFAULT, False, False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3"), (_PRE_LLAMA3, True, True)),
    (("dbrx", "smaug-bpe", "chatglm-bpe"), (_PRE_LLAMA3, False, False)),
    (("gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es",
      "jina-v2-de", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais"),
     (_PRE_GPT2, False, False)),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     (_PRE_SMOLLM, False, False)),
    (("qwen2", "stablelm2", "megrez"), (_PRE_QWEN2, False, False)),
    (("falcon",), (_PRE_FALCON, False, False)),
    (("poro-chat", "bloom", "gpt3-finnish"), (_PRE_BLOOM, False, False)),
    (("viking",), (_PRE_VIKING, False, False)),
    (("tekken",), (_PRE_TEKKEN, True, True)),
]:
    for _name in _names:
        _PRE_TOKENIZERS[_name] = _entry

_PRE_FALLBACK = (_PRE_GPT2, False, False)  # unknown names (llama.cpp refuses them; we warn)
_warned_pre: set[str] = set()
_compiled: dict[str, regex.Pattern] = {}


def _compile(pattern: str) -> regex.Pattern:
    if pattern not in _compiled:
        _compiled[pattern] = regex.compile(pattern)
    return _compiled[pattern]


def _pre_split(text: str, patterns: Sequence[regex.Pattern]) -> list[str]:
    """Split `text` into words: each pattern splits every current piece into its matches and the
    gaps between them (llama.cpp's unicode_regex_split keeps both)."""
    pieces = [text]
    for pat in patterns:
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in pat.finditer(piece):
                start, end = m.span()
                if start == end:
                    continue
                if start > pos:
                    out.append(piece[pos:start])
                out.append(piece[start:end])
                pos = end
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


# ---------------------------------------------------------------------------------------------
# Metadata validation helpers
# ---------------------------------------------------------------------------------------------

def _as_list(md: dict, key: str, required: bool):
    if key not in md or md[key] is None:
        if required:
            raise TokenizerError(f"tokenizer metadata: missing key {key!r}")
        return None
    value = md[key]
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()  # numpy array
    if not isinstance(value, (list, tuple)):
        raise TokenizerError(f"tokenizer metadata: {key!r} must be an array, "
                             f"got {type(value).__name__} {_short(value)}")
    return list(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_elements(key: str, values: list, ok, what: str, fast_types: tuple = ()) -> None:
    # A vocabulary has ~50k-150k entries: when every element's type is one of fast_types, the
    # per-element check (ok) is not needed, and the type set is found at C speed.
    if fast_types and set(map(type, values)) <= set(fast_types):
        return
    for i, v in enumerate(values):
        if not ok(v):
            raise TokenizerError(f"tokenizer metadata: {key}[{i}] must be {what}, "
                                 f"got {type(v).__name__} {_short(v)}")


def _get_bool(md: dict, key: str, default: bool) -> bool:
    value = md.get(key)
    if value is None:
        return default
    if not isinstance(value, (bool, numbers.Integral)) or (_is_int(value) and value not in (0, 1)):
        raise TokenizerError(f"tokenizer metadata: {key!r} must be a bool, got {_short(value)}")
    return bool(value)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """Text <-> token ids for one vocabulary.

    tokenize(text, add_special=None, parse_special=False) -> list[int]
    detokenize(ids, special=False, strip_leading_space=None) -> str
    token_bytes(id, special=False) -> bytes
    """

    def __init__(self, *, model: str, pre: str, tokens: list[str], token_types: list[int],
                 scores: list[float] | None, merges: list[str] | None,
                 special_ids: dict[str, int | None], add_bos: bool, add_eos: bool,
                 add_space_prefix: bool):
        self.model = model                      # 'gpt2' (byte-level BPE) or 'llama' (SPM)
        self.pre = pre
        self.n_vocab = len(tokens)
        self.tokens = tokens                    # (n_vocab,) token texts as stored in the file
        self.token_types = token_types          # (n_vocab,) TOKEN_* values
        self.scores = scores                    # (n_vocab,) SPM merge scores, or None
        self.bos_id = special_ids.get("bos")
        self.eos_id = special_ids.get("eos")
        self.eot_id = special_ids.get("eot")
        self.eom_id = special_ids.get("eom")
        self.unk_id = special_ids.get("unk")
        self.pad_id = special_ids.get("pad")
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix

        self._token_to_id: dict[str, int] = dict(zip(tokens, range(self.n_vocab)))
        if len(self._token_to_id) != self.n_vocab:  # a duplicate: find the first one to name it
            first: dict[str, int] = {}
            for i, text in enumerate(tokens):
                if text in first:
                    raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.tokens' has duplicate "
                                         f"token {_short(text)} at ids {first[text]} and {i}")
                first[text] = i

        # End-of-generation tokens, found by id and by text as llama.cpp does; tokens that look
        # like control tokens are made CONTROL so they decode to nothing unless asked.
        eog: set[int] = set()
        for text in _EOG_TEXTS + _EOG_ONLY_TEXTS:
            tid = self._token_to_id.get(text)
            if tid is None:
                continue
            eog.add(tid)
            if self.token_types[tid] != TOKEN_CONTROL:
                self.token_types[tid] = TOKEN_CONTROL
            if self.eot_id is None and text in _EOG_TEXTS:
                self.eot_id = tid
            if self.eom_id is None and text in _EOG_ONLY_TEXTS:
                self.eom_id = tid
        for tid in (self.eos_id, self.eot_id, self.eom_id):
            if tid is not None:
                eog.add(tid)
        self.eog_ids = frozenset(eog)

        # Tokens split out of raw text before the BPE (llama.cpp's cache_special_tokens):
        # control, user-defined and unknown tokens, longest (in bytes) first.
        types = np.asarray(self.token_types)
        special = np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED) |
                                 (types == TOKEN_UNKNOWN)).tolist()
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special_tokens = [(tokens[i], i, self.token_types[i] == TOKEN_USER_DEFINED)
                                for i in special]

        self._piece_cache: list[bytes | None] = [None] * self.n_vocab
        self._word_cache: dict[str, tuple[int, ...]] = {}

        if model == "gpt2":
            patterns, self._ignore_merges, _ = _PRE_TOKENIZERS.get(pre, _PRE_FALLBACK)
            self._patterns = [_compile(p) for p in patterns]
            merges = merges or []
            # "left right", split at the first space after the first character. When no merge
            # starts with a space that is str.split's first space, which map() applies at C speed.
            if any(map(operator.methodcaller("startswith", " "), merges)):
                cuts = [m.find(" ", 1) for m in merges]
                pairs = [(m[:c], m[c + 1:]) if c > 0 else (m,) for m, c in zip(merges, cuts)]
            else:
                pairs = list(map(tuple, map(str.split, merges, itertools.repeat(" "), itertools.repeat(1))))
            if pairs and min(map(len, pairs)) != 2:
                i = next(i for i, p in enumerate(pairs) if len(p) != 2)
                raise TokenizerError(f"tokenizer metadata: tokenizer.ggml.merges[{i}] must be a string "
                                     f"'left right', got {type(merges[i]).__name__} {_short(merges[i])}")
            # The first rank of a pair that is listed twice wins: built backwards, it is set last.
            self._ranks: dict[tuple[str, str], int] = dict(zip(reversed(pairs), range(len(pairs) - 1, -1, -1)))
        else:
            self._byte_ids = self._spm_byte_tokens()

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, md: dict) -> "Tokenizer":
        """Build from GGUF metadata given as plain Python values (strings, ints, floats, lists).
        Raises TokenizerError (a GGUFError) naming the key and value for malformed metadata and
        UnsupportedModelError for a tokenizer model other than 'gpt2' or 'llama'."""
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError("tokenizer metadata: missing key 'tokenizer.ggml.model'")
        if not isinstance(model, str):
            raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.model' must be a string, "
                                 f"got {_short(model)}")
        if model not in ("gpt2", "llama"):
            raise UnsupportedModelError(f"tokenizer model {model!r} is not supported "
                                        f"(supported: 'gpt2', 'llama')")
        pre = md.get("tokenizer.ggml.pre", "") or ""
        if not isinstance(pre, str):
            raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.pre' must be a string, "
                                 f"got {_short(pre)}")

        tokens = _as_list(md, "tokenizer.ggml.tokens", required=True)
        _check_elements("tokenizer.ggml.tokens", tokens, lambda v: isinstance(v, str), "a string", (str,))
        n_vocab = len(tokens)
        if n_vocab == 0:
            raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.tokens' is empty")
        # llama.cpp renames empty tokens so that every text maps to one id
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]

        token_types = _as_list(md, "tokenizer.ggml.token_type", required=False)
        if token_types is None:
            token_types = [TOKEN_NORMAL] * n_vocab
        else:
            in_range = set(map(type, token_types)) <= {int} and (not token_types or 0 <= min(token_types) and max(token_types) <= 6)
            if not in_range:
                _check_elements("tokenizer.ggml.token_type", token_types,
                                lambda v: _is_int(v) and 0 <= v <= 6, "an int token type in 0..6")
                token_types = [int(t) for t in token_types]
        if len(token_types) != n_vocab:
            raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.token_type' has "
                                 f"{len(token_types)} entries, the vocabulary has {n_vocab}")

        scores = _as_list(md, "tokenizer.ggml.scores", required=False)
        if scores is not None:
            fast = set(map(type, scores)) <= {float} and not any(map(math.isnan, scores))
            if not fast:
                _check_elements("tokenizer.ggml.scores", scores,
                                lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                                and not math.isnan(v), "a number (not NaN)")
            if len(scores) != n_vocab:
                raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.scores' has "
                                     f"{len(scores)} entries, the vocabulary has {n_vocab}")
            scores = [float(s) for s in scores]

        merges = None
        if model == "gpt2":
            merges = _as_list(md, "tokenizer.ggml.merges", required=True)
            # (Each merge's separator is checked where the merges are split, in __init__.)
            _check_elements("tokenizer.ggml.merges", merges, lambda v: isinstance(v, str), "a string", (str,))
        else:
            for i, (text, ttype) in enumerate(zip(tokens, token_types)):
                if ttype == TOKEN_BYTE and regex.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) is None:
                    raise TokenizerError(f"tokenizer metadata: byte token {i} has text "
                                         f"{_short(text)}, expected '<0xHH>'")

        # special ids: SPM vocabularies default to <unk>=0, <s>=1, </s>=2 like llama.cpp
        defaults = {"bos": 1, "eos": 2, "unk": 0} if model == "llama" else {}
        special_ids: dict[str, int | None] = {}
        for name, key in [("bos", "bos_token_id"), ("eos", "eos_token_id"),
                          ("eot", "eot_token_id"), ("eom", "eom_token_id"),
                          ("unk", "unknown_token_id"), ("pad", "padding_token_id")]:
            full = "tokenizer.ggml." + key
            value = md.get(full)
            if value is None:
                default = defaults.get(name)
                special_ids[name] = default if default is not None and default < n_vocab else None
                continue
            if not _is_int(value) or not 0 <= value < n_vocab:
                raise TokenizerError(f"tokenizer metadata: {full!r} = {_short(value)} is not a "
                                     f"token id (vocabulary size {n_vocab})")
            special_ids[name] = int(value)

        if model == "gpt2":
            if pre not in _PRE_TOKENIZERS and pre not in _warned_pre:
                _warned_pre.add(pre)
                warnings.warn(f"unknown pre-tokenizer {pre!r}: using GPT-2's split; token ids "
                              f"may differ from the model's own tokenizer", stacklevel=2)
            default_bos = _PRE_TOKENIZERS.get(pre, _PRE_FALLBACK)[2]
            add_bos = _get_bool(md, "tokenizer.ggml.add_bos_token", default_bos)
            add_space_prefix = _get_bool(md, "tokenizer.ggml.add_space_prefix", False)
        else:
            add_bos = _get_bool(md, "tokenizer.ggml.add_bos_token", True)
            add_space_prefix = _get_bool(md, "tokenizer.ggml.add_space_prefix", True)
        add_eos = _get_bool(md, "tokenizer.ggml.add_eos_token", False)
        if add_bos and special_ids["bos"] is None:
            raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.add_bos_token' is true but "
                                 "there is no 'tokenizer.ggml.bos_token_id'")
        if add_eos and special_ids["eos"] is None:
            raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.add_eos_token' is true but "
                                 "there is no 'tokenizer.ggml.eos_token_id'")

        return cls(model=model, pre=pre, tokens=tokens, token_types=token_types, scores=scores,
                   merges=merges, special_ids=special_ids, add_bos=add_bos, add_eos=add_eos,
                   add_space_prefix=add_space_prefix)

    # --- queries -----------------------------------------------------------------------------

    def _check_id(self, token_id) -> int:
        if not _is_int(token_id) or not 0 <= token_id < self.n_vocab:
            raise InvalidTokenError(f"token id {token_id!r} is outside the vocabulary "
                                    f"(size {self.n_vocab})")
        return int(token_id)

    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (GPT-2 alphabet / U+2581 spaces)."""
        return self.tokens[self._check_id(token_id)]

    def token_type(self, token_id: int) -> int:
        return self.token_types[self._check_id(token_id)]

    def is_eog(self, token_id: int) -> bool:
        """True for tokens that end generation (EOS, EOT, <|im_end|>, <|endoftext|>, ...)."""
        return token_id in self.eog_ids

    def is_control(self, token_id: int) -> bool:
        return self.token_types[self._check_id(token_id)] == TOKEN_CONTROL

    # --- tokenize ----------------------------------------------------------------------------

    def control_texts(self) -> list[str]:
        """The texts of the control tokens (e.g. "<|im_end|>"), which parse_special turns into
        ids: what a chat message's content must not be able to produce."""
        return [text for text, _, user_defined in self._special_tokens if not user_defined]

    def tokenize(self, text: str | bytes, add_special: bool | None = None,
                 parse_special: bool = False, literals: dict[str, str] | None = None) -> list[int]:
        """Token ids of `text`, identical to llama.cpp's llama_tokenize.

        add_special: None or True adds BOS/EOS as the model's metadata asks
            (`add_bos_token`, `add_eos_token`); False adds nothing.
        parse_special: True turns the text of control tokens (e.g. "<|im_start|>") into their
            ids; False tokenizes it as plain text. User-defined tokens are always split out
            first, as llama.cpp (and Hugging Face tokenizers) do.
        literals: marker -> text. Each marker in `text` stands for its text, which is tokenized
            as plain text (never split out as a special token) together with the text around it,
            as if it had been written there with parse_special=False. Markers must contain no
            special-token text (chat rendering uses private-use characters).
        bytes are decoded as UTF-8 with invalid sequences replaced by U+FFFD, as llama.cpp does;
        a str with lone surrogates (not encodable in UTF-8) gets U+FFFD in their place too.
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8", errors="replace")
        elif not isinstance(text, str):
            raise TypeError(f"tokenize() needs str or bytes, got {type(text).__name__}")
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = regex.sub(r"[\ud800-\udfff]", "\ufffd", text)
        add = add_special is None or bool(add_special)

        fragments = self._partition_special(text, parse_special) if text else []
        if literals:
            fragments = [_restore_literals(f, literals) if isinstance(f, str) else f for f in fragments]
        out: list[int] = []
        if add and self.add_bos:
            out.append(self.bos_id)
        if self.model == "gpt2":
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe_fragment(frag, out)
        else:
            prev_special = True  # the text after BOS / a special token gets the space prefix
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                else:
                    if self.add_space_prefix and prev_special:
                        frag = " " + frag
                    self._spm_fragment(frag.replace(" ", SPM_SPACE), out)
                    prev_special = False
        if add and self.add_eos:
            out.append(self.eos_id)
        return out

    def _partition_special(self, text: str, parse_special: bool) -> list:
        """Split out special-token texts (llama.cpp's tokenizer_st_partition): for each special
        token, longest first, every occurrence in every remaining text fragment becomes its id."""
        fragments: list = [text]
        for tok_text, tok_id, user_defined in self._special_tokens:
            if not parse_special and not user_defined:
                continue
            if not any(isinstance(f, str) and tok_text in f for f in fragments):
                continue
            new: list = []
            for frag in fragments:
                if isinstance(frag, int) or tok_text not in frag:
                    new.append(frag)
                    continue
                parts = frag.split(tok_text)
                for j, part in enumerate(parts):
                    if j:
                        new.append(tok_id)
                    if part:
                        new.append(part)
            fragments = new
        return fragments

    # --- byte-level BPE (gpt2) ---------------------------------------------------------------

    def _bpe_fragment(self, text: str, out: list[int]) -> None:
        cache = self._word_cache
        for word in _pre_split(text, self._patterns):
            ids = cache.get(word)
            if ids is None:
                mapped = word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_GPT2)
                ids = self._bpe_word(mapped)
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Merge the symbols of one word by merge rank (lowest first, leftmost on ties), the way
        llama.cpp's llm_tokenizer_bpe_session does with its priority queue."""
        token_to_id = self._token_to_id
        if self._ignore_merges and word in token_to_id:
            return (token_to_id[word],)
        syms = list(word)
        n = len(syms)
        if n > 1:
            ranks = self._ranks
            prev = list(range(-1, n - 1))
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            heap = []
            for i in range(n - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None:
                    heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
            heapq.heapify(heap)
            while heap:
                _, left, right, merged = heapq.heappop(heap)
                ls, rs = syms[left], syms[right]
                if not ls or not rs or ls + rs != merged:
                    continue  # stale: one side was merged away since this pair was queued
                syms[left] = merged
                syms[right] = ""
                nxt[left] = after = nxt[right]
                if after != -1:
                    prev[after] = left
                before = prev[left]
                if before != -1:
                    r = ranks.get((syms[before], merged))
                    if r is not None:
                        heapq.heappush(heap, (r, before, left, syms[before] + merged))
                if after != -1:
                    r = ranks.get((merged, syms[after]))
                    if r is not None:
                        heapq.heappush(heap, (r, left, after, merged + syms[after]))
        ids = []
        for s in syms:
            if not s:
                continue
            tid = token_to_id.get(s)
            if tid is not None:
                ids.append(tid)
                continue
            # Not in the vocabulary: llama.cpp looks up each UTF-8 byte of the symbol as a
            # one-byte token and drops those it cannot find.
            for b in s.encode("utf-8"):
                tid = token_to_id.get(chr(b)) if b < 0x80 else None
                if tid is not None:
                    ids.append(tid)
        return tuple(ids)

    # --- SentencePiece-style BPE (llama) -----------------------------------------------------

    def _spm_byte_tokens(self) -> list[int | None]:
        """Token id for each byte value: '<0xHH>' tokens, else a one-character token of that byte
        (llama.cpp's byte_to_token), else None."""
        ids: list[int | None] = [None] * 256
        for b in range(256):
            tid = self._token_to_id.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = self._token_to_id.get(chr(b))
            ids[b] = tid
        return ids

    def _spm_fragment(self, text: str, out: list[int]) -> None:
        """llama.cpp's llm_tokenizer_spm: start from single characters, repeatedly merge the
        adjacent pair whose concatenation is the vocabulary token of highest score (leftmost on
        ties); symbols that are not tokens are emitted as byte tokens."""
        token_to_id = self._token_to_id
        scores = self.scores
        syms = list(text)
        n = len(syms)
        if n == 0:
            return
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap = []

        def push(left: int, right: int) -> None:
            merged = syms[left] + syms[right]
            tid = token_to_id.get(merged)
            if tid is not None:
                score = scores[tid] if scores is not None else 0.0
                heapq.heappush(heap, (-score, left, right, len(merged)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls or not rs or len(ls) + len(rs) != size:
                continue  # stale
            syms[left] = ls + rs
            syms[right] = ""
            nxt[left] = after = nxt[right]
            if after != -1:
                prev[after] = left
            if prev[left] != -1:
                push(prev[left], left)
            if after != -1:
                push(left, after)

        # Every merged symbol is a token (only token-forming pairs merge), so llama.cpp's
        # "resegment" reduces to: a token, or the bytes of an unmerged character.
        i = 0
        while i != -1:
            s = syms[i]
            tid = token_to_id.get(s)
            if tid is not None:
                out.append(tid)
            else:
                for b in s.encode("utf-8"):
                    tid = self._byte_ids[b]
                    if tid is None:
                        tid = self.unk_id
                    if tid is not None:
                        out.append(tid)
            i = nxt[i]

    # --- detokenize --------------------------------------------------------------------------

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for (llama.cpp's token_to_piece): GPT-2 alphabet decoded,
        U+2581 -> space, '<0xHH>' -> that byte. Control and unknown tokens give their text only
        with special=True, else b''; unused and undefined tokens give b''."""
        token_id = self._check_id(token_id)
        ttype = self.token_types[token_id]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return self.tokens[token_id].encode("utf-8") if special else b""
        piece = self._piece_cache[token_id]
        if piece is None:
            piece = self._piece_cache[token_id] = self._make_piece(token_id, ttype)
        return piece

    def _make_piece(self, token_id: int, ttype: int) -> bytes:
        text = self.tokens[token_id]
        if ttype == TOKEN_USER_DEFINED:
            return text.encode("utf-8")
        if self.model == "gpt2":
            if ttype not in (TOKEN_NORMAL, TOKEN_BYTE):
                return b""
            try:
                return bytes(_CHAR_TO_BYTE[c] for c in text)
            except KeyError:  # not in the GPT-2 alphabet: keep such characters as UTF-8
                return b"".join(bytes((_CHAR_TO_BYTE[c],)) if c in _CHAR_TO_BYTE
                                else c.encode("utf-8") for c in text)
        if ttype == TOKEN_NORMAL:
            return text.replace(SPM_SPACE, " ").encode("utf-8")
        if ttype == TOKEN_BYTE:
            return bytes((int(text[3:5], 16),))
        return b""

    def _default_strip(self, strip_leading_space: bool | None) -> bool:
        return self.add_space_prefix if strip_leading_space is None else bool(strip_leading_space)

    def detokenize(self, ids: Iterable[int], special: bool = False,
                   strip_leading_space: bool | None = None) -> str:
        """Text of a token sequence; invalid UTF-8 becomes U+FFFD.

        special: include the text of control tokens ("<|im_end|>").
        strip_leading_space: drop one leading space from the first token after any BOS, which
            undoes the space prefix SentencePiece tokenizers add (None: when the model adds one).
        Raises InvalidTokenError for an id outside the vocabulary."""
        strip = self._default_strip(strip_leading_space)
        parts = []
        for tid in ids:
            piece = self.token_bytes(tid, special)
            if strip and tid != self.bos_id:
                strip = False
                if piece.startswith(b" "):
                    piece = piece[1:]
            parts.append(piece)
        return b"".join(parts).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False,
                       strip_leading_space: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, special=special, strip_leading_space=strip_leading_space)


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


class StreamDecoder:
    """Token ids in, text out, one token at a time, never splitting a UTF-8 character: bytes of
    an incomplete character wait for the next token. The concatenation of everything returned by
    feed() and flush() equals tokenizer.detokenize(all ids) with the same options.

    strip_leading_space defaults to False because a stream usually continues a prompt (the
    first generated token's space is real); pass True to decode a whole SPM sequence."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False,
                 strip_leading_space: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._strip = bool(strip_leading_space)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        piece = self.tokenizer.token_bytes(token_id, self.special)
        if self._strip and token_id != self.tokenizer.bos_id:
            self._strip = False
            if piece.startswith(b" "):
                piece = piece[1:]
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """Whatever is held back, invalid bytes replaced by U+FFFD. Call once at the end."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back streamed text that could be the start of a stop string.

    feed(text) returns the text that can no longer be part of a stop string; once a stop string
    is complete, feed returns the text before it and `stopped` becomes True (the stop string and
    anything after it are never emitted). flush() returns the held-back tail at the end of a
    stream that did not stop. Everything emitted, concatenated, is the streamed text cut at the
    first occurrence of any stop string."""

    def __init__(self, stops: Iterable[str]):
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in stops if s]
        for s in self.stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
        self.stopped = False
        self.stop_string: str | None = None   # the stop string that matched
        self._held = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        first = -1
        for s in self.stops:
            at = buf.find(s)
            if at != -1 and (first == -1 or at < first):
                first, self.stop_string = at, s
        if first != -1:
            self.stopped = True
            self._held = ""
            return buf[:first]
        keep = self._partial_stop_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def _partial_stop_len(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _restore_literals(fragment: str, literals: dict[str, str]) -> str:
    for marker, original in literals.items():
        if marker in fragment:
            fragment = fragment.replace(marker, original)
    return fragment
