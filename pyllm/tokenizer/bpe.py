"""Byte-level BPE (`tokenizer.ggml.model` = "gpt2": GPT-2, Llama 3, Qwen, SmolLM, ...): text is
split into words by the pre-tokenizer, each word's UTF-8 bytes are written in GPT-2's printable
byte alphabet and merged pair by pair in merge-rank order, as llama.cpp's llm_tokenizer_bpe does.

Not here: special tokens and the vocabulary's metadata (tokenizer.py, vocab.py).
"""
from __future__ import annotations

import heapq
import itertools
import operator
from typing import Sequence

from pyllm.errors import TokenizerError
from pyllm.tokenizer.pretokenize import compile_pattern, pre_split
from pyllm.tokenizer.vocab import TOKEN_BYTE, TOKEN_NORMAL, short

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


BYTE_TO_CHAR = _gpt2_byte_to_char()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate table for latin-1-decoded bytes -> GPT-2 alphabet
LATIN1_TO_GPT2 = {b: c for b, c in enumerate(BYTE_TO_CHAR)}

def merge_ranks(merges: Sequence[str]) -> dict[tuple[str, str], int]:
    """{(left, right): rank} from `tokenizer.ggml.merges` ("left right" strings)."""
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
                             f"'left right', got {type(merges[i]).__name__} {short(merges[i])}")
    # The first rank of a pair that is listed twice wins: built backwards, it is set last.
    return dict(zip(reversed(pairs), range(len(pairs) - 1, -1, -1)))


class BPE:
    """Text fragments (no special tokens in them) to ids, and token ids back to bytes."""

    def __init__(self, token_to_id: dict[str, int], merges: Sequence[str], patterns: Sequence[str],
                 ignore_merges: bool):
        self.token_to_id = token_to_id
        self.ranks = merge_ranks(merges)
        self.patterns = [compile_pattern(p) for p in patterns]
        self.ignore_merges = ignore_merges
        self.word_cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int]) -> None:
        """Appends the ids of `text` to out."""
        cache = self.word_cache
        for word in pre_split(text, self.patterns):
            ids = cache.get(word)
            if ids is None:
                mapped = word.encode("utf-8").decode("latin-1").translate(LATIN1_TO_GPT2)
                ids = self.encode_word(mapped)
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Merge the symbols of one word by merge rank (lowest first, leftmost on ties), the way
        llama.cpp's llm_tokenizer_bpe_session does with its priority queue."""
        token_to_id = self.token_to_id
        if self.ignore_merges and word in token_to_id:
            return (token_to_id[word],)
        syms = list(word)
        n = len(syms)
        if n > 1:
            ranks = self.ranks
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

    def piece(self, text: str, token_type: int) -> bytes:
        """The bytes a normal or byte token stands for: its text in GPT-2's alphabet, decoded."""
        if token_type not in (TOKEN_NORMAL, TOKEN_BYTE):
            return b""
        try:
            return bytes(CHAR_TO_BYTE[c] for c in text)
        except KeyError:  # not in the GPT-2 alphabet: keep such characters as UTF-8
            return b"".join(bytes((CHAR_TO_BYTE[c],)) if c in CHAR_TO_BYTE
                            else c.encode("utf-8") for c in text)
