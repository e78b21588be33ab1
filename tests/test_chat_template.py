"""Chat templates: the default model's own template and the built-ins against hand-written
expected prompts; sandbox escapes raise ChatTemplateError and run nothing; templates that loop
forever or build huge values are stopped by the limits."""
import sys

import jinja2
import pytest

from pyllm import ChatTemplateError
from pyllm.chat import template as ct
from pyllm.gguf import GGUFFile

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path):
    f = GGUFFile(smollm2_path)
    try:
        return ct.load(f.metadata, None, bos_token="<|im_start|>", eos_token="<|im_end|>")
    finally:
        f.close()


# --- the default model's template


def test_default_model_template_with_system(smollm2_template):
    assert smollm2_template.render(CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_default_model_template_adds_its_default_system_prompt(smollm2_template):
    text = smollm2_template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                    "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_default_model_prompt_tokens(smollm2_path):
    """The rendered special-token text becomes the special ids (no BOS: the model adds none)."""
    import pyllm
    from pyllm.chat.completions import chat_prompt_ids, chat_template_for
    with pyllm.Model(smollm2_path, n_ctx=64) as m:
        ids = chat_prompt_ids(m, CONVERSATION[:2], chat_template_for(m))
        im_start, im_end = m.tokenize("<|im_start|><|im_end|>", special=True, add_bos=False)
        assert ids[0] == im_start
        assert ids.count(im_start) == 3 and ids.count(im_end) == 2
        assert m.detokenize(ids, special=True) == ct.load(m.metadata).render(CONVERSATION[:2])


# --- built-ins


def test_builtin_chatml():
    assert ct.builtin("chatml").render(CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert ct.builtin("chatml").render(CONVERSATION[:2], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_builtin_llama3():
    t = ct.builtin("llama3", bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    assert t.render(CONVERSATION) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # llama3 trims the content
    assert t.render([{"role": "user", "content": "  hi \n"}], add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")


def test_builtin_mistral():
    t = ct.builtin("mistral", bos_token="<s>", eos_token="</s>")
    assert t.render(CONVERSATION) == "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]"
    assert t.render(CONVERSATION[1:2]) == "<s>[INST] Hi [/INST]"
    with pytest.raises(ChatTemplateError, match="roles"):
        t.render([{"role": "tool", "content": "x"}])


def test_load_override_name_file_and_source(tmp_path):
    md = {"tokenizer.chat_template": "{{ 'from the model' }}"}
    assert ct.load(md).render([]) == "from the model"
    assert ct.load(md, "ChatML").name == "chatml"
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}")
    assert ct.load(md, str(path)).render(CONVERSATION[1:3]) == "[user:Hi][assistant:Hello!]"
    assert ct.load(md, "{{ messages|length }}").render(CONVERSATION) == "4"
    with pytest.raises(ChatTemplateError, match="neither a file nor a built-in"):
        ct.load(md, "no-such-template")


def test_missing_template_says_how_to_give_one():
    with pytest.raises(ChatTemplateError, match="--chat-template"):
        ct.load({})
    with pytest.raises(ChatTemplateError, match="should be a string"):
        ct.load({"tokenizer.chat_template": 3})


def test_syntax_error_and_undefined_are_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ct.ChatTemplate("{% for %}")
    with pytest.raises(ChatTemplateError, match="undefined"):
        ct.ChatTemplate("{{ nothing.here }}").render([])


def test_globals_raise_exception_strftime_tojson_loopcontrols():
    t = ct.ChatTemplate("{{ strftime_now('%Y') | length }}|{{ messages[0] | tojson }}|"
                        "{% for i in range(9) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
                        "{% generation %}G{% endgeneration %}")
    assert t.render([{"role": "user", "content": "é<b>"}]) == '4|{"role": "user", "content": "é<b>"}|01G'
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ct.ChatTemplate("{{ raise_exception('roles must alternate') }}").render([])


# --- the sandbox

ESCAPES = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['sys'].modules['os'].popen('touch MARKER') }}",
    "{{ strftime_now.__globals__ }}",
    "{{ (''|attr('__class__')) }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ messages['__class__'] }}",
    "{{ os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ range.__globals__ }}",
    "{{ messages.append(1) }}",
    "{% set x = messages[0].update({'role': 'x'}) %}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_sandbox_escape_raises_and_runs_nothing(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = {"role": "user", "content": "hi"}
    with pytest.raises(ChatTemplateError):
        ct.ChatTemplate(payload).render([message])
    assert not (tmp_path / "MARKER").exists()
    assert message == {"role": "user", "content": "hi"}


def test_escape_payload_is_real_outside_the_sandbox(tmp_path, monkeypatch):
    """The first payload does run a command in an unsandboxed jinja2 Environment: the test
    above would catch a sandbox that lets it through."""
    monkeypatch.chdir(tmp_path)
    jinja2.Environment().from_string(ESCAPES[0]).render()
    assert (tmp_path / "MARKER").exists()


# --- limits

HOSTILE = {
    "nested loops, no output": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over a list": ("{% set l = range(100000)|list %}"
                                 "{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}"),
    "endless output": "{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "exponential macro": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                          "{{ f(40) }}"),
    "infinite recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "recursive loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "string repetition": "{{ 'a' * 1000000000 }}",
    "doubling with ~": "{% set s = 'aaaaaaaaaaaaaaaa' %}" + "{% set s = s ~ s %}" * 40 + "{{ s|length }}",
    "doubling with +": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}"),
    "integer power": "{{ 2 ** 100000000 }}",
    "center filter": "{{ 'a'|center(1000000000) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "indent": "{{ ('a\\n' * 1000000)|indent(100) }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000) }}",
    "replace": "{{ ('a' * 1000000).replace('a', 'bbbbbbbbbbbbbbbbbbbb') }}",
    "join": "{{ ('x' * 100000).join(['a', 'b'] * 1000) }}",
    "lipsum": "{{ lipsum(100000000) }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_template_is_stopped(name):
    with pytest.raises(ChatTemplateError):
        ct.ChatTemplate(HOSTILE[name]).render(CONVERSATION)


