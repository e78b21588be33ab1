"""Chat templates: turn a conversation (OpenAI-style messages) into the prompt text a model was
trained on, with the Jinja template stored in the GGUF (`tokenizer.chat_template`) or a built-in.

Templates come from strangers' files, so they run in jinja2's ImmutableSandboxedEnvironment (no
underscore attributes, no mutation of lists/dicts, `range` capped) plus limits the sandbox lacks:
a step and time budget (a trace function counts template lines and calls, so a loop without
output is stopped too, and reads the clock at every one of them), a cap on the size of every
string/list/int the template builds (checked around operators, calls, filters, slices and `~`), a
cap on the total size of all it builds in one render (so memory stays bounded however many big
values it keeps), and a cap on the output. Every failure is a ChatTemplateError; nothing outside
the template's own values is reachable. What the limits cannot interrupt: one C-level operation on
a value within the size caps (the slowest we found, `str.islower` of 8M characters, takes 0.13 s).
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import sys
import threading
import time
from typing import Any, Iterable, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pyllm.errors import ChatTemplateError

# ---------------------------------------------------------------------------------------------
# Built-in templates (for models whose GGUF has none, or to override a broken one)
# ---------------------------------------------------------------------------------------------
# Written for trim_blocks/lstrip_blocks: a line holding only a {% tag %} leaves no trace.

CHATML = """\
{% for message in messages %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

LLAMA3 = """\
{{- bos_token -}}
{% for message in messages %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{%- endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""

# Mistral-7B-Instruct v0.1/v0.2 style: no system role, so a system message is put in front of
# the next user message; the [/INST] closes the user turn, so there is no generation prompt.
MISTRAL = """\
{{- bos_token -}}
{% set ns = namespace(system='') %}
{% for message in messages %}
{% if message['role'] == 'system' %}
{% set ns.system = message['content'] %}
{% elif message['role'] == 'user' %}
[INST] {{ (ns.system + '\n\n' if ns.system else '') + message['content'] }} [/INST]
{%- set ns.system = '' %}
{% elif message['role'] == 'assistant' %}
{{ message['content'] }}{{ eos_token }}
{%- else %}
{{ raise_exception('the mistral template knows the roles system, user and assistant, not ' + message['role']) }}
{% endif %}
{% endfor %}
"""

# Gemma (1-3) instruction format, as llama.cpp's built-in writes it: no system role (system text
# goes before the first user message's, then a blank line), "model" for the assistant, every
# content trimmed.
GEMMA = """\
{{- bos_token -}}
{% set ns = namespace(system='') %}
{% for message in messages %}
{% if message['role'] == 'system' %}
{% set ns.system = ns.system + (message['content'] | trim) %}
{% else %}
{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}
<start_of_turn>{{ role }}
{% if ns.system and role != 'model' %}
{{ ns.system }}

{% set ns.system = '' %}
{% endif %}
{{ message['content'] | trim }}<end_of_turn>
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<start_of_turn>model
{% endif %}
"""

BUILTIN_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "gemma": GEMMA}
# End-of-turn text of each built-in, used as a stop string too: with a model whose vocabulary
# lacks the special token, the marker arrives as plain text and must still end the reply.
BUILTIN_STOPS = {"chatml": ["<|im_end|>"], "llama3": ["<|eot_id|>"], "mistral": [], "gemma": ["<end_of_turn>"]}
# Architectures whose instruction format is fixed by the family: a file of these with no
# tokenizer.chat_template gets its family's built-in (Gemma 3 270M's GGUF carries none).
ARCH_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}

# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------

MAX_CHARS = 8_000_000        # any string/list the template builds, and the output
MAX_INT_BITS = 65_536        # any integer it builds
MAX_BUILT = 256_000_000      # all strings/lists it builds in one render, summed (memory bound)
MAX_STEPS = 2_000_000        # template lines and Python calls while rendering
MAX_SECONDS = 5.0            # wall-clock budget of one render
MAX_JSON_INDENT = 16
# A run of 7+ digits in a format string is a width or precision of a million or more.
_HUGE_FORMAT_WIDTH = re.compile(r"\d{7,}")


def _limit(what: str) -> ChatTemplateError:
    return ChatTemplateError(f"chat template stopped: {what}")


# The budget of the render running on this thread (sys.settrace is per thread too), or None.
_current = threading.local()


def _check_value(value: Any) -> Any:
    """Raises if a value built by the template is over the size limits; returns it otherwise.
    Its size is charged to the render's total (a value passed through unchanged is charged again:
    the total over-counts, never under-counts, what the render holds)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise _limit(f"it built an integer of {value.bit_length()} bits (limit {MAX_INT_BITS})")
    elif isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        if len(value) > MAX_CHARS:
            raise _limit(f"it built a {type(value).__name__} of {len(value)} items (limit {MAX_CHARS})")
        budget = getattr(_current, "budget", None)
        if budget is not None:
            budget.charge(len(value))
    return value


