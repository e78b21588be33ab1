"""Pre-tokenizers of byte-level BPE vocabularies: for each `tokenizer.ggml.pre` name, llama.cpp's
list of regexes (llm_tokenizer_bpe), applied one after another, each splitting every piece left by
the previous one (unmatched gaps stay pieces too), plus the two per-name flags llama.cpp's vocab
loader sets (ignore_merges, default add_bos). Unicode classes need the `regex` package.

Not here: the merges (bpe.py), SentencePiece vocabularies (spm.py), which have no pre-tokenizer.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import regex


class PreTokenizer(NamedTuple):
    patterns: tuple[str, ...]   # applied in order
    ignore_merges: bool         # a word that is itself a token is not merged (llama3, tekken)
    add_bos: bool               # the default of tokenizer.ggml.add_bos_token


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

# tokenizer.ggml.pre -> its PreTokenizer, as llama.cpp's vocab loader
PRE_TOKENIZERS: dict[str, PreTokenizer] = {}
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
        PRE_TOKENIZERS[_name] = PreTokenizer(*_entry)

FALLBACK = PreTokenizer(_PRE_GPT2, False, False)  # unknown names (llama.cpp refuses them; we warn)
_warned: set[str] = set()
_compiled: dict[str, regex.Pattern] = {}


def lookup(pre: str, stacklevel: int = 2) -> PreTokenizer:
    """The pre-tokenizer of a `tokenizer.ggml.pre` name; GPT-2's for an unknown name, with a
    warning (once per name and process): token ids may then differ from the model's own."""
    entry = PRE_TOKENIZERS.get(pre)
    if entry is None:
        if pre not in _warned:
            _warned.add(pre)
            warnings.warn(f"unknown pre-tokenizer {pre!r}: using GPT-2's split; token ids "
                          f"may differ from the model's own tokenizer", stacklevel=stacklevel)
        entry = FALLBACK
    return entry


def forget_warnings() -> None:
    """Warn again about names already warned about (for tests)."""
    _warned.clear()


def compile_pattern(pattern: str) -> regex.Pattern:
    if pattern not in _compiled:
        _compiled[pattern] = regex.compile(pattern)
    return _compiled[pattern]


def pre_split(text: str, patterns: Sequence[regex.Pattern]) -> list[str]:
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

