"""Tokenizer tests: the real SmolLM2 vocabulary against llama.cpp's token ids (tests/data), the
streaming detokenizer and stop-string holdback, hostile inputs and metadata, and a small
synthetic SentencePiece vocabulary traced by hand."""
import copy
import json
import random
import time
from pathlib import Path

import pytest

from pyllm.errors import GGUFError, InvalidTokenError, TokenizerError, UnsupportedModelError
from pyllm.generate.stop import StopMatcher
from pyllm.tokenizer import SPM_SPACE, StreamDecoder, Tokenizer
from pyllm.tokenizer.pretokenize import PRE_TOKENIZERS, compile_pattern, pre_split

DATA = Path(__file__).parent / "data"
TOKENIZE_CASES = json.loads((DATA / "tokenize.json").read_text())
GREEDY_CASES = json.loads((DATA / "greedy.json").read_text())


@pytest.fixture(scope="module")
def smol_md(smollm2_path):
    """The model's tokenizer metadata as plain Python values (the gguf package is slow: once)."""
    from gguf import GGUFReader
    reader = GGUFReader(str(smollm2_path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def tok(smol_md):
    return Tokenizer.from_metadata(smol_md)


# ---------------------------------------------------------------------------------------------
# The real vocabulary against llama.cpp
# ---------------------------------------------------------------------------------------------

def test_metadata_read(tok):
    assert tok.model == "gpt2" and tok.pre == "smollm"
    assert tok.n_vocab == 49152
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, 2)
    assert tok.add_bos is False and tok.add_space_prefix is False
    assert {0, 2} <= tok.eog_ids and tok.is_eog(2) and not tok.is_eog(1)


@pytest.mark.parametrize("case", TOKENIZE_CASES,
                         ids=[f"{i}-{'sp' if c['special'] else 'txt'}"
                              for i, c in enumerate(TOKENIZE_CASES)])
def test_tokenize_matches_llama_cpp(tok, case):
    ids = tok.tokenize(case["text"], parse_special=case["special"])
    assert ids == case["ids"]
    # and back: special tokens give their text back only when asked
    assert tok.detokenize(ids, special=case["special"]) == case["text"]


def test_greedy_prompts_and_continuations(tok):
    for case in GREEDY_CASES:
        assert tok.tokenize(case["prompt"], parse_special=True) == case["prompt_ids"]
        assert tok.detokenize(case["continuation_ids"]) == case["continuation_text"]


def test_corpus_head_matches_llama_cpp(tok, fixture_json):
    text = (DATA / "wikitext_head.txt").read_text(encoding="utf-8")
    ids = tok.tokenize(text)
    assert len(ids) > 200
    assert ids[:64] == fixture_json("reference.json")["corpus_tokens_first_64"]
    assert tok.detokenize(ids) == text


def test_add_special(tok, smol_md):
    # SmolLM2 asks for no BOS: add_special changes nothing
    assert tok.tokenize("Hi", add_special=True) == tok.tokenize("Hi", add_special=False)
    with_bos = Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.add_bos_token": True,
                                        "tokenizer.ggml.add_eos_token": True})
    plain = tok.tokenize("Hi")
    assert with_bos.tokenize("Hi") == [1] + plain + [2]
    assert with_bos.tokenize("Hi", add_special=False) == plain


def test_control_tokens_decode_only_when_asked(tok):
    assert tok.token_bytes(2) == b""
    assert tok.token_bytes(2, special=True) == b"<|im_end|>"
    assert tok.detokenize([19556, 2, 905]) == "Hello world"
    assert tok.detokenize([19556, 2, 905], special=True) == "Hello<|im_end|> world"


def test_pre_tokenizer_is_chosen_by_name(tok, smol_md):
    text = "IT'S (hello) x 12345!!\n\n\n  end"
    ids = {"smollm": tok.tokenize(text)}
    for pre in ("default", "llama-bpe", "gpt2"):
        other = Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.pre": pre})
        ids[pre] = other.tokenize(text)
        assert other.detokenize(ids[pre]) == text
    # default splits punctuation runs first ("(" alone); llama3 keeps "\n\n\n " together
    assert ids["default"] != ids["smollm"] and ids["llama-bpe"] != ids["smollm"]
    assert ids["default"][:5] == [2901, 23, 67, 216, 24]
    assert ids["llama-bpe"][-3:] == [16506, 216, 1112]


