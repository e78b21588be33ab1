"""Coverage-guided fuzzing of pyllm's input surfaces with atheris (libFuzzer for Python and its
native extensions): the GGUF reader, the tokenizer, the detokenizer and chat-template rendering.

    python3 tests/fuzz/fuzz.py gguf -max_total_time=600        # one target, ten minutes
    bash tools/fuzz.sh 20                                      # every target, 20 s each (CI)

A finding is any exception outside the typed errors pyllm promises for bad input, or a crash of
the process (a signal in the C++ reader); libFuzzer then writes the input as crash-* under
-artifact_prefix and exits non-zero. Seeds live in tests/fuzz/corpus/<target>/ (committed)."""
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import pyllm
    from pyllm import errors
    from pyllm.chat import template as chat_template
    from pyllm.gguf import GGUFFile
    from pyllm.tokenizer import Tokenizer

# What bad input may raise: pyllm's own errors, and the built-in ValueError/OSError family.
EXPECTED = (errors.PyllmError, ValueError, OSError)
_tmp = tempfile.NamedTemporaryFile(prefix="pyllm-fuzz-", suffix=".gguf", dir="/dev/shm" if os.path.isdir("/dev/shm") else None,
                                   delete=False)
_tokenizer = None


def tokenizer() -> Tokenizer:
    global _tokenizer
    if _tokenizer is None:
        from pyllm import hub
        with GGUFFile(hub.resolve(hub.DEFAULT_MODEL)) as f:
            _tokenizer = Tokenizer.from_metadata(f.metadata)
    return _tokenizer


def fuzz_gguf(data: bytes) -> None:
    with open(_tmp.name, "wb") as f:
        f.write(data)
    try:
        with GGUFFile(_tmp.name) as g:
            g.metadata
            for name in list(g.tensors)[:4]:
                g.tensor_bytes(name)
    except EXPECTED:
        pass


def fuzz_tokenize(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    special = fdp.ConsumeBool()
    text = fdp.ConsumeUnicodeNoSurrogates(len(data))
    ids = tokenizer().tokenize(text, parse_special=special)
    assert all(0 <= i < tokenizer().n_vocab for i in ids)


def fuzz_detokenize(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    tok = tokenizer()
    ids = [fdp.ConsumeIntInRange(-2, tok.n_vocab + 2) for _ in range(fdp.ConsumeIntInRange(0, 64))]
    special = fdp.ConsumeBool()
    try:
        text = tok.detokenize(ids, special=special)
    except EXPECTED:
        return
    decoder = tok.stream_decoder()
    streamed = "".join(decoder.feed(i) for i in ids) + decoder.flush()
    assert isinstance(text, str) and isinstance(streamed, str)


def fuzz_chat_template(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    source = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
    content = fdp.ConsumeUnicodeNoSurrogates(64)
    try:
        t = chat_template.ChatTemplate(source, "<s>", "</s>", max_seconds=0.5, max_steps=20_000)
        out = t.render([{"role": "system", "content": "s"}, {"role": "user", "content": content}])
    except errors.ChatTemplateError:
        return
    assert isinstance(out, str)


TARGETS = {"gguf": fuzz_gguf, "tokenize": fuzz_tokenize, "detokenize": fuzz_detokenize,
           "chat_template": fuzz_chat_template}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = sys.argv.pop(1)
    try:
        atheris.Setup(sys.argv, TARGETS[target])
        atheris.Fuzz()
    finally:
        os.unlink(_tmp.name)


if __name__ == "__main__":
    main()