def test_time_budget_stops_a_loop():
    t = ct.ChatTemplate(HOSTILE["nested loops, no output"], max_steps=10**15, max_seconds=0.2)
    with pytest.raises(ChatTemplateError, match="ran for more than 0.2 s"):
        t.render([])


def test_time_budget_stops_slow_steps_promptly():
    """Each step is one slow C call (str.islower of 8M characters: 0.13 s measured here). The clock
    was read every 1024 steps, so such loops ran 7-25 s against a 5 s limit (issue 12 row 9); now
    the render stops within a step of the limit. The 3 s slack is for a loaded machine: the old
    check would only look at the clock after ~200 such calls (26 s)."""
    import time
    source = "{% set s = 'a' * 8000000 %}{% for i in range(100000) %}{% if s.islower() %}{% endif %}{% endfor %}"
    t = ct.ChatTemplate(source, max_seconds=0.5)
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="ran for more than 0.5 s"):
        t.render([])
    assert time.monotonic() - start < 0.5 + 3.0


# Keeps every big string it builds: 1000 distinct strings of 1M characters, 1 GB if not stopped
# (one such render reached 3.4 GB before the total cap, issue 12 row 9).
KEEPS_BIG_STRINGS = ("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                     "{% set ns.l = ns.l + [('x' * 1000000) ~ i] %}{% endfor %}{{ ns.l|length }}")


@pytest.mark.parametrize("max_built", [20_000_000, ct.MAX_BUILT])
def test_total_built_size_is_capped(max_built):
    """Peak Python memory of the render stays under the total cap (one byte per ASCII character)
    plus 16 MB for the string being built and jinja's own objects."""
    import tracemalloc
    t = ct.ChatTemplate(KEEPS_BIG_STRINGS, max_built=max_built)
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError, match=f"built more than {max_built} characters"):
            t.render([])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_built + 16_000_000


def test_slices_count_toward_the_total():
    t = ct.ChatTemplate("{% set s = 'x' * 1000000 %}{% for i in range(100) %}{% set t = s[i:] %}{% endfor %}",
                        max_built=10_000_000)
    with pytest.raises(ChatTemplateError, match="built more than"):
        t.render([])


def test_output_cap_is_configurable():
    t = ct.ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", max_chars=10)
    assert t.render([{"role": "user", "content": "x" * 10}]) == "x" * 10
    with pytest.raises(ChatTemplateError, match="output passed 10 characters"):
        t.render([{"role": "user", "content": "x" * 11}])


def test_limits_leave_real_conversations_alone(smollm2_template):
    """A long conversation with long messages renders under the default limits."""
    conversation = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 200}
                    for i in range(2000)]
    text = smollm2_template.render(conversation)
    assert text.count("<|im_start|>") == 2002 and len(text) > 2000 * 1000


def test_trace_function_is_restored():
    before = sys.gettrace()
    ct.builtin("chatml").render(CONVERSATION)
    assert sys.gettrace() is before
    with pytest.raises(ChatTemplateError):
        ct.ChatTemplate(HOSTILE["nested loops, no output"]).render([])
    assert sys.gettrace() is before