def test_pre_tokenizer_splits():
    def split(name, text):
        return pre_split(text, [compile_pattern(p) for p in PRE_TOKENIZERS[name].patterns])
    assert split("smollm", "ab 1234 c's") == ["ab", " ", "1", "2", "3", "4", " c", "'s"]
    assert split("gpt2", "ab 1234  x\n") == ["ab", " 1234", " ", " x", "\n"]
    assert split("llama-bpe", "Hello world 12345!!\n\n") == \
        ["Hello", " world", " ", "123", "45", "!!\n\n"]
    assert split("llama-bpe", "I'M HERE") == ["I", "'M", " HERE"]
    assert split("qwen2", "a 123") == ["a", " ", "1", "2", "3"]
    # every character ends up in some word, matched or not
    weird = "\t\u00a0\x00 ok\u2028"
    for name in ("default", "gpt2", "smollm", "llama-bpe", "qwen2", "falcon", "bloom"):
        assert "".join(split(name, weird)) == weird


def test_unknown_pre_tokenizer_warns_and_uses_gpt2(smol_md, tok):
    from pyllm.tokenizer import pretokenize
    pretokenize.forget_warnings()                     # the warning comes once per process
    with pytest.warns(UserWarning, match="unknown pre-tokenizer 'no-such-pre'"):
        other = Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.pre": "no-such-pre"})
    gpt2 = Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.pre": "gpt2"})
    assert other.tokenize("x 12345 y") == gpt2.tokenize("x 12345 y")


# ---------------------------------------------------------------------------------------------
# Hostile input
# ---------------------------------------------------------------------------------------------

def test_broken_utf8_surrogates_and_nul(tok):
    # invalid UTF-8 bytes become U+FFFD, as llama.cpp does
    raw = b"ab\xff\xfe cd\xe2\x82 \xf0\x9f"
    ids = tok.tokenize(raw)
    assert ids == tok.tokenize(raw.decode("utf-8", errors="replace"))
    assert "\ufffd" in tok.detokenize(ids)
    # lone surrogates cannot be UTF-8: they are replaced by U+FFFD (documented in tokenize)
    assert tok.tokenize("a\ud800b\udfffc") == tok.tokenize("a\ufffdb\ufffdc")
    # NUL is an ordinary byte
    ids = tok.tokenize("a\x00b\x00")
    assert tok.detokenize(ids) == "a\x00b\x00"
    with pytest.raises(TypeError):
        tok.tokenize(123)


def test_invalid_ids(tok):
    for bad in (-1, tok.n_vocab, 10**12, 1.5, "3"):
        with pytest.raises(InvalidTokenError, match="49152"):
            tok.detokenize([5, bad])
        with pytest.raises(InvalidTokenError):
            tok.token_bytes(bad)
    with pytest.raises(InvalidTokenError, match=r"-1\b"):
        tok.stream_decoder().feed(-1)
    # numpy integers are token ids too
    import numpy as np
    assert tok.detokenize(np.array([19556, 905], dtype=np.int64)) == "Hello world"


def test_every_token_decodes(tok):
    from pyllm.tokenizer import TOKEN_NORMAL
    from pyllm.tokenizer.bpe import BYTE_TO_CHAR
    for i in range(tok.n_vocab):
        piece = tok.token_bytes(i, special=True)
        if tok.token_types[i] == TOKEN_NORMAL:   # the GPT-2 byte alphabet maps back exactly
            assert "".join(BYTE_TO_CHAR[b] for b in piece) == tok.tokens[i]
        else:
            assert piece == tok.tokens[i].encode("utf-8")


def test_bytes_without_a_token_are_dropped(tok):
    # SmolLM2 has no token for byte 0x04; llama.cpp drops such bytes, and so do we
    assert "\x04" not in {tok.token_bytes(i).decode("latin-1") for i in range(tok.n_vocab)}
    assert tok.detokenize(tok.tokenize("a\x04b")) == "ab"


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------

def test_stream_emoji_comes_out_whole(tok):
    text = "emoji: 😀🎉👍🏽 done"
    ids = tok.tokenize(text)
    # the emoji are split across tokens that are not UTF-8 on their own
    broken = [i for i in ids if _not_utf8(tok.token_bytes(i))]
    assert broken
    dec = StreamDecoder(tok)
    pieces = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "" in pieces[:-1]                   # something was held back
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


@pytest.mark.parametrize("special", [False, True])
def test_stream_equals_full_decode_random(tok, special):
    rng = random.Random(1234 + special)
    for _ in range(200):
        ids = [rng.randrange(tok.n_vocab) for _ in range(rng.randrange(1, 40))]
        dec = tok.stream_decoder(special=special)
        streamed = "".join(dec.feed(i) for i in ids) + dec.flush()
        assert streamed == tok.detokenize(ids, special=special)


