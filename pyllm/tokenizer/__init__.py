"""Text <-> token ids from a GGUF file's vocabulary, identical to llama.cpp's.

  tokenizer.py    Tokenizer (special tokens, BOS/EOS, tokenize / detokenize) and StreamDecoder
  bpe.py          byte-level BPE (`tokenizer.ggml.model` gpt2) and GPT-2's byte alphabet
  pretokenize.py  the pre-tokenizer regexes of each `tokenizer.ggml.pre`
  spm.py          SentencePiece-style BPE with byte fallback (`llama`)
  vocab.py        token types and the checked reading of `tokenizer.ggml.*` metadata
"""
from pyllm.tokenizer.tokenizer import StreamDecoder, Tokenizer
from pyllm.tokenizer.vocab import (SPM_SPACE, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNDEFINED, TOKEN_UNKNOWN,
                                   TOKEN_UNUSED, TOKEN_USER_DEFINED)

__all__ = ["SPM_SPACE", "TOKEN_BYTE", "TOKEN_CONTROL", "TOKEN_NORMAL", "TOKEN_UNDEFINED", "TOKEN_UNKNOWN",
           "TOKEN_UNUSED", "TOKEN_USER_DEFINED", "StreamDecoder", "Tokenizer"]
