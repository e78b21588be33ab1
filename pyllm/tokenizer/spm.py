"""SentencePiece-style BPE (`tokenizer.ggml.model` = "llama": Llama 2, Mistral, Gemma, Phi-3):
spaces written as U+2581, characters merged by the vocabulary's scores (highest first), and
characters that are no token written as byte tokens `<0xHH>`, as llama.cpp's llm_tokenizer_spm.

Not here: the space prefix and special tokens (tokenizer.py), the vocabulary's metadata (vocab.py).
"""
from __future__ import annotations

import heapq
from typing import Sequence

from pyllm.tokenizer.vocab import SPM_SPACE, TOKEN_BYTE, TOKEN_NORMAL


class SPM:
    """Text fragments (no special tokens in them) to ids, and token ids back to bytes."""

    def __init__(self, token_to_id: dict[str, int], scores: Sequence[float] | None, unk_id: int | None):
        self.token_to_id = token_to_id
        self.scores = scores
        self.unk_id = unk_id
        self.byte_ids = self._byte_tokens()   # (256,) token id of each byte value, or None

    def _byte_tokens(self) -> list[int | None]:
        """Token id for each byte value: '<0xHH>' tokens, else a one-character token of that byte
        (llama.cpp's byte_to_token), else None."""
        ids: list[int | None] = [None] * 256
        for b in range(256):
            tid = self.token_to_id.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = self.token_to_id.get(chr(b))
            ids[b] = tid
        return ids

    def encode(self, text: str, out: list[int]) -> None:
        """llama.cpp's llm_tokenizer_spm: start from single characters, repeatedly merge the
        adjacent pair whose concatenation is the vocabulary token of highest score (leftmost on
        ties); symbols that are not tokens are emitted as byte tokens. Spaces become U+2581 first.
        Appends the ids of `text` to out."""
        token_to_id = self.token_to_id
        scores = self.scores
        syms = list(text.replace(" ", SPM_SPACE))
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
                    tid = self.byte_ids[b]
                    if tid is None:
                        tid = self.unk_id
                    if tid is not None:
                        out.append(tid)
            i = nxt[i]


    def piece(self, text: str, token_type: int) -> bytes:
        """The bytes a normal or byte token stands for: U+2581 -> space, '<0xHH>' -> that byte."""
        if token_type == TOKEN_NORMAL:
            return text.replace(SPM_SPACE, " ").encode("utf-8")
        if token_type == TOKEN_BYTE:
            return bytes((int(text[3:5], 16),))
        return b""