def test_stream_byte_tokens_for_every_byte_split(tok):
    # a 4-byte character fed one byte-token at a time appears only when complete
    byte_id = {tok.token_bytes(i): i for i in range(tok.n_vocab) if len(tok.token_bytes(i)) == 1}
    dec = StreamDecoder(tok)
    out = [dec.feed(byte_id[bytes((b,))]) for b in "🏽".encode("utf-8")]
    assert out == ["", "", "", "🏽"]
    # a stream that ends in the middle of a character flushes a replacement character
    dec = StreamDecoder(tok)
    assert dec.feed(byte_id[b"\xf0"]) == "" and dec.flush() == "\ufffd"


def test_stop_matcher_basic():
    m = StopMatcher(["</s>", "\nUser:"])
    assert m.feed("Hello <") == "Hello "
    assert m.feed("b>") == "<b>"
    assert m.feed(" ok</") == " ok"
    assert not m.stopped
    assert m.feed("s> trailing") == ""
    assert m.stopped and m.stop_string == "</s>"
    assert m.feed("more") == "" and m.flush() == ""

    m = StopMatcher(["\nUser:"])
    assert m.feed("a\nUse") == "a"
    assert m.flush() == "\nUse"               # stream ended without the stop: give it back


def test_stop_matcher_random_chunks():
    rng = random.Random(7)
    for _ in range(500):
        text = "".join(rng.choice("ab\n:") for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice("ab\n:") for _ in range(rng.randrange(1, 4)))
                 for _ in range(rng.randrange(1, 3))]
        hits = [text.find(s) for s in stops if s in text]
        expected = text[:min(hits)] if hits else text
        m = StopMatcher(stops)
        out, pos = [], 0
        while pos < len(text):
            step = rng.randrange(1, 5)
            out.append(m.feed(text[pos:pos + step]))
            # what is out so far never runs past the cut (no stop-string prefix leaked)
            assert expected.startswith("".join(out))
            pos += step
        out.append(m.flush())
        assert "".join(out) == expected
        assert m.stopped == bool(hits)


def test_stream_with_stop_over_tokens(tok):
    text = "The answer is 42.<|im_end|>ignored"
    ids = tok.tokenize(text)             # plain text: the stop string spans several tokens
    dec, stop = tok.stream_decoder(), StopMatcher(["<|im_end|>"])
    out = []
    for i in ids:
        out.append(stop.feed(dec.feed(i)))
        if stop.stopped:
            break
    assert stop.stopped and "".join(out) == "The answer is 42."


# ---------------------------------------------------------------------------------------------
# Metadata validation
# ---------------------------------------------------------------------------------------------

def _tiny_gpt2_md(**over):
    tokens = ["a", "b", "ab", "<|end|>"]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2",
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1, 1, 1, 3],
          "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.eos_token_id": 3}
    md.update(over)
    return md


def test_tiny_gpt2_vocab_works():
    tok = Tokenizer.from_metadata(_tiny_gpt2_md())
    assert tok.tokenize("abab") == [2, 2]
    assert tok.tokenize("aab<|end|>", parse_special=True) == [0, 2, 3]
    assert tok.eos_id == 3 and tok.is_eog(3)


def test_merges_split_at_the_first_space_after_the_first_character():
    # The fast path (str.split) and the exact rule (find(" ", 1)) must agree; a merge that starts
    # with a space takes the exact rule for the whole list.
    plain = Tokenizer.from_metadata(_tiny_gpt2_md(**{"tokenizer.ggml.merges": ["a b", "ab b"]}))
    assert plain.subword.ranks == {("a", "b"): 0, ("ab", "b"): 1}
    spaced = Tokenizer.from_metadata(_tiny_gpt2_md(**{"tokenizer.ggml.merges": ["a b", " a b", "a b"]}))
    assert spaced.subword.ranks == {("a", "b"): 0, (" a", "b"): 1}  # the first rank of a repeated pair wins


