"""llama-cpp-python compatibility of the OpenAI-shaped functions (issue 13, item 5): code written
for `llama_cpp.Llama` passes `model=`, `seed=-1`, `logprobs`, `echo` and OpenAI's extra keywords."""
import numpy as np
import pytest

import pyllm

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=256) as m:
        yield m


def test_model_keyword_is_accepted_and_ignored(model):
    a = model.create_chat_completion(MESSAGES, model="gpt-3.5-turbo", max_tokens=6, temperature=0)
    b = model.create_chat_completion(MESSAGES, max_tokens=6, temperature=0)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["model"] == model.name   # the response names the model that answered
    c = model.create_completion("Hello", model="x", max_tokens=3, temperature=0, user="someone", n=1)
    assert c["choices"][0]["text"] == model.create_completion("Hello", max_tokens=3, temperature=0)["choices"][0]["text"]


def test_unknown_keywords_and_unsupported_values_are_refused(model):
    with pytest.raises(TypeError, match="bogus"):
        model.create_chat_completion(MESSAGES, bogus=1)
    with pytest.raises(ValueError, match="n=2"):
        model.create_chat_completion(MESSAGES, n=2)


def test_seed_minus_one_is_random(model):
    outs = {model.create_completion("My favourite animal is", max_tokens=8, temperature=1.5, top_k=0, top_p=1.0,
                                    min_p=0.0, seed=-1)["choices"][0]["text"] for _ in range(4)}
    assert len(outs) > 1   # four random seeds at temperature 1.5 over the whole vocabulary
    fixed = {model.create_completion("My favourite animal is", max_tokens=8, temperature=1.5, seed=3)["choices"][0]["text"]
             for _ in range(2)}
    assert len(fixed) == 1


def test_completion_logprobs_match_the_model(model):
    prompt = "The capital of France is"
    r = model.create_completion(prompt, max_tokens=4, temperature=0, logprobs=2)
    lp = r["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    ids = model.tokenize(prompt, special=True)
    gen = model.tokenize(r["choices"][0]["text"], add_bos=False)
    logits = model.logits(ids + gen)[len(ids) - 1]
    ref = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    assert lp["token_logprobs"][0] == pytest.approx(float(ref.max()), abs=1e-4)
    assert all(len(t) == 2 for t in lp["top_logprobs"])


def test_echo_prepends_the_prompt_and_its_logprobs(model):
    prompt = "Once upon a time"
    plain = model.create_completion(prompt, max_tokens=4, temperature=0)["choices"][0]["text"]
    r = model.create_completion(prompt, max_tokens=4, temperature=0, echo=True, logprobs=1)
    choice = r["choices"][0]
    assert choice["text"] == prompt + plain
    n_prompt = len(model.tokenize(prompt, special=True))
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == n_prompt + r["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None and all(x is not None and x <= 0 for x in lp["token_logprobs"][1:])
    streamed = "".join(c["choices"][0]["text"] for c in model.create_completion(prompt, max_tokens=4, temperature=0,
                                                                                 echo=True, stream=True))
    assert streamed == prompt + plain


def test_chat_logprobs_shape(model):
    r = model.create_chat_completion(MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = r["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == r["choices"][0]["message"]["content"]
    for t in content:
        assert set(t) == {"token", "logprob", "bytes", "top_logprobs"} and len(t["top_logprobs"]) == 3
        assert t["top_logprobs"][0]["logprob"] == pytest.approx(t["logprob"])   # greedy: the top one
        assert bytes(t["bytes"]).decode("utf-8", "replace") == t["token"]
    chunks = list(model.create_chat_completion(MESSAGES, max_tokens=4, temperature=0, logprobs=True, stream=True))
    streamed = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["content"]]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]
