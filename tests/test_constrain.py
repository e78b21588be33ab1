"""Constrained decoding on the default model: 50 JSON schemas whose greedy output `jsonschema`
validates, JSON mode, a regex, a Lark grammar, errors before compute, finish_reason on max_tokens,
and the sampler's bitmask itself (a token outside the mask is never chosen)."""
import json

import jsonschema
import numpy as np
import pytest

import pyllm
from pyllm import _core
from pyllm.model import Completion

S = {"type": "string", "maxLength": 12}          # bounded strings: the output must end in budget
N = {"type": "integer", "minimum": 0, "maximum": 100}


def _schemas() -> list[dict]:
    obj = lambda props, req=None: {"type": "object", "properties": props,
                                   "required": list(props) if req is None else req, "additionalProperties": False}
    out = [
        obj({"name": S}), obj({"name": S, "age": N}), obj({"city": S, "country": S}),
        obj({"title": S, "year": {"type": "integer", "minimum": 1900, "maximum": 2030}}),
        obj({"ok": {"type": "boolean"}}), obj({"count": {"type": "integer", "minimum": -5, "maximum": 5}}),
        obj({"score": {"type": "number", "minimum": 0, "maximum": 1}}),
        obj({"temperature": {"type": "number", "minimum": -50, "maximum": 50}}),
        obj({"color": {"enum": ["red", "green", "blue"]}}),
        obj({"size": {"enum": ["S", "M", "L", "XL"]}, "qty": N}),
        obj({"status": {"enum": ["open", "closed"]}, "id": N}),
        obj({"answer": {"enum": ["yes", "no", "maybe"]}}),
        obj({"level": {"enum": [1, 2, 3]}}),
        obj({"tags": {"type": "array", "items": S, "maxItems": 3}}),
        obj({"numbers": {"type": "array", "items": N, "minItems": 1, "maxItems": 4}}),
        obj({"flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}}),
        obj({"person": obj({"name": S, "age": N})}),
        obj({"address": obj({"street": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})}),
        obj({"point": obj({"x": N, "y": N})}),
        obj({"a": obj({"b": obj({"c": N})})}),
        obj({"name": S, "email": S}, req=["name"]),
        obj({"name": S, "nickname": S, "age": N}, req=["name", "age"]),
        obj({"id": N, "note": S}, req=["id"]),
        obj({"x": N, "y": N, "z": N}),
        obj({"first": S, "last": S, "age": N, "member": {"type": "boolean"}}),
        obj({"items": {"type": "array", "items": obj({"name": S, "price": N}), "maxItems": 2}}),
        obj({"matrix": {"type": "array", "items": {"type": "array", "items": N, "maxItems": 2}, "maxItems": 2}}),
        obj({"pair": {"type": "array", "prefixItems": [S, N], "items": False, "minItems": 2}}),
        obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
        obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}),
        obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}),
        obj({"word": {"type": "string", "minLength": 2, "maxLength": 6}}),
        obj({"value": {"anyOf": [N, {"type": "null"}]}}),
        obj({"value": {"oneOf": [{"type": "boolean"}, {"enum": ["n/a"]}]}}),
        obj({"kind": {"const": "fruit"}, "name": S}),
        obj({"version": {"const": 2}, "ok": {"type": "boolean"}}),
        obj({"percent": {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 5}}),
        obj({"ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10}}),
        obj({"user": obj({"id": N, "roles": {"type": "array", "items": {"enum": ["admin", "user"]}, "maxItems": 2}})}),
        obj({"book": obj({"title": S, "author": obj({"name": S})})}),
        {"type": "array", "items": N, "minItems": 1, "maxItems": 3},
        {"type": "array", "items": S, "maxItems": 3},
        {"type": "array", "items": obj({"k": S}), "maxItems": 2},
        {"enum": ["alpha", "beta", "gamma"]},
        {"type": "integer", "minimum": 10, "maximum": 20},
        {"type": "boolean"},
        {"type": "string", "maxLength": 10},
        obj({"name": S, "meta": {"type": "object", "properties": {"k": S}, "additionalProperties": False}}, req=["name"]),
        obj({"values": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 9}, "maxItems": 3}}),
        {"$defs": {"pt": obj({"x": N, "y": N})}, **obj({"start": {"$ref": "#/$defs/pt"}, "end": {"$ref": "#/$defs/pt"}})},
    ]
    return out