@pytest.mark.parametrize("over, match", [
    ({"tokenizer.ggml.merges": [" ab"]}, r"merges\[0\].*' ab'"),
    ({"tokenizer.ggml.tokens": ["a", "b", 7, "x"]}, r"tokenizer\.ggml\.tokens\[2\].*int 7"),
    ({"tokenizer.ggml.tokens": "ab"}, r"'tokenizer\.ggml\.tokens' must be an array"),
    ({"tokenizer.ggml.tokens": []}, r"'tokenizer\.ggml\.tokens' is empty"),
    ({"tokenizer.ggml.tokens": ["a", "b", "a", "c"]}, r"duplicate token 'a' at ids 0 and 2"),
    ({"tokenizer.ggml.token_type": [1, 1, 1]}, r"'tokenizer\.ggml\.token_type' has 3 entries.* 4"),
    ({"tokenizer.ggml.token_type": [1, 1, "1", 3]}, r"token_type\[2\].*str '1'"),
    ({"tokenizer.ggml.token_type": [1, 1, 9, 3]}, r"token_type\[2\].*9"),
    ({"tokenizer.ggml.scores": [0.0, 0.0]}, r"'tokenizer\.ggml\.scores' has 2 entries"),
    ({"tokenizer.ggml.scores": [0.0, "x", 0.0, 0.0]}, r"scores\[1\]"),
    ({"tokenizer.ggml.scores": [0.0, float("nan"), 0.0, 0.0]}, r"scores\[1\]"),
    ({"tokenizer.ggml.merges": ["a b", "ab"]}, r"merges\[1\].*'ab'"),
    ({"tokenizer.ggml.merges": None}, r"missing key 'tokenizer\.ggml\.merges'"),
    ({"tokenizer.ggml.eos_token_id": -1}, r"'tokenizer\.ggml\.eos_token_id' = -1 .*size 4"),
    ({"tokenizer.ggml.eos_token_id": 4}, r"'tokenizer\.ggml\.eos_token_id' = 4 "),
    ({"tokenizer.ggml.bos_token_id": "1"}, r"'tokenizer\.ggml\.bos_token_id' = '1'"),
    ({"tokenizer.ggml.padding_token_id": 2**40}, r"padding_token_id"),
    ({"tokenizer.ggml.add_bos_token": True}, r"add_bos_token.*no 'tokenizer\.ggml\.bos_token_id'"),
    ({"tokenizer.ggml.add_bos_token": "yes"}, r"'tokenizer\.ggml\.add_bos_token' must be a bool"),
    ({"tokenizer.ggml.model": None}, r"missing key 'tokenizer\.ggml\.model'"),
    ({"tokenizer.ggml.pre": 5}, r"'tokenizer\.ggml\.pre' must be a string"),
])
def test_bad_metadata(over, match):
    with pytest.raises(TokenizerError, match=match) as err:
        Tokenizer.from_metadata(_tiny_gpt2_md(**over))
    assert isinstance(err.value, GGUFError) and isinstance(err.value, ValueError)


def test_unsupported_tokenizer_model():
    with pytest.raises(UnsupportedModelError, match="'bert'"):
        Tokenizer.from_metadata(_tiny_gpt2_md(**{"tokenizer.ggml.model": "bert"}))


def test_bad_spm_byte_token():
    md = _spm_md()
    md["tokenizer.ggml.tokens"] = list(md["tokenizer.ggml.tokens"])
    md["tokenizer.ggml.tokens"][3 + 0x41] = "<0xZZ>"
    with pytest.raises(TokenizerError, match=r"byte token 68 .*'<0xZZ>'"):
        Tokenizer.from_metadata(md)


def test_long_pieces_round_trip():
    long_text = "\u00e9\u4e2d" * 5000           # a 25 000-byte user-defined token
    md = _tiny_gpt2_md(**{"tokenizer.ggml.tokens": ["a", "b", "ab", long_text],
                          "tokenizer.ggml.token_type": [1, 1, 1, 4]})
    tok = Tokenizer.from_metadata(md)
    ids = tok.tokenize("ab" + long_text + "a")      # user-defined tokens are always split out
    assert ids == [2, 3, 0]
    assert tok.detokenize(ids) == "ab" + long_text + "a"
    dec = tok.stream_decoder()
    assert "".join(dec.feed(i) for i in ids) + dec.flush() == "ab" + long_text + "a"


# ---------------------------------------------------------------------------------------------
# SentencePiece-style vocabulary (synthetic, traced by hand)
# ---------------------------------------------------------------------------------------------

_SPM_PIECES = [  # (text, score)
    (SPM_SPACE, -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0),
    ("r", -2.0), ("d", -2.0), ("a", -2.0), ("b", -2.0), ("c", -2.0),
    ("ll", -3.0), ("he", -4.0), ("llo", -5.0), ("hello", -6.0), (SPM_SPACE + "hello", -7.0),
    ("wo", -8.0), ("rld", -8.5), ("world", -9.0), (SPM_SPACE + "world", -9.5),
    ("ab", -1.5), ("bc", -1.5), ("aa", -1.2), ("rl", -8.2),
]


def _spm_md(**over):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + \
        [t for t, _ in _SPM_PIECES]
    types = [2, 3, 3] + [6] * 256 + [1] * len(_SPM_PIECES)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [s for _, s in _SPM_PIECES]
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores}
    md.update(over)
    return md