def _check_args(args: Iterable[Any]) -> None:
    """Integer arguments are counts and widths: a huge one means a huge result."""
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise _limit(f"an argument of {a} is over the size limit {MAX_CHARS}")


def _check_format_string(fmt: Any) -> None:
    if isinstance(fmt, str) and _HUGE_FORMAT_WIDTH.search(fmt):
        raise _limit("a format string asks for a width or precision of a million or more")


def _check_str_growth(owner: str, name: str, args: Sequence[Any]) -> None:
    """Estimates the size of str methods whose result can be much larger than their inputs."""
    if name in ("format", "format_map"):
        _check_format_string(owner)
    elif name == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        if (owner.count("\t") + 1) * max(tab, 1) + len(owner) > MAX_CHARS:
            raise _limit("expandtabs would build a string over the size limit")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        n = owner.count(args[0]) if args[0] else len(owner) + 1
        if n * len(args[1]) + len(owner) > MAX_CHARS:
            raise _limit("replace would build a string over the size limit")
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        total = len(owner) * len(args[0]) + sum(len(x) for x in args[0] if isinstance(x, str))
        if total > MAX_CHARS:
            raise _limit("join would build a string over the size limit")


def _guard_filter(name: str, func):
    """Wraps a filter with the size checks (filters are called directly, not through call())."""

    has_pass_arg = getattr(func, "jinja_pass_arg", None) is not None

    def guarded(*args, **kwargs):
        _check_args(itertools.chain(args, kwargs.values()))
        # args: (context/environment if the filter asks for one, value, filter arguments...)
        rest = args[1:] if has_pass_arg else args
        value = rest[0] if rest else None
        if isinstance(value, str):
            if name == "format":
                _check_format_string(value)
            elif name == "indent":
                width = kwargs.get("width", rest[1] if len(rest) > 1 else 4)
                width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
                if (value.count("\n") + 1) * width + len(value) > MAX_CHARS:
                    raise _limit("indent would build a string over the size limit")
            elif name == "wordwrap":
                wrap = kwargs.get("wrapstring", rest[3] if len(rest) > 3 else "") or ""
                if len(value) * (1 + len(str(wrap))) > MAX_CHARS:
                    raise _limit("wordwrap would build a string over the size limit")
            elif name == "replace" and len(rest) >= 3:
                _check_str_growth(value, "replace", rest[1:3])
        if name == "join" and isinstance(value, (list, tuple)):
            sep = kwargs.get("d", rest[1] if len(rest) > 1 else "")
            if isinstance(sep, str):
                _check_str_growth(sep, "join", [value])
        return _check_value(func(*args, **kwargs))

    # Keep jinja's pass_context/pass_environment markers.
    guarded.__dict__.update(getattr(func, "__dict__", {}))
    guarded.__name__ = getattr(func, "__name__", name)
    return guarded


# ---------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------


