"""The OpenAI-shaped API on the real model (SmolLM2-135M-Instruct, greedy so it is deterministic):
shapes of chat/text completions and their streamed chunks, finish_reason stop vs length, stop
strings never shown, usage counts, and KV-cache prefix reuse across turns."""
import pytest

import pyllm
from pyllm import ChatTemplateError, ContextOverflowError
from pyllm.chat.completions import GenerationStats, chat_prompt_ids, chat_template_for

SYSTEM = {"role": "system", "content": "Be brief."}
SHORT = [SYSTEM, {"role": "user", "content": "Reply with one word: hello"}]            # ends by itself
PARIS = [SYSTEM, {"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=512) as m:
        yield m


def _check_head(response, model, obj, id_prefix):
    assert response["object"] == obj
    assert response["id"].startswith(id_prefix) and len(response["id"]) > len(id_prefix)
    assert isinstance(response["created"], int) and response["created"] > 1_600_000_000
    assert response["model"] == model.name


def test_chat_completion_shape_and_end_of_turn(model):
    r = model.create_chat_completion(SHORT, max_tokens=12, temperature=0)
    _check_head(r, model, "chat.completion", "chatcmpl-")
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    [choice] = r["choices"]
    assert set(choice) == {"index", "message", "finish_reason", "logprobs"}
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.strip() and "<|im_end|>" not in content and "<|im_start|>" not in content
    # No stop strings, fewer tokens than allowed: the model's end-of-turn token ended it.
    assert choice["finish_reason"] == "stop"
    usage = r["usage"]
    assert 0 < usage["completion_tokens"] < 12
    assert usage["prompt_tokens"] == len(chat_prompt_ids(model, SHORT, chat_template_for(model)))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The same prompt through the plain generator gives the same text.
    ids = chat_prompt_ids(model, SHORT, chat_template_for(model))
    assert model.generate(ids, max_tokens=12, temperature=0) == content


def test_finish_reason_length(model):
    r = model.create_chat_completion(SHORT, max_tokens=1, temperature=0)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 1
    full = model.create_chat_completion(SHORT, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    assert full.startswith(r["choices"][0]["message"]["content"])


def test_streamed_chunks(model):
    whole = model.create_chat_completion(SHORT, max_tokens=12, temperature=0)
    chunks = list(model.create_chat_completion(SHORT, max_tokens=12, temperature=0, stream=True))
    assert len(chunks) >= 3
    for c in chunks:
        _check_head(c, model, "chat.completion.chunk", "chatcmpl-")
        assert c["id"] == chunks[0]["id"]
        [choice] = c["choices"]
        assert set(choice) == {"index", "delta", "finish_reason", "logprobs"} and choice["index"] == 0
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    middle = chunks[1:-1]
    assert all(set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["delta"]["content"] for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_stop_strings_never_leak(model):
    full = model.create_chat_completion(PARIS, max_tokens=10, temperature=0)["choices"][0]["message"]["content"]
    pieces = [model.detokenize([t]) for t in model.tokenize(full, add_bos=False)]
    assert len(pieces) >= 4, full
    # A stop string that spans a token boundary, and one inside a single token.
    spanning = pieces[1][-2:] + pieces[2][:2]
    assert spanning in full
    for stop in (spanning, pieces[3].strip()[:2]):
        expected = full[:full.index(stop)]
        r = model.create_chat_completion(PARIS, max_tokens=10, temperature=0, stop=stop)
        assert r["choices"][0]["message"]["content"] == expected
        assert r["choices"][0]["finish_reason"] == "stop"
        streamed = [c["choices"][0]["delta"].get("content", "")
                    for c in model.create_chat_completion(PARIS, max_tokens=10, temperature=0, stop=[stop],
                                                          stream=True)]
        assert "".join(streamed) == expected
        assert not any(stop in s for s in streamed)
    # Several stops: the earliest occurrence wins; a stop that never appears changes nothing.
    r = model.create_chat_completion(PARIS, max_tokens=10, temperature=0, stop=[pieces[3].strip(), spanning, "@@"])
    assert r["choices"][0]["message"]["content"] == full[:full.index(spanning)]
    r = model.create_chat_completion(PARIS, max_tokens=10, temperature=0, stop="@@")
    assert r["choices"][0]["message"]["content"] == full


def test_prefix_reuse_across_turns(model):
    first_stats, second_stats = GenerationStats(), GenerationStats()
    turn1 = model.create_chat_completion(PARIS, max_tokens=6, temperature=0, stats=first_stats)
    conversation = PARIS + [turn1["choices"][0]["message"], {"role": "user", "content": "And of Spain?"}]
    turn2 = model.create_chat_completion(conversation, max_tokens=4, temperature=0, stats=second_stats)
    n1, n2 = turn1["usage"]["prompt_tokens"], turn2["usage"]["prompt_tokens"]
    assert second_stats.n_prompt == n2 and first_stats.n_prompt == n1
    # Everything of turn 1 (its prompt and the reply tokens evaluated) stays in the cache.
    assert second_stats.n_reused >= n1
    assert 0 < second_stats.n_evaluated <= n2 - n1
    assert second_stats.n_generated == turn2["usage"]["completion_tokens"]


def test_chat_returns_the_message_content(model):
    expected = model.create_chat_completion(SHORT, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    assert model.chat(SHORT, max_tokens=12, temperature=0) == expected
    # One user string is a conversation too (max_tokens=0: nothing is evaluated).
    assert model.chat("Hi", max_tokens=0) == ""
    # stream=True streams the same reply in pieces (issue 12: it was silently ignored).
    pieces = list(model.chat(SHORT, max_tokens=12, temperature=0, stream=True))
    assert len(pieces) >= 1 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == expected


def test_seeded_sampling_repeats(model):
    a = model.chat(SHORT, max_tokens=4, temperature=1.0, seed=1234)
    b = model.chat(SHORT, max_tokens=4, temperature=1.0, seed=1234)
    assert a == b


def test_builtin_template_override(model):
    """chatml renders this conversation exactly as the model's own template does, so the reply is
    the same; its <|im_end|> stop string is in place too."""
    own = model.create_chat_completion(SHORT, max_tokens=12, temperature=0)
    chatml = model.create_chat_completion(SHORT, max_tokens=12, temperature=0, chat_template="chatml")
    assert chatml["choices"][0]["message"] == own["choices"][0]["message"]
    assert chatml["usage"] == own["usage"]


def test_text_completion(model):
    r = model.create_completion("The capital of France is", max_tokens=3, temperature=0)
    _check_head(r, model, "text_completion", "cmpl-")
    [choice] = r["choices"]
    assert set(choice) == {"index", "text", "finish_reason", "logprobs"}
    assert choice["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 3
    assert r["usage"]["prompt_tokens"] == len(model.tokenize("The capital of France is", special=True))
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 3
    chunks = list(model.create_completion("The capital of France is", max_tokens=3, temperature=0, stream=True))
    for c in chunks:
        _check_head(c, model, "text_completion", "cmpl-")
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"] == r["usage"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    stopped = model.create_completion("The capital of France is", max_tokens=3, temperature=0,
                                      stop=choice["text"][2:4])
    assert stopped["choices"][0]["text"] == choice["text"][:2] and stopped["choices"][0]["finish_reason"] == "stop"


def test_bad_requests_fail_at_the_call(model):
    with pytest.raises(TypeError):
        model.create_chat_completion("not a list")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        model.create_chat_completion([{"content": "no role"}])
    with pytest.raises(TypeError, match=r"messages\[1\]"):
        model.create_chat_completion([SYSTEM, {"role": "user", "content": 5}])
    with pytest.raises(ValueError, match="max_tokens"):
        model.create_chat_completion(SHORT, max_tokens=-2)
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(ContextOverflowError, match="512"):
        model.create_chat_completion(long, stream=True)   # raised at the call, not at the first chunk
    with pytest.raises(ChatTemplateError, match="sandbox"):
        model.create_chat_completion(SHORT, chat_template="{{ cycler.__init__.__globals__.os }}")
    # completions.stream_text leaves these checks to the engine: still raised before any stream.
    with pytest.raises(ValueError, match="prompt is empty"):
        model.create_completion([], stream=True)
    with pytest.raises(ContextOverflowError, match="context holds 512"):
        model.create_completion(list(range(600)), stream=True)


def test_content_parts_are_joined(model):
    from pyllm.chat.completions import normalize_messages
    parts = [{"role": "user", "content": [{"type": "text", "text": "Reply with one word: "},
                                          {"type": "text", "text": "hello"}]}]
    assert normalize_messages(parts)[0]["content"] == "Reply with one word: hello"
    with pytest.raises(ValueError, match="text parts"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])


def test_help_shows_the_real_keywords():
    """help(Model.create_chat_completion) showed only **kwargs (issue 12, first use): the methods
    now carry completions.py's signatures, with self for the model."""
    import inspect
    import pydoc

    from pyllm.chat import completions
    from pyllm.model import Model
    for method, impl in ((Model.create_chat_completion, completions.create_chat_completion),
                         (Model.create_completion, completions.create_completion)):
        params = inspect.signature(method).parameters
        assert list(params)[0] == "self"
        assert list(params)[1:] == list(inspect.signature(impl).parameters)[1:]
        assert "kwargs" not in params and {"max_tokens", "temperature", "stream", "stop"} <= set(params)
        assert "max_tokens" in pydoc.render_doc(method, renderer=pydoc.plaintext)