@pytest.fixture(scope="module")
def spm():
    return Tokenizer.from_metadata(_spm_md())


def _ids(tok, *texts):
    return [tok._token_to_id[t] for t in texts]


def test_spm_defaults(spm):
    assert (spm.unk_id, spm.bos_id, spm.eos_id) == (0, 1, 2)
    assert spm.add_bos and spm.add_space_prefix and not spm.add_eos


def test_spm_merges_by_score(spm):
    # ▁ h e l l o: "ll"(-3) first, then "he"(-4), "llo"(-5), "hello"(-6), "▁hello"(-7)
    assert spm.tokenize("hello", add_special=False) == _ids(spm, SPM_SPACE + "hello")
    assert spm.tokenize("hello world") == [1] + _ids(spm, SPM_SPACE + "hello",
                                                     SPM_SPACE + "world")
    # equal scores: the leftmost pair merges first
    assert spm.tokenize("abc", add_special=False) == _ids(spm, SPM_SPACE, "ab", "c")
    assert spm.tokenize("aaa", add_special=False) == _ids(spm, SPM_SPACE, "aa", "a")


def test_spm_higher_score_wins():
    pieces = dict(_SPM_PIECES)
    pieces["bc"] = -0.5                        # now "bc" beats "ab"
    md = _spm_md()
    md["tokenizer.ggml.scores"] = md["tokenizer.ggml.scores"][:259] + list(pieces.values())
    tok = Tokenizer.from_metadata(md)
    assert tok.tokenize("abc", add_special=False) == _ids(tok, SPM_SPACE, "a", "bc")


def test_spm_byte_fallback_and_decode(spm):
    ids = spm.tokenize("h\u00e9!", add_special=False)
    assert ids == _ids(spm, SPM_SPACE, "h") + [3 + 0xC3, 3 + 0xA9, 3 + 0x21]
    assert spm.detokenize(ids) == "h\u00e9!"            # leading space of the prefix removed
    assert spm.detokenize(ids, strip_leading_space=False) == " h\u00e9!"
    assert spm.token_bytes(3 + 0xC3) == b"\xc3"
    dec = spm.stream_decoder()
    assert [dec.feed(i) for i in ids] == [" ", "h", "", "\u00e9", "!"]


def test_spm_special_tokens_and_prefix(spm):
    # after a special token the text gets the space prefix again, like llama.cpp
    ids = spm.tokenize("hello</s>world", parse_special=True)
    assert ids == [1] + _ids(spm, SPM_SPACE + "hello") + [2] + _ids(spm, SPM_SPACE + "world")
    assert spm.detokenize(ids) == "hello world"
    assert spm.detokenize(ids, special=True) == "<s>hello</s> world"
    # without parse_special "</s>" is text: '<', '/', 's', '>' through byte fallback
    plain = spm.tokenize("</s>", add_special=False)
    assert 2 not in plain and spm.detokenize(plain) == "</s>"
    # unknown token text decodes only when asked
    assert spm.token_bytes(0) == b"" and spm.token_bytes(0, special=True) == b"<unk>"


def test_spm_no_space_prefix():
    tok = Tokenizer.from_metadata(_spm_md(**{"tokenizer.ggml.add_space_prefix": False,
                                              "tokenizer.ggml.add_bos_token": False}))
    assert tok.tokenize("hello") == _ids(tok, "hello")
    assert tok.tokenize(" hello") == _ids(tok, SPM_SPACE + "hello")
    assert tok.detokenize(tok.tokenize(" hello")) == " hello"


# ---------------------------------------------------------------------------------------------
# Speed (printed, not asserted)
# ---------------------------------------------------------------------------------------------

def test_tokenize_speed(tok):
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-test.txt"
    if shared.exists():
        text = shared.read_text(encoding="utf-8")[:100_000]
    else:
        text = (DATA / "wikitext_head.txt").read_text(encoding="utf-8") * 56
    fresh = Tokenizer.__new__(Tokenizer)
    fresh.__dict__.update(tok.__dict__)
    fresh.subword = copy.copy(tok.subword)
    fresh.subword.word_cache = {}             # cold cache, as for a first prompt
    start = time.perf_counter()
    ids = fresh.tokenize(text)
    elapsed = time.perf_counter() - start
    assert len(ids) > len(text) // 10
    print(f"\ntokenize: {len(text)} chars -> {len(ids)} tokens in {elapsed * 1000:.1f} ms "
          f"({len(text) / elapsed / 1e6:.2f} M chars/s)")
