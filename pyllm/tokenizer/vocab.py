"""The vocabulary as GGUF stores it: token types, the end-of-generation texts, and the reading and
checking of `tokenizer.ggml.*` metadata (every malformed value raises TokenizerError, a GGUFError,
naming the key and the value). Not here: tokenizing (tokenizer.py, bpe.py, spm.py).
"""
from __future__ import annotations

import math
import numbers

import regex

from pyllm.errors import TokenizerError, UnsupportedModelError
from pyllm.tokenizer import pretokenize

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
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
              "<\uff5cend\u2581of\u2581sentence\uff5c>")
EOG_ONLY_TEXTS = ("<|eom_id|>",)


def as_list(md: dict, key: str, required: bool):
    if key not in md or md[key] is None:
        if required:
            raise TokenizerError(f"tokenizer metadata: missing key {key!r}")
        return None
    value = md[key]
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()  # numpy array
    if not isinstance(value, (list, tuple)):
        raise TokenizerError(f"tokenizer metadata: {key!r} must be an array, "
                             f"got {type(value).__name__} {short(value)}")
    return list(value)


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_elements(key: str, values: list, ok, what: str, fast_types: tuple = ()) -> None:
    # A vocabulary has ~50k-150k entries: when every element's type is one of fast_types, the
    # per-element check (ok) is not needed, and the type set is found at C speed.
    if fast_types and set(map(type, values)) <= set(fast_types):
        return
    for i, v in enumerate(values):
        if not ok(v):
            raise TokenizerError(f"tokenizer metadata: {key}[{i}] must be {what}, "
                                 f"got {type(v).__name__} {short(v)}")


def get_bool(md: dict, key: str, default: bool) -> bool:
    value = md.get(key)
    if value is None:
        return default
    if not isinstance(value, (bool, numbers.Integral)) or (is_int(value) and value not in (0, 1)):
        raise TokenizerError(f"tokenizer metadata: {key!r} must be a bool, got {short(value)}")
    return bool(value)


def read_metadata(md: dict, stacklevel: int = 2) -> dict:
    """The Tokenizer's constructor arguments from GGUF metadata given as plain Python values
    (strings, ints, floats, lists). Raises TokenizerError naming the key and value for malformed
    metadata and UnsupportedModelError for a tokenizer model other than 'gpt2' or 'llama'."""
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("tokenizer metadata: missing key 'tokenizer.ggml.model'")
    if not isinstance(model, str):
        raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.model' must be a string, "
                             f"got {short(model)}")
    if model not in ("gpt2", "llama"):
        raise UnsupportedModelError(f"tokenizer model {model!r} is not supported "
                                    f"(supported: 'gpt2', 'llama')")
    pre = md.get("tokenizer.ggml.pre", "") or ""
    if not isinstance(pre, str):
        raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.pre' must be a string, "
                             f"got {short(pre)}")

    tokens = as_list(md, "tokenizer.ggml.tokens", required=True)
    check_elements("tokenizer.ggml.tokens", tokens, lambda v: isinstance(v, str), "a string", (str,))
    n_vocab = len(tokens)
    if n_vocab == 0:
        raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.tokens' is empty")
    # llama.cpp renames empty tokens so that every text maps to one id
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]

    token_types = as_list(md, "tokenizer.ggml.token_type", required=False)
    if token_types is None:
        token_types = [TOKEN_NORMAL] * n_vocab
    else:
        in_range = set(map(type, token_types)) <= {int} and (not token_types or 0 <= min(token_types) and max(token_types) <= 6)
        if not in_range:
            check_elements("tokenizer.ggml.token_type", token_types,
                            lambda v: is_int(v) and 0 <= v <= 6, "an int token type in 0..6")
            token_types = [int(t) for t in token_types]
    if len(token_types) != n_vocab:
        raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.token_type' has "
                             f"{len(token_types)} entries, the vocabulary has {n_vocab}")

    scores = as_list(md, "tokenizer.ggml.scores", required=False)
    if scores is not None:
        fast = set(map(type, scores)) <= {float} and not any(map(math.isnan, scores))
        if not fast:
            check_elements("tokenizer.ggml.scores", scores,
                            lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                            and not math.isnan(v), "a number (not NaN)")
        if len(scores) != n_vocab:
            raise TokenizerError(f"tokenizer metadata: 'tokenizer.ggml.scores' has "
                                 f"{len(scores)} entries, the vocabulary has {n_vocab}")
        scores = [float(s) for s in scores]

    merges = None
    if model == "gpt2":
        merges = as_list(md, "tokenizer.ggml.merges", required=True)
        # (Each merge's separator is checked where the merges are split, in __init__.)
        check_elements("tokenizer.ggml.merges", merges, lambda v: isinstance(v, str), "a string", (str,))
    else:
        for i, (text, ttype) in enumerate(zip(tokens, token_types)):
            if ttype == TOKEN_BYTE and regex.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) is None:
                raise TokenizerError(f"tokenizer metadata: byte token {i} has text "
                                     f"{short(text)}, expected '<0xHH>'")

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
        if not is_int(value) or not 0 <= value < n_vocab:
            raise TokenizerError(f"tokenizer metadata: {full!r} = {short(value)} is not a "
                                 f"token id (vocabulary size {n_vocab})")
        special_ids[name] = int(value)

    if model == "gpt2":
        default_bos = pretokenize.lookup(pre, stacklevel=stacklevel + 1).add_bos
        add_bos = get_bool(md, "tokenizer.ggml.add_bos_token", default_bos)
        add_space_prefix = get_bool(md, "tokenizer.ggml.add_space_prefix", False)
    else:
        add_bos = get_bool(md, "tokenizer.ggml.add_bos_token", True)
        add_space_prefix = get_bool(md, "tokenizer.ggml.add_space_prefix", True)
    add_eos = get_bool(md, "tokenizer.ggml.add_eos_token", False)
    if add_bos and special_ids["bos"] is None:
        raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.add_bos_token' is true but "
                             "there is no 'tokenizer.ggml.bos_token_id'")
    if add_eos and special_ids["eos"] is None:
        raise TokenizerError("tokenizer metadata: 'tokenizer.ggml.add_eos_token' is true but "
                             "there is no 'tokenizer.ggml.eos_token_id'")

    return dict(model=model, pre=pre, tokens=tokens, token_types=token_types, scores=scores, merges=merges,
                special_ids=special_ids, add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix)