class _GuardedCodeGenerator(CodeGenerator):
    """Routes the `~` operator's result and slices through the size check (jinja compiles them to
    a plain string join and subscript that the sandbox does not see)."""

    def visit_Concat(self, node, frame):
        self.write("environment.checked_value(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_Getitem(self, node, frame):
        # Slices are compiled to a plain subscript, not environment.getitem: charge their copies.
        if isinstance(node.arg, jinja2.nodes.Slice):
            self.write("environment.checked_value(")
            super().visit_Getitem(node, frame)
            self.write(")")
        else:
            super().visit_Getitem(node, frame)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` (transformers' assistant-mask marker): renders its
    body unchanged."""
    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    checked_value = staticmethod(_check_value)

    def unsafe_undefined(self, obj, attribute):
        # jinja returns a silent Undefined (it renders as ''); a template that reaches for an
        # unsafe attribute, even through |attr or a format string, is hostile: stop it.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_CHARS:
                        raise _limit(f"repeating {len(seq)} items {n} times is over the size limit")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _limit("an integer product over the size limit")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * left.bit_length() > MAX_INT_BITS:
                    raise _limit("an integer power over the size limit")
        elif operator == "%" and isinstance(left, str):
            _check_format_string(left)
            if "*" in left:
                _check_args(right if isinstance(right, tuple) else (right,))
        return _check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        _check_args(itertools.chain(args, kwargs.values()))
        target = getattr(__obj, "__wrapped__", __obj)   # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            _check_str_growth(owner, getattr(target, "__name__", ""), args)
        return _check_value(super().call(__context, __obj, *args, **kwargs))


def _raise_exception(message: str = "the chat template raised an error") -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise ChatTemplateError("chat template: strftime_now takes a format string of at most 256 characters")
    return datetime.datetime.now().strftime(fmt)


def _tojson(value, indent=None, separators=None, sort_keys=False):
    # As transformers does: no HTML escaping, non-ASCII kept.
    if indent is not None and (not isinstance(indent, int) or indent > MAX_JSON_INDENT):
        raise _limit(f"tojson indent must be an integer of at most {MAX_JSON_INDENT}")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _make_environment() -> _GuardedEnvironment:
    env = _GuardedEnvironment(trim_blocks=True, lstrip_blocks=True,
                              extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)   # a paragraph generator taking a count: nothing a chat needs
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


# ---------------------------------------------------------------------------------------------
# The step and time budget
# ---------------------------------------------------------------------------------------------

_TEMPLATE_FILENAME = "<template>"


class _Budget:
    """A trace function that counts Python calls and template lines; over budget it raises,
    which ends the render. Per-line events in template code catch loops that make no calls.
    The clock is read at every step (a step can be a slow operation on a big value: checked
    only every 1024 steps, loops of them ran 7-25 s against a 5 s limit); the clock costs ~5%
    of the trace function's own overhead. Also holds the render's total of built sizes."""

    def __init__(self, max_steps: int, max_seconds: float, max_built: int = MAX_BUILT):
        self.steps_left = max_steps
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.built_left = max_built
        self.max_built = max_built

    def charge(self, size: int) -> None:
        self.built_left -= size
        if self.built_left < 0:
            raise _limit(f"it built more than {self.max_built} characters/items in all (a "
                         f"per-render memory limit)")

    def _tick(self) -> None:
        self.steps_left -= 1
        if self.steps_left <= 0:
            raise _limit(f"it ran for more than {self.max_steps} steps (an endless loop?)")
        if time.monotonic() > self.deadline:
            raise _limit(f"it ran for more than {self.max_seconds:g} s")

    def trace(self, frame, event, arg):
        self._tick()
        if frame.f_code.co_filename == _TEMPLATE_FILENAME:
            return self._trace_lines
        return None

    def _trace_lines(self, frame, event, arg):
        if event == "line":
            self._tick()
        return self._trace_lines


# ---------------------------------------------------------------------------------------------
# ChatTemplate
# ---------------------------------------------------------------------------------------------


class ChatTemplate:
    """A compiled chat template.

        t = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
        t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "custom",
                 stop: Sequence[str] = (), max_steps: int = MAX_STEPS, max_seconds: float = MAX_SECONDS,
                 max_chars: int = MAX_CHARS, max_built: int = MAX_BUILT):
        if not isinstance(source, str):
            raise ChatTemplateError(f"a chat template must be a string, got {type(source).__name__}")
        self.source = source
        self.name = name
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.stop = list(stop)   # end-of-turn text to stop at besides the model's EOG tokens
        self.max_steps, self.max_seconds, self.max_chars = max_steps, max_seconds, max_chars
        self.max_built = max_built
        self._env = _make_environment()
        try:
            self._template = self._env.from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template {name!r} does not compile: {e}") from None
        except (RecursionError, MemoryError, ValueError, SyntaxError) as e:
            raise ChatTemplateError(f"chat template {name!r} does not compile: {type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r})"

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True, tools=None,
               **extra) -> str:
        """The prompt text of `messages`. Raises ChatTemplateError if the template fails, tries
        to leave the sandbox, or goes over a limit."""
        variables = dict(extra)
        variables.update(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                         add_generation_prompt=bool(add_generation_prompt), tools=tools)
        budget = _Budget(self.max_steps, self.max_seconds, self.max_built)
        out: list[str] = []
        size = 0
        previous_trace = sys.gettrace()
        previous_budget = getattr(_current, "budget", None)
        _current.budget = budget
        sys.settrace(budget.trace)
        try:
            for chunk in self._template.generate(**variables):
                size += len(chunk)
                if size > self.max_chars:
                    raise _limit(f"its output passed {self.max_chars} characters")
                out.append(chunk)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"chat template {self.name!r} tried to leave its sandbox: {e}") from None
        except TemplateError as e:
            raise ChatTemplateError(f"chat template {self.name!r} failed: {e}") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except RecursionError:
            raise _limit("it recursed too deeply") from None
        except MemoryError:
            raise _limit("it ran out of memory") from None
        except Exception as e:
            raise ChatTemplateError(f"chat template {self.name!r} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.settrace(previous_trace)
            _current.budget = previous_budget
        return "".join(out)


def builtin(name: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    key = name.lower()
    if key not in BUILTIN_TEMPLATES:
        raise ChatTemplateError(f"no built-in chat template {name!r}; built-ins: {', '.join(BUILTIN_TEMPLATES)}")
    return ChatTemplate(BUILTIN_TEMPLATES[key], bos_token, eos_token, name=key, stop=BUILTIN_STOPS[key])


def _looks_like_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def load(metadata: dict, override: str | os.PathLike | None = None, bos_token: str = "",
         eos_token: str = "") -> ChatTemplate:
    """The chat template to use: `override` (a built-in name, a file, or template source) if
    given, else the model's `tokenizer.chat_template`, else its family's format where the family
    fixes one (ARCH_TEMPLATES). No template at all is an error that says how to give one, never
    a guess."""
    if override is not None:
        text = os.fspath(override)
        if os.path.isfile(text):
            try:
                with open(text, encoding="utf-8") as f:
                    source = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise ChatTemplateError(f"cannot read chat template file {text!r}: {e}") from None
            return ChatTemplate(source, bos_token, eos_token, name=text)
        if text.lower() in BUILTIN_TEMPLATES:
            return builtin(text, bos_token, eos_token)
        if _looks_like_template(text):
            return ChatTemplate(text, bos_token, eos_token, name="custom")
        raise ChatTemplateError(f"chat template {text!r} is neither a file nor a built-in name "
                                f"(built-ins: {', '.join(BUILTIN_TEMPLATES)})")
    source = metadata.get("tokenizer.chat_template")
    arch = metadata.get("general.architecture")
    if source is None and arch in ARCH_TEMPLATES:
        return builtin(ARCH_TEMPLATES[arch], bos_token, eos_token)
    if source is None:
        raise ChatTemplateError(
            "this model has no chat template (no 'tokenizer.chat_template' in its GGUF metadata); "
            f"give one with --chat-template NAME|FILE (built-ins: {', '.join(BUILTIN_TEMPLATES)}), "
            "or chat_template=... in the API")
    if not isinstance(source, str):
        raise ChatTemplateError(f"'tokenizer.chat_template' should be a string, got {type(source).__name__}")
    return ChatTemplate(source, bos_token, eos_token, name="gguf")