SCHEMAS = _schemas()
assert len(SCHEMAS) == 50


@pytest.fixture(scope="module")
def model():
    m = pyllm.Model("smollm2-135m-instruct", n_ctx=1024)
    yield m
    m.close()


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_schema_output_validates(model, i):
    schema = SCHEMAS[i]
    out = model.create_chat_completion(
        [{"role": "user", "content": f"Reply with JSON matching this schema: {json.dumps(schema)}"}],
        max_tokens=96, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
    choice = out["choices"][0]
    text = choice["message"]["content"]
    # 96 tokens is enough for every schema here (bounded strings and arrays): a "length" finish
    # would mean the constraint let the model wander.
    assert choice["finish_reason"] == "stop", (text, choice["finish_reason"])
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode(model):
    out = model.create_chat_completion([{"role": "user", "content": "Describe a cat as a JSON object."}],
                                       max_tokens=64, temperature=0, response_format={"type": "json_object"})
    choice = out["choices"][0]
    text = choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # hit max_tokens inside the object: documented as "length", the text a valid prefix
        assert choice["finish_reason"] == "length" and text.startswith("{")


def test_max_tokens_inside_object_says_length(model):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    info = Completion()
    text = model.generate("Write a long story as JSON.", max_tokens=8, temperature=0, info=info,
                          response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert info.finish_reason == "length"
    assert text.startswith('{"story": "')
    with pytest.raises(ValueError):
        json.loads(text)


def test_regex(model):
    info = Completion()
    text = model.generate("The date today is ", max_tokens=20, temperature=0, info=info,
                          grammar={"regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"})
    import re
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text), text
    assert info.finish_reason == "stop"


def test_regex_sampled_many_seeds(model):
    import re
    for seed in range(5):
        text = model.generate("Pick a colour:", max_tokens=10, temperature=1.0, seed=seed,
                              grammar={"regex": "(red|green|blue)!"})
        assert re.fullmatch("(red|green|blue)!", text), text


def test_lark_grammar(model):
    grammar = r'''
start: "The answer is " answer "."
answer: NUMBER " " UNIT
NUMBER: /[1-9][0-9]?/
UNIT: "apples" | "pears"
'''
    text = model.create_completion("Q: How many apples?\nA:", grammar=grammar, max_tokens=20, temperature=0)
    t = text["choices"][0]["text"]
    import re
    assert re.fullmatch(r"The answer is [1-9][0-9]? (apples|pears)\.", t), t


@pytest.mark.parametrize("kwargs", [
    {"grammar": {"regex": "(("}},
    {"grammar": "start: undefined_rule"},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objectx"}}}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "(["}}}},
    {"response_format": {"type": "json_schema"}},
    {"response_format": {"type": "xml"}},
    {"response_format": "json"},
    {"grammar": {"regex": "a", "lark": "b"}},
])
def test_invalid_constraint_errors_before_compute(model, kwargs):
    model.generate("warm", max_tokens=1, temperature=0)
    cached = list(model._cached)
    with pytest.raises(pyllm.GrammarError):
        model.generate("Something entirely different", max_tokens=4, **kwargs)
    assert model._cached == cached  # nothing was evaluated


def test_invalid_constraint_in_chat_api(model):
    with pytest.raises(pyllm.GrammarError):
        model.create_chat_completion([{"role": "user", "content": "hi"}],
                                     response_format={"type": "json_schema", "json_schema": {"schema": {"type": 3}}})


def test_greedy_sampling_is_the_first_allowed_maximum():
    """Greedy without penalties takes a one-pass path (no candidate array): it must pick what the
    general path picks, the first maximum over allowed, non-NaN logits; ties, NaN and masked ids
    included. The reference is numpy's argmax (first maximum) over the same masked logits."""
    rng = np.random.default_rng(3)
    n = 1000
    greedy = _core.Sampler(n, temperature=0.0)
    for trial in range(50):
        logits = rng.integers(-5, 5, size=n).astype(np.float32)   # many ties
        logits[rng.integers(0, n, size=20)] = np.nan
        allowed = rng.random(n) < 0.5
        mask = np.zeros((n + 31) // 32, np.uint32)
        for t in np.flatnonzero(allowed):
            mask[t >> 5] |= np.uint32(1 << (t & 31))
        ref = np.where(allowed & ~np.isnan(logits), logits, -np.inf)
        assert greedy.sample(logits, mask) == int(np.argmax(ref))
        clean = np.where(np.isnan(logits), -np.inf, logits)
        assert greedy.sample(logits) == int(np.argmax(clean))
    with pytest.raises(ValueError, match="no allowed token"):
        greedy.sample(np.where(np.arange(n) == 5, np.nan, 1.0).astype(np.float32),
                      np.asarray([1 << 5] + [0] * ((n + 31) // 32 - 1), np.uint32))


def test_sampler_mask_is_obeyed():
    # A flat distribution over 100 ids and a mask allowing 3: only those may come out, greedy or
    # sampled, and an all-zero mask is an error, not a crash.
    n = 100
    logits = np.zeros(n, np.float32)
    logits[7] = 10.0  # the unmasked favourite must be skipped
    mask = np.zeros((n + 31) // 32, np.uint32)
    for t in (3, 40, 99):
        mask[t >> 5] |= np.uint32(1 << (t & 31))
    greedy = _core.Sampler(n, temperature=0.0)
    assert greedy.sample(logits, mask) == 3
    sampler = _core.Sampler(n, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    seen = {sampler.sample(logits, mask) for _ in range(300)}
    assert seen == {3, 40, 99}
    ids, probs = sampler.distribution(logits, mask)
    assert sorted(ids.tolist()) == [3, 40, 99] and abs(float(probs.sum()) - 1) < 1e-6
    with pytest.raises(ValueError):
        sampler.sample(logits, np.zeros_like(mask))
    with pytest.raises(ValueError):
        sampler.sample(logits, mask[:1])


def test_tokenizer_view_bytes(model):
    from pyllm.generate.constrain import _GGUFTokenizerWrapper
    w = _GGUFTokenizerWrapper(model.tokenizer)
    tok = model.tokenizer
    ids = tok.tokenize("Hello, world! {\"a\": 1}", add_special=False)
    assert b"".join(w.tokens[i] for i in ids) == "Hello, world! {\"a\": 1}".encode()
    for i in tok.eog_ids:
        assert w.tokens[i].startswith(b"\xff") and i in w.special_token_ids


def test_cli_json_schema_and_errors(tmp_path, capsys):
    from pyllm import cli
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(schema))
    assert cli.main(["run", "The capital of France as JSON:", "--json-schema", str(f), "--temp", "0", "-n", "40"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), schema)
    g = tmp_path / "g.lark"
    g.write_text('start: "yes" | "no"\n')
    assert cli.main(["run", "Is the sky blue?", "--grammar", str(g), "--temp", "0", "-n", "5"]) == 0
    assert capsys.readouterr().out.strip() in ("yes", "no")
    f.write_text("{not json")
    assert cli.main(["run", "x", "--json-schema", str(f)]) == 1
    assert cli.main(["run", "x", "--regex", "(("]) == 1
    assert "does not compile" in capsys.readouterr().err
