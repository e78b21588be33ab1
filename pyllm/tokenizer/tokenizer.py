"""Tokenizer and streaming detokenizer built from GGUF tokenizer metadata, matching llama.cpp's
token ids: byte-level BPE (`gpt2`, pre-tokenizer chosen by `tokenizer.ggml.pre`; bpe.py,
pretokenize.py) and SentencePiece-style BPE with byte fallback (`llama`; spm.py). This file holds
what both share: special tokens split out of the text first, BOS/EOS, the space prefix, decoding.
Pure Python: it runs once per prompt, not per token. Not here: WordPiece/Unigram/RWKV
vocabularies, chat templates, sampling, stop strings (pyllm.generate.stop)."""
from __future__ import annotations

import codecs
from typing import Iterable

import numpy as np
import regex

from pyllm.errors import InvalidTokenError, TokenizerError
from pyllm.tokenizer import pretokenize
from pyllm.tokenizer.bpe import BPE
from pyllm.tokenizer.spm import SPM
from pyllm.tokenizer.vocab import (EOG_ONLY_TEXTS, EOG_TEXTS, TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED,
                                   is_int, read_metadata, short)

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
                                         f"token {short(text)} at ids {first[text]} and {i}")
                first[text] = i

        # End-of-generation tokens, found by id and by text as llama.cpp does; tokens that look
        # like control tokens are made CONTROL so they decode to nothing unless asked.
        eog: set[int] = set()
        for text in EOG_TEXTS + EOG_ONLY_TEXTS:
            tid = self._token_to_id.get(text)
            if tid is None:
                continue
            eog.add(tid)
            if self.token_types[tid] != TOKEN_CONTROL:
                self.token_types[tid] = TOKEN_CONTROL
            if self.eot_id is None and text in EOG_TEXTS:
                self.eot_id = tid
            if self.eom_id is None and text in EOG_ONLY_TEXTS:
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

        # The subword algorithm: byte-level BPE or SentencePiece (each: encode(text, out), piece()).
        self.subword: BPE | SPM
        if model == "gpt2":
            pre_tok = pretokenize.lookup(pre)
            self.subword = BPE(self._token_to_id, merges or [], pre_tok.patterns, pre_tok.ignore_merges)
        else:
            self.subword = SPM(self._token_to_id, scores, self.unk_id)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, md: dict) -> "Tokenizer":
        """Build from GGUF metadata given as plain Python values (strings, ints, floats, lists).
        Raises TokenizerError (a GGUFError) naming the key and value for malformed metadata and
        UnsupportedModelError for a tokenizer model other than 'gpt2' or 'llama'."""
        return cls(**read_metadata(md, stacklevel=3))

    # --- queries -----------------------------------------------------------------------------

    def _check_id(self, token_id) -> int:
        if not is_int(token_id) or not 0 <= token_id < self.n_vocab:
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
                    self.subword.encode(frag, out)
        else:
            prev_special = True  # the text after BOS / a special token gets the space prefix
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                else:
                    if self.add_space_prefix and prev_special:
                        frag = " " + frag
                    self.subword.encode(frag, out)
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
        return self.subword.piece(text, ttype)

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


def _restore_literals(fragment: str, literals: dict[str, str]) -> str:
    for marker, original in literals.items():
        if marker in fragment:
            fragment = fragment.replace(marker, original)
    return fragment
